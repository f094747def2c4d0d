"""Gemma 2 and Gemma 3 text decoders in Flax NNX.

The architecture follows the published models (and transformers' Gemma2/Gemma3 modules, the reference of
our parity tests): RMSNorm with (1 + scale), pre- and post-norms around attention and MLP, GeGLU with
tanh-approximate GELU, grouped-query attention with RoPE, alternating local (sliding window) and global
layers, Gemma 2's tanh soft-caps, Gemma 3's QK-norm, embeddings scaled by sqrt(d_model) and tied to the
LM head.

Shapes: B batch, T query length, S key length, D d_model, H query heads, K kv heads, G = H // K,
Dh head dim, F mlp dim, V vocabulary.

The model returns hidden states; ``Gemma.logits`` applies the LM head separately so that callers compute
full-vocabulary logits only where they need them (the embedding table is most of a small Gemma).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from swirl_jax.models.config import ModelConfig
from swirl_jax.models.sharding import ActivationSharding

# Masked attention logits get a large finite negative rather than -inf, so that a row with no visible
# key (a padding query) gives a finite, ignored result instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def checkpoint_policy(remat_policy: str):
  """The jax.checkpoint policy of a ModelConfig.remat_policy (None: save nothing, recompute the block)."""
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat_policy == "dots" else None


def _param(rngs: nnx.Rngs, shape, axes, dtype, std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), axes=axes)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * (1 + scale), computed in float32 (scale is stored zero-centred, as in HF)."""

  def __init__(self, dim: int, eps: float, axes: tuple[str, ...], dtype):
    self.scale = nnx.Param(jnp.zeros((dim,), dtype), axes=axes)
    self.eps = eps

  def __call__(self, x: jax.Array, axis: int = -1) -> jax.Array:
    """Normalises along ``axis``: -1 for [..., D] activations, 0 for feature-major [D, N] ones."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    if axis == 0:
      scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    return (y * (1.0 + scale)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float, scale: float) -> jax.Array:
  """Rotary embedding, rotate-half layout. x: [B, T, N, Dh]; positions: [B, T]."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (base ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
  angles = (positions.astype(jnp.float32) / scale)[..., None] * inv_freq  # [B, T, half]
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(q_pos: jax.Array, kv_pos: jax.Array, kv_valid: jax.Array, window: int | None,
                   q_seg: jax.Array | None = None, kv_seg: jax.Array | None = None) -> jax.Array:
  """[B, T, S] bool: causal by position, valid keys only, and within ``window`` positions if given.

  With segment ids (q_seg [B, T], kv_seg [B, S] int) a key of segment 0 is seen by every query and a key
  of segment s > 0 only by queries of segment s: a sequence that holds a shared prefix (segment 0) and
  several continuations of it (segments 1, 2, ...), each continuation blind to the others.
  """
  delta = q_pos[:, :, None] - kv_pos[:, None, :]
  mask = (delta >= 0) & kv_valid[:, None, :]
  if window is not None:
    mask &= delta < window
  if q_seg is not None:
    mask &= (kv_seg[:, None, :] == 0) | (kv_seg[:, None, :] == q_seg[:, :, None])
  return mask


class KVCache(NamedTuple):
  """Keys and values of every layer, stored as ring buffers, and the tokens held per row.

  layers[i] = (k, v), each [B, R_i, K, Dh]. Position p of row b lives in slot p % R_i. Global layers use
  R_i = the cache length; local layers need only R_i >= window + the longest chunk written at once - 1,
  so a short window keeps a short cache. ``lengths`` [B] counts the tokens of each row (positions
  0..length-1), so every slot's position follows from it and nothing else is stored; lowering a length
  rolls a row back, and setting it to 0 empties the row.
  """

  layers: tuple[tuple[jax.Array, jax.Array], ...]
  lengths: jax.Array


def _chunk_positions(valid: jax.Array, cache: KVCache) -> tuple[jax.Array, jax.Array]:
  """A chunk appended to the cache: positions [B, T] continuing from each row's length, and the row
  lengths after it [B] (valid [B, T], each row's valid tokens a prefix)."""
  positions = cache.lengths[:, None] + jnp.arange(valid.shape[1], dtype=jnp.int32)[None, :]
  return positions, cache.lengths + valid.sum(axis=1).astype(jnp.int32)


