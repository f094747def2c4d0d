"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the whole new one.

  with atomic_open("runs/x/kept.jsonl") as f:
    f.write(...)

The data goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
``path``; on any error the temporary file is removed and ``path`` is left as it was.

A process killed outright (SIGKILL, out of memory, a pre-empted VM) removes nothing, so every temporary
file and folder is named after its writer (``.KIND-PID@HOST+PIDNS@random``) and the next write into that
directory removes the ones whose process no longer runs (``remove_stale_temps``): a killed conversion or
export leaves no gigabyte-sized folder behind for good. A pid means something only on its host and in its
PID namespace (containers sharing a host name and a volume each number their processes from 1), so only
entries of this host and namespace are ever judged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
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
  remove_stale_temps(d)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=temp_prefix(), suffix=os.path.splitext(path)[1])
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


def make_temp_dir(parent: str | os.PathLike, kind: str = "tmp") -> str:
  """A new folder in ``parent`` (created if missing) named after this process, readable as the umask allows.

  Stale folders of the same kind left there by killed processes of this host are removed first.
  """
  os.makedirs(parent, exist_ok=True)
  remove_stale_temps(parent, kind)
  tmp = tempfile.mkdtemp(dir=parent, prefix=temp_prefix(kind))
  os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: others could not read a shared cache
  return tmp


def temp_prefix(kind: str = "tmp") -> str:
  """``.KIND-PID@HOST+PIDNS@``: the name start of this process's temporary files and folders."""
  return f".{kind}-{os.getpid()}@{_host()}@"


def remove_stale_temps(directory: str | os.PathLike, kind: str = "tmp") -> list[str]:
  """Removes the temporary files and folders of ``kind`` in ``directory`` whose writer, a process of this
  host and PID namespace, no longer runs; returns their names. Other hosts' and namespaces' entries (a
  shared file system, another container) are left alone."""
  pattern = re.compile(rf"\.{re.escape(kind)}-(\d+)@{re.escape(_host())}@")
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  removed = []
  for name in names:
    m = pattern.match(name)
    if not m or _running(int(m.group(1))):
      continue
    path = os.path.join(directory, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)  # another process may be removing it at the same time
    else:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    removed.append(name)
  return removed


def _host() -> str:
  """This host's name and PID namespace (``HOST+INODE``; ``HOST+0`` where /proc has no namespaces)."""
  try:
    ns = os.stat("/proc/self/ns/pid").st_ino
  except OSError:
    ns = 0
  host = re.sub(r"[@/+\s]", "_", socket.gethostname()) or "localhost"
  return f"{host}+{ns}"


def _running(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # PermissionError: it runs, as another user
    return True
  return True


def current_umask() -> int:
  """The process umask: from /proc on Linux (no side effect), else by setting it and putting it back
  (Python has no getter; that briefly changes it for every thread)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
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
