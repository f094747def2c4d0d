"""Tiny random Hugging Face Gemma checkpoints written by the tests themselves (the parity references)."""

from __future__ import annotations

import numpy as np


def tiny_hf_config(family: str, **kw):
  """A transformers config with every architectural feature at toy size (window 8, 4 or 6 layers)."""
  from transformers import Gemma2Config, Gemma3TextConfig

  common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=8,
                num_key_value_heads=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                max_position_embeddings=256, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
                bos_token_id=2, attn_implementation="eager")
  if family == "gemma2":
    common.update(num_hidden_layers=4, attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                  rope_theta=10_000.0)
    common.update(kw)
    return Gemma2Config(**common)
  common.update(num_hidden_layers=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
  common.update(kw)
  return Gemma3TextConfig(**common)


def tiny_hf_model(family: str, seed: int = 0, **kw):
  """A float32 Gemma2ForCausalLM / Gemma3ForCausalLM with every weight (norms too) random."""
  import torch
  from transformers import Gemma2ForCausalLM, Gemma3ForCausalLM

  cfg = tiny_hf_config(family, **kw)
  torch.manual_seed(seed)
  model = (Gemma2ForCausalLM if family == "gemma2" else Gemma3ForCausalLM)(cfg).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      std = 0.3 if "norm" in name else (0.5 if "embed" in name else 0.15)
      p.copy_(torch.randn(p.shape, generator=gen) * std)
  return model


def hf_logits(model, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """transformers' logits with explicit position ids (count of valid tokens before each position)."""
  import torch

  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(valid.astype(np.int64)),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()
