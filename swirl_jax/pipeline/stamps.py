"""What a finished pipeline stage was made from, so a rerun redoes a stage whose inputs changed.

A stage's stamp (``WORKDIR/stages/NAME.json``) holds a fingerprint of its inputs: the settings it reads
and the digests of the files it reads (or the checkpoint step it starts from). ``pipeline`` skips a
stage only when its output is complete and its stamp matches what the stage would be made from now;
otherwise the stage runs again (filter, eval, export) or refuses (train, whose checkpoints a change of
its examples would mix with new ones).

A path inside the workdir (the run's checkpoints as the evaluated or exported policy) is recorded relative
to it, as ``$WORKDIR/...``, so a workdir moved or copied elsewhere (or named by another spelling) keeps its
finished stages.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from swirl_jax.atomic_io import atomic_open


def file_digest(path: str) -> str:
  """sha256 of a file's bytes ("missing" when it does not exist)."""
  if not os.path.exists(path):
    return "missing"
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "stages", f"{name}.json")


def read(workdir: str, name: str) -> dict[str, Any] | None:
  """The inputs recorded when stage ``name`` last finished (None: never, or before stamps existed), as
  ``plain`` gives them (a record of an earlier version holding this workdir's absolute paths reads the same
  as one written now)."""
  try:
    with open(_path(workdir, name), encoding="utf-8") as f:
      recorded = json.load(f)["inputs"]
  except (FileNotFoundError, json.JSONDecodeError, KeyError):
    return None
  return plain(recorded, workdir)


def write(workdir: str, name: str, inputs: dict[str, Any]) -> None:
  with atomic_open(_path(workdir, name)) as f:
    json.dump({"stage": name, "inputs": plain(inputs, workdir)}, f, indent=1, sort_keys=True)


def clear(workdir: str, name: str) -> None:
  """Removes stage ``name``'s stamp: a stage run alone removes it before it changes its output, so a
  pipeline never skips it on a record of what the output held before."""
  try:
    os.remove(_path(workdir, name))
  except FileNotFoundError:
    pass


def matches(workdir: str, name: str, inputs: dict[str, Any]) -> bool:
  return read(workdir, name) == plain(inputs, workdir)


def changed(workdir: str, name: str, inputs: dict[str, Any]) -> list[str]:
  """The top-level inputs that differ from the stamp (all of them when there is none)."""
  old, new = read(workdir, name) or {}, plain(inputs, workdir)
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def setting_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
  """Every leaf of two settings trees that differs, as "dotted.name: old -> new" (for error messages)."""
  def leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
      return {prefix[:-1]: d}
    out = {}
    for k, v in d.items():
      out.update(leaves(v, f"{prefix}{k}."))
    return out

  old, new = leaves(_plain(old or {})), leaves(_plain(new))
  missing = "(not set)"
  return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in sorted(set(old) | set(new))
          if old.get(k, missing) != new.get(k, missing)]


def _plain(x: Any) -> Any:
  """JSON's view of ``x`` (tuples become lists), so a stamp read back compares equal."""
  return json.loads(json.dumps(x, sort_keys=True, default=str))


def plain(inputs: Any, workdir: str) -> Any:
  """``inputs`` as a record holds them: JSON's view, and every string that is a path inside ``workdir`` (as
  spelt, or absolute) rewritten as ``$WORKDIR/...``."""
  roots = {os.path.normpath(workdir), os.path.abspath(workdir)}

  def rel(s: str) -> str:
    if not s:
      return s
    norm = os.path.normpath(s)  # ("./run/checkpoints", "run//checkpoints": the same path)
    for root in roots:
      if norm == root:
        return "$WORKDIR"
      if norm.startswith(root.rstrip(os.sep) + os.sep):
        return "$WORKDIR/" + os.path.relpath(norm, root)
    return s

  def walk(x: Any) -> Any:
    if isinstance(x, dict):
      return {k: walk(v) for k, v in x.items()}
    if isinstance(x, list):
      return [walk(v) for v in x]
    return rel(x) if isinstance(x, str) else x

  return walk(_plain(inputs))
