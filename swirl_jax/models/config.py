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


def _hf_rope_entry(entry: Mapping[str, Any], field: str, default_theta: float) -> tuple[float, float]:
  """(theta, linear factor) of one RoPE dict; refuses the rope types our attention does not implement."""
  kind = entry.get("rope_type", entry.get("type", "default"))
  if kind not in ("default", "linear"):
    raise ValueError(f"config.json {field} rope_type {kind!r} is not supported (only default and linear)")
  factor = _hf_float(entry, "factor", 1.0, f"{field} ") if kind == "linear" else 1.0
  return _hf_float(entry, "rope_theta", default_theta, f"{field} "), factor


def _hf_rope(hf: Mapping[str, Any], family: Family,
             layer_types: tuple[LayerType, ...]) -> tuple[float, float, float]:
  """(global base, local base, global linear scale) from either RoPE form of a config.json.

  transformers 5 writes ``rope_parameters`` (per layer type for Gemma 3, one dict for Gemma 2); older
  files have ``rope_theta``, ``rope_local_base_freq`` and ``rope_scaling``. Both forms are read the way
  transformers reads them, so a setting our model cannot compute is refused rather than dropped.
  """
  legacy = dict(hf.get("rope_scaling") or {})
  rp = hf.get("rope_parameters") or {}
  theta = _hf_float(hf, "rope_theta", 1_000_000.0 if family == "gemma3" else 10_000.0)
  if family == "gemma3" or "full_attention" in rp or "sliding_attention" in rp:
    # transformers merges a legacy rope_scaling into the full-attention entry.
    full = {**(rp.get("full_attention") or {}), **legacy}
    g_field = "rope_scaling" if legacy else "rope_parameters['full_attention']"
    rope_global, scale = _hf_rope_entry(full, g_field, theta)
    l_field = "rope_parameters['sliding_attention']"
    rope_local, local_scale = _hf_rope_entry(rp.get("sliding_attention") or {}, l_field,
                                             _hf_float(hf, "rope_local_base_freq", 10_000.0))
  else:
    # Gemma 2 has one rotary embedding for every layer, local ones included.
    l_field = "rope_scaling" if legacy else "rope_parameters"
    rope_global, scale = _hf_rope_entry({**rp, **legacy}, l_field, theta)
    rope_local, local_scale = rope_global, scale
  if local_scale != 1.0 and "local" in layer_types:
    raise ValueError(f"config.json {l_field}: linear RoPE factor {local_scale} on sliding-attention layers "
                     "is not supported (swirl_jax scales global layers only)")
  return rope_global, rope_local, scale


def _check_hf_features(hf: Mapping[str, Any]) -> None:
  """Refuses config.json settings that change transformers' Gemma but that our model does not implement."""
  if hf.get("use_bidirectional_attention"):
    raise ValueError("config.json use_bidirectional_attention=True is not supported (swirl_jax attention is "
                     "causal)")
  # transformers' Gemma 2/3 MLP reads hidden_activation only (a legacy hidden_act key is unused).
  act = hf.get("hidden_activation") or "gelu_pytorch_tanh"
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"config.json hidden_activation {act!r} is not supported (only gelu_pytorch_tanh)")


_REQUIRED = object()


def _hf_int(hf: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> int:
  """``hf[key]`` as a positive integer; a missing (without a default), null or mistyped value is a
  ValueError naming the key, not a KeyError or a TypeError from ``int(None)``."""
  if key not in hf:
    if default is _REQUIRED:
      raise ValueError(f"config.json key {key!r} is missing")
    return default
  value = hf[key]
  # bool is an int in Python; 64.0 is accepted as some writers store whole numbers as floats.
  whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
  if isinstance(value, bool) or not whole:
    raise ValueError(f"config.json key {key!r} = {value!r} is not an integer")
  if value <= 0:
    raise ValueError(f"config.json key {key!r} = {value!r} must be positive")
  return int(value)


def _hf_float(hf: Mapping[str, Any], key: str, default: float, within: str = "") -> float:
  """``hf[key]`` as a float (``default`` when the key is absent); null or a string is a ValueError
  (``within``: where the dict sits, e.g. "rope_scaling ")."""
  value = hf.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"config.json {within}key {key!r} = {value!r} is not a number")
  return float(value)


