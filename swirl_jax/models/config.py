"""Architecture configuration for Gemma 2 and Gemma 3 text decoders, and the named presets.

One frozen dataclass describes every model; presets are the published Hugging Face configs of each size,
and ``from_hf_config`` / ``from_gguf_metadata`` build the same dataclass from a checkpoint's own metadata.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Mapping, get_args

import jax.numpy as jnp
import numpy as np

Family = Literal["gemma2", "gemma3"]
LayerType = Literal["local", "global"]
RematPolicy = Literal["block", "dots"]
REMAT_POLICIES: tuple[str, ...] = get_args(RematPolicy)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a Gemma decoder.

  Attributes:
    family: "gemma2" (attention logit soft-cap, 1:1 local:global) or "gemma3" (QK-norm, 5:1).
    vocab_size: rows of the (tied) embedding table.
    d_model: residual width.
    num_layers: decoder blocks.
    num_heads / num_kv_heads / head_dim: grouped-query attention shape.
    mlp_dim: hidden width of the GeGLU MLP.
    query_pre_attn_scalar: attention logits are scaled by this ** -0.5 (not always head_dim).
    sliding_window: keys farther back than this many positions are invisible to local layers.
    layer_types: "local" or "global" per layer.
    rope_base_global / rope_base_local: RoPE wavelength bases of global and local layers.
    rope_scale_global: linear RoPE position scaling of global layers (8.0 on Gemma 3 4B and up).
    attn_logit_softcap / final_logit_softcap: tanh soft-caps (None disables).
    use_qk_norm: RMS-normalise queries and keys per head (Gemma 3).
    rms_eps: epsilon of every RMSNorm.
    max_seq_len: the longest context the checkpoint was trained for.
    param_dtype: storage dtype of parameters ("float32", "bfloat16").
    dtype: compute dtype of activations and matmuls; norms, softmax and logits stay float32.
    remat: rematerialise each block in the backward pass (saves activation memory when training).
    remat_policy: what remat recomputes: "block" the whole block from its input; "dots" keeps the
      outputs of the block's weight matmuls and recomputes the rest (norms, activations, attention):
      the 270M's train step at 8 x 512 on a 2-core CPU, 64.9 against 71.2 s, for 1.5 GB more memory.
  """

  family: Family
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  query_pre_attn_scalar: float
  sliding_window: int
  layer_types: tuple[LayerType, ...]
  rope_base_global: float = 10_000.0
  rope_base_local: float = 10_000.0
  rope_scale_global: float = 1.0
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  use_qk_norm: bool = False
  rms_eps: float = 1e-6
  max_seq_len: int = 8192
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  remat_policy: RematPolicy = "block"

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {list(REMAT_POLICIES)}")
    if len(self.layer_types) != self.num_layers:
      raise ValueError(f"layer_types has {len(self.layer_types)} entries, num_layers is {self.num_layers}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {sorted(DTYPES)}")

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.layer_types)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "ModelConfig":
    d = dict(d)
    d["layer_types"] = tuple(d["layer_types"])
    return cls(**d)

  def num_params(self) -> int:
    """Parameter count (embedding counted once: it is tied)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    norms = 4 * self.d_model + (2 * self.head_dim if self.use_qk_norm else 0)
    return self.vocab_size * self.d_model + self.num_layers * (attn + mlp + norms) + self.d_model


def _pattern(num_layers: int, period: int) -> tuple[LayerType, ...]:
  """Every ``period``-th layer (1-based) is global, the rest local: HF's layer_types rule."""
  return tuple("global" if (i + 1) % period == 0 else "local" for i in range(num_layers))


def _gemma2(**kw) -> ModelConfig:
  n = kw["num_layers"]
  base = dict(
      family="gemma2", vocab_size=256_000, sliding_window=4096, layer_types=_pattern(n, 2),
      attn_logit_softcap=50.0, final_logit_softcap=30.0, use_qk_norm=False, max_seq_len=8192,
  )
  base.update(kw)
  return ModelConfig(**base)


