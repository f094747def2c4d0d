"""Crash and resume, for real: SIGKILL the generate and label stages mid-run, rerun, and check the files.

The subprocess runs swirl_jax.pipeline.generate.generate with a tiny random-weight Gemma and a real
tokenizer, exported together as a Hugging Face checkpoint directory and loaded with load_model (its turns
are noise, so trajectories end malformed at the step budget: fine here). A sleep
after each written record keeps the run alive long enough to be killed between records; the kill lands
after at least one record and before the last. A torn partial line is then appended, as if the kill had
hit mid-write. The rerun must finish with exactly questions x K whole records, none duplicated, the
records of the first run untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from swirl_jax.types import Trajectory, read_jsonl

QUESTIONS, K = 6, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys, time
mode, in_path, out_path, sleep_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pause = (lambda t: time.sleep(sleep_s)) if sleep_s > 0 else None
if mode == "generate":
  from flax import nnx
  from swirl_jax.loading import load_model
  from swirl_jax.pipeline.generate import generate
  from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
  from swirl_jax.sampling.rollout import Rollout, RolloutConfig
  from swirl_jax.tools import STOP_STRINGS, Calculator
  from swirl_jax.types import Question
  lm = load_model(in_path)
  tok = lm.tokenizer
  stops = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  sampler = Sampler.create(lm.model, batch=4, cache_len=512, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
                           stops=stops, steps_per_call=8, min_chunk=128, max_chunk=128)  # one extend program
  config = RolloutConfig(task="math", samples_per_question=%(K)d, max_tool_calls=1, num_demos=0, seed=0)
  rollout = Rollout(sampler, nnx.state(lm.model), tok, {"calculator": Calculator()}, config)
  questions = [Question(id=f"q{i}", dataset="synthetic_arith", text=f"What is {i} + {i}?", answer=str(2 * i))
               for i in range(%(Q)d)]
  generate(rollout, questions, out_path, on_trajectory=pause)
else:
  from swirl_jax.judges import RuleJudge
  from swirl_jax.pipeline.stages import label
  label(in_path, out_path, RuleJudge(), chunk_size=1, on_trajectory=pause)
""" % {"K": K, "Q": QUESTIONS}


def start(tmp, mode: str, in_path: str, out_path: str, sleep_s: float, cache_dir: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             # the rerun reuses the first run's compilations
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  log = open(os.path.join(tmp, f"{mode}-{time.monotonic_ns()}.log"), "w")
  return subprocess.Popen([sys.executable, "-c", SCRIPT, mode, in_path, out_path, str(sleep_s)], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def whole_lines(path: str) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [l for l in f.read().split("\n")[:-1]]  # the last piece is "" or a torn line


def kill_after_first_record(proc: subprocess.Popen, path: str, timeout: float = 240) -> list[str]:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if whole_lines(path):
      proc.send_signal(signal.SIGKILL)
      assert proc.wait(30) == -signal.SIGKILL
      return whole_lines(path)
    if proc.poll() is not None:
      pytest.fail(f"the stage exited (rc {proc.returncode}) before writing a record")
    time.sleep(0.02)
  proc.kill()
  pytest.fail("no record written in time")


def run_to_end(proc: subprocess.Popen, tmp, timeout: float = 240) -> None:
  rc = proc.wait(timeout)
  if rc != 0:
    logs = sorted(f for f in os.listdir(tmp) if f.endswith(".log"))
    pytest.fail(f"rerun failed with rc {rc}:\n" + open(os.path.join(tmp, logs[-1])).read()[-3000:])


def check_complete(path: str, before: list[str]) -> list[Trajectory]:
  records = read_jsonl(Trajectory, path)  # strict: every line must parse as a Trajectory
  keys = [t.key for t in records]
  assert len(keys) == len(set(keys)) == QUESTIONS * K
  assert set(keys) == {(f"q{i}", k) for i in range(QUESTIONS) for k in range(K)}
  assert whole_lines(path)[: len(before)] == before  # what the killed run wrote is kept as it was
  return records


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  """Runs generate, kills it after its first record, tears the last line, reruns to the end."""
  from swirl_jax.checkpoints.build import model_weights
  from swirl_jax.checkpoints.hf_export import export_hf
  from swirl_jax.loading import load_model
  from tiny_tokenizer import tiny_tokenizer

  tmp = str(tmp_path_factory.mktemp("resume"))
  model_dir = os.path.join(tmp, "tiny-model")
  lm = load_model("random:tiny-gemma3")
  export_hf(lm.config, model_weights(lm.model), model_dir, tokenizer=tiny_tokenizer(lm.config.vocab_size))
  cache = os.path.join(tmp, "jax-cache")
  path = os.path.join(tmp, "trajectories.jsonl")
  before = kill_after_first_record(start(tmp, "generate", model_dir, path, 0.5, cache), path)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"question": {"id": "q5", "dataset": "synth')  # a record torn by the kill
  run_to_end(start(tmp, "generate", model_dir, path, 0.0, cache), tmp)
  return tmp, path, before


def test_generate_killed_and_resumed(generated):
  _, path, before = generated
  assert 1 <= len(before) < QUESTIONS * K  # killed after a record and before the end
  records = check_complete(path, before)
  for t in records:
    assert t.steps and t.provenance["task"] == "math"


def test_label_killed_and_resumed(generated):
  tmp, traj_path, _ = generated
  out = os.path.join(tmp, "labelled.jsonl")
  before = kill_after_first_record(start(tmp, "label", traj_path, out, 0.3, os.path.join(tmp, "jax-cache")), out)
  assert 1 <= len(before) < QUESTIONS * K
  with open(out, "a", encoding="utf-8") as f:
    f.write(before[0][:50])  # a torn record
  run_to_end(start(tmp, "label", traj_path, out, 0.0, os.path.join(tmp, "jax-cache")), tmp)
  records = check_complete(out, before)
  for t in records:
    assert t.outcome is not None and all(s.verdict is not None for s in t.steps)


def test_done_keys_ignores_a_record_torn_inside_a_utf8_character(tmp_path):
  """A kill can cut the last record inside a multi-byte character (records keep "é" unescaped)."""
  from swirl_jax.pipeline.generate import done_keys
  from swirl_jax.types import Question, write_jsonl

  path = str(tmp_path / "trajectories.jsonl")
  write_jsonl(path, [Trajectory(Question(f"q{i}", "hotpot_qa", "Who directed Amélie?", "Jeunet"), i, ())
                     for i in range(2)])
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[: raw.rindex("é".encode()) + 1])  # the second record ends inside "é"
  assert done_keys(path) == {("q0", 0)}