def slot_positions(lengths: jax.Array, size: int) -> jax.Array:
  """[B, size]: the position held by each slot of a ring of ``size`` slots; negative = empty."""
  last = lengths[:, None] - 1
  return last - jnp.mod(last - jnp.arange(size)[None, :], size)


def _round_to(x: jax.Array, dtype, held) -> jax.Array:
  """x rounded to ``dtype`` and held in ``held`` (a bfloat16 model's attention over a float32 cache)."""
  return x.astype(dtype).astype(held)


def dot_rows(w: jax.Array, rows: jax.Array) -> jax.Array:
  """w [out, in] . rows [N, in] -> float32 [out, N]: the form XLA:CPU hands to YNNPACK's bfloat16 kernels
  for a bfloat16 ``w`` (see ``project``). A single row is padded to two for a low-precision ``w``: a
  bfloat16 matrix times one vector takes XLA's slow path (the 270M's LM head: 164 against 14 ms)."""
  n = rows.shape[0]
  if n == 1 and w.dtype != jnp.float32:
    rows = jnp.pad(rows, ((0, 1), (0, 0)))
  return jax.lax.dot_general(w, rows, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)[:, :n]


def project(w: jax.Array, x: jax.Array, barrier: bool = False, token_major: bool = True) -> jax.Array:
  """w [out, in] @ x [in, N] -> [out, N] in x's dtype, accumulated in float32 and rounded once (as XLA's
  own bfloat16 dot does).

  float32 weights of a bfloat16 model (``Sampler``'s ``upcast_weights``): the activations are upcast,
  multiplied in float32 and rounded back, exactly what XLA:CPU does with a bfloat16 matmul on a CPU
  without bfloat16 arithmetic, minus converting the weights at every step.

  bfloat16 weights: written so that XLA:CPU hands the dot to YNNPACK's bfloat16 kernels on a CPU with
  AVX512-BF16 instead of converting both operands to float32 first (measured on such a CPU, the 270M's
  18 gate/up matmuls at 2 columns: 3.3 against 50 ms). That takes a float32 result type, the activations
  as the contracted-minor [N, in] operand (the residual stream's [D, N] is a transposed [N, D] array, and
  as [in, N] XLA upcasts the dot and hoists the weights' conversion out of the decode loop; ``dot_rows``),
  and at least two columns (``dot_rows`` pads one). A dot's output (``token_major`` False) is held
  [in, N] and multiplies as it is.

  ``barrier``: an optimization barrier between the dot and what follows (see
  ``Attention.extend_feature_major``).
  """
  xw = x.astype(w.dtype)
  if w.dtype == jnp.float32:
    y = w @ xw
  elif x.shape[1] > 1 and not token_major:
    y = jnp.matmul(w, xw, preferred_element_type=jnp.float32)
  else:
    y = dot_rows(w, xw.T)
  if barrier:
    y = jax.lax.optimization_barrier(y)
  return y.astype(x.dtype)


