"""Killing training (SIGTERM, then SIGKILL) and resuming gives the parameters of an uninterrupted run,
bit for bit; checkpoints keep the last K; a checkpoint loads for evaluation.

Each run is a subprocess executing WORKER: step-wise RL (sampling, rule judge, KL to the reference) on
a tiny model. The runs share a persistent compilation cache, so only the first one compiles.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

WORKER = textwrap.dedent("""
  import os, sys, time
  import numpy as np
  from tiny_tokenizer import tiny_tokenizer
  from swirl_jax.checkpoints.build import random_model
  from swirl_jax.judges.rule import RuleJudge
  from swirl_jax.loading import LoadedModel
  from swirl_jax.models.config import preset
  from swirl_jax.sampling.decode import SamplingConfig
  from swirl_jax.training import rl
  from swirl_jax.training.checkpointing import CheckpointConfig
  from swirl_jax.training.losses import LossConfig
  from swirl_jax.training.optimizer import OptimizerConfig
  from swirl_jax.types import Message, StepExample

  work, steps, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:test")  # the same initial model every run
  rng = np.random.default_rng(0)
  states = [StepExample(f"q{i}", 0, 0, (Message("user", f"Add {a} and {b}."),), "")
            for i, (a, b) in enumerate(rng.integers(1, 99, (10, 2)))]
  res = rl.train(
      rl.TrainConfig(mode="rl", steps=steps, states_per_step=2, group_size=2, max_len=48, seq_bucket=16,
                     slot_bucket=8, steps_per_call=8, log_dir=os.path.join(work, "logs"), progress=False),
      states, lm, RuleJudge(), loss=LossConfig(kl_coef=0.05), optimizer=OptimizerConfig(learning_rate=1e-2),
      sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
      checkpoint=CheckpointConfig(os.path.join(work, "ckpt"), save_every=2, max_to_keep=2),
      on_step=lambda step, m: time.sleep(sleep))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in __import__("jax").tree_util.tree_flatten_with_path(res.params)[0]}
  np.savez(os.path.join(work, "params.npz"), **flat)
  print("RESULT", res.interrupted, res.resumed_from, int(res.state.step), flush=True)