def _gemma3(**kw) -> ModelConfig:
  n = kw["num_layers"]
  base = dict(
      family="gemma3", vocab_size=262_208, sliding_window=1024, layer_types=_pattern(n, 6),
      rope_base_global=1_000_000.0, rope_base_local=10_000.0, use_qk_norm=True, max_seq_len=131_072,
  )
  base.update(kw)
  return ModelConfig(**base)


# The published sizes (Hugging Face config.json of google/gemma-2-* and google/gemma-3-*), plus tiny
# random models for tests. The 4B+ Gemma 3 checkpoints are the text towers of the multimodal models.
PRESETS: dict[str, ModelConfig] = {
    "gemma2-2b": _gemma2(d_model=2304, num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256,
                         mlp_dim=9216, query_pre_attn_scalar=256),
    "gemma2-9b": _gemma2(d_model=3584, num_layers=42, num_heads=16, num_kv_heads=8, head_dim=256,
                         mlp_dim=14336, query_pre_attn_scalar=256),
    "gemma2-27b": _gemma2(d_model=4608, num_layers=46, num_heads=32, num_kv_heads=16, head_dim=128,
                          mlp_dim=36864, query_pre_attn_scalar=144),
    "gemma3-270m": _gemma3(vocab_size=262_144, d_model=640, num_layers=18, num_heads=4, num_kv_heads=1,
                           head_dim=256, mlp_dim=2048, query_pre_attn_scalar=256, sliding_window=512,
                           max_seq_len=32_768),
    "gemma3-1b": _gemma3(vocab_size=262_144, d_model=1152, num_layers=26, num_heads=4, num_kv_heads=1,
                         head_dim=256, mlp_dim=6912, query_pre_attn_scalar=256, sliding_window=512,
                         max_seq_len=32_768),
    "gemma3-4b": _gemma3(d_model=2560, num_layers=34, num_heads=8, num_kv_heads=4, head_dim=256,
                         mlp_dim=10240, query_pre_attn_scalar=256, rope_scale_global=8.0),
    "gemma3-12b": _gemma3(d_model=3840, num_layers=48, num_heads=16, num_kv_heads=8, head_dim=256,
                          mlp_dim=15360, query_pre_attn_scalar=256, rope_scale_global=8.0),
    "gemma3-27b": _gemma3(d_model=5376, num_layers=62, num_heads=32, num_kv_heads=16, head_dim=128,
                          mlp_dim=21504, query_pre_attn_scalar=168, rope_scale_global=8.0),
    # Tiny models for tests: every architectural feature, a small vocabulary, a short window.
    "tiny-gemma2": _gemma2(vocab_size=512, d_model=64, num_layers=4, num_heads=8, num_kv_heads=4,
                           head_dim=16, mlp_dim=128, query_pre_attn_scalar=16, sliding_window=8,
                           max_seq_len=256),
    "tiny-gemma3": _gemma3(vocab_size=512, d_model=64, num_layers=6, num_heads=8, num_kv_heads=4,
                           head_dim=16, mlp_dim=128, query_pre_attn_scalar=16, sliding_window=8,
                           max_seq_len=256, layer_types=_pattern(6, 3)),
}