class LayerWeights(NamedTuple):
  """One block's projections laid out for few-token steps: each [out, in], q/k/v and gate/up fused.

  With activations kept feature-major ([D, N], N = tokens of the step) every projection is W @ x with
  the weight as the contiguous left operand, which XLA:CPU runs faster than x @ W at small N (the 270M's
  18 blocks' matmuls alone at N = 16: ~1.8x; a whole batch-16 decode step: ~10%); see
  ``Gemma.extend_feature_major``.
  qkv: [H*Dh + 2*K*Dh, D]; o: [D, H*Dh]; gate_up: [2F, D]; down: [D, F].
  """

  qkv: jax.Array
  o: jax.Array
  gate_up: jax.Array
  down: jax.Array


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, layer_type: str, shard: ActivationSharding, rngs: nnx.Rngs):
    d, h, k, dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = cfg.jnp_param_dtype
    self.q = _param(rngs, (d, h, dh), ("embed", "q_heads", "head_dim"), pd, d ** -0.5)
    self.k = _param(rngs, (d, k, dh), ("embed", "kv_heads", "head_dim"), pd, d ** -0.5)
    self.v = _param(rngs, (d, k, dh), ("embed", "kv_heads", "head_dim"), pd, d ** -0.5)
    self.o = _param(rngs, (h, dh, d), ("q_heads", "head_dim", "embed"), pd, (h * dh) ** -0.5)
    if cfg.use_qk_norm:
      self.q_norm = RMSNorm(dh, cfg.rms_eps, ("head_dim",), pd)
      self.k_norm = RMSNorm(dh, cfg.rms_eps, ("head_dim",), pd)
    self.use_qk_norm = cfg.use_qk_norm
    self.is_local = layer_type == "local"
    self.window = cfg.sliding_window if self.is_local else None
    self.rope_base = cfg.rope_base_local if self.is_local else cfg.rope_base_global
    self.rope_scale = 1.0 if self.is_local else cfg.rope_scale_global
    self.scaling = cfg.query_pre_attn_scalar ** -0.5
    self.softcap = cfg.attn_logit_softcap
    self.num_kv_heads = k
    self.dtype = cfg.jnp_dtype
    self.shard = shard

  def __call__(self, x: jax.Array, positions: jax.Array, valid: jax.Array,
               cache: tuple[jax.Array, jax.Array] | None = None, lengths: jax.Array | None = None,
               segments: jax.Array | None = None, span: int | None = None):
    """x: [B, T, D]; positions: [B, T] int; valid: [B, T] bool (False = padding); segments: None or
    [B, T] int segment ids (``attention_mask``; uncached calls only).

    Without ``cache`` returns [B, T, D]. With ``cache`` = (k, v) ring buffers and ``lengths`` (the row
    lengths after this chunk), writes the chunk's keys and values first, attends over the ring (its first
    ``span`` slots, see ``_attend_cached``), and returns ([B, T, D], (k, v)).
    """
    dt = self.dtype
    q = jnp.einsum("btd,dhk->bthk", x, self.q[...].astype(dt))
    k = jnp.einsum("btd,dnk->btnk", x, self.k[...].astype(dt))
    v = jnp.einsum("btd,dnk->btnk", x, self.v[...].astype(dt))
    q = self.shard(q, "batch", "seq", "act_heads", None)
    k = self.shard(k, "batch", "seq", "act_kv_heads", None)
    v = self.shard(v, "batch", "seq", "act_kv_heads", None)
    if cache is None:
      q, k = self._position(q, k, positions)
      mask = attention_mask(positions, positions, valid, self.window, segments, segments)
      out = self.attend(q, k, v, mask)
      return jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt))
    out, cache = self._attend_cached(q, k, v, positions, valid, cache, lengths, span)
    return jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt)), cache

  def extend_feature_major(self, x: jax.Array, w: LayerWeights, positions: jax.Array, valid: jax.Array,
                           cache: tuple[jax.Array, jax.Array], lengths: jax.Array, span: int | None = None):
    """The cached path on feature-major activations: x [D, B*T] -> ([D, B*T], (k, v)).

    Only the step's small activations are transposed (to and from the attention's [B, T, H, Dh]).
    """
    b, t = positions.shape
    h, kv, dh = self.q.shape[1], self.num_kv_heads, self.q.shape[2]
    # The barrier keeps XLA from folding the transpose into the dot: folded, the dot becomes x^T @ W^T,
    # which XLA:CPU runs in Eigen rather than YNNPACK, ~3x slower at 16 columns (a batch-16 float32 decode
    # step of the 270M: 135 vs 152 ms; the README's decode section has the rest).
    qkv = project(w.qkv, x, barrier=True)
    qkv = qkv.T.reshape(b, t, -1)  # [B, T, (H + 2K) * Dh]
    q = qkv[..., :h * dh].reshape(b, t, h, dh)
    k = qkv[..., h * dh:(h + kv) * dh].reshape(b, t, kv, dh)
    v = qkv[..., (h + kv) * dh:].reshape(b, t, kv, dh)
    out, cache = self._attend_cached(q, k, v, positions, valid, cache, lengths, span)
    return project(w.o, out.reshape(b * t, h * dh).T), cache

  def _position(self, q: jax.Array, k: jax.Array, positions: jax.Array):
    """QK-norm (Gemma 3) and RoPE."""
    if self.use_qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return (rope(q, positions, self.rope_base, self.rope_scale),
            rope(k, positions, self.rope_base, self.rope_scale))

  def _attend_cached(self, q, k, v, positions, valid, cache, lengths, span=None):
    """Writes the chunk's keys and values into the ring buffers, then attends over them.
    q: [B, T, H, Dh]; k, v: [B, T, K, Dh] (before QK-norm and RoPE) -> ([B, T, H, Dh], (k, v)).

    ``span`` (static): no row holds more than ``span`` tokens after this chunk (``lengths`` <= span; the
    caller's promise, not checked). Then a ring longer than ``span`` has not wrapped, its slots from
    ``span`` on are empty, and attention reads only the first ``span``: a mostly empty cache costs
    nothing (the 270M decoding at batch 16 with 160 tokens per row in a 1024-token cache: 71 ms per step
    over the whole ring).
    """
    dt = self.dtype
    q, k = self._position(q, k, positions)
    ck, cv = cache
    size = ck.shape[1]
    rows = jnp.arange(q.shape[0])[:, None]
    slots = jnp.where(valid, positions % size, size)  # padding goes out of range and is dropped
    kw, vw = k.astype(ck.dtype), v.astype(cv.dtype)
    if q.shape[0] == 1:
      # A one-row write would become a dynamic-update-slice, which XLA:CPU fuses twice (into the cache
      # it returns and into the attention reading it), copying the whole cache buffer twice per layer
      # and step (a batch-1 decode step of the 270M: 144 copies, 33.0 against 30.9 ms in bfloat16).
      # A second, dropped row keeps it one scatter.
      rows, slots = jnp.concatenate([rows, rows]), jnp.concatenate([slots, jnp.full_like(slots, size)])
      kw, vw = jnp.concatenate([kw, kw]), jnp.concatenate([vw, vw])
    ck = ck.at[rows, slots].set(kw, mode="drop")
    cv = cv.at[rows, slots].set(vw, mode="drop")
    kv_pos = slot_positions(lengths, size)
    k_read, v_read = ck, cv
    if span is not None and span < size:
      k_read, v_read, kv_pos = ck[:, :span], cv[:, :span], kv_pos[:, :span]
    mask = attention_mask(positions, kv_pos, kv_pos >= 0, self.window)
    # A float32 cache of a low-precision model is attended as it is (``attend``).
    k_read, v_read = (c if c.dtype == jnp.float32 else c.astype(dt) for c in (k_read, v_read))
    return self.attend(q, k_read, v_read, mask), (ck, cv)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q: [B, T, H, Dh]; k, v: [B, S, K, Dh]; mask: [B, T, S] -> [B, T, H, Dh] in the compute dtype.

    k and v may be float32 holding a bfloat16 model's keys and values (the sampler's float32 cache on
    CPU): XLA:CPU multiplies bfloat16 in float32 anyway, and would otherwise convert the whole cache to
    float32 and back at every decode step. The queries are upcast and the probabilities and output
    rounded to the compute dtype, so the values are those of the bfloat16 cache.
    """
    dt = self.dtype
    q = q.astype(k.dtype)
    b, t, h, dh = q.shape
    if self.num_kv_heads == 1 and t == 1 and k.dtype == jnp.float32:
      return self._attend_one_query(q, k, v, mask)
    if self.num_kv_heads == 1:
      # One kv head (Gemma 3 270M, 1B): every query row of a batch row attends the same keys, so the
      # dots get a single batch axis. The (B, K)-batched form made XLA:CPU relayout the cache; on the
      # 270M's attention alone this is ~2x faster at batch-16 decode and ~1.2x forward + backward at
      # 8 x 512. Same values.
      logits = jnp.einsum("bqd,bsd->bqs", q.reshape(b, t * h, dh), k[:, :, 0],
                          preferred_element_type=jnp.float32) * self.scaling  # q = t * H + head
      if self.softcap is not None:
        logits = jnp.tanh(logits / self.softcap) * self.softcap
      mask = jnp.broadcast_to(mask[:, :, None, :], (b, t, h, mask.shape[-1])).reshape(b, t * h, -1)
      probs = _round_to(jax.nn.softmax(jnp.where(mask, logits, _MASK_VALUE), axis=-1), dt, v.dtype)
      return jnp.einsum("bqs,bsd->bqd", probs, v[:, :, 0]).reshape(b, t, h, dh).astype(dt)
    g = h // self.num_kv_heads
    qg = q.reshape(b, t, self.num_kv_heads, g, dh)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * self.scaling
    if self.softcap is not None:
      logits = jnp.tanh(logits / self.softcap) * self.softcap
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
    probs = _round_to(jax.nn.softmax(logits, axis=-1), dt, v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, dh).astype(dt)

  def _attend_one_query(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``attend`` for a decode step (one query token per row) with one kv head over float32 keys and
    values (a float32 model's, or a bfloat16 model's float32 cache): the keys are the scores' dot's left
    operand, the scores [B, S, H] are softmaxed over S, and the values' dot contracts S, the major axis
    of both operands. XLA:CPU (YNNPACK) runs these skinny batched dots faster than with the queries on
    the left: one layer's attention at batch 16 over 256 cached tokens, 0.53 vs 1.26 ms alone; the whole
    batch-16 decode step of the 270M, compiled both ways in one process and run alternately, 139-151 vs
    155-169 ms per step (batch 1 and 64: within noise). Over a bfloat16 cache it was slower (166-193 vs
    161-173 ms), so that keeps the other form. Same values up to summation order."""
    b, _, h, dh = q.shape
    logits = jnp.einsum("bsd,bhd->bsh", k[:, :, 0], q[:, 0],
                        preferred_element_type=jnp.float32) * self.scaling  # [B, S, H]
    if self.softcap is not None:
      logits = jnp.tanh(logits / self.softcap) * self.softcap
    probs = _round_to(jax.nn.softmax(jnp.where(mask[:, 0, :, None], logits, _MASK_VALUE), axis=1),
                      self.dtype, v.dtype)
    return jnp.einsum("bsh,bsd->bhd", probs, v[:, :, 0]).reshape(b, 1, h, dh).astype(self.dtype)


