"""Two JAX processes on localhost run the whole pipeline of the CLI and get the result of one process.

Generation shards the questions (each process writes its own shard, process 0 merges); training runs on
one global mesh spanning both processes (fsdp over 2 devices, one per process; gradients cross processes
through the CPU collectives); eval, export and the small files are written once by process 0.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
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
          "--config.sampler.batch_size=2", "--config.sampler.cache_len=512", "--config.sampler.max_chunk=128",
          # The random model's turns are all malformed, so RL rewards would all be 0 (no gradient): SFT on
          # the recorded turns gives a real update to compare.
          "--config.filter.strategy=none", "--config.train.mode=sft", "--config.train.steps=2",
          "--config.train.states_per_step=4", "--config.train.max_len=512", "--config.train.save_every=1",
          "--config.train.learning_rate=1e-3", "--config.eval.limit=2",
          "--config.compile_cache_dir=none"]  # nothing written outside the test's directories


def _records(path):
  out = {}
  for line in open(path, encoding="utf-8"):
    r = json.loads(line)
    for s in r["steps"]:
      s.pop("seconds")
    out[(r["question"]["id"], r["sample_index"])] = r
  return out


def _eval_report(path):
  with open(path, encoding="utf-8") as f:
    r = json.load(f)
  # the run's own workdir, and when its checkpoint was saved
  r["provenance"] = {k: v for k, v in r["provenance"].items() if k not in ("source", "checkpoint_saved")}
  return {k: v for k, v in r.items() if "seconds" not in k and k not in ("model", "policy")}


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

  # The same step examples, and training on a mesh across both processes gives the 1-process weights.
  assert (tmp_path / "one" / "step_examples.jsonl").read_text() == (tmp_path / "two" / "step_examples.jsonl").read_text()
  from swirl_jax.checkpoints.build import model_weights
  from swirl_jax.evaluation.evaluate import load_policy

  w1 = model_weights(load_policy(str(tmp_path / "one" / "checkpoints")).model)
  w2 = model_weights(load_policy(str(tmp_path / "two" / "checkpoints")).model)
  w0 = model_weights(load_policy(tiny_hf_dir).model)
  moved = max(float(np.abs(w1[k] - w0[k]).max()) for k in w0)
  assert moved > 1e-4  # training moved the weights (Adam: about lr per step)
  # The losses and gradient norms of every step agree (step 2's depend on step 1's update).
  def metrics(run):
    with open(tmp_path / run / "train_logs" / "metrics.jsonl", encoding="utf-8") as f:
      return [json.loads(line) for line in f]
  for m1, m2 in zip(metrics("one"), metrics("two"), strict=True):
    for key in ("loss", "grad_norm"):
      assert abs(m1[key] - m2[key]) <= 1e-5 * abs(m1[key]), (key, m1[key], m2[key])
  # Weights: reductions split across processes round differently, and Adam's g / (sqrt(v) + eps) turns
  # that into a visible difference only where a gradient is ~eps. Measured: 99.9% of weights within
  # 6.7e-8, mean 2.4e-9, a handful of near-zero-gradient elements up to 7.7e-5 (4% of the 2e-3 update).
  diffs = np.concatenate([np.abs(w1[k] - w2[k]).ravel() for k in w1])
  assert np.quantile(diffs, 0.999) <= 1e-6 and diffs.mean() <= 1e-7
  assert diffs.max() <= 0.1 * moved
  for policy in ("base", "trained"):
    assert _eval_report(tmp_path / "one" / "eval" / policy / "synthetic_arith.json") == _eval_report(
        tmp_path / "two" / "eval" / policy / "synthetic_arith.json")
  assert (tmp_path / "one" / "export" / "hf" / "config.json").read_text() == (
      tmp_path / "two" / "export" / "hf" / "config.json").read_text()
  # process 1 wrote no log of its own and no second copy of anything
  assert sorted(os.listdir(tmp_path / "two" / "train_logs")) == sorted(os.listdir(tmp_path / "one" / "train_logs"))


_JUDGE_ONCE = """
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from swirl_jax.training.rl import judged_on_process_0
from swirl_jax.types import Verdict
calls = []
def judge():
  calls.append(1)
  return [Verdict("GOOD", 0.75, "why", "j"), Verdict("BAD", 0.0, "no", "j"), Verdict("GOOD", 1.0, "ok", "j")]
