"""Stage 1, generate: K trajectories per question, appended to a JSON Lines file, resumable.

Each finished trajectory is written as one line, flushed and fsynced; a rerun after a crash or Ctrl-C
reads the complete records, skips their (question id, sample index) keys and continues, so nothing is
duplicated or lost. With several JAX processes each takes every n-th question and writes its own
shard file.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

from swirl_jax.atomic_io import atomic_open
from swirl_jax.pipeline.jsonl import JsonlAppender, whole_record, numbered_records
from swirl_jax.sampling.rollout import Rollout
from swirl_jax.types import Question, Trajectory, dumps


def shard_path(path: str, process_index: int, process_count: int) -> str:
  if process_count == 1:
    return path
  root, ext = os.path.splitext(path)
  return f"{root}-{process_index:05d}-of-{process_count:05d}{ext}"


def done_keys(path: str) -> set[tuple[str, int]]:
  """(question id, sample index) of every whole record of ``path``; a record without them is a RecordError
  naming its line."""
  return {Trajectory.key_of(r, f"{path}:{lineno}") for lineno, r in numbered_records(path)}


def check_questions(path: str, questions: Sequence[Question]) -> None:
  """Refuses a trajectories file of other questions: one whose record holds another question under a current
  id (an edited data file), or none of whose questions is among ``questions`` (another
  dataset). For a workdir without a generate stage record (made by hand, or before records existed), where
  the settings cannot be compared; reads the file once."""
  current = {q.id: json.loads(json.dumps(q.to_json())) for q in questions}
  overlap = seen = 0
  for lineno, r in numbered_records(path):
    qid, _ = Trajectory.key_of(r, f"{path}:{lineno}")
    seen += 1
    if qid in current:
      overlap += 1
      if r["question"] != current[qid]:
        raise ValueError(f"{path}:{lineno}: the trajectory of question {qid!r} was generated for another "
                         f"question than this run's {qid!r} (other data settings or an edited data file); use a "
                         f"new workdir, or remove {path} (and what was made from it) to generate again")
  if seen and not overlap:
    raise ValueError(f"{path}: none of its {seen} trajectories is of this run's questions (other data settings "
                     f"or another dataset); use a new workdir, or remove {path} (and what was made from it) to "
                     "generate again")


def generate(rollout: Rollout, questions: Sequence[Question], out_path: str, *, process_index: int = 0,
             process_count: int = 1, on_trajectory: Callable[[Trajectory], None] | None = None) -> str:
  """Writes every missing (question, sample) trajectory to ``out_path`` (or this process's shard)."""
  path = shard_path(out_path, process_index, process_count)
  done = done_keys(path)
  mine = questions[process_index::process_count]
  jobs = [(q, k) for q in mine for k in range(rollout.cfg.samples_per_question) if (q.id, k) not in done]
  with JsonlAppender(path) as out:
    for traj in rollout.run_jobs(jobs):
      out.write(dumps(traj))
      if on_trajectory:
        on_trajectory(traj)
  return path


def merge_shards(out_path: str, process_count: int) -> str:
  """Concatenates the processes' shard files into ``out_path`` (atomically; run by one process).

  Whole lines are copied as they are (generate wrote them): no record is parsed but a last line without its
  newline, which is kept (newline added) when it is a whole record and dropped when torn, as
  ``numbered_records`` reads it. Blank lines are left out. A malformed line within a shard (not written by
  generate) is copied too and reported, with its line in the merged file, where that file is read.
  """
  if process_count == 1:
    return out_path
  with atomic_open(out_path, "wb") as out:
    for i in range(process_count):
      path = shard_path(out_path, i, process_count)
      if not os.path.exists(path):
        continue
      with open(path, "rb") as f:
        for line in f:
          if not line.endswith(b"\n"):
            if whole_record(line):
              out.write(line + b"\n")
            break
          if line.strip():
            out.write(line)
  return out_path