""")


def _env(cache: str) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = cache
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  return env


def _start(work: str, cache: str, sleep: float) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", WORKER, work, str(STEPS), str(sleep)], env=_env(cache), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out[-3000:]}\n{err[-6000:]}"
  return out


def _logged_steps(work: str) -> list[int]:
  path = os.path.join(work, "logs", "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["step"] for line in f if line.strip()]


def _wait_for_step(proc: subprocess.Popen, work: str, step: int, timeout: float = 300) -> None:
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"worker exited early: {proc.communicate()}")
    if any(s >= step for s in _logged_steps(work)):
      return
    time.sleep(0.05)
  raise AssertionError("timed out waiting for the worker")


def _params(work: str) -> dict:
  with np.load(os.path.join(work, "params.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  ref = str(tmp_path_factory.mktemp("uninterrupted"))
  out = _finish(_start(ref, cache, 0.0))
  assert f"RESULT False None {STEPS}" in out, out

  work = str(tmp_path_factory.mktemp("interrupted"))
  # 1) SIGTERM: the run saves at the next step boundary and exits cleanly.
  proc = _start(work, cache, 0.4)
  _wait_for_step(proc, work, 3)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)
  assert "RESULT True None" in out, out
  stopped_at = int(out.split("RESULT True None")[1].split()[0])
  assert 3 <= stopped_at < STEPS
  assert str(stopped_at) in os.listdir(os.path.join(work, "ckpt"))  # saved at the step boundary
  # 2) resume, then SIGKILL: no chance to save; the next run resumes from the last periodic save.
  proc = _start(work, cache, 0.4)
  _wait_for_step(proc, work, stopped_at + 3)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  # 3) resume to the end.
  out = _finish(_start(work, cache, 0.0))
  assert "RESULT False" in out and f" {STEPS}" in out, out
  resumed_from = int(out.split("RESULT False ")[1].split()[0])
  assert resumed_from > stopped_at
  return ref, work, stopped_at, resumed_from


def test_resume_after_sigterm_and_sigkill_equals_uninterrupted(runs):
  ref, work, stopped_at, resumed_from = runs
  a, b = _params(ref), _params(work)
  assert a.keys() == b.keys() and len(a) > 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The logs of the three runs cover every step; the last record of each step equals the reference's.
  from swirl_jax.training.metrics import read_metrics

  got = read_metrics(os.path.join(work, "logs", "metrics.jsonl"))
  want = read_metrics(os.path.join(ref, "logs", "metrics.jsonl"))
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))
  for g, w in zip(got, want):
    assert (g["loss"], g["mean_reward"], g["kl"]) == (w["loss"], w["mean_reward"], w["kl"]), g["step"]


def test_checkpoint_layout_keeps_last_k_and_loads_for_evaluation(runs):
  ref, _, _, _ = runs
  from swirl_jax.checkpoints.build import random_model
  from swirl_jax.evaluation.evaluate import EvalConfig, evaluate, is_checkpoint_dir, with_checkpoint
  from swirl_jax.evaluation.report import comparison_table, load_reports
  from swirl_jax.judges.rule import RuleJudge
  from swirl_jax.loading import LoadedModel
  from swirl_jax.models.config import preset
  from swirl_jax.sampling.decode import SamplingConfig
  from swirl_jax.sampling.rollout import RolloutConfig
  from swirl_jax.tools import Calculator
  from swirl_jax.training.checkpointing import read_meta
  from swirl_jax.types import Question
  from tiny_tokenizer import tiny_tokenizer

  ckpt = os.path.join(ref, "ckpt")
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert steps == [STEPS - 2, STEPS]  # save_every=2, max_to_keep=2
  assert {"meta", "params", "train"} <= set(os.listdir(os.path.join(ckpt, str(STEPS))))
  step, meta = read_meta(ckpt)
  assert step == STEPS and meta["data_pos"] == STEPS * 2 and meta["mode"] == "rl"
  assert meta["model_source"] == "random:test" and len(meta["reference_fingerprint"]) == 16
  assert is_checkpoint_dir(ckpt) and not is_checkpoint_dir(ref)

  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  base = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:test")
  trained, step = with_checkpoint(base, ckpt)
  assert step == STEPS
  want = _params(ref)
  np.testing.assert_array_equal(np.asarray(trained.model.embedding.get_value()), want["embedding"])

  questions = [Question(f"t{i}", "toy_add", f"Add {a} and {b}.", str(a + b)) for i, (a, b) in
               enumerate([(3, 4), (10, 20), (7, 8)])]
  econf = EvalConfig(rollout=RolloutConfig(task="math", num_demos=0, max_tool_calls=2),
                     sampling=SamplingConfig(temperature=0.0, max_new_tokens=8), batch_size=4, cache_len=512,
                     steps_per_call=8, max_chunk=64, judge_process=True)
  out = os.path.join(ref, "eval")
  reports = {}
  for name, policy in (("base", base), ("trained", trained)):
    reports[name] = evaluate(policy, questions, RuleJudge(), {"calculator": Calculator()}, econf,
                             out_dir=os.path.join(out, name))
  rep = reports["trained"]
  assert rep["dataset"] == "toy_add" and rep["num_trajectories"] == 3
  for key in ("judged_accuracy", "exact_match", "token_f1", "mean_steps", "mean_tool_calls", "process_pass_rate"):
    assert isinstance(rep[key], float), key
  assert 1 <= rep["mean_steps"] <= 3
  assert os.path.exists(os.path.join(out, "trained", "toy_add.trajectories.jsonl"))
  table = comparison_table(load_reports(os.path.join(out, "base")), load_reports(os.path.join(out, "trained")))
  assert table.splitlines()[0].startswith("| dataset | n | judged acc | EM | F1 |")
  assert "| toy_add | 3 |" in table
