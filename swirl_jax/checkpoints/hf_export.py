"""Export to a Hugging Face checkpoint directory that transformers loads as Gemma2ForCausalLM or
Gemma3ForCausalLM: config.json, safetensors (shards + index above max_shard_bytes), tokenizer files,
generation_config.json.

Weights go through the same name/layout table as import (checkpoints/layout.py), so an export followed
by an import is the identity. The directory is written under a temporary name and renamed into place,
so a crash never leaves a half-written checkpoint where a finished one is expected.

Every export lists the files it wrote in ``swirl_jax_export.json``. Only such a folder (or an empty one) is
ever replaced, and the files it holds that the export did not write (a model card, a chat template a user
added) are copied into the new export: a Hugging Face folder that merely looks like an export (a downloaded
base model) is never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import ml_dtypes
import numpy as np

from swirl_jax.atomic_io import make_temp_dir, remove_stale_temps
from swirl_jax.checkpoints.layout import entries
from swirl_jax.checkpoints.safetensors_io import save_file
from swirl_jax.models.config import ModelConfig, to_hf_config

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
MARKER = "swirl_jax_export.json"  # the files an export wrote: what a later export may replace
# What exports made before the marker wrote (replace_unmarked): weights, configs, tokenizer files.
_UNMARKED_EXPORT_FILE = re.compile(r"(config|generation_config|special_tokens_map|added_tokens)\.json|tokenizer.*|"
                                   r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


def export_hf(cfg: ModelConfig, weights: dict[str, np.ndarray], out_dir: str, tokenizer=None,
              dtype: str = "float32", max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False,
              replace_unmarked: bool = False) -> str:
  """Writes ``weights`` (our path -> array, e.g. ``build.model_weights(model)``) as a HF checkpoint.

  Args:
    cfg: the model's configuration.
    weights: every parameter in our layout.
    out_dir: the directory to create.
    tokenizer: a swirl_jax Tokenizer whose files are saved beside the weights (None: no tokenizer).
    dtype: storage dtype of the exported tensors: float32, bfloat16 or float16.
    max_shard_bytes: safetensors shards are cut at this size (an index file maps names to shards).
    overwrite: replace an existing ``out_dir`` that holds an earlier export (its MARKER) or nothing; the
      files there that the earlier export did not write are kept. Otherwise an existing path is an error.
    replace_unmarked: also replace an export made before the marker (config.json and safetensors weights;
      its files other than weights, configs and tokenizer files are kept): only for a folder known to be
      an export, such as a workdir's export/hf.
  """
  if dtype not in _NP_DTYPES:
    raise ValueError(f"export dtype {dtype!r}; choose one of {sorted(_NP_DTYPES)}")
  kept: list[str] = []  # files of out_dir that no export wrote
  if os.path.exists(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    written = _export_files(out_dir, replace_unmarked)
    if written is None:
      raise FileExistsError(f"{out_dir} exists and is not an earlier export of swirl_jax (no {MARKER}, not "
                            "empty); refusing to replace it: export into a new directory")
    kept = sorted(set(os.listdir(out_dir)) - written)
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
      _save_tokenizer(tokenizer, tmp)
      gen = {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
             "eos_token_id": [tokenizer.eos_id, tokenizer.end_of_turn_id]}
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
      json.dump(gen, f, indent=1)
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
      json.dump({"files": sorted(os.listdir(tmp) + [MARKER])}, f, indent=1)
    for name in kept:  # copied, not moved: the old folder stays whole until the new one is in place
      src, dst = os.path.join(out_dir, name), os.path.join(tmp, name)
      if os.path.lexists(dst):  # (a name this export writes now is the export's)
        continue
      if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dst, symlinks=True)
      else:
        shutil.copy2(src, dst, follow_symlinks=False)
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


def _save_tokenizer(tokenizer, directory: str) -> None:
  """The tokenizer's files, with Gemma's chat template where it has none (a GGUF's tokenizer may lack one), so
  that ``apply_chat_template`` on the export writes the chat format the policy was trained in."""
  from swirl_jax.chat import GEMMA_CHAT_TEMPLATE

  hf = tokenizer.hf
  if getattr(hf, "chat_template", None):
    tokenizer.save(directory)
    return
  hf.chat_template = GEMMA_CHAT_TEMPLATE
  try:
    tokenizer.save(directory)
  finally:
    hf.chat_template = None  # (the loaded tokenizer is shared: leave it as it was)


def _export_files(path: str, replace_unmarked: bool) -> set[str] | None:
  """The names an earlier export wrote in ``path`` (empty for an empty directory); None when ``path`` is not
  an export that may be replaced."""
  if not os.path.isdir(path):
    return None
  names = os.listdir(path)
  if not names:
    return set()
  if MARKER in names:
    try:
      with open(os.path.join(path, MARKER), encoding="utf-8") as f:
        return set(json.load(f)["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
      return None
  if replace_unmarked and "config.json" in names and any(n.endswith(".safetensors") for n in names):
    return {n for n in names if _UNMARKED_EXPORT_FILE.fullmatch(n)}
  return None
