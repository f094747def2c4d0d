"""Export to a Hugging Face checkpoint directory that transformers loads as Gemma2ForCausalLM or
Gemma3ForCausalLM: config.json, safetensors (shards + index above max_shard_bytes), tokenizer files,
generation_config.json.

Weights go through the same name/layout table as import (checkpoints/layout.py), so an export followed
by an import is the identity. The directory is written under a temporary name and renamed into place,
so a crash never leaves a half-written checkpoint where a finished one is expected.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np

from swirl_jax.atomic_io import make_temp_dir, remove_stale_temps
from swirl_jax.checkpoints.layout import entries
from swirl_jax.checkpoints.safetensors_io import save_file
from swirl_jax.models.config import ModelConfig, to_hf_config

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def export_hf(cfg: ModelConfig, weights: dict[str, np.ndarray], out_dir: str, tokenizer=None,
              dtype: str = "float32", max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False) -> str:
  """Writes ``weights`` (our path -> array, e.g. ``build.model_weights(model)``) as a HF checkpoint.

  Args:
    cfg: the model's configuration.
    weights: every parameter in our layout.
    out_dir: the directory to create.
    tokenizer: a swirl_jax Tokenizer whose files are saved beside the weights (None: no tokenizer).
    dtype: storage dtype of the exported tensors: float32, bfloat16 or float16.
    max_shard_bytes: safetensors shards are cut at this size (an index file maps names to shards).
    overwrite: replace an existing ``out_dir``; otherwise an existing directory is an error.
  """
  if dtype not in _NP_DTYPES:
    raise ValueError(f"export dtype {dtype!r}; choose one of {sorted(_NP_DTYPES)}")
  if os.path.exists(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    if not _is_replaceable(out_dir):
      raise FileExistsError(f"{out_dir} exists and is not an earlier export (config.json + *.safetensors, or an "
                            "empty directory); refusing to delete it: export into a new directory")
  parent = os.path.dirname(os.path.abspath(out_dir))
  tmp = make_temp_dir(parent, "export")  # a killed export's folder is removed by the next one
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for e in entries(cfg):
      if e.path not in weights:
        raise KeyError(f"export: no weight for parameter {e.path!r}")
      arr = np.ascontiguousarray(e.to_hf(np.asarray(weights[e.path], np.float32)).astype(_NP_DTYPES[dtype]))
      if size and size + arr.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][e.hf] = arr
      size += arr.nbytes
    meta = {"format": "pt"}  # transformers checks this key on load
    if len(shards) == 1:
      save_file(shards[0], os.path.join(tmp, "model.safetensors"), meta)
    else:
      weight_map, total = {}, 0
      for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(tmp, name), meta)
        weight_map.update({k: name for k in shard})
        total += sum(a.nbytes for a in shard.values())
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    hf_cfg = to_hf_config(cfg)
    hf_cfg["torch_dtype"] = dtype
    if tokenizer is not None:
      hf_cfg.update(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id)
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_cfg, f, indent=1)
    gen = {"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1]}
    if tokenizer is not None:
      tokenizer.save(tmp)
      gen = {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
             "eos_token_id": [tokenizer.eos_id, tokenizer.end_of_turn_id]}
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
      json.dump(gen, f, indent=1)
    old = None
    if os.path.exists(out_dir):  # set aside, not deleted, until the new export is in place
      old = make_temp_dir(parent, "replaced-export")
      os.replace(out_dir, os.path.join(old, "hf"))
    os.replace(tmp, out_dir)
    if old:
      shutil.rmtree(old)
    # an export killed between the two renames left the old one set aside (it may be tens of GB)
    remove_stale_temps(parent, "replaced-export")
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return out_dir


def _is_replaceable(path: str) -> bool:
  """An empty directory, or one holding an export: config.json and safetensors weights."""
  if not os.path.isdir(path):
    return False
  names = os.listdir(path)
  return not names or ("config.json" in names and any(n.endswith(".safetensors") for n in names))
