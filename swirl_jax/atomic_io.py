"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the whole new one.

  with atomic_open("runs/x/kept.jsonl") as f:
    f.write(...)

The data goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
``path``; on any error the temporary file is removed and ``path`` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file for writing (``mode`` "w" text UTF-8, or "wb") that replaces ``path`` on exit."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
    with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(d)  # the rename itself survives a power loss only once the directory is on disk
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def current_umask() -> int:
  """The process umask (read by setting it and putting it back: Python has no getter)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:  # a platform or file system without directory handles
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
