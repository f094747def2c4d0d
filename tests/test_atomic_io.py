"""atomic_open: the old file survives a failed write, and no temporary file is left behind (a killed
writer's is removed by the next write)."""

import os
import signal
import subprocess
import sys

import pytest

from swirl_jax.atomic_io import atomic_open, current_umask, make_temp_dir, temp_prefix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_replaces_whole_file_or_nothing(tmp_path):
  path = tmp_path / "sub" / "report.json"
  with atomic_open(path) as f:
    f.write("old\n")
  assert path.read_text() == "old\n"
  with pytest.raises(RuntimeError):
    with atomic_open(path) as f:
      f.write("half of the new")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == "old\n"
  with atomic_open(path, "wb") as f:
    f.write(b"new\n")
  assert path.read_bytes() == b"new\n"
  assert os.listdir(path.parent) == ["report.json"]
  with pytest.raises(ValueError, match="mode"):
    with atomic_open(path, "a"):
      pass


def test_written_files_follow_the_umask(tmp_path):
  """mkstemp creates 0600; a file written atomically gets what open() would give (0644 under umask 022),
  so other users and services can read reports and exported models."""
  old = os.umask(0o022)
  try:
    with atomic_open(tmp_path / "a.jsonl") as f:
      f.write("{}\n")
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def _dead_pid() -> int:
  """The pid of a process that has exited (reuse within the test is possible in theory, not in practice)."""
  p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                     check=True)
  return int(p.stdout)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
  """SIGKILL runs no cleanup: the temp file of a killed atomic write stays until the next atomic write into
  that directory, which removes it (the writer's pid is in its name), but not other hosts' or live ones."""
  path = tmp_path / "kept.jsonl"
  code = ("import os, signal; from swirl_jax.atomic_io import atomic_open\n"
          f"cm = atomic_open({str(path)!r}); f = cm.__enter__(); f.write('half'); f.flush()\n"
          "os.kill(os.getpid(), signal.SIGKILL)")
  r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO), capture_output=True)
  assert r.returncode == -signal.SIGKILL, r.stderr
  (left,) = os.listdir(tmp_path)
  assert left.startswith(".tmp-") and left.endswith(".jsonl")
  other_host = f".tmp-{_dead_pid()}@some-other-host@abc.jsonl"
  live = temp_prefix() + "abc.jsonl"  # this process's: in use
  for name in (other_host, live):
    (tmp_path / name).write_text("x")
  with atomic_open(path) as f:
    f.write("whole\n")
  assert sorted(os.listdir(tmp_path)) == sorted(["kept.jsonl", other_host, live])
  assert path.read_text() == "whole\n"


def test_make_temp_dir_removes_a_dead_processes_folder_of_its_kind(tmp_path):
  dead = tmp_path / f".export-{_dead_pid()}@{temp_prefix().split('@')[1]}@x1"
  (dead / "sub").mkdir(parents=True)
  (dead / "sub" / "model.safetensors").write_bytes(b"0" * 10)
  other_kind = tmp_path / f".tmp-{_dead_pid()}@{temp_prefix().split('@')[1]}@x2"
  other_kind.mkdir()
  new = make_temp_dir(tmp_path, "export")
  assert os.path.isdir(new) and os.path.basename(new).startswith(temp_prefix("export"))
  assert not dead.exists() and other_kind.exists()


def test_current_umask_reads_without_changing_it():
  old = os.umask(0o027)
  try:
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still set
  finally:
    os.umask(old)


def test_a_writer_in_another_pid_namespace_is_never_judged_dead(tmp_path):
  """Containers sharing a host name and a volume number their processes from 1: a writer at pid 9 in its
  own namespace looked dead to another namespace's cleaner, which deleted its temp file mid-write."""
  import shutil
  import time

  if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "true"],
                                                       capture_output=True).returncode != 0:
    pytest.skip("needs unshare --pid (root or user namespaces)")
  # the writer's pid in its namespace is one no process holds here: pids there count up from 1, so the
  # namespace's first process forks until a child gets that pid, and that child writes
  target = next(p for p in range(5, 10_000) if not os.path.exists(f"/proc/{p}"))
  writer = ("import os, sys, time; from swirl_jax.atomic_io import atomic_open\n"
            "while True:\n"
            "  pid = os.fork()\n"
            "  if pid == 0:\n"
            f"    if os.getpid() == {target}:\n"
            "      with atomic_open(sys.argv[1] + '/a.jsonl') as f:\n"
            "        f.write('A\\n'); open(sys.argv[1] + '/A_ready', 'w').close(); time.sleep(2)\n"
            "    os._exit(0)\n"
            "  _, status = os.waitpid(pid, 0)\n"
            f"  if pid >= {target}:\n"
            "    sys.exit(os.waitstatus_to_exitcode(status))\n")
  proc = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", writer, str(tmp_path)],
                          env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not (tmp_path / "A_ready").exists():
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
    time.sleep(0.05)
  (temp,) = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
  assert temp.startswith(f".tmp-{target}@")  # the premise: its pid is dead here
  with atomic_open(tmp_path / "b.jsonl") as f:  # this namespace's cleaner runs here
    f.write("B\n")
  assert proc.wait(timeout=60) == 0, proc.stderr.read()
  assert (tmp_path / "a.jsonl").read_text() == "A\n" and (tmp_path / "b.jsonl").read_text() == "B\n"