def preset(name: str, **overrides) -> ModelConfig:
  """A named preset with optional overrides (e.g. ``dtype="bfloat16"``)."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def _match_preset_scalar(family: str, d_model: int, num_layers: int, head_dim: int) -> float:
  """query_pre_attn_scalar is not in GGUF metadata: take it from the preset of the same shape."""
  for cfg in PRESETS.values():
    if (cfg.family, cfg.d_model, cfg.num_layers) == (family, d_model, num_layers):
      return cfg.query_pre_attn_scalar
  return float(head_dim)


def from_hf_config(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """Builds a ModelConfig from a Hugging Face Gemma2/Gemma3 config.json dict.

  Accepts Gemma2ForCausalLM, Gemma3ForCausalLM (model_type gemma3_text) and the text tower of
  Gemma3ForConditionalGeneration (its ``text_config``).
  """
  model_type = hf.get("model_type")
  if model_type == "gemma3" and "text_config" in hf:
    hf = dict(hf["text_config"])
    model_type = "gemma3_text"
  if model_type == "gemma2":
    family: Family = "gemma2"
  elif model_type in ("gemma3_text", "gemma3"):
    family = "gemma3"
  else:
    raise ValueError(f"config.json model_type {model_type!r} is not gemma2, gemma3_text or gemma3")
  n = int(hf["num_hidden_layers"])
  if hf.get("layer_types"):
    layer_types = tuple("local" if t == "sliding_attention" else "global" for t in hf["layer_types"])
  else:
    period = int(hf.get("sliding_window_pattern", 2 if family == "gemma2" else 6))
    layer_types = _pattern(n, period)
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
  # Rope settings moved from rope_theta/rope_scaling to rope_parameters in transformers 5.
  rope_global, rope_local, scale = 10_000.0, 10_000.0, 1.0
  rp = hf.get("rope_parameters")
  if isinstance(rp, dict) and "full_attention" in rp:
    full, sliding = rp["full_attention"] or {}, rp.get("sliding_attention") or {}
    rope_global = float(full.get("rope_theta", 1_000_000.0 if family == "gemma3" else 10_000.0))
    rope_local = float(sliding.get("rope_theta", 10_000.0))
    if full.get("rope_type", "default") == "linear":
      scale = float(full["factor"])
  else:
    rope_global = float(hf.get("rope_theta", 1_000_000.0 if family == "gemma3" else rope_global))
    if isinstance(rp, dict) and "rope_theta" in rp:  # a single-type rope_parameters dict (Gemma 2)
      rope_global = float(rp["rope_theta"])
    rope_local = float(hf.get("rope_local_base_freq", 10_000.0 if family == "gemma3" else rope_global))
    rs = hf.get("rope_scaling") or {}
    if rs:
      kind = rs.get("rope_type", rs.get("type"))
      if kind != "linear":
        raise ValueError(f"config.json rope_scaling type {kind!r} is not supported (only linear)")
      scale = float(rs["factor"])
  if family == "gemma2":
    rope_local = rope_global
  cfg = ModelConfig(
      family=family,
      vocab_size=int(hf["vocab_size"]),
      d_model=int(hf["hidden_size"]),
      num_layers=n,
      num_heads=int(hf["num_attention_heads"]),
      num_kv_heads=int(hf["num_key_value_heads"]),
      head_dim=head_dim,
      mlp_dim=int(hf["intermediate_size"]),
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", head_dim)),
      sliding_window=int(hf.get("sliding_window") or 4096),
      layer_types=layer_types,
      rope_base_global=rope_global,
      rope_base_local=rope_local,
      rope_scale_global=scale,
      # transformers' Gemma 3 attention ignores attn_logit_softcapping; so does the model it defines
      attn_logit_softcap=hf.get("attn_logit_softcapping") if family == "gemma2" else None,
      final_logit_softcap=hf.get("final_logit_softcapping"),
      use_qk_norm=family == "gemma3",
      rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(hf.get("max_position_embeddings", 8192)),
  )
  return cfg.replace(**overrides)


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """The Hugging Face config.json for ``cfg`` (Gemma2ForCausalLM or Gemma3ForCausalLM).

  Raises ValueError for a setting transformers' model would not reproduce (Gemma 3 with an attention
  logit soft-cap: its attention ignores ``attn_logit_softcapping``).
  """
  if cfg.family == "gemma3" and cfg.attn_logit_softcap is not None:
    raise ValueError(f"model.attn_logit_softcap={cfg.attn_logit_softcap}: transformers' Gemma 3 ignores "
                     "attn_logit_softcapping, so the exported model would compute different logits")
  scalar = cfg.query_pre_attn_scalar
  common = {
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_activation": "gelu_pytorch_tanh",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.rms_eps,
      # an int where whole: transformers 5 validates the field as int and refuses 256.0
      "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,
      "sliding_window": cfg.sliding_window,
      "layer_types": ["sliding_attention" if t == "local" else "full_attention" for t in cfg.layer_types],
      "attn_logit_softcapping": cfg.attn_logit_softcap,
      "final_logit_softcapping": cfg.final_logit_softcap,
      "tie_word_embeddings": True,
      "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
      "torch_dtype": cfg.param_dtype,
  }
  if cfg.family == "gemma2":
    return {**common, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
            "rope_theta": cfg.rope_base_global}
  out = {**common, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
         "rope_theta": cfg.rope_base_global, "rope_local_base_freq": cfg.rope_base_local,
         "rope_scaling": None}
  if cfg.rope_scale_global != 1.0:
    out["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scale_global}
  return out


def from_gguf_metadata(meta: Mapping[str, Any], **overrides) -> ModelConfig:
  """Builds a ModelConfig from GGUF key-values (``general.architecture`` gemma2 or gemma3).

  GGUF does not store Gemma's query_pre_attn_scalar nor Gemma 3's local RoPE base and layer pattern;
  llama.cpp hard-codes them, and so do we (matching the published configs).
  """
  arch = meta.get("general.architecture")
  if arch not in ("gemma2", "gemma3"):
    raise ValueError(f"GGUF general.architecture is {arch!r}; swirl_jax reads gemma2 and gemma3")

  def get(key, default=None):
    full = f"{arch}.{key}"
    if full in meta:
      return meta[full]
    if default is None:
      raise ValueError(f"GGUF metadata lacks {full!r}")
    return default

  n = int(get("block_count"))
  d = int(get("embedding_length"))
  heads = int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", d // heads))
  scale = 1.0
  if meta.get(f"{arch}.rope.scaling.type") == "linear":
    scale = float(meta[f"{arch}.rope.scaling.factor"])
  common = dict(
      vocab_size=len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta
      else int(meta[f"{arch}.vocab_size"]),
      d_model=d, num_layers=n, num_heads=heads,
      num_kv_heads=int(get("attention.head_count_kv", heads)),
      head_dim=head_dim, mlp_dim=int(get("feed_forward_length")),
      query_pre_attn_scalar=_match_preset_scalar(arch, d, n, head_dim),
      sliding_window=int(get("attention.sliding_window", 4096)),
      # GGUF stores float32: 1e-6 reads back as 9.99999997e-07; keep the value the model was made with.
      rms_eps=float(str(np.float32(get("attention.layer_norm_rms_epsilon", 1e-6)))),
      max_seq_len=int(get("context_length", 8192)),
  )
  if arch == "gemma2":
    base = float(get("rope.freq_base", 10_000.0))
    cfg = ModelConfig(
        family="gemma2", layer_types=_pattern(n, 2), rope_base_global=base, rope_base_local=base,
        attn_logit_softcap=float(get("attn_logit_softcapping", 50.0)),
        final_logit_softcap=float(get("final_logit_softcapping", 30.0)), **common)
  else:
    # Newer llama.cpp writes the local/global pattern; older files rely on Gemma 3's fixed 5:1.
    pattern = meta.get("gemma3.attention.sliding_window_pattern")
    if isinstance(pattern, (list, tuple)) and len(pattern) == n:
      layer_types = tuple("local" if p else "global" for p in pattern)
    elif isinstance(pattern, int) and pattern > 0:
      layer_types = _pattern(n, pattern)
    else:
      layer_types = _pattern(n, 6)
    cfg = ModelConfig(
        family="gemma3", layer_types=layer_types, rope_base_global=float(get("rope.freq_base", 1e6)),
        rope_base_local=10_000.0, rope_scale_global=scale, use_qk_norm=True, **common)
  return cfg.replace(**overrides)


def load_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
