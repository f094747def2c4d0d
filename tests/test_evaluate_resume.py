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
from swirl_jax.types import Question, Step, Trajectory
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


def _crash_then_rerun(tmp_path, seen, crash_after, first: dict, second: dict, lm=None):
  """Crashes a run of ``first`` (evaluate's config and keywords; "source": the model's) after 3 rollouts,
  then runs ``second`` in the same directory; returns the jobs the second run was given."""
  lm = lm or tiny_lm()
  calc = {"calculator": Calculator()}
  for kwargs, crash in ((first, 3), (second, 0)):
    crash_after[0] = crash
    kwargs = dict(kwargs)
    config = kwargs.pop("config", CONFIG)
    model = dataclasses.replace(lm, source=kwargs.pop("source")) if "source" in kwargs else lm
    if crash:
      with pytest.raises(Crash):
        evaluate(model, QUESTIONS, RuleJudge(), calc, config, out_dir=str(tmp_path), **kwargs)
    else:
      evaluate(model, QUESTIONS, RuleJudge(), calc, config, out_dir=str(tmp_path), **kwargs)
  return seen[-1]


def test_settings_that_cannot_change_greedy_rollouts_reuse_them(tmp_path, jobs_run):
  """Greedy decoding ignores top_k / top_p and the judge runs after the rollouts: changing them reuses
  the saved rollouts (only the 2 missing of 5 run), and the report and trajectories (whose provenance
  records the sampling settings) are those of an uninterrupted run."""
  seen, crash_after = jobs_run
  lm = tiny_lm()
  ref = tmp_path / "ref"
  changed = dataclasses.replace(CONFIG, judge_process=True, sampling=SamplingConfig(
      temperature=0.0, top_k=5, top_p=0.5, max_new_tokens=8))
  evaluate(lm, QUESTIONS, RuleJudge(), {"calculator": Calculator()},
           dataclasses.replace(CONFIG, judge_process=True), out_dir=str(ref))
  out = tmp_path / "out"
  assert len(_crash_then_rerun(out, seen, crash_after, {"config": CONFIG}, {"config": changed}, lm)) == 2
  report = _report(out / "toy_add.json")
  assert report == _report(ref / "toy_add.json") and "process_pass_rate" in report
  assert report["config"]["sampling"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 8}
  assert _trajectories(out) == _trajectories(ref)


@pytest.fixture()
def scripted_jobs(monkeypatch):
  """``jobs_run`` with every rollout answering its key at once, no model run: for tests of what decides
  reuse, which happens before any rollout."""
  seen, crash_after = [], [0]

  def run_jobs(self, jobs, on_trajectory=None):
    jobs = list(jobs)
    seen.append([(q.id, k) for q, k in jobs])
    for n, (q, k) in enumerate(jobs, 1):
      yield Trajectory(q, k, (Step(text=f"<answer>{q.answer}</answer>", kind="answer", answer=q.answer),),
                       q.answer)
      if n == crash_after[0]:
        raise Crash()

  monkeypatch.setattr(Rollout, "run_jobs", run_jobs)
  return seen, crash_after


def _greedy(**kw):
  return dataclasses.replace(CONFIG, sampling=SamplingConfig(temperature=0.0, max_new_tokens=8, **kw))


@pytest.mark.parametrize("first, second", [
    ({}, {"config": dataclasses.replace(CONFIG, rollout=dataclasses.replace(CONFIG.rollout, max_tool_calls=1))}),
    ({}, {"config": dataclasses.replace(CONFIG, sampling=SamplingConfig(temperature=0.0, max_new_tokens=6))}),
    ({}, {"label": "trained"}),  # another policy
    ({}, {"source": "other-model"}),
    # sampled, not greedy: top_k matters
    ({"config": dataclasses.replace(CONFIG, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8))},
     {"config": dataclasses.replace(CONFIG, sampling=SamplingConfig(temperature=1.0, top_k=5, max_new_tokens=8))}),
])
def test_settings_that_change_rollouts_still_rerun_them(tmp_path, scripted_jobs, first, second):
  seen, crash_after = scripted_jobs
  assert len(_crash_then_rerun(tmp_path, seen, crash_after, first, second)) == len(QUESTIONS)


@pytest.mark.parametrize("second", [
    CONFIG,  # (the control: nothing changed)
    _greedy(top_k=5), _greedy(top_p=0.5), _greedy(top_k=40, top_p=0.9),
    dataclasses.replace(CONFIG, judge_process=True),
])
def test_settings_that_cannot_change_greedy_rollouts_are_not_in_their_key(tmp_path, scripted_jobs, second):
  seen, crash_after = scripted_jobs
  assert len(_crash_then_rerun(tmp_path, seen, crash_after, {}, {"config": second})) == 2  # the 2 missing


def test_questions_whose_prompt_does_not_fit_are_counted_under_one_reason(tmp_path):
  """Each too-long prompt used to be its own end reason ("prompt too long: 200 tokens + ..."); now they
  are one reason, and the report counts the questions never run (2 here, with 2 samples each)."""
  longs = [Question(f"long{n}", "toy_add", "Add " + " and ".join(["1"] * n) + ".", str(n)) for n in (10, 12)]
  config = dataclasses.replace(CONFIG, rollout=dataclasses.replace(CONFIG.rollout, samples_per_question=2),
                               cache_len=185)  # QUESTIONS[0]'s 175 prompt tokens + 8 fit, the longs do not
  report = evaluate(tiny_lm(), QUESTIONS[:1] + longs, RuleJudge(), {"calculator": Calculator()}, config,
                    out_dir=str(tmp_path))
  assert report["num_questions"] == 3 and report["num_trajectories"] == 6
  assert report["questions_not_run"] == 2
  assert report["end_reasons"]["prompt too long"] == 4
  assert [k for k in report["end_reasons"] if k.startswith("prompt too long")] == ["prompt too long"]
  saved = [json.loads(x) for x in (tmp_path / "toy_add.trajectories.jsonl").read_text().splitlines()]
  details = {t["question"]["id"]: t["provenance"].get("end_detail") for t in saved}
  assert details == {"t0": None,  # (the longs' prompts: 198 and 204 tiny_tokenizer tokens)
                     "long10": "198 tokens + sampling.max_new_tokens=8 > cache_len=185",
                     "long12": "204 tokens + sampling.max_new_tokens=8 > cache_len=185"}
