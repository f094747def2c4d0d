"""Evaluation resumes after a crash: the rollouts already appended are reused (not rerun), the report
equals an uninterrupted run's, and rollouts made under other settings are never reused."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from swirl_jax.evaluation.evaluate import EvalConfig, evaluate
from swirl_jax.judges.rule import RuleJudge
from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.sampling.rollout import Rollout, RolloutConfig
from swirl_jax.tools import Calculator
from swirl_jax.types import Question
from tiny_tokenizer import tiny_lm

QUESTIONS = [Question(f"t{i}", "toy_add", f"Add {a} and {b}.", str(a + b))
             for i, (a, b) in enumerate([(3, 4), (10, 20), (7, 8), (1, 1), (2, 9)])]
CONFIG = EvalConfig(rollout=RolloutConfig(task="math", num_demos=0, max_tool_calls=2),
                    sampling=SamplingConfig(temperature=0.0, max_new_tokens=8), batch_size=2, cache_len=512,
                    steps_per_call=8, max_chunk=64)
TIMINGS = ("rollout_seconds", "judge_seconds")


class Crash(Exception):
  pass


@pytest.fixture()
def jobs_run(monkeypatch):
  """Records the jobs each rollout is given; ``crash_after[0]`` > 0 ends it with Crash after that many."""
  seen, crash_after = [], [0]
  original = Rollout.run_jobs

  def run_jobs(self, jobs, on_trajectory=None):
    jobs = list(jobs)
    seen.append([(q.id, k) for q, k in jobs])
    for n, t in enumerate(original(self, jobs, on_trajectory), 1):
      yield t
      if n == crash_after[0]:
        raise Crash()

  monkeypatch.setattr(Rollout, "run_jobs", run_jobs)
  return seen, crash_after


def _report(path):
  with open(path) as f:
    return {k: v for k, v in json.load(f).items() if k not in TIMINGS}


def _trajectories(directory):
  """The judged trajectories without the steps' wall times."""
  out = []
  for line in (directory / "toy_add.trajectories.jsonl").read_text().splitlines():
    t = json.loads(line)
    for step in t["steps"]:
      step.pop("seconds")
    out.append(t)
  return out


def test_a_crashed_evaluation_resumes_where_it_stopped(tmp_path, jobs_run):
  seen, crash_after = jobs_run
  lm = tiny_lm()
  ref = tmp_path / "ref"
  evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(ref))
  assert not os.path.exists(ref / "toy_add.rollouts.partial.jsonl")  # removed with the report written

  out = tmp_path / "out"
  crash_after[0] = 3
  with pytest.raises(Crash):
    evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(out))
  partial = out / "toy_add.rollouts.partial.jsonl"
  lines = partial.read_text().splitlines()
  assert len(lines) == 1 + 3 and "eval_key" in json.loads(lines[0])
  written = {(json.loads(x)["question"]["id"], json.loads(x)["sample_index"]) for x in lines[1:]}
  with open(partial, "a") as f:
    f.write('{"question": {"id": "t')  # torn by the crash
  assert not os.path.exists(out / "toy_add.json")

  crash_after[0] = 0
  evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(out))
  assert sorted(seen[-1]) == sorted({(q.id, 0) for q in QUESTIONS} - written)  # only the missing ones
  assert _report(out / "toy_add.json") == _report(ref / "toy_add.json")
  assert _trajectories(out) == _trajectories(ref)
  assert not os.path.exists(partial)


def test_rollouts_of_other_settings_or_questions_are_not_reused(tmp_path, jobs_run):
  seen, crash_after = jobs_run
  lm = tiny_lm()
  crash_after[0] = 3
  with pytest.raises(Crash):
    evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(tmp_path))
  crash_after[0] = 0
  other = dataclasses.replace(CONFIG, sampling=SamplingConfig(temperature=0.0, max_new_tokens=6))
  evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, other, out_dir=str(tmp_path))
  assert len(seen[-1]) == len(QUESTIONS)  # all rerun: the sampling settings changed

  for changed in ({"config": dataclasses.replace(CONFIG, cache_len=256)},  # prompts that no longer fit
                  {"resume_key": {"search": {"top_k": 2}}}):  # the caller's key (a tool's settings)
    crash_after[0] = 3
    with pytest.raises(Crash):
      evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(tmp_path))
    crash_after[0] = 0
    kwargs = {"config": CONFIG, **changed}
    evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, kwargs.pop("config"),
             out_dir=str(tmp_path), **kwargs)
    assert len(seen[-1]) == len(QUESTIONS), changed

  crash_after[0] = 3
  with pytest.raises(Crash):
    evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(tmp_path))
  crash_after[0] = 0
  edited = [dataclasses.replace(q, answer="99") for q in QUESTIONS]  # same ids, other questions
  evaluate(lm, edited, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(tmp_path))
  assert len(seen[-1]) == len(QUESTIONS)
  report = json.loads((tmp_path / "toy_add.json").read_text())
  assert report["num_trajectories"] == len(QUESTIONS)


def test_repeated_question_ids_are_refused(tmp_path):
  """Trajectories are keyed by question id: two questions with one id became one trajectory counted twice."""
  twins = [QUESTIONS[0], dataclasses.replace(QUESTIONS[1], id=QUESTIONS[0].id)]
  with pytest.raises(ValueError, match=r"question ids must be unique in toy_add; repeated: \['t0'\]"):
    evaluate(tiny_lm(), twins, RuleJudge(), {"calculator": Calculator()}, CONFIG, out_dir=str(tmp_path))
