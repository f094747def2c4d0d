"""Training metrics: a JSON Lines log, TensorBoard event files, and a console progress bar with ETA.

TensorBoard files are written here directly (TFRecord framing + the few protobuf fields of a scalar
``Event``), so logging needs neither TensorFlow nor tensorboardX; ``tensorboard --logdir DIR`` reads
them. Only scalars are written: that is all the training loop logs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, Iterator, Mapping, TextIO

from swirl_jax.pipeline.jsonl import JsonlAppender, numbered_records

# --- TensorBoard event files ------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord framing (records are small: pure Python is fine)."""
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # protobuf int64 on the wire: two's complement
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(num: int, wire: int) -> bytes:
  return _varint((num << 3) | wire)


def _len_field(num: int, payload: bytes) -> bytes:
  return _field(num, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: Mapping[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """A serialized tensorflow ``Event``: wall_time (1), step (2), file_version (3) or a Summary (5)
  of ``Value``s with tag (1) and simple_value (2)."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
  if file_version is not None:
    out += _len_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _len_field(1, _len_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _len_field(5, values)
  return out


def frame_record(data: bytes) -> bytes:
  """TFRecord framing: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
  """Appends scalar events to ``directory/events.out.tfevents.<time>.<host>``."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(directory, name)
    self._f = open(self.path, "ab")
    self._f.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if finite:
      self._f.write(frame_record(encode_event(time.time(), step, finite)))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def read_records(path: str) -> Iterator[bytes]:
  """The data of every TFRecord of a file, checking both CRCs (for tests and tools)."""
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if not head:
        return
      (n,) = struct.unpack("<Q", head[:8])
      if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
        raise ValueError(f"{path}: corrupt record length")
      data = f.read(n)
      if struct.unpack("<I", f.read(4))[0] != _masked_crc(data):
        raise ValueError(f"{path}: corrupt record data")
      yield data


# --- The metrics log --------------------------------------------------------------------------------


class MetricsLogger:
  """Writes each step's metrics to ``directory/metrics.jsonl`` and (optionally) TensorBoard.

  A resumed run appends to the same JSON Lines file; lines of steps after the resume point (written by
  the interrupted run after its last checkpoint) are left in place and superseded by later lines of
  the same step. A last line a crash tore is cut off first (appended to, it would glue the next step's
  record onto it and make the file unreadable).
  """

  def __init__(self, directory: str, tensorboard: bool = True):
    os.makedirs(directory, exist_ok=True)
    self.jsonl_path = os.path.join(directory, "metrics.jsonl")
    self._jsonl = JsonlAppender(self.jsonl_path)
    self._tb = EventWriter(os.path.join(directory, "tensorboard")) if tensorboard else None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    self._jsonl.write(json.dumps({"step": step, **metrics}, sort_keys=True))  # (fsynced: a step takes seconds)
    if self._tb is not None:
      self._tb.scalars(step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
      self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl, the last one of each step kept (a resumed run rewrites steps); a torn
  last line is ignored."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no metrics log at {path}")
  by_step: dict[int, dict[str, Any]] = {}
  for _, rec in numbered_records(path):
    by_step[rec["step"]] = rec
  return [by_step[k] for k in sorted(by_step)]


# --- Console progress --------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  s = int(seconds)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
  """``[#####.....] 120/500 24% loss=0.12 reward=0.80 | 2.1 s/it, ETA 13:20`` on one console line.

  On a terminal the line is redrawn in place; otherwise (logs, CI) a line is printed at most every
  ``interval_s`` seconds and at the end. The rate counts only steps run in this process (a resumed
  run does not credit itself with the steps before the resume).
  """

  def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, width: int = 24,
               interval_s: float = 10.0, keys: tuple[str, ...] = ("loss", "mean_reward", "kl")):
    self.total, self.start, self.width, self.keys = total, start, width, keys
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval_s = interval_s
    self._t0 = time.perf_counter()
    self._last_print = -float("inf")

  def line(self, step: int, metrics: Mapping[str, Any]) -> str:
    frac = min(step / self.total, 1.0) if self.total else 1.0
    filled = int(round(frac * self.width))
    done = step - self.start
    elapsed = time.perf_counter() - self._t0
    rate = elapsed / done if done > 0 else float("nan")
    eta = rate * (self.total - step) if done > 0 else float("nan")
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.keys
                     if isinstance(metrics.get(k), (int, float)))
    return (f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total} {frac:4.0%} {shown} | "
            f"{rate:.2f} s/it, elapsed {_duration(elapsed)}, ETA {_duration(eta)}")

  def update(self, step: int, metrics: Mapping[str, Any]) -> None:
    now = time.perf_counter()
    final = step >= self.total
    if self.tty:
      self.stream.write("\r" + self.line(step, metrics) + ("\n" if final else ""))
    elif final or now - self._last_print >= self.interval_s:
      self.stream.write(self.line(step, metrics) + "\n")
    else:
      return
    self._last_print = now
    self.stream.flush()

  def close(self) -> None:
    if self.tty:
      self.stream.write("\n")
      self.stream.flush()
