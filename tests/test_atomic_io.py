"""atomic_open: the old file survives a failed write, and no temporary file is left behind."""

import os

import pytest

from swirl_jax.atomic_io import atomic_open


def test_replaces_whole_file_or_nothing(tmp_path):
  path = tmp_path / "sub" / "report.json"
  with atomic_open(path) as f:
    f.write("old\n")
  assert path.read_text() == "old\n"
  with pytest.raises(RuntimeError):
    with atomic_open(path) as f:
      f.write("half of the new")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == "old\n"
  with atomic_open(path, "wb") as f:
    f.write(b"new\n")
  assert path.read_bytes() == b"new\n"
  assert os.listdir(path.parent) == ["report.json"]
  with pytest.raises(ValueError, match="mode"):
    with atomic_open(path, "a"):
      pass


def test_written_files_follow_the_umask(tmp_path):
  """mkstemp creates 0600; a file written atomically gets what open() would give (0644 under umask 022),
  so other users and services can read reports and exported models."""
  old = os.umask(0o022)
  try:
    with atomic_open(tmp_path / "a.jsonl") as f:
      f.write("{}\n")
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
