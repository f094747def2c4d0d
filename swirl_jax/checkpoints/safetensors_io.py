"""Reading and writing safetensors files with numpy, bfloat16 included.

The safetensors format is an 8-byte little-endian header length, a JSON header of
``{name: {dtype, shape, data_offsets}}`` and the raw bytes. Reading through ``np.memmap`` keeps a
multi-GB shard out of memory until a tensor is asked for; numpy has no bfloat16, so ml_dtypes (a JAX
dependency) provides it. The ``safetensors`` package is the reference for these files in our tests.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

from swirl_jax.atomic_io import atomic_open

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy read access to one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
      (n,) = struct.unpack("<Q", raw)
      size = os.fstat(f.fileno()).st_size
      if n > size - 8:  # checked before reading: a corrupt length would ask for exabytes
        raise ValueError(f"{path}: corrupt safetensors header (length {n} > the file's {size - 8} bytes left)")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
      raise ValueError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header = header
    self._offset = 8 + n
    for name, info in header.items():
      self._check(name, info, size - self._offset)
    self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size > self._offset else np.zeros(0, np.uint8)

  def _check(self, name: str, info, data_bytes: int) -> None:
    """Each entry's dtype, shape and offsets agree and lie inside the file (a truncated file fails here,
    naming the file and tensor, not later in a reshape)."""
    try:
      dtype, shape, (start, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
      raise ValueError(f"{self.path}: tensor {name!r}: corrupt header entry {info!r}") from None
    if dtype not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
    if not 0 <= start <= end or end - start != want:
      raise ValueError(f"{self.path}: tensor {name!r}: data_offsets {[start, end]} do not hold {dtype} {shape}")
    if end > data_bytes:
      raise ValueError(f"{self.path}: tensor {name!r} ends at byte {end} of the data, which has {data_bytes} "
                       "(truncated file?)")

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, name: str) -> np.ndarray:
    if name not in self.header:
      raise KeyError(f"{self.path}: no tensor {name!r}")
    info = self.header[name]
    start, end = info["data_offsets"]
    buf = self._mm[self._offset + start:self._offset + end]
    return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``tensors`` to ``path`` atomically (a temp file renamed into place)."""
  header, offset, order = {}, 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    order.append(arr)
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes, as the reference writer does
  with atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in order:
      f.write(arr.tobytes())


class ShardedSafetensors:
  """All tensors of a Hugging Face checkpoint directory (single file or index + shards)."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      try:
        with open(index, encoding="utf-8") as f:
          weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
          raise TypeError("weight_map is not an object")
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
      files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in sorted(set(weight_map.values()))}
      self._where = {name: files[fn] for name, fn in weight_map.items()}
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self._where = {name: f for name in f.keys()}
    else:
      raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")

  def keys(self) -> Iterable[str]:
    return self._where.keys()

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(name)
    return self._where[name].get(name)