class MLP(nnx.Module):
  """GeGLU: down(gelu_tanh(x @ gate) * (x @ up))."""

  def __init__(self, cfg: ModelConfig, shard: ActivationSharding, rngs: nnx.Rngs):
    d, f, pd = cfg.d_model, cfg.mlp_dim, cfg.jnp_param_dtype
    self.gate = _param(rngs, (d, f), ("embed", "mlp"), pd, d ** -0.5)
    self.up = _param(rngs, (d, f), ("embed", "mlp"), pd, d ** -0.5)
    self.down = _param(rngs, (f, d), ("mlp", "embed"), pd, f ** -0.5)
    self.dtype = cfg.jnp_dtype
    self.shard = shard

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    gate = jax.nn.gelu(x @ self.gate[...].astype(dt), approximate=True)
    hidden = self.shard(gate * (x @ self.up[...].astype(dt)), "batch", "seq", "act_mlp")
    return hidden @ self.down[...].astype(dt)


class Block(nnx.Module):
  """Pre-norm and post-norm around attention and around the MLP, each with a residual."""

  def __init__(self, cfg: ModelConfig, layer_type: str, shard: ActivationSharding, rngs: nnx.Rngs):
    pd, eps = cfg.jnp_param_dtype, cfg.rms_eps
    self.pre_attn_norm = RMSNorm(cfg.d_model, eps, ("norm",), pd)
    self.attn = Attention(cfg, layer_type, shard, rngs)
    self.post_attn_norm = RMSNorm(cfg.d_model, eps, ("norm",), pd)
    self.pre_mlp_norm = RMSNorm(cfg.d_model, eps, ("norm",), pd)
    self.mlp = MLP(cfg, shard, rngs)
    self.post_mlp_norm = RMSNorm(cfg.d_model, eps, ("norm",), pd)
    self.shard = shard

  def __call__(self, x: jax.Array, positions: jax.Array, valid: jax.Array, cache=None, lengths=None,
               segments=None, span: int | None = None):
    if cache is None:
      x = x + self.post_attn_norm(self.attn(self.pre_attn_norm(x), positions, valid, segments=segments))
    else:
      h, cache = self.attn(self.pre_attn_norm(x), positions, valid, cache, lengths, span=span)
      x = x + self.post_attn_norm(h)
    x = x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x)))
    x = self.shard(x, "batch", "seq", "act_embed")
    return x if cache is None else (x, cache)

  def extend_feature_major(self, x: jax.Array, w: LayerWeights, positions: jax.Array, valid: jax.Array,
                           cache, lengths, span: int | None = None):
    """``__call__``'s cached path on feature-major activations x [D, N] with ``w`` = this block's
    LayerWeights."""
    h, cache = self.attn.extend_feature_major(self.pre_attn_norm(x, axis=0), w, positions, valid, cache,
                                              lengths, span)
    x = x + self.post_attn_norm(h, axis=0)
    f = w.down.shape[1]
    gate_up = project(w.gate_up, self.pre_mlp_norm(x, axis=0))
    hidden = jax.nn.gelu(gate_up[:f], approximate=True) * gate_up[f:]
    return x + self.post_mlp_norm(project(w.down, hidden, token_major=False), axis=0), cache

  def layer_weights(self, dtype=None) -> LayerWeights:
    attn, mlp = self.attn, self.mlp
    dt = dtype or attn.dtype
    d = attn.q.shape[0]
    qkv = jnp.concatenate([p[...].reshape(d, -1) for p in (attn.q, attn.k, attn.v)], axis=1)
    gate_up = jnp.concatenate([mlp.gate[...], mlp.up[...]], axis=1)
    return LayerWeights(qkv.T.astype(dt), attn.o[...].reshape(-1, d).T.astype(dt), gate_up.T.astype(dt),
                        mlp.down[...].T.astype(dt))


