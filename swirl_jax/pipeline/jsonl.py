"""Crash-safe JSON Lines output: append one record per line, flushed and fsynced, resumable.

Each record is fsynced as it is written, or, with ``write(line, sync=False)``, a batch of them at the next
``sync()``: a crash then loses at most the records written since the last sync, which the writer must be
able to redo (the label stage judges its lost chunk again).

A process killed mid-write can leave a torn last line; ``JsonlAppender`` cuts it off before appending,
so a rerun sees only whole records and continues after them. A last line without its newline that is a
whole JSON object (a file written by another tool, or a crash between the record and its newline) is a
record, not a torn one: it is read, and the appender completes it with the newline.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


def whole_record(line: str | bytes) -> bool:
  """A line (without its newline) that holds one whole JSON object."""
  try:
    return isinstance(json.loads(line), dict)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return False


def _cut_torn_tail(path: str) -> None:
  """Truncates ``path`` after its last newline (a partial record from a crash), or adds the newline a
  whole last record lacks."""
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
        break
    else:
      i = -1
    if i == len(tail) - 1:
      return
    if whole_record(tail[i + 1:]):
      f.seek(0, os.SEEK_END)
      f.write(b"\n")
    else:
      f.truncate(pos + i + 1)


def read_records(path: str) -> Iterator[dict[str, Any]]:
  """Whole records of a JSON Lines file; a torn last line (no newline, not a whole JSON object) is ignored."""
  for _, record in numbered_records(path):
    yield record


def numbered_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, record) of every whole record of a JSON Lines file, for errors that name the line.

  Read as bytes and decoded line by line: a crash can cut the last record inside a multi-byte character
  (records are written with ``ensure_ascii=False``), and that torn line is ignored like any other, while
  a line that is not UTF-8 before the last is an error naming it. Lines end at LF, CRLF or a bare CR, as
  ``swirl_jax.data.formats`` (and text mode) split them.
  """
  if not os.path.exists(path):
    return
  lineno = 0
  with open(path, "rb") as f:
    for raw in f:  # split at LF; CRs are split below
      ended = raw.endswith((b"\n", b"\r"))  # only the file's last line may lack its end
      body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if ended else raw
      parts = body.split(b"\r")  # a CR byte is never inside a UTF-8 character
      for k, part in enumerate(parts):
        lineno += 1
        last_unended = not ended and k == len(parts) - 1
        try:
          line = part.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
          if last_unended:
            return  # torn by a crash inside a character; JsonlAppender removes it
          raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
        if last_unended and not whole_record(line):
          return  # torn by a crash; JsonlAppender removes it
        if line.strip():
          try:
            yield lineno, json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


class JsonlAppender:
  """Appends lines durably: each write is flushed and fsynced before ``write`` returns, unless it is
  written with ``sync=False``; then it is durable once ``sync()`` (or ``close()``) returns."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path):
      _cut_torn_tail(path)
    self.path = path
    self._f = open(path, "a", encoding="utf-8")
    self._unsynced = False

  def write(self, line: str, sync: bool = True) -> None:
    self._f.write(line + "\n")
    self._unsynced = True
    if sync:
      self.sync()

  def sync(self) -> None:
    """Flushes and fsyncs what was written since the last sync."""
    if self._unsynced:
      self._f.flush()
      os.fsync(self._f.fileno())
      self._unsynced = False

  def close(self) -> None:
    if not self._f.closed:
      self.sync()
      self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
