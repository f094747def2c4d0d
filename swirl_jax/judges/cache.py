"""A content-addressed cache of judge completions, so a rerun never pays for the same request twice.

Key: sha256 over (judge identity, backend settings, prompt version, the exact request text, vote
index). Anything that can change the completion is in the key; nothing secret is (requests never hold
API keys, and identities hold no credentials).

File: JSON Lines, one record per completion, appended with flush + fsync per record, so a crash loses
at most the record being written. At start the whole file is loaded into a dict. A torn last line (a
crash mid-write) is cut off the file before anything new is appended, so it can never glue onto the
next record; any other unreadable line is skipped with a warning. The newest record of a key wins.

Record: {"key", "text", "p_good", "judge", "prompt_version", "vote"}; "text" is the completion.

Thread-safe within one process (one lock around the dict and the file). Several processes must not
append to the same file at once: in a multi-process run the others open it ``read_only`` (they load it
and keep what they judge in memory, so every process sees the same entries).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CachedCompletion:
  """A stored completion: the judge's text and, when the backend gave one, P(GOOD)."""

  text: str
  p_good: float | None = None


def cache_key(identity: str, settings: str, prompt_version: str, request_text: str, vote: int) -> str:
  """The sha256 hex digest that names one completion."""
  payload = json.dumps([identity, settings, prompt_version, request_text, int(vote)], ensure_ascii=False)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _complete_lines_end(path: str, size: int) -> int:
  """The length of ``path``'s first ``size`` bytes up to and including their last newline (0: none)."""
  with open(path, "rb") as f:
    pos = size
    while pos > 0:
      step = min(65536, pos)
      pos -= step
      f.seek(pos)
      i = f.read(step).rfind(b"\n")
      if i >= 0:
        return pos + i + 1
  return 0


class JudgeCache:
  """Completions by key, in memory and (when ``path`` is given) in an append-only JSON Lines file."""

  def __init__(self, path: str | None = None, read_only: bool = False):
    self.path = path
    self.read_only = read_only
    self._lock = threading.Lock()
    self._entries: dict[str, CachedCompletion] = {}
    self._file = None
    self.hits = 0
    self.misses = 0
    self.skipped_lines = 0
    if path is not None:
      self._load(path)

  def _load(self, path: str) -> None:
    if not os.path.exists(path):
      return
    # Line by line, never the whole file at once: a big cache would otherwise be held twice besides the dict.
    size = os.path.getsize(path)  # one snapshot: what is appended after it is not taken for a torn line
    cut = _complete_lines_end(path, size)
    if cut < size and not self.read_only:  # (a reader ignores it: the writer may be mid-line)
      log.warning("Judge cache %s: dropping a torn last line (%d bytes) left by an interrupted write.",
                  path, size - cut)
      with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
      read = 0
      for lineno, raw in enumerate(f, 1):
        read += len(raw)
        if read > cut or not raw.endswith(b"\n"):
          break  # the torn tail (or what a writer appended after it)
        if not raw.strip():
          continue
        try:
          rec = json.loads(raw.decode("utf-8"))
          p = rec.get("p_good")
          self._entries[str(rec["key"])] = CachedCompletion(text=str(rec["text"]),
                                                            p_good=None if p is None else float(p))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
          self.skipped_lines += 1
          log.warning("Judge cache %s:%d: skipping an unreadable record (%s).", path, lineno, type(e).__name__)

  def __len__(self) -> int:
    with self._lock:
      return len(self._entries)

  def __contains__(self, key: str) -> bool:
    with self._lock:
      return key in self._entries

  def get(self, key: str) -> CachedCompletion | None:
    """The stored completion for ``key`` (counted as a hit), or None (a miss)."""
    with self._lock:
      entry = self._entries.get(key)
      if entry is None:
        self.misses += 1
      else:
        self.hits += 1
      return entry

  def put(self, key: str, completion: CachedCompletion, **meta: Any) -> None:
    """Stores a completion; ``meta`` (judge, prompt_version, vote) is written beside it for people."""
    record = {"key": key, "text": completion.text, "p_good": completion.p_good, **meta}
    line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    with self._lock:
      self._entries[key] = completion
      if self.path is None or self.read_only:
        return
      if self._file is None:
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
      self._file.write(line)
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    with self._lock:
      if self._file is not None:
        self._file.close()
        self._file = None

  def __enter__(self) -> "JudgeCache":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
