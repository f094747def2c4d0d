"""The one table that maps swirl_jax parameter paths to Hugging Face and GGUF tensor names.

HF import, GGUF import and HF export all read this table, so a renamed or re-laid-out weight is changed
in one place. Torch ``Linear`` weights are stored (out, in); ours are (in, ...) with heads split out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from swirl_jax.models.config import ModelConfig

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: our path, its HF and GGUF names, and the layout conversions both ways."""

  path: str
  hf: str
  gguf: str
  to_ours: Callable[[Array], Array]
  to_hf: Callable[[Array], Array]
  is_norm: bool = False


def _same(x: Array) -> Array:
  return x


def entries(cfg: ModelConfig) -> Iterator[Entry]:
  """Every parameter of a model of ``cfg``, in a stable order."""
  d, h, k, dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def heads_in(n):  # HF (n*dh, d) -> ours (d, n, dh)
    return lambda x: x.T.reshape(d, n, dh)

  def heads_out(n):  # ours (d, n, dh) -> HF (n*dh, d)
    return lambda x: x.reshape(d, n * dh).T

  yield Entry("embedding", "model.embed_tokens.weight", "token_embd.weight", _same, _same)
  for i in range(cfg.num_layers):
    hf, gg, our = f"model.layers.{i}.", f"blk.{i}.", f"layers.{i}."
    yield Entry(our + "pre_attn_norm.scale", hf + "input_layernorm.weight", gg + "attn_norm.weight",
                _same, _same, True)
    yield Entry(our + "attn.q", hf + "self_attn.q_proj.weight", gg + "attn_q.weight", heads_in(h), heads_out(h))
    yield Entry(our + "attn.k", hf + "self_attn.k_proj.weight", gg + "attn_k.weight", heads_in(k), heads_out(k))
    yield Entry(our + "attn.v", hf + "self_attn.v_proj.weight", gg + "attn_v.weight", heads_in(k), heads_out(k))
    yield Entry(our + "attn.o", hf + "self_attn.o_proj.weight", gg + "attn_output.weight",
                lambda x: x.T.reshape(h, dh, d), lambda x: x.reshape(h * dh, d).T)
    if cfg.use_qk_norm:
      yield Entry(our + "attn.q_norm.scale", hf + "self_attn.q_norm.weight", gg + "attn_q_norm.weight",
                  _same, _same, True)
      yield Entry(our + "attn.k_norm.scale", hf + "self_attn.k_norm.weight", gg + "attn_k_norm.weight",
                  _same, _same, True)
    yield Entry(our + "post_attn_norm.scale", hf + "post_attention_layernorm.weight",
                gg + "post_attention_norm.weight", _same, _same, True)
    yield Entry(our + "pre_mlp_norm.scale", hf + "pre_feedforward_layernorm.weight", gg + "ffn_norm.weight",
                _same, _same, True)
    yield Entry(our + "post_mlp_norm.scale", hf + "post_feedforward_layernorm.weight",
                gg + "post_ffw_norm.weight", _same, _same, True)
    yield Entry(our + "mlp.gate", hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", np.transpose, np.transpose)
    yield Entry(our + "mlp.up", hf + "mlp.up_proj.weight", gg + "ffn_up.weight", np.transpose, np.transpose)
    yield Entry(our + "mlp.down", hf + "mlp.down_proj.weight", gg + "ffn_down.weight", np.transpose, np.transpose)
  yield Entry("final_norm.scale", "model.norm.weight", "output_norm.weight", _same, _same, True)
