"""Stage-1 filters: keep or drop whole labelled trajectories.

Strategies (SWiRL, DESIGN.md):

* ``none``: keep everything (no labels needed);
* ``process``: every step's process verdict is GOOD (a trajectory without steps fails);
* ``outcome``: the outcome verdict (final answer vs. key) is GOOD;
* ``process_and_outcome``: both.

Equalizing. The paper compares filters at a fixed number of kept trajectories. ``equalize=N`` keeps
exactly N of the trajectories that pass, chosen by a seeded hash of each trajectory's key: trajectories
are ranked by sha256(seed, question id, sample index) and the N lowest-ranked passing ones are kept, in
their input order. The ranking depends on neither the strategy nor the input order, so every strategy
prefers the same trajectories and the kept sets differ only where the filters disagree, which keeps
comparisons between strategies tight. Fewer than N passing is an error (the comparison would not be at
a fixed count);
``equalize_target`` gives the largest N every strategy can meet (the minimum passing count).

Unlabelled trajectories under a strategy that needs labels raise an error naming the trajectory key,
unless ``on_unlabelled="drop"``, which drops them with the reason "unlabelled".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal, Sequence

from swirl_jax.atomic_io import atomic_open
from swirl_jax.types import Trajectory

Strategy = Literal["none", "process", "outcome", "process_and_outcome"]
STRATEGIES: tuple[Strategy, ...] = ("none", "process", "outcome", "process_and_outcome")


class UnlabelledError(ValueError):
  """A filter needs a label that a trajectory does not have."""


@dataclasses.dataclass(frozen=True)
class Dropped:
  """Why one trajectory was dropped.

  Attributes:
    question_id / sample_index: the trajectory key.
    reasons: e.g. ("step 2 BAD: search query repeats the query of step 0", "outcome BAD: ...",
      "unlabelled: step 1 has no verdict", "equalize: not in the seeded subset").
    bad_steps: indices of the BAD steps (process filters).
  """

  question_id: str
  sample_index: int
  reasons: tuple[str, ...]
  bad_steps: tuple[int, ...] = ()

  def to_json(self) -> dict[str, Any]:
    return {"question_id": self.question_id, "sample_index": self.sample_index, "reasons": list(self.reasons),
            "bad_steps": list(self.bad_steps)}


def _reason_kind(reason: str) -> str:
  if reason.startswith("step "):
    return "step_bad"
  if reason.startswith("outcome BAD"):
    return "outcome_bad"
  return reason.split(":", 1)[0]  # "unlabelled", "equalize"


@dataclasses.dataclass(frozen=True)
class FilterReport:
  """What a filter kept and dropped, and why.

  Attributes:
    strategy: the filter.
    total: trajectories in.
    passed: trajectories that passed the filter (before equalizing).
    kept: trajectories out.
    equalize / seed: the equalize target and its seed (None when not equalizing).
    dropped: one entry per dropped trajectory, in input order.
  """

  strategy: Strategy
  total: int
  passed: int
  kept: int
  equalize: int | None
  seed: int
  dropped: tuple[Dropped, ...]

  @property
  def num_dropped(self) -> int:
    return self.total - self.kept

  def reason_counts(self) -> dict[str, int]:
    """How many dropped trajectories had each kind of reason: step_bad, outcome_bad, unlabelled, equalize."""
    counts: dict[str, int] = {}
    for d in self.dropped:
      for kind in sorted({_reason_kind(r) for r in d.reasons}):
        counts[kind] = counts.get(kind, 0) + 1
    return counts

  def to_json(self) -> dict[str, Any]:
    return {"strategy": self.strategy, "total": self.total, "passed": self.passed, "kept": self.kept,
            "dropped_count": self.num_dropped, "equalize": self.equalize, "seed": self.seed,
            "reason_counts": self.reason_counts(), "dropped": [d.to_json() for d in self.dropped]}

  def write_json(self, path: str) -> None:
    """Writes the report as indented JSON, atomically (temp file + rename)."""
    with atomic_open(path) as f:
      json.dump(self.to_json(), f, indent=2, ensure_ascii=False, sort_keys=True)
      f.write("\n")


def _check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown filter {strategy!r}; known filters: {list(STRATEGIES)}")


def _failures(t: Trajectory, strategy: Strategy) -> tuple[list[str], list[str], list[int]]:
  """(reasons it fails, reasons it lacks labels, BAD step indices) under ``strategy``."""
  fails: list[str] = []
  missing: list[str] = []
  bad: list[int] = []
  if strategy in ("process", "process_and_outcome"):
    if not t.steps:  # "every step GOOD" would hold vacuously, for a trajectory with nothing to learn from
      fails.append(f"no steps: {t.provenance.get('end_reason', 'the trajectory has no model turn')}"[:200])
    for k, step in enumerate(t.steps):
      if step.verdict is None:
        missing.append(f"unlabelled: step {k} has no process verdict")
      elif step.verdict.label != "GOOD":
        bad.append(k)
        fails.append(f"step {k} BAD: {step.verdict.explanation[:200]}")
  if strategy in ("outcome", "process_and_outcome"):
    if t.outcome is None:
      missing.append("unlabelled: no outcome verdict")
    elif t.outcome.label != "GOOD":
      fails.append(f"outcome BAD: {t.outcome.explanation[:200]}")
  return fails, missing, bad


def passes(t: Trajectory, strategy: Strategy) -> bool:
  """Whether one trajectory passes ``strategy``; raises UnlabelledError when a needed label is missing."""
  _check_strategy(strategy)
  fails, missing, _ = _failures(t, strategy)
  if missing:
    raise UnlabelledError(f"trajectory {t.key}: filter {strategy!r} needs labels: {'; '.join(missing)}")
  return not fails


def _rank(t: Trajectory, seed: int) -> str:
  return hashlib.sha256(f"{seed}\x00{t.question.id}\x00{t.sample_index}".encode("utf-8")).hexdigest()


def filter_trajectories(trajectories: Sequence[Trajectory], strategy: Strategy, equalize: int | None = None,
                        seed: int = 0, on_unlabelled: Literal["error", "drop"] = "error",
                        ) -> tuple[list[Trajectory], FilterReport]:
  """Keeps the trajectories that pass ``strategy`` (in input order), optionally exactly ``equalize`` of them.

  Args:
    trajectories: labelled trajectories.
    strategy: "none", "process", "outcome" or "process_and_outcome".
    equalize: keep exactly this many of the passing trajectories (a seeded subset; see the module
      docstring); None keeps every passing one.
    seed: the subset's seed.
    on_unlabelled: "error" raises UnlabelledError naming the first trajectory that lacks a needed
      label; "drop" drops such trajectories with an "unlabelled" reason.

  Returns:
    (kept trajectories, report).
  """
  _check_strategy(strategy)
  if on_unlabelled not in ("error", "drop"):
    raise ValueError(f"on_unlabelled must be 'error' or 'drop', got {on_unlabelled!r}")
  if equalize is not None and equalize < 0:
    raise ValueError(f"equalize must be >= 0, got {equalize}")
  passing: list[int] = []
  why: dict[int, Dropped] = {}
  for i, t in enumerate(trajectories):
    fails, missing, bad = _failures(t, strategy)
    if missing and on_unlabelled == "error":
      raise UnlabelledError(f"trajectory {t.key}: filter {strategy!r} needs labels: {'; '.join(missing)} "
                            "(label it first, or filter with on_unlabelled='drop')")
    if missing or fails:
      why[i] = Dropped(t.question.id, t.sample_index, tuple(missing + fails), tuple(bad))
    else:
      passing.append(i)
  kept = passing
  if equalize is not None:
    if len(passing) < equalize:
      raise ValueError(f"filter {strategy!r} passes {len(passing)} of {len(trajectories)} trajectories, fewer "
                       f"than equalize={equalize}; use equalize_target() for the largest count every filter meets")
    chosen = set(sorted(passing, key=lambda i: _rank(trajectories[i], seed))[:equalize])
    kept = [i for i in passing if i in chosen]
    for i in passing:
      if i not in chosen:
        t = trajectories[i]
        why[i] = Dropped(t.question.id, t.sample_index, (f"equalize: not in the seeded subset of {equalize}",))
  report = FilterReport(strategy=strategy, total=len(trajectories), passed=len(passing), kept=len(kept),
                        equalize=equalize, seed=seed, dropped=tuple(why[i] for i in sorted(why)))
  return [trajectories[i] for i in kept], report


def equalize_target(trajectories: Sequence[Trajectory], strategies: Sequence[Strategy] = STRATEGIES,
                    on_unlabelled: Literal["error", "drop"] = "error") -> int:
  """The largest kept count every strategy can meet: the minimum number passing over ``strategies``."""
  counts = []
  for s in strategies:
    _, report = filter_trajectories(trajectories, s, on_unlabelled=on_unlabelled)
    counts.append(report.passed)
  return min(counts) if counts else len(trajectories)
