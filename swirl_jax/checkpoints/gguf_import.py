"""Importing Gemma 2 / Gemma 3 weights from a GGUF file, dequantized with the ``gguf`` package.

llama.cpp stores Gemma's RMSNorm weights with the +1 folded in (it multiplies by w, HF by 1 + w), so we
subtract 1 on import. BF16 and quantized tensors (Q4_K, Q5_0, Q6_K, Q8_0, ...) are dequantized to float32.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from swirl_jax.checkpoints.layout import entries
from swirl_jax.models.config import ModelConfig, from_gguf_metadata

# Stored as numbers the reader hands back as such; everything else (BF16, which the reader gives as raw
# bytes, and the quantized types) goes through gguf's dequantize.
_PLAIN = ("F32", "F16", "F64")


def gguf_metadata(reader) -> dict[str, Any]:
  """GGUF key-values as Python values (arrays of strings as lists)."""
  meta = {}
  for key, field in reader.fields.items():
    try:
      meta[key] = field.contents()
    except Exception:  # pylint: disable=broad-except  -- exotic field types we never need
      continue
  return meta


def _can_dequantize(gguf, kind) -> bool:
  """Whether ``gguf.quants.dequantize`` handles tensors of ``kind`` (some types it lists it cannot read)."""
  try:
    cls = gguf.quants._type_traits.get(kind)  # noqa: SLF001 - the registry dequantize itself consults
  except AttributeError:  # another gguf version: left to dequantize to say
    return True
  return cls is not None


def read_gguf(path: str, **overrides) -> tuple[ModelConfig, Callable[[str], np.ndarray], dict[str, Any]]:
  """(config, fetch, metadata) for a GGUF file; ``fetch(our_path)`` returns float32 in our layout."""
  import gguf

  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader raises bare ValueErrors/struct errors on corrupt files
    raise ValueError(f"{path}: cannot read as GGUF ({type(e).__name__}: {e})") from None
  meta = gguf_metadata(reader)
  cfg = from_gguf_metadata(meta, **overrides)
  tensors = {t.name: t for t in reader.tensors}
  table = {e.path: e for e in entries(cfg)}
  missing = [e.gguf for e in table.values() if e.gguf not in tensors]
  if missing:
    raise ValueError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:5]}")
  for e in table.values():  # found now, naming the tensor, not when the model is built
    kind = tensors[e.gguf].tensor_type
    if kind.name not in _PLAIN and not _can_dequantize(gguf, kind):
      raise ValueError(f"{path}: tensor {e.gguf} has type {kind.name}, which the gguf package cannot "
                       "dequantize; convert the model with another quantisation (e.g. Q8_0, Q4_K_M, BF16)")
  if "output.weight" in tensors:
    # llama.cpp's Gemma computes logits with it; our model ties the LM head to token_embd (as hf_import
    # refuses an untied lm_head)
    raise ValueError(f"{path}: has a separate output.weight (an untied LM head); swirl_jax's Gemma ties the "
                     "LM head to the embedding (token_embd.weight)")

  def fetch(name: str) -> np.ndarray:
    e = table[name]
    t = tensors[e.gguf]
    if t.tensor_type.name in _PLAIN:
      arr = np.asarray(t.data, dtype=np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
    else:
      arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    if e.is_norm:
      arr = arr - 1.0
    return e.to_ours(arr)

  return cfg, fetch, meta
