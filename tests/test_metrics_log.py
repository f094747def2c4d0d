"""The training metrics log (train_logs/metrics.jsonl) after a crash tore its last line."""

from __future__ import annotations

import json

import pytest

from swirl_jax.training.metrics import MetricsLogger, read_metrics


def test_a_torn_last_line_is_cut_before_the_resumed_run_appends(tmp_path):
  """The logger appended to a torn last line: the next step's record was glued onto it and read_metrics
  raised JSONDecodeError on the whole log from then on."""
  log = MetricsLogger(str(tmp_path), tensorboard=False)
  for step in (1, 2, 3):
    log.write(step, {"loss": 1.0 / step})
  log.close()
  path = tmp_path / "metrics.jsonl"
  data = path.read_bytes()
  path.write_bytes(data[:-10])  # a crash (power loss, full disk) mid-record
  assert [r["step"] for r in read_metrics(str(path))] == [1, 2]  # the torn line is ignored
  log = MetricsLogger(str(tmp_path), tensorboard=False)  # the resumed run (from a step-2 checkpoint)
  log.write(3, {"loss": 0.3})
  log.write(4, {"loss": 0.25})
  log.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(str(path))] == [(1, 1.0), (2, 0.5), (3, 0.3), (4, 0.25)]
  assert [json.loads(line)["step"] for line in path.read_text(encoding="utf-8").splitlines()] == [1, 2, 3, 4]
  with pytest.raises(FileNotFoundError, match="no metrics log"):
    read_metrics(str(tmp_path / "nothing.jsonl"))
