"""Stage 1 after generate, as file-to-file stages: label, filter, decompose. Each returns a summary dict.

* ``label``: trajectories.jsonl -> labelled.jsonl. Appends one line per trajectory, fsynced once per chunk,
  so a killed run loses at most the chunk being judged or written; a rerun skips the keys already in the
  output (a torn last line is cut off first) and judges the rest, the lost chunk included. Judge
  completions are also cached by the prompt judges, so even the lost chunk is not paid for twice when a
  cache file is used.
* ``filter_stage``: labelled.jsonl -> kept.jsonl + a JSON report of what was dropped and why.
* ``decompose_stage``: kept.jsonl -> step_examples.jsonl (one StepExample per model turn).

The last two rewrite their outputs whole, atomically (temp file + rename): a crash leaves the previous
file, never a partial one. Inputs are read with the same torn-line tolerance as the appenders, so a
stage can run on a file another process is still appending to.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Callable, Literal, Mapping, Sequence

from swirl_jax import prompts as task_prompts
from swirl_jax.judges.base import Judge
from swirl_jax.judges.prompts import infer_task
from swirl_jax.pipeline.decompose import decompose
from swirl_jax.pipeline.filter import STRATEGIES, equalize_target, filter_trajectories
from swirl_jax.pipeline.jsonl import JsonlAppender, numbered_records
from swirl_jax.types import Trajectory, dumps, write_jsonl

log = logging.getLogger(__name__)


def read_trajectories(paths: str | Sequence[str]) -> tuple[list[Trajectory], int]:
  """Whole trajectory records of one or more JSON Lines files (e.g. generate's per-process shards), in
  order, the first of each key kept. Returns (trajectories, duplicates skipped)."""
  out, seen, dups = [], set(), 0
  for path in [paths] if isinstance(paths, str) else list(paths):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist")
    for lineno, d in numbered_records(path):
      t = Trajectory.from_json(d, f"{path}:{lineno}")
      if t.key in seen:
        dups += 1
        continue
      seen.add(t.key)
      out.append(t)
  return out, dups


class _LabelCounts:
  """label_counts() accumulated one trajectory at a time (from its step labels and outcome label)."""

  def __init__(self):
    self.steps = self.good_steps = self.outcomes = self.good_outcomes = self.all_good = 0

  def add(self, step_labels: Sequence[str | None], outcome_label: str | None) -> None:
    judged = [lab for lab in step_labels if lab is not None]
    self.steps += len(judged)
    self.good_steps += judged.count("GOOD")
    if outcome_label is not None:
      self.outcomes += 1
      self.good_outcomes += outcome_label == "GOOD"
    self.all_good += bool(step_labels) and all(lab == "GOOD" for lab in step_labels)

  def add_trajectory(self, t: Trajectory) -> None:
    self.add([s.verdict.label if s.verdict is not None else None for s in t.steps],
             t.outcome.label if t.outcome is not None else None)

  def to_json(self) -> dict[str, Any]:
    return {"steps_judged": self.steps, "steps_good": self.good_steps,
            "process_good_rate": self.good_steps / self.steps if self.steps else None,
            "outcomes_judged": self.outcomes, "outcomes_good": self.good_outcomes,
            "outcome_good_rate": self.good_outcomes / self.outcomes if self.outcomes else None,
            "all_steps_good": self.all_good}


def label_counts(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
  """Label statistics: steps judged / GOOD, outcomes judged / GOOD, and the rates."""
  counts = _LabelCounts()
  for t in trajectories:
    counts.add_trajectory(t)
  return counts.to_json()


def _read_labelled(path: str, counts: _LabelCounts) -> tuple[set[tuple[str, int]], set[str]]:
  """(keys, judge identities) of a labelled file, its labels added to ``counts``; the first record of a
  key counts, as read_trajectories keeps it. Records stay dicts: only keys and labels are needed."""
  keys: set[tuple[str, int]] = set()
  judges: set[str] = set()
  for lineno, d in numbered_records(path):
    where = f"{path}:{lineno}"
    key = Trajectory.key_of(d, where)
    if key in keys:
      continue
    keys.add(key)
    try:
      verdicts = [s.get("verdict") for s in d["steps"]]
      outcome = d.get("outcome")
      given = [v for v in verdicts + [outcome] if v is not None]
      if any(v["label"] not in ("GOOD", "BAD") or not isinstance(v["judge"], str) for v in given):
        raise TypeError
      counts.add([v["label"] if v is not None else None for v in verdicts],
                 outcome["label"] if outcome is not None else None)
      judges.update(v["judge"] for v in given)
    except (KeyError, TypeError, AttributeError):
      Trajectory.from_json(d, where)  # names the bad field
      raise ValueError(f"{where}: not a labelled trajectory record") from None
  return keys, judges


def label(in_path: str | Sequence[str], out_path: str, judge: Judge, *, chunk_size: int = 16, process: bool = True,
          outcome: bool = True, allow_mixed_judges: bool = False,
          on_trajectory: Callable[[Trajectory], None] | None = None) -> dict[str, Any]:
  """Labels every trajectory of ``in_path`` not yet in ``out_path``, appending as it goes (resumable).

  The input is streamed, one chunk in memory at a time; the output is fsynced once per chunk, so a crash
  loses at most the chunk being judged or written (a torn last line is cut off by the rerun), and a rerun
  labels it again.

  Args:
    in_path: trajectories.jsonl (or a list of generate's shard files).
    out_path: labelled.jsonl; appended to.
    judge: any Judge (``swirl_jax.judges.make_judge``).
    chunk_size: trajectories judged per ``judge.label`` call: all their steps go to the backend at once
      (bigger batches for a model judge), and at most one chunk is lost on a crash.
    process / outcome: which labels to add.
    allow_mixed_judges: continue an output labelled by a judge of another identity (refused by
      default: one file should hold one judge's labels).
    on_trajectory: called after each labelled trajectory is written (once its chunk is on disk).

  Returns:
    {"labelled_file", "judge", "input", "input_duplicates", "already_labelled", "labelled_now",
     "total_labelled", "seconds", and label_counts() over the whole output file}.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  t0 = time.perf_counter()
  in_paths = [in_path] if isinstance(in_path, str) else list(in_path)
  for path in in_paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist")
  counts = _LabelCounts()
  done, judges = _read_labelled(out_path, counts) if os.path.exists(out_path) else (set(), set())
  others = judges - {judge.identity}
  if others and not allow_mixed_judges:
    raise ValueError(f"{out_path} already holds labels of judge(s) {sorted(others)}, not {judge.identity!r}; "
                     "label into a new file, or pass allow_mixed_judges=True")
  seen: set[tuple[str, int]] = set()
  inputs = dups = skipped = written = 0
  with JsonlAppender(out_path) as out:

    def flush(chunk: list[Trajectory]) -> None:
      nonlocal written
      labelled = judge.label(chunk, process=process, outcome=outcome)
      for t in labelled:
        out.write(dumps(t), sync=False)
        counts.add_trajectory(t)
        done.add(t.key)
      out.sync()  # one fsync per chunk: a crash loses at most this chunk, which a rerun labels again
      written += len(labelled)
      if on_trajectory is not None:
        for t in labelled:
          on_trajectory(t)

    chunk: list[Trajectory] = []
    for path in in_paths:
      for lineno, d in numbered_records(path):
        where = f"{path}:{lineno}"
        key = Trajectory.key_of(d, where)
        if key in seen:
          dups += 1
          continue
        seen.add(key)
        inputs += 1
        if key in done:
          skipped += 1
          continue
        chunk.append(Trajectory.from_json(d, where))
        if len(chunk) == chunk_size:
          flush(chunk)
          chunk = []
    if chunk:
      flush(chunk)
  summary = {"labelled_file": out_path, "judge": judge.identity, "input": inputs, "input_duplicates": dups,
             "already_labelled": skipped, "labelled_now": written, "total_labelled": len(done),
             "seconds": round(time.perf_counter() - t0, 3)}
  summary.update(counts.to_json())
  return summary


def filter_stage(in_path: str | Sequence[str], out_path: str, report_path: str, strategy: str,
                 equalize: int | Literal["auto"] | None = None, seed: int = 0,
                 on_unlabelled: Literal["error", "drop"] = "error") -> dict[str, Any]:
  """Keeps the labelled trajectories that pass ``strategy``; writes them and a report, atomically.

  Args:
    in_path: labelled.jsonl.
    out_path: kept trajectories (JSON Lines).
    report_path: the FilterReport as JSON (counts, reasons, every dropped trajectory and why).
    strategy: "none", "process", "outcome" or "process_and_outcome".
    equalize: keep exactly this many passing trajectories (seeded subset), "auto" = the largest count
      every strategy can meet on this file (so runs with different filters compare at one size), or
      None to keep every passing one.
    seed: the equalize subset's seed.
    on_unlabelled: "error" or "drop" trajectories lacking a label the strategy needs.

  Returns:
    The report's counts: {"kept_file", "report_file", "strategy", "total", "passed", "kept",
    "dropped_count", "equalize", "seed", "reason_counts", "input_duplicates"}.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown filter {strategy!r}; known filters: {list(STRATEGIES)}")
  trajectories, dups = read_trajectories(in_path)
  # A canonical order, whatever order generation finished in (it depends on batching and on how many
  # processes generated): the kept file, the equalized subset and the training data order follow it.
  trajectories.sort(key=lambda t: (t.question.id, t.sample_index))
  if equalize == "auto":
    equalize = equalize_target(trajectories, on_unlabelled=on_unlabelled)
  elif equalize is not None and (not isinstance(equalize, int) or equalize < 0):
    raise ValueError(f"equalize must be a count >= 0, 'auto' or None, got {equalize!r}")
  kept, report = filter_trajectories(trajectories, strategy, equalize=equalize, seed=seed,
                                     on_unlabelled=on_unlabelled)
  write_jsonl(out_path, kept)
  report.write_json(report_path)
  summary = {k: v for k, v in report.to_json().items() if k != "dropped"}
  summary.update(kept_file=out_path, report_file=report_path, input_duplicates=dups)
  return summary


def _setting(t: Trajectory, name: str, given: Any, defaults: Mapping[str, Any],
             fallback: Callable[[], Any] | None = None) -> Any:
  """An explicit argument, else what the rollout recorded in provenance, else ``defaults[name]``, else
  ``fallback``."""
  if given is not None:
    return given
  if name in t.provenance and t.provenance[name] is not None:
    return t.provenance[name]
  if name in defaults:
    return defaults[name]
  if fallback is not None:
    return fallback()
  raise ValueError(f"trajectory {t.key} does not record provenance[{name!r}]; pass {name}= to decompose_stage")


def decompose_stage(in_path: str | Sequence[str], out_path: str, task: task_prompts.Task | None = None,
                    num_demos: int | None = None, budget: int | None = None,
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes the step examples of every kept trajectory (StepExample JSON Lines), atomically.

  The states must show what the model saw when it generated: the task prompt, the demonstrations and
  the step budget. Each is what the rollout recorded in the trajectory's provenance ("task",
  "num_demos", "budget"); where provenance lacks one, ``defaults[name]`` (e.g. the run's settings), then
  ``infer_task`` / the task's step budget. An explicit argument overrides all.

  Returns:
    {"examples_file", "trajectories", "examples", "input_duplicates", "by_task", "process_labels"
    (GOOD / BAD / unlabelled counts over the examples), "max_steps"}.
  """
  trajectories, dups = read_trajectories(in_path)
  examples, by_task, labels = [], collections.Counter(), collections.Counter()
  defaults = defaults or {}
  for t in trajectories:
    t_task = _setting(t, "task", task, defaults, lambda: infer_task(t))
    if t_task not in ("math", "search"):
      raise ValueError(f"trajectory {t.key}: task must be math or search, got {t_task!r}")
    n_demos = int(_setting(t, "num_demos", num_demos, defaults))
    demos = task_prompts.DEFAULT_DEMOS[t_task][:n_demos]
    if len(demos) < n_demos:
      raise ValueError(f"trajectory {t.key}: num_demos={n_demos} but only {len(demos)} {t_task} demonstrations exist")
    t_budget = _setting(t, "budget", budget, defaults, lambda: task_prompts.step_budget(t_task))
    exs = decompose(t, t_task, demos, int(t_budget))
    examples.extend(exs)
    by_task[t_task] += len(exs)
    labels.update(ex.process_label or "unlabelled" for ex in exs)
  write_jsonl(out_path, examples)
  return {"examples_file": out_path, "trajectories": len(trajectories), "examples": len(examples),
          "input_duplicates": dups, "by_task": dict(by_task), "process_labels": dict(labels),
          "max_steps": max((len(t.steps) for t in trajectories), default=0)}