# What transformers' Gemma2Config / Gemma3TextConfig take for a key config.json leaves out. Google's
# multimodal configs rely on them (the 4B text_config has no head counts or vocabulary size, the 27B's no
# vocabulary size); a default of our own would load other logits than transformers' (tests check these
# against the installed transformers).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": dict(vocab_size=256_000, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                   query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=8192,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3": dict(vocab_size=262_208, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                   query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=131_072,
                   final_logit_softcapping=None),
}
_HF_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def from_hf_config(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """Builds a ModelConfig from a Hugging Face Gemma2/Gemma3 config.json dict.

  Accepts Gemma2ForCausalLM, Gemma3ForCausalLM (model_type gemma3_text) and the text tower of
  Gemma3ForConditionalGeneration (its ``text_config``). A key left out takes transformers' default
  (``HF_DEFAULTS``), except the sizes that define the weights (hidden_size, intermediate_size,
  num_hidden_layers); a missing one of those, or a null or mistyped size, is a ValueError naming the key
  ("config.json key 'hidden_size' is missing"); ``hf_import`` adds the file's path.
  """
  if not isinstance(hf, Mapping):
    raise ValueError(f"config.json is a JSON {type(hf).__name__}, not an object")
  model_type = hf.get("model_type")
  multimodal = model_type == "gemma3" and "text_config" in hf
  if multimodal:
    text = hf["text_config"]
    if not isinstance(text, Mapping):
      raise ValueError(f"config.json key 'text_config' is a JSON {type(text).__name__}, not an object")
    hf = dict(text)
    model_type = "gemma3_text"
  if model_type == "gemma2":
    family: Family = "gemma2"
  elif model_type in ("gemma3_text", "gemma3"):
    family = "gemma3"
  else:
    raise ValueError(f"config.json model_type {model_type!r} is not gemma2, gemma3_text or gemma3")
  _check_hf_features(hf)
  hf = {**HF_DEFAULTS[family], **hf}
  if multimodal:  # Gemma3ForConditionalGeneration computes its logits without the text tower's soft-cap
    hf["final_logit_softcapping"] = None
  n = _hf_int(hf, "num_hidden_layers")
  if names := hf.get("layer_types"):
    if not isinstance(names, list):
      raise ValueError(f"config.json key 'layer_types' is a JSON {type(names).__name__}, not a list")
    unknown = [(i, t) for i, t in enumerate(names) if t not in _HF_LAYER_TYPES]
    if unknown:
      raise ValueError(f"config.json layer_types[{unknown[0][0]}] = {unknown[0][1]!r} is not supported (only "
                       f"{' and '.join(_HF_LAYER_TYPES)})")
    layer_types = tuple(_HF_LAYER_TYPES[t] for t in names)
  else:
    layer_types = _pattern(n, _hf_int(hf, "sliding_window_pattern", 2 if family == "gemma2" else 6))
  d_model, num_heads = _hf_int(hf, "hidden_size"), _hf_int(hf, "num_attention_heads")
  # A null (or 0) head_dim or sliding_window means the default, as before these keys were checked.
  head_dim = _hf_int(hf, "head_dim") if hf.get("head_dim") else d_model // num_heads
  rope_global, rope_local, scale = _hf_rope(hf, family, layer_types)
  cfg = ModelConfig(
      family=family,
      vocab_size=_hf_int(hf, "vocab_size"),
      d_model=d_model,
      num_layers=n,
      num_heads=num_heads,
      num_kv_heads=_hf_int(hf, "num_key_value_heads"),
      head_dim=head_dim,
      mlp_dim=_hf_int(hf, "intermediate_size"),
      query_pre_attn_scalar=_hf_float(hf, "query_pre_attn_scalar", head_dim),
      sliding_window=_hf_int(hf, "sliding_window") if hf.get("sliding_window") else 4096,
      layer_types=layer_types,
      rope_base_global=rope_global,
      rope_base_local=rope_local,
      rope_scale_global=scale,
      # transformers' Gemma 3 attention ignores attn_logit_softcapping; so does the model it defines
      attn_logit_softcap=hf.get("attn_logit_softcapping") if family == "gemma2" else None,
      final_logit_softcap=hf.get("final_logit_softcapping"),
      use_qk_norm=family == "gemma3",
      rms_eps=_hf_float(hf, "rms_norm_eps", 1e-6),
      max_seq_len=_hf_int(hf, "max_position_embeddings", 8192),
  )
  return cfg.replace(**overrides)


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """The Hugging Face config.json for ``cfg`` (Gemma2ForCausalLM or Gemma3ForCausalLM).

  Raises ValueError for a setting transformers' model would not reproduce: Gemma 3 with an attention
  logit soft-cap (its attention ignores ``attn_logit_softcapping``) or without QK norm; Gemma 2 with QK
  norm, RoPE scaling, or a local RoPE base other than the global one (it has one rotary embedding).
  """
  if cfg.family == "gemma3" and cfg.attn_logit_softcap is not None:
    raise ValueError(f"model.attn_logit_softcap={cfg.attn_logit_softcap}: transformers' Gemma 3 ignores "
                     "attn_logit_softcapping, so the exported model would compute different logits")
  if cfg.use_qk_norm != (cfg.family == "gemma3"):
    raise ValueError(f"model.use_qk_norm={cfg.use_qk_norm}: transformers' {cfg.family} always "
                     f"{'applies' if cfg.family == 'gemma3' else 'omits'} QK norm, so the exported model "
                     "would compute different logits")
  if cfg.family == "gemma2":
    # Gemma 2 applies one RoPE (base and scaling) to every layer; we scale global layers only.
    if cfg.rope_scale_global != 1.0:
      raise ValueError(f"model.rope_scale_global={cfg.rope_scale_global}: transformers' Gemma 2 would scale "
                       "local layers too, so the exported model would compute different logits")
    if "local" in cfg.layer_types and cfg.rope_base_local != cfg.rope_base_global:
      raise ValueError(f"model.rope_base_local={cfg.rope_base_local} differs from model.rope_base_global="
                       f"{cfg.rope_base_global}: transformers' Gemma 2 has one RoPE base for every layer")
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

  GGUF does not store Gemma's query_pre_attn_scalar (taken from the preset of the same shape, as
  llama.cpp hard-codes it); Gemma 3's local RoPE base and layer pattern are read where newer files store
  them (``rope.freq_base_swa``, ``attention.sliding_window_pattern``), else Gemma 3's 10k and 5:1.
  RoPE scaling other than linear on Gemma 3's global layers is refused.
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
  kind = meta.get(f"{arch}.rope.scaling.type", "none")
  if kind not in ("none", "linear"):
    raise ValueError(f"GGUF {arch}.rope.scaling.type {kind!r} is not supported (only linear)")
  if kind == "linear":
    scale = float(meta[f"{arch}.rope.scaling.factor"])
  if scale != 1.0 and arch == "gemma2":  # one RoPE for every layer there; we scale global layers only
    raise ValueError(f"GGUF gemma2.rope.scaling.factor {scale}: RoPE scaling of Gemma 2 is not supported")
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
        rope_base_local=float(get("rope.freq_base_swa", 10_000.0)), rope_scale_global=scale, use_qk_norm=True, **common)
  return cfg.replace(**overrides)


def load_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
