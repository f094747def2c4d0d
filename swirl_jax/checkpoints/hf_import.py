"""Importing Gemma 2 / Gemma 3 weights from a Hugging Face checkpoint directory.

Reads config.json and the safetensors shards of Gemma2ForCausalLM, Gemma3ForCausalLM, or the text tower
of Gemma3ForConditionalGeneration (whose tensor names carry a ``language_model`` prefix).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
from flax import nnx

from swirl_jax.checkpoints.build import abstract_model
from swirl_jax.checkpoints.layout import entries
from swirl_jax.checkpoints.safetensors_io import ShardedSafetensors
from swirl_jax.models.config import ModelConfig, from_hf_config, load_json, to_hf_config

# Where the text decoder's tensors live in the multimodal checkpoint, across transformers versions.
_TEXT_TOWER_PREFIXES = ("model.language_model.", "language_model.model.")


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Our path -> the HF tensor's shape under ``cfg``: our parameter shapes (an abstract model, no memory)
  through the layout table's conversions, so the one table stays the one place that knows the layouts."""
  state = nnx.state(abstract_model(cfg))
  ours = {".".join(map(str, path)): v.shape for path, v in nnx.to_flat_state(state)}
  spec = lambda shape: jax.ShapeDtypeStruct(shape, np.float32)
  return {e.path: jax.eval_shape(lambda x, f=e.to_hf: f(x), spec(ours[e.path])).shape for e in entries(cfg)}


def _in_file(e: ValueError, cfg_path: str) -> ValueError:
  """``e`` from ``from_hf_config`` with the file's path in place of its "config.json"."""
  msg = str(e)
  msg = cfg_path + msg[len("config.json"):] if msg.startswith("config.json") else f"{cfg_path}: {msg}"
  return ValueError(msg)


def read_hf_checkpoint(directory: str, **overrides) -> tuple[ModelConfig, Callable[[str], np.ndarray]]:
  """(config, fetch) for a HF directory; ``fetch(our_path)`` returns the tensor in our layout."""
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{directory}: no config.json (expected a Hugging Face checkpoint directory)")
  try:
    hf = load_json(cfg_path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{cfg_path}: a JSON {type(hf).__name__}, not an object")
  archs = hf.get("architectures") or []
  known = {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}
  if archs and not set(archs) & known:
    raise ValueError(f"{cfg_path}: architectures {archs} are not among {sorted(known)}")
  text_cfg = hf.get("text_config") if hf.get("model_type") == "gemma3" else None
  if not (text_cfg or hf).get("tie_word_embeddings", hf.get("tie_word_embeddings", True)):
    raise ValueError(f"{cfg_path}: tie_word_embeddings is false (a separate lm_head.weight); swirl_jax's Gemma "
                     "computes the logits with the embedding, as the published Gemma 2 and 3 checkpoints do")
  try:
    cfg = from_hf_config(hf, **overrides)
  except ValueError as e:
    raise _in_file(e, cfg_path) from None
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
  # Text-tower tensors the config has no place for (more layers than num_hidden_layers says): the model
  # would load truncated. (Rotary inverse frequencies are buffers some older exports saved: recomputed.)
  used = {rename(e.hf) for e in table.values()}
  unused = sorted(n for n in names if n.startswith(prefix) and n not in used and not n.endswith(".inv_freq"))
  if unused:
    raise ValueError(f"{directory}: {len(unused)} tensors of the text model have no place in {cfg_path} "
                     f"(num_hidden_layers={cfg.num_layers}), e.g. {unused[:5]}: the config does not describe "
                     "these weights")
  # Checked here, from the safetensors headers, so a config.json that does not fit the weights is named
  # before a model is built (build_model would name only our parameter path).
  expected = _hf_shapes(cfg)
  for e in table.values():
    name = rename(e.hf)
    shape = tuple(tensors.get(name).shape)  # a memmap view: no data is read
    if shape != expected[e.path]:
      hf_cfg = to_hf_config(cfg)
      sizes = ", ".join(f"{k}={hf_cfg[k]}" for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                     "num_attention_heads", "num_key_value_heads", "head_dim"))
      raise ValueError(f"{directory}: safetensors tensor {name!r} has shape {shape}, but {cfg_path} ({sizes}) "
                       f"gives {expected[e.path]}")

  def fetch(path: str) -> np.ndarray:
    e = table[path]
    return e.to_ours(np.asarray(tensors.get(rename(e.hf))))

  return cfg, fetch
