"""Tests for swirl_jax.pipeline.filter: the four filters, equalizing, and the report."""

from __future__ import annotations

import json
import random

import pytest

from swirl_jax.pipeline.filter import (
    STRATEGIES,
    UnlabelledError,
    equalize_target,
    filter_trajectories,
    passes,
)
from swirl_jax.types import Question, Step, Trajectory, Verdict


def verdict(label: str | None, why: str = "") -> Verdict | None:
  return None if label is None else Verdict(label, 1.0 if label == "GOOD" else 0.0, why or f"it is {label}", "test")


def make(qid: str, step_labels, outcome, sample: int = 0) -> Trajectory:
  steps = tuple(Step(text=f"step {k}", kind="answer" if k == len(step_labels) - 1 else "tool_call",
                     verdict=verdict(l, f"reason {k}")) for k, l in enumerate(step_labels))
  return Trajectory(question=Question(id=qid, dataset="d", text="?", answer="1"), sample_index=sample,
                    steps=steps, final_answer="1", outcome=verdict(outcome, "wrong answer"))


A = make("a", ["GOOD", "GOOD"], "GOOD")  # passes everything
B = make("b", ["GOOD", "GOOD", "GOOD"], "BAD")  # good process, wrong answer
C = make("c", ["GOOD", "BAD", "GOOD"], "GOOD")  # a bad step, right answer
D = make("d", ["BAD", "GOOD", "BAD"], "BAD")  # fails everything
SET = [A, B, C, D]


@pytest.mark.parametrize("strategy,kept", [
    ("none", "abcd"), ("process", "ab"), ("outcome", "ac"), ("process_and_outcome", "a"),
])
def test_each_filter_keeps_exactly_the_right_ones(strategy, kept):
  out, report = filter_trajectories(SET, strategy)
  assert "".join(t.question.id for t in out) == kept
  assert (report.total, report.passed, report.kept) == (4, len(kept), len(kept))
  assert report.num_dropped == 4 - len(kept)
  assert sorted(d.question_id for d in report.dropped) == sorted(set("abcd") - set(kept))
  assert all(passes(t, strategy) == (t.question.id in kept) for t in SET)


def test_report_reasons():
  _, report = filter_trajectories(SET, "process_and_outcome")
  by_id = {d.question_id: d for d in report.dropped}
  assert by_id["b"].reasons == ("outcome BAD: wrong answer",) and by_id["b"].bad_steps == ()
  assert by_id["c"].reasons == ("step 1 BAD: reason 1",) and by_id["c"].bad_steps == (1,)
  assert by_id["d"].bad_steps == (0, 2)
  assert by_id["d"].reasons == ("step 0 BAD: reason 0", "step 2 BAD: reason 2", "outcome BAD: wrong answer")
  assert report.reason_counts() == {"outcome_bad": 2, "step_bad": 2}


def test_a_trajectory_without_steps_fails_the_process_filters():
  """"Every step GOOD" holds vacuously for no steps (a prompt too long for the cache): nothing to learn."""
  empty = Trajectory(question=Question(id="e", dataset="d", text="?", answer="1"), sample_index=0, steps=(),
                     outcome=verdict("BAD"), provenance={"end_reason": "prompt too long: 5000 tokens"})
  for strategy in ("process", "process_and_outcome"):
    out, report = filter_trajectories([A, empty], strategy)
    assert [t.question.id for t in out] == ["a"]
    assert report.dropped[0].reasons[0] == "no steps: prompt too long: 5000 tokens"
  assert filter_trajectories([empty], "none")[1].kept == 1


def test_report_writes_json(tmp_path):
  _, report = filter_trajectories(SET, "process", equalize=1, seed=3)
  path = tmp_path / "out" / "filter_report.json"
  report.write_json(str(path))
  data = json.loads(path.read_text())
  assert data["strategy"] == "process" and data["kept"] == 1 and data["passed"] == 2 and data["dropped_count"] == 3
  assert data["equalize"] == 1 and data["seed"] == 3
  assert data["reason_counts"] == {"step_bad": 2, "equalize": 1}
  assert {d["question_id"] for d in data["dropped"]} | {"a", "b"} == {"a", "b", "c", "d"}


def test_unlabelled_is_a_clear_error_unless_dropped():
  unlabelled_step = make("u", ["GOOD", None], "GOOD", sample=4)
  no_outcome = make("v", ["GOOD"], None, sample=2)
  with pytest.raises(UnlabelledError, match=r"\('u', 4\).*step 1 has no process verdict"):
    filter_trajectories([A, unlabelled_step], "process")
  with pytest.raises(UnlabelledError, match=r"\('v', 2\).*no outcome verdict"):
    filter_trajectories([A, no_outcome], "outcome")
  with pytest.raises(UnlabelledError, match=r"\('u', 4\)"):
    passes(unlabelled_step, "process_and_outcome")
  # "none" needs no labels; process-only does not need the outcome.
  assert len(filter_trajectories([unlabelled_step, no_outcome], "none")[0]) == 2
  assert [t.question.id for t in filter_trajectories([A, no_outcome], "process")[0]] == ["a", "v"]
  out, report = filter_trajectories([A, unlabelled_step, no_outcome], "process_and_outcome", on_unlabelled="drop")
  assert [t.question.id for t in out] == ["a"]
  assert report.reason_counts() == {"unlabelled": 2}


def test_unknown_filter():
  with pytest.raises(ValueError, match="unknown filter 'best'"):
    filter_trajectories(SET, "best")


def _random_set(n: int, seed: int) -> list[Trajectory]:
  rng = random.Random(seed)
  out = []
  for i in range(n):
    steps = [rng.choice(["GOOD", "GOOD", "GOOD", "BAD"]) for _ in range(rng.randint(1, 4))]
    out.append(make(f"q{i // 5}", steps, rng.choice(["GOOD", "BAD"]), sample=i % 5))
  return out


def test_equalize_keeps_the_same_count_under_every_filter():
  ts = _random_set(60, seed=0)
  target = equalize_target(ts)
  passed = {s: filter_trajectories(ts, s)[1].passed for s in STRATEGIES}
  assert target == min(passed.values()) and 0 < target < 60
  kept_sets = {}
  for s in STRATEGIES:
    out, report = filter_trajectories(ts, s, equalize=target, seed=7)
    assert len(out) == report.kept == target
    assert all(passes(t, s) for t in out)
    keys = [t.key for t in out]
    assert keys == [t.key for t in ts if t.key in set(keys)]  # input order preserved
    # Deterministic, and independent of the input order.
    again, _ = filter_trajectories(list(reversed(ts)), s, equalize=target, seed=7)
    assert {t.key for t in again} == set(keys)
    assert sum(1 for d in report.dropped if d.reasons[0].startswith("equalize")) == passed[s] - target
    kept_sets[s] = set(keys)
  # The filter that passes exactly `target` keeps all its passing trajectories.
  tightest = min(STRATEGIES, key=lambda s: passed[s])
  assert kept_sets[tightest] == {t.key for t in filter_trajectories(ts, tightest)[0]}
  # Another seed picks another subset.
  other = {t.key for t in filter_trajectories(ts, "none", equalize=target, seed=8)[0]}
  assert other != kept_sets["none"]


def test_equalize_more_than_pass_is_an_error():
  with pytest.raises(ValueError, match="passes 1 of 4 trajectories, fewer than equalize=2"):
    filter_trajectories(SET, "process_and_outcome", equalize=2)
  assert filter_trajectories(SET, "none", equalize=0)[1].kept == 0