got = judged_on_process_0(judge, 3)
print(json.dumps({"calls": len(calls), "scores": [v.score for v in got], "labels": [v.label for v in got]}))
"""


def test_http_judge_is_asked_once_across_processes():
  """RL rewards from an HTTP judge are requested by process 0 only and reach every process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _JUDGE_ONCE, address, str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert [o["calls"] for o in outs] == [1, 0]
  for o in outs:
    assert o["scores"] == [0.75, 0.0, 1.0] and o["labels"] == ["GOOD", "BAD", "GOOD"]


_RL_ACROSS_PROCESSES = """
import json, os, signal, sys
import jax
work, address, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
if address != "single":
  jax.distributed.initialize(coordinator_address=address, num_processes=2, process_id=pid)
import numpy as np
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from tiny_tokenizer import tiny_tokenizer
from swirl_jax.checkpoints.build import random_model
from swirl_jax.judges.rule import RuleJudge
from swirl_jax.loading import LoadedModel
from swirl_jax.models.config import preset
from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.training import rl
from swirl_jax.training.checkpointing import CheckpointConfig
from swirl_jax.training.losses import LossConfig
from swirl_jax.training.optimizer import OptimizerConfig
from swirl_jax.types import Message, StepExample

tok = tiny_tokenizer()
cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
mesh = make_mesh(MeshConfig(1, jax.process_count(), 1), jax.devices())  # fsdp across the processes
lm = LoadedModel(random_model(cfg, seed=0, mesh=mesh, rules=Rules()), tok, cfg, "random:test", mesh, Rules())
rng = np.random.default_rng(0)
states = [StepExample(f"q{i}", 0, 0, (Message("user", f"Add {a} and {b}."),), "")
          for i, (a, b) in enumerate(rng.integers(1, 99, (10, 2)))]

def on_step(step, m):
  if step == 2 and pid == 0 and address != "single":  # a preemption that reaches process 0 only
    os.kill(os.getpid(), signal.SIGTERM)

res = rl.train(rl.TrainConfig(mode="rl", steps=4, states_per_step=2, group_size=2, max_len=48, seq_bucket=16,
                              slot_bucket=8, steps_per_call=8, progress=False),
               states, lm, RuleJudge(), loss=LossConfig(kl_coef=0.05), optimizer=OptimizerConfig(learning_rate=1e-2),
               sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
               checkpoint=CheckpointConfig(os.path.join(work, "ckpt"), save_every=0), on_step=on_step)
print(json.dumps({"losses": [h["loss"] for h in res.history], "rewards": [h["mean_reward"] for h in res.history],
                  "interrupted": res.interrupted, "step": int(res.state.step)}))
"""


def test_step_wise_rl_across_two_processes_and_a_sigterm_seen_by_one(tmp_path):
  """RL (not only SFT) on a mesh spanning two processes: the decode loop read row lengths that live on
  the other process's device (a RuntimeError at the first decode call). And a SIGTERM that reaches one
  process only: it alone left the loop and saved, the other ran the next step's collectives (gloo
  aborted, no checkpoint). Now both stop after the same step and save it; the steps run match one
  process's."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  single = subprocess.run([sys.executable, "-c", _RL_ACROSS_PROCESSES, str(tmp_path / "one"), "single", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  want = json.loads(single.stdout.strip().splitlines()[-1])
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _RL_ACROSS_PROCESSES, str(tmp_path / "two"), address, str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert want["step"] == 4 and not want["interrupted"]
  for o in outs:
    assert o["interrupted"] and o["step"] == 2
    assert o["rewards"] == want["rewards"][:2]
    np.testing.assert_allclose(o["losses"], want["losses"][:2], rtol=1e-5, atol=1e-7)
  from swirl_jax.training.checkpointing import Checkpointer, CheckpointConfig
  ckpt = Checkpointer(CheckpointConfig(str(tmp_path / "two" / "ckpt")))
  assert ckpt.latest_step() == 2  # the preemption's checkpoint
  ckpt.close()
