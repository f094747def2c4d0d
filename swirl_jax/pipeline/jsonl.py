"""Crash-safe JSON Lines output: append one record per line, flushed and fsynced, resumable.

A process killed mid-write can leave a torn last line; ``open_for_append`` cuts it off before appending,
so a rerun sees only whole records and continues after them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


def _cut_torn_tail(path: str) -> None:
  """Truncates ``path`` after its last newline (a partial record from a crash)."""
  with open(path, "rb+") as f:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
      return
    pos, tail = size, b""
    while pos > 0:
      step = min(65536, pos)
      pos -= step
      f.seek(pos)
      tail = f.read(step) + tail
      i = tail.rfind(b"\n")
      if i >= 0:
        f.truncate(pos + i + 1)
        return
    f.truncate(0)


def read_records(path: str) -> Iterator[dict[str, Any]]:
  """Whole records of a JSON Lines file; a torn last line (no newline) is ignored."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.endswith("\n"):
        return  # torn by a crash; open_for_append removes it
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


class JsonlAppender:
  """Appends lines durably: each write is flushed and fsynced before ``write`` returns."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
      _cut_torn_tail(path)
    self.path = path
    self._f = open(path, "a", encoding="utf-8")

  def write(self, line: str) -> None:
    self._f.write(line + "\n")
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
