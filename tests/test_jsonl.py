"""JSON Lines reading and crash-safe appending: a torn last line is dropped, a whole one is kept."""

import json

from swirl_jax.pipeline.jsonl import JsonlAppender, read_records


def test_a_whole_last_record_without_newline_is_kept(tmp_path):
  """A file written by "\\n".join(...) (or an editor) has no newline after its last record: that record
  counts, and appending puts the next record on its own line."""
  path = tmp_path / "x.jsonl"
  path.write_text("\n".join(json.dumps({"i": i}) for i in range(3)))
  assert [r["i"] for r in read_records(str(path))] == [0, 1, 2]
  with JsonlAppender(str(path)) as f:
    f.write(json.dumps({"i": 3}))
  assert [r["i"] for r in read_records(str(path))] == [0, 1, 2, 3]
  assert path.read_text().count("\n") == 4


def test_a_torn_last_record_is_dropped_and_cut_before_appending(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"i": 0}\n{"i": 1}\n{"i": 2, "text": "cut by a cra')
  assert [r["i"] for r in read_records(str(path))] == [0, 1]
  with JsonlAppender(str(path)) as f:
    f.write(json.dumps({"i": 2}))
  assert path.read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'
  path.write_text('{"i": 0')  # a single torn line
  assert list(read_records(str(path))) == []
  JsonlAppender(str(path)).close()
  assert path.read_text() == ""
