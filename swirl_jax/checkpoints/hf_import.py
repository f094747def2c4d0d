"""Importing Gemma 2 / Gemma 3 weights from a Hugging Face checkpoint directory.

Reads config.json and the safetensors shards of Gemma2ForCausalLM, Gemma3ForCausalLM, or the text tower
of Gemma3ForConditionalGeneration (whose tensor names carry a ``language_model`` prefix).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from swirl_jax.checkpoints.layout import entries
from swirl_jax.checkpoints.safetensors_io import ShardedSafetensors
from swirl_jax.models.config import ModelConfig, from_hf_config, load_json

# Where the text decoder's tensors live in the multimodal checkpoint, across transformers versions.
_TEXT_TOWER_PREFIXES = ("model.language_model.", "language_model.model.")


def read_hf_checkpoint(directory: str, **overrides) -> tuple[ModelConfig, Callable[[str], np.ndarray]]:
  """(config, fetch) for a HF directory; ``fetch(our_path)`` returns the tensor in our layout."""
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
  hf = load_json(cfg_path)
  archs = hf.get("architectures") or []
  known = {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}
  if archs and not set(archs) & known:
    raise ValueError(f"{cfg_path}: architectures {archs} are not among {sorted(known)}")
  text_cfg = hf.get("text_config") if hf.get("model_type") == "gemma3" else None
  if not (text_cfg or hf).get("tie_word_embeddings", hf.get("tie_word_embeddings", True)):
    raise ValueError(f"{cfg_path}: tie_word_embeddings is false (a separate lm_head.weight); swirl_jax's Gemma "
                     "computes the logits with the embedding, as the published Gemma 2 and 3 checkpoints do")
  cfg = from_hf_config(hf, **overrides)
  tensors = ShardedSafetensors(directory)
  names = set(tensors.keys())
  prefix = "model."
  for p in _TEXT_TOWER_PREFIXES:
    if any(n.startswith(p) for n in names):
      prefix = p
  rename = lambda hf_name: prefix + hf_name[len("model."):]
  table = {e.path: e for e in entries(cfg)}
  missing = [rename(e.hf) for e in table.values() if rename(e.hf) not in names]
  if missing:
    raise ValueError(f"{directory}: {len(missing)} tensors missing, e.g. {missing[:5]}")

  def fetch(path: str) -> np.ndarray:
    e = table[path]
    return e.to_ours(np.asarray(tensors.get(rename(e.hf))))

  return cfg, fetch