class Gemma(nnx.Module):
  """A Gemma 2 / Gemma 3 decoder.

  ``model(tokens, positions, valid)`` returns final-normed hidden states [B, T, D];
  ``model.logits(hidden)`` applies the tied LM head (and Gemma 2's final soft-cap) -> [B, T, V] float32.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, shard: ActivationSharding = ActivationSharding()):
    self.config = cfg
    # std d^-1/2: after the sqrt(d) input scaling activations start at unit scale, and tied logits too.
    self.embedding = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                            cfg.jnp_param_dtype, cfg.d_model ** -0.5)
    self.layers = nnx.List([Block(cfg, t, shard, rngs) for t in cfg.layer_types])
    self.final_norm = RMSNorm(cfg.d_model, cfg.rms_eps, ("norm",), cfg.jnp_param_dtype)
    self.shard = shard

  def embed(self, tokens: jax.Array) -> jax.Array:
    """tokens [...] -> scaled embeddings [..., D]."""
    cfg = self.config
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(cfg.jnp_dtype)
    # HF multiplies by sqrt(d) rounded to the weights' dtype; do the same for bit-level parity.
    return x * jnp.asarray(math.sqrt(cfg.d_model), cfg.jnp_param_dtype).astype(cfg.jnp_dtype)

  def __call__(self, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
               segments: jax.Array | None = None) -> jax.Array:
    """tokens, positions: [B, T] int32; valid: [B, T] bool; segments: None or [B, T] int32, segment ids
    of a row that holds a shared prefix and its continuations (``attention_mask``). Returns hidden
    states [B, T, D]."""
    x = self.shard(self.embed(tokens), "batch", "seq", "act_embed")
    for block in self.layers:
      if self.config.remat:
        x = nnx.remat(lambda blk, *a: blk(*a[:3], segments=a[3]),
                      policy=checkpoint_policy(self.config.remat_policy))(block, x, positions, valid, segments)
      else:
        x = block(x, positions, valid, segments=segments)
    return self.final_norm(x)

  def extend(self, tokens: jax.Array, valid: jax.Array, cache: KVCache,
             span: int | None = None) -> tuple[jax.Array, KVCache]:
    """Appends a chunk to each row of the cache; returns its hidden states [B, T, D] and the new cache.

    tokens, valid: [B, T]; each row's valid tokens must be a prefix of the chunk (right padding), and a
    row may have none. Positions continue from ``cache.lengths``. ``span`` (static, optional): a bound on
    every row's length after the chunk, which lets attention skip the cache's empty tail
    (``Attention._attend_cached``); a row beyond it would attend to a truncated cache.
    """
    positions, lengths = _chunk_positions(valid, cache)
    x = self.shard(self.embed(tokens), "batch", "seq", "act_embed")
    new_layers = []
    for block, layer_cache in zip(self.layers, cache.layers):
      x, layer_cache = block(x, positions, valid, layer_cache, lengths, span=span)
      new_layers.append(layer_cache)
    return self.final_norm(x), KVCache(tuple(new_layers), lengths)

  def layer_weights(self, dtype=None) -> tuple[LayerWeights, ...]:
    """Every block's projections relaid for ``extend_feature_major`` (a copy of the block weights), in
    ``dtype`` (default: the compute dtype; float32 for a bfloat16 model is ``project``'s exact upcast)."""
    return tuple(block.layer_weights(dtype) for block in self.layers)

  def extend_feature_major(self, tokens: jax.Array, valid: jax.Array, cache: KVCache,
                           weights: Sequence[LayerWeights],
                           span: int | None = None) -> tuple[jax.Array, KVCache]:
    """``extend`` with the residual stream kept feature-major ([D, B*T]) and the projections taken from
    ``weights`` (``layer_weights()``). Same results as ``extend`` up to float rounding; faster on XLA:CPU
    for few-token steps (decode), where x @ W with a few rows streams the weights through a slow path.
    No activation sharding constraints: meant for the sampler's single-host steps."""
    b, t = tokens.shape
    positions, lengths = _chunk_positions(valid, cache)
    x = self.embed(tokens).reshape(b * t, -1).T
    new_layers = []
    for block, w, layer_cache in zip(self.layers, weights, cache.layers):
      x, layer_cache = block.extend_feature_major(x, w, positions, valid, layer_cache, lengths, span)
      new_layers.append(layer_cache)
    return self.final_norm(x.T.reshape(b, t, -1)), KVCache(tuple(new_layers), lengths)

  def init_cache(self, batch: int, length: int, chunk: int, dtype=None) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``length`` tokens, written ``chunk`` tokens at a time
    at most (local layers keep window + chunk - 1 slots: enough to write a chunk before attending)."""
    cfg = self.config
    dtype = dtype or cfg.jnp_dtype
    layers = []
    for block in self.layers:
      size = length if block.attn.window is None else min(length, block.attn.window + chunk - 1)
      shape = (batch, size, cfg.num_kv_heads, cfg.head_dim)
      # batch over (data, fsdp) and kv heads over tensor, like the activations that fill it
      layers.append(tuple(self.shard(jnp.zeros(shape, dtype), "batch", None, "act_kv_heads", None)
                          for _ in range(2)))
    return KVCache(tuple(layers), jnp.zeros((batch,), jnp.int32))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden: [..., D] -> float32 logits [..., V]."""
    emb = self.embedding[...].astype(self.config.jnp_dtype)
    out = jnp.einsum("...d,vd->...v", hidden, emb, preferred_element_type=jnp.float32)
    return self._softcap(out)

  def logits_vocab_major(self, hidden: jax.Array, head: jax.Array | None = None) -> jax.Array:
    """hidden: [B, D] -> float32 logits [V, B], the same values as ``logits(hidden).T``.

    For sampling a few rows: with the embedding as the matmul's left operand XLA:CPU runs the head
    ~1.7x faster at batch 16 than in the [B, V] orientation (benchmarks/decode.py); accelerators do not care.
    ``head``: the embedding [V, D] held in another dtype (float32 for a bfloat16 model, see ``project``);
    None = the embedding in the compute dtype.
    """
    emb = self.embedding[...].astype(self.config.jnp_dtype) if head is None else head
    return self._softcap(dot_rows(emb, hidden.astype(emb.dtype)))

  def _softcap(self, logits: jax.Array) -> jax.Array:
    cap = self.config.final_logit_softcap
    return logits if cap is None else jnp.tanh(logits / cap) * cap


class Batch(NamedTuple):
  """A padded batch of token ids: tokens [B, T] int32, valid [B, T] bool, positions [B, T] int32."""

  tokens: jax.Array
  valid: jax.Array
  positions: jax.Array


def positions_from_valid(valid: jax.Array) -> jax.Array:
  """Positions counting valid tokens only, so left and right padding give the same positions."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def forward_logits(model: Gemma, tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """Full logits [B, T, V] for a padded batch (positions count valid tokens only)."""
  hidden = model(tokens, positions_from_valid(valid), valid)
  return model.logits(hidden)
