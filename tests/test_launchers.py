"""The launch scripts, run with fake gcloud / srun / pip / python that only record their arguments.

Nothing here installs or runs anything for real: PATH is the fakes' folder then /usr/bin:/bin, and
local.sh / slurm_gpu.sbatch run from a copy in a scratch checkout without the real .venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = os.path.join(ROOT, "launchers")

# Records "name\0cwd\0argv...\0" per call, numbered in call order. python3 -m venv DIR makes an empty
# DIR/bin/activate (what the scripts source) and a DIR/bin/python that passes the version check; gcloud
# keeps a copy of any file it is given (the scp payload), named by the call's number.
_FAKE = """#!/bin/bash
n=$(cat "$FAKE_REC/count" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_REC/count"
printf '%s\\0' {name} "$PWD" "$@" > "$FAKE_REC/call.$(printf %04d "$n")"
if [ {name} = python3 ] && [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"; : > "$3/bin/activate"; printf '#!/bin/bash\\nexit 0\\n' > "$3/bin/python"; chmod +x "$3/bin/python"
fi
if [ {name} = python3 ] && [ "$1" = -c ] && [ -n "$FAKE_OLD_PYTHON" ]; then exit 1; fi
if [ {name} = pip ] && [ -n "$FAKE_PIP_FAILS" ]; then exit 1; fi
if [ {name} = python ] || [ {name} = srun ]; then printf '%s' "${GEMINI_API_KEY-unset}|${SRUN_CPUS_PER_TASK-unset}" > "$FAKE_REC/env.$n"; fi
if [ {name} = gcloud ]; then for a; do if [ -f "$a" ]; then cp -p "$a" "$FAKE_REC/payload.$(printf %04d "$n")"; fi; done; fi
exit 0
"""
_NAMES = ("gcloud", "srun", "pip", "python", "python3")


@pytest.fixture
def fakes(tmp_path):
  """(env running the fakes, function returning the recorded calls as (name, cwd, argv))."""
  bin_dir, rec = tmp_path / "fakebin", tmp_path / "rec"
  bin_dir.mkdir()
  rec.mkdir()
  for name in _NAMES:
    (bin_dir / name).write_text(_FAKE.replace("{name}", name))
    (bin_dir / name).chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_REC": str(rec), "HOME": str(tmp_path / "home"),
         "TMPDIR": str(tmp_path)}

  def recorded():
    out = []
    for f in sorted(p for p in os.listdir(rec) if p.startswith("call.")):
      name, cwd, *argv = (rec / f).read_bytes().decode().split("\0")[:-1]
      out.append((name, cwd, argv))
    return out

  return env, recorded


def _scratch_checkout(tmp_path, script):
  """A checkout holding only `script` (and an empty .venv to activate), so the real .venv is never used."""
  repo = tmp_path / "repo"
  (repo / "launchers").mkdir(parents=True)
  (repo / ".venv" / "bin").mkdir(parents=True)
  (repo / ".venv" / "bin" / "activate").write_text("")
  shutil.copy(os.path.join(LAUNCHERS, script), repo / "launchers" / script)
  return repo


def _jax_pin():
  return re.search(r"^jax==(\S+)$", open(os.path.join(ROOT, "requirements.txt")).read(), re.M).group(1)


def test_launchers_parse():
  for name in os.listdir(LAUNCHERS):
    subprocess.run(["bash", "-n", os.path.join(LAUNCHERS, name)], check=True)


def test_local_paths_are_relative_to_the_caller(tmp_path, fakes):
  env, recorded = fakes
  repo = _scratch_checkout(tmp_path, "local.sh")
  caller = tmp_path / "elsewhere"
  caller.mkdir()
  subprocess.run(["bash", str(repo / "launchers" / "local.sh"), "configs/paper.py:gemma2-9b,gsm8k", "runs/x",
                  "--config.a=b c|d"], cwd=caller, env=env, check=True)
  assert recorded() == [("python", str(repo), ["-m", "swirl_jax.main",
                                               f"--config={caller}/configs/paper.py:gemma2-9b,gsm8k",
                                               f"--workdir={caller}/runs/x", "--config.a=b c|d"])]
  subprocess.run(["bash", str(repo / "launchers" / "local.sh"), "/abs/c.py", "/abs/w"], cwd=caller, env=env,
                 check=True)
  assert recorded()[-1][2][2:] == ["--config=/abs/c.py", "--workdir=/abs/w"]


def test_slurm_runs_one_task_per_gpu():
  text = open(os.path.join(LAUNCHERS, "slurm_gpu.sbatch")).read()
  opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
  # JAX gives each SLURM task only the GPU numbered SLURM_LOCALID: one task per node would use one GPU.
  assert opts["ntasks-per-node"] == opts["gpus-per-node"]
  assert "gpus-per-task" not in opts and "gpu-bind" not in opts  # every task must see all the node's GPUs
  assert f'"jax[cuda12]=={_jax_pin()}"' in text


def test_slurm_passes_arguments_to_srun(tmp_path, fakes):
  env, recorded = fakes
  repo = _scratch_checkout(tmp_path, "slurm_gpu.sbatch")
  subprocess.run(["bash", str(repo / "launchers" / "slurm_gpu.sbatch"), "configs/q.py", "/shared/w x",
                  "--config.a=1 & 2"], env={**env, "SLURM_SUBMIT_DIR": str(repo)}, cwd=tmp_path, check=True)
  assert recorded() == [("srun", str(repo), ["--kill-on-bad-exit=1", "python", "-m", "swirl_jax.main",
                                             "--config=configs/q.py", "--workdir=/shared/w x",
                                             "--config.a=1 & 2"])]


@pytest.mark.parametrize("remote_dir", [None, "code dir/swirl"])
def test_tpu_pod_copies_tracked_files_and_quotes_arguments(tmp_path, fakes, remote_dir):
  env, recorded = fakes
  if remote_dir:
    env["SWIRL_JAX_REMOTE_DIR"] = remote_dir
  overrides = ["--config.data.name=a b|c&d", "--config.x=$HOME'\"`id`;"]
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "my-tpu", "us-z1",
                  "configs/paper.py:gemma2-27b", "/mnt/shared dir/run", *overrides], cwd=tmp_path, env=env,
                 check=True)
  (scp_name, _, scp), (ssh_name, _, ssh) = recorded()
  assert scp_name == ssh_name == "gcloud" and scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  remote_dir = remote_dir or "swirl_jax"
  assert scp[-1] == f"my-tpu:{remote_dir}.tar.gz"  # relative to the remote home, not the local ~ expanded
  assert not any(env["HOME"] in a for a in scp + ssh)

  with tarfile.open(os.path.join(env["FAKE_REC"], "payload.0000")) as tar:
    names = tar.getnames()
  assert "swirl_jax/distributed.py" in names and "requirements.txt" in names
  assert not [n for n in names if n.split("/")[0] in (".venv", ".git", "runs")]

  # Play the worker: its home holds the copied tarball; its shell runs the --command string.
  remote_home = tmp_path / "worker"
  remote_home.mkdir()
  os.makedirs(os.path.dirname(remote_home / scp[-1].split(":", 1)[1]), exist_ok=True)
  shutil.copy(os.path.join(env["FAKE_REC"], "payload.0000"), remote_home / scp[-1].split(":", 1)[1])
  command = ssh[ssh.index("--command") + 1]
  subprocess.run(["bash", "-c", command], cwd=remote_home, env={**env, "HOME": str(remote_home)}, check=True)
  code = str(remote_home / remote_dir)
  assert os.path.exists(os.path.join(code, "swirl_jax", "distributed.py"))
  assert not os.path.exists(remote_home / f"{remote_dir}.tar.gz")
  assert recorded()[2:] == [
      ("python3", code, ["-c", "import sys; sys.exit(sys.version_info < (3, 11))"]),
      ("python3", code, ["-m", "venv", ".venv"]),
      ("pip", code, ["install", "-q", "-r", "requirements.txt"]),
      ("pip", code, ["install", "-q", f"jax[tpu]=={_jax_pin()}"]),
      ("python", code, ["-m", "swirl_jax.main", "--config=configs/paper.py:gemma2-27b",
                        "--workdir=/mnt/shared dir/run", *overrides]),
  ]


def test_tpu_pod_refuses_a_python_older_than_3_11_before_installing(tmp_path, fakes):
  """Some TPU VM images ship Python 3.10 as python3: pip then failed on the pins with a resolver error
  that did not say why. The worker script checks the version first and names SWIRL_JAX_PYTHON."""
  env, recorded = fakes
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "t", "z", "configs/quickstart.py", "/w"],
                 cwd=tmp_path, env=env, check=True)
  (_, _, scp), (_, _, ssh) = recorded()
  remote_home = tmp_path / "worker"
  remote_home.mkdir()
  shutil.copy(os.path.join(env["FAKE_REC"], "payload.0000"), remote_home / scp[-1].split(":", 1)[1])
  r = subprocess.run(["bash", "-c", ssh[ssh.index("--command") + 1]], cwd=remote_home, capture_output=True,
                     text=True, env={**env, "HOME": str(remote_home), "FAKE_OLD_PYTHON": "1"})
  assert r.returncode == 1
  assert "swirl_jax needs Python >= 3.11" in r.stderr and "SWIRL_JAX_PYTHON=python3.11" in r.stderr
  assert [c[0] for c in recorded()[2:]] == ["python3", "python3"]  # the check and --version; no venv, no pip
  assert not os.path.exists(remote_home / "swirl_jax" / ".venv")


def test_tpu_pod_rebuilds_a_venv_an_older_python_made_and_stops_when_pip_fails(tmp_path, fakes):
  """A 3.10 venv left by a run before the version check was reused (the check ran only without .venv),
  and a failed first pip install went on to run swirl_jax (set -e does not stop at the left of &&)."""
  env, recorded = fakes
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "t", "z", "configs/quickstart.py", "/w"],
                 cwd=tmp_path, env=env, check=True)
  (_, _, scp), (_, _, ssh) = recorded()
  remote_home = tmp_path / "worker"
  stale = remote_home / "swirl_jax" / ".venv" / "bin"
  stale.mkdir(parents=True)
  (stale / "activate").write_text("")
  (stale / "python").write_text("#!/bin/bash\nexit 1\n")  # python3.10: fails the version check
  (stale / "python").chmod(0o755)
  shutil.copy(os.path.join(env["FAKE_REC"], "payload.0000"), remote_home / scp[-1].split(":", 1)[1])
  command = ssh[ssh.index("--command") + 1]
  subprocess.run(["bash", "-c", command], cwd=remote_home, env={**env, "HOME": str(remote_home)}, check=True)
  calls = [(c[0], c[2][:2]) for c in recorded()[2:]]
  assert calls[:2] == [("python3", ["-c", "import sys; sys.exit(sys.version_info < (3, 11))"]),
                       ("python3", ["-m", "venv"])]  # rebuilt
  assert "exit 0" in (stale / "python").read_text()  # the new venv's
  n = len(recorded())
  shutil.copy(os.path.join(env["FAKE_REC"], "payload.0000"), remote_home / scp[-1].split(":", 1)[1])
  r = subprocess.run(["bash", "-c", command], cwd=remote_home, capture_output=True,
                     env={**env, "HOME": str(remote_home), "FAKE_PIP_FAILS": "1"})
  assert r.returncode != 0
  assert [c[0] for c in recorded()[n:]] == ["pip"]  # the first install failed: no second, no run


def test_slurm_finds_the_checkout_or_says_how(tmp_path, fakes):
  """Submitted from elsewhere, sbatch's spooled copy stopped at `.venv/bin/activate: No such file`; srun
  (Slurm >= 22.05) did not inherit --cpus-per-task."""
  env, recorded = fakes
  repo = _scratch_checkout(tmp_path, "slurm_gpu.sbatch")
  script = str(repo / "launchers" / "slurm_gpu.sbatch")
  r = subprocess.run(["bash", script, "c.py", "/w"], env={**env, "SLURM_SUBMIT_DIR": str(tmp_path)}, cwd=tmp_path,
                     capture_output=True, text=True)
  assert r.returncode == 1 and "SWIRL_JAX_ROOT" in r.stderr and recorded() == []
  subprocess.run(["bash", script, "c.py", "/w"], env={**env, "SLURM_SUBMIT_DIR": str(tmp_path),
                                                      "SWIRL_JAX_ROOT": str(repo), "SLURM_CPUS_PER_TASK": "8"},
                 cwd=tmp_path, check=True)
  assert recorded()[0][:2] == ("srun", str(repo))
  assert open(os.path.join(env["FAKE_REC"], "env.0")).read() == "unset|8"  # srun's environment


def test_tpu_pod_passes_the_judge_key_in_a_private_file(tmp_path, fakes):
  """gcloud ssh carries no local environment: the paper recipe's GEMINI_API_KEY never reached the workers,
  and every worker stopped with 'that environment variable is not set'."""
  env, recorded = fakes
  secret = "s3cr'et $HOME `x`"
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "t", "z", "configs/quickstart.py", "/w"],
                 cwd=tmp_path, env={**env, "GEMINI_API_KEY": secret}, check=True)
  (_, _, scp), (_, _, scp_env), (_, _, ssh) = recorded()
  assert scp_env[-1] == "t:swirl_jax.env" and scp_env[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  env_file = os.path.join(env["FAKE_REC"], "payload.0001")
  assert os.stat(env_file).st_mode & 0o077 == 0  # only its owner reads it
  command = ssh[ssh.index("--command") + 1]
  assert secret not in command and "s3cr" not in " ".join(ssh)  # not on a command line
  remote_home = tmp_path / "worker"
  remote_home.mkdir()
  shutil.copy(os.path.join(env["FAKE_REC"], "payload.0000"), remote_home / scp[-1].split(":", 1)[1])
  shutil.copy(env_file, remote_home / "swirl_jax.env")
  subprocess.run(["bash", "-c", command], cwd=remote_home, env={**env, "HOME": str(remote_home)}, check=True)
  n = len(recorded()) - 1
  assert recorded()[-1][0] == "python"
  assert open(os.path.join(env["FAKE_REC"], f"env.{n}")).read().split("|")[0] == secret
  assert not os.path.exists(remote_home / "swirl_jax.env")  # read, then deleted
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "t", "z", "configs/quickstart.py", "/w"],
                 cwd=tmp_path, env={**env, "GEMINI_API_KEY": secret, "SWIRL_JAX_ENV": "HF_TOKEN"}, check=True)
  assert [c[2][3] for c in recorded()[n + 1:]] == ["scp", "ssh"]  # not asked for: not sent
  # an absolute remote dir (`. NAME` without a slash would search PATH; `./` before an absolute path breaks)
  absolute = tmp_path / "abs" / "code"
  absolute.parent.mkdir()
  n = len(recorded())
  subprocess.run(["bash", os.path.join(LAUNCHERS, "tpu_pod.sh"), "t", "z", "configs/quickstart.py", "/w"],
                 cwd=tmp_path, env={**env, "GEMINI_API_KEY": secret, "SWIRL_JAX_REMOTE_DIR": str(absolute)},
                 check=True)
  (_, _, scp), (_, _, scp_env), (_, _, ssh) = recorded()[n:n + 3]
  shutil.copy(os.path.join(env["FAKE_REC"], f"payload.{n:04d}"), scp[-1].split(":", 1)[1])
  shutil.copy(os.path.join(env["FAKE_REC"], f"payload.{n + 1:04d}"), scp_env[-1].split(":", 1)[1])
  subprocess.run(["bash", "-c", ssh[ssh.index("--command") + 1]], cwd=remote_home,
                 env={**env, "HOME": str(remote_home)}, check=True)
  m = len(recorded()) - 1
  assert recorded()[-1][:2] == ("python", str(absolute))
  assert open(os.path.join(env["FAKE_REC"], f"env.{m}")).read().split("|")[0] == secret


def test_tpu_pod_copies_no_venv_link_or_weights(tmp_path, fakes):
  """A .venv that is a symbolic link (not matched by '.venv/') and model weights downloaded into hf/ (54 GB
  for the 27B recipe) went into the tarball sent to every worker."""
  env, recorded = fakes
  repo = tmp_path / "repo"
  (repo / "launchers").mkdir(parents=True)
  shutil.copy(os.path.join(LAUNCHERS, "tpu_pod.sh"), repo / "launchers" / "tpu_pod.sh")
  shutil.copy(os.path.join(ROOT, "requirements.txt"), repo / "requirements.txt")
  (repo / ".gitignore").write_text(".venv/\n")  # an older checkout's
  (repo / "hf" / "gemma").mkdir(parents=True)
  (repo / "hf" / "gemma" / "model.safetensors").write_bytes(b"w" * 100)
  os.symlink("/nonexistent/venv", repo / ".venv")
  git = dict(env, GIT_CONFIG_GLOBAL="/dev/null")
  subprocess.run(["git", "init", "-q", str(repo)], env=git, check=True)
  subprocess.run(["git", "-C", str(repo), "add", "launchers", "requirements.txt", ".gitignore"], env=git, check=True)
  subprocess.run(["bash", str(repo / "launchers" / "tpu_pod.sh"), "t", "z", "c.py", "/w"], cwd=tmp_path, env=env,
                 check=True)
  with tarfile.open(os.path.join(env["FAKE_REC"], "payload.0000")) as tar:
    names = tar.getnames()
  assert "launchers/tpu_pod.sh" in names and "requirements.txt" in names
  assert not [n for n in names if n.startswith((".venv", "hf/"))], names
  ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
  assert ".venv" in ignored and "/hf/" in ignored
