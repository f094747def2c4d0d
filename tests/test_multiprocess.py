"""Two JAX processes on localhost produce the trajectories of one process (generate mode of the CLI)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from multidevice import ROOT
from tiny_tokenizer import tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
  from swirl_jax.checkpoints.build import model_weights
  from swirl_jax.checkpoints.hf_export import export_hf
  from swirl_jax.loading import load_model

  lm = load_model("random:tiny-gemma3", seed=0)
  out = tmp_path_factory.mktemp("model") / "hf"
  return export_hf(lm.config, model_weights(lm.model), str(out), tokenizer=tiny_tokenizer())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(model_dir, workdir):
  return [sys.executable, "-m", "swirl_jax.main", "--config=configs/quickstart.py", f"--workdir={workdir}",
          f"--config.model.source={model_dir}", "--config.data.num_questions=5",
          "--config.rollout.samples_per_question=2", "--config.rollout.max_tool_calls=2",
          "--config.rollout.num_demos=0", "--config.sampling.max_new_tokens=12",
          "--config.sampler.batch_size=2", "--config.sampler.cache_len=512", "--config.sampler.max_chunk=128"]


def _records(path):
  out = {}
  for line in open(path, encoding="utf-8"):
    r = json.loads(line)
    for s in r["steps"]:
      s.pop("seconds")
    out[(r["question"]["id"], r["sample_index"])] = r
  return out


def test_two_processes_write_what_one_process_writes(tiny_hf_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  single = subprocess.run(_args(tiny_hf_dir, tmp_path / "one"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(_args(tiny_hf_dir, tmp_path / "two") + [
      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one = _records(tmp_path / "one" / "trajectories.jsonl")
  two = _records(tmp_path / "two" / "trajectories.jsonl")
  assert len(one) == 10
  assert one == two
  # each process generated half of the questions, in its own shard
  shards = sorted(p.name for p in (tmp_path / "two").glob("trajectories-*-of-00002.jsonl"))
  assert shards == ["trajectories-00000-of-00002.jsonl", "trajectories-00001-of-00002.jsonl"]
