"""The sharded train step (policy gradient or SFT), and the host-side packing of its batch.

Shapes: B rows, T tokens per row, S loss slots per row, A micro-batches, G rows per group (state).

``pack_batch`` turns (token ids, loss mask) pairs into a ``Batch`` of fixed shapes: T and S are rounded
up to buckets, so the step compiles once per (T, S) bucket pair however many batches it sees. Slot j of
row i holds the j-th loss token of the row: ``slot_target`` its id and ``slot_pos`` the position whose
hidden state predicts it (the token before it); unused slots are masked.

``make_train_step`` jits one optimizer update with explicit input and output shardings (parameters and
optimizer moments by the logical-axis rules, the batch split over (data, fsdp), scalars replicated),
donates the train state, and accumulates gradients over ``micro_batches`` slices of the
batch inside the step with ``lax.scan`` (one optimizer update per call). Micro-batch a takes rows
a, a + A, a + 2A, ... so that every micro-batch is spread over every data shard.

Rematerialisation follows the model config's ``remat`` flag: each block is recomputed in the backward
pass, whole or (``remat_policy="dots"``) all but its weight matmuls. The step runs the blocks itself
(``hidden_states``) with a remat whose recomputation depends on the block's cotangent: XLA:CPU drops
the optimization barriers of ``jax.checkpoint`` / ``nnx.remat`` before scheduling and then hoists the
recomputation into the forward pass, which keeps every block's activations alive (measured on Gemma 3
270M at 8 x 512: 10.1 GB of temporaries with nnx.remat or without remat, 2.2 GB with this one).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swirl_jax.models.gemma import checkpoint_policy, positions_from_valid
from swirl_jax.models.sharding import Rules
from swirl_jax.training import losses
from swirl_jax.training.train_state import Params, TrainState, replicated
from swirl_jax.xla_options import compiler_options


class Batch(NamedTuple):
  """One optimizer step's data (numpy on the host, sharded arrays in the step).

  tokens: [B, T] int32, right-padded; valid: [B, T] bool; slot_pos: [B, S] int32; slot_target: [B, S]
  int32; slot_mask: [B, S] bool; rewards: [B] float32 (rows ordered group by group: G consecutive
  rows share a state; unused by SFT).
  """

  tokens: Any
  valid: Any
  slot_pos: Any
  slot_target: Any
  slot_mask: Any
  rewards: Any


def _round_up(n: int, bucket: int) -> int:
  return max(bucket, -(-n // bucket) * bucket)


def pack_batch(rows: Sequence[tuple[Sequence[int], Sequence[bool]]], rewards: Sequence[float] | None = None,
               *, seq_bucket: int = 64, slot_bucket: int = 16, max_len: int | None = None,
               pad_id: int = 0) -> Batch:
  """Packs rows of (token ids, loss mask over those ids) into a Batch of bucketed shapes.

  The first token of a row cannot carry loss (nothing predicts it); ``max_len`` caps T (a longer row is
  an error: truncate when tokenizing).
  """
  lens = [len(t) for t, _ in rows]
  t_len = _round_up(max(lens), seq_bucket)
  if max_len is not None:
    if max(lens) > max_len:
      raise ValueError(f"a row of {max(lens)} tokens exceeds max_len={max_len}")
    t_len = min(t_len, max_len)
  n_slots = [int(np.count_nonzero(m)) for _, m in rows]
  s_len = _round_up(max(max(n_slots), 1), slot_bucket)
  b = len(rows)
  tokens = np.full((b, t_len), pad_id, np.int32)
  valid = np.zeros((b, t_len), bool)
  slot_pos = np.zeros((b, s_len), np.int32)
  slot_target = np.zeros((b, s_len), np.int32)
  slot_mask = np.zeros((b, s_len), bool)
  for i, (toks, mask) in enumerate(rows):
    toks, mask = np.asarray(toks, np.int32), np.asarray(mask, bool)
    if mask.shape != toks.shape:
      raise ValueError(f"row {i}: loss mask of shape {mask.shape} for {toks.shape} tokens")
    if mask[:1].any():
      raise ValueError(f"row {i}: the first token cannot carry loss")
    tokens[i, :len(toks)] = toks
    valid[i, :len(toks)] = True
    where = np.flatnonzero(mask)
    slot_pos[i, :len(where)] = where - 1
    slot_target[i, :len(where)] = toks[where]
    slot_mask[i, :len(where)] = True
  r = np.zeros((b,), np.float32) if rewards is None else np.asarray(rewards, np.float32)
  if r.shape != (b,):
    raise ValueError(f"{r.shape[0]} rewards for {b} rows")
  return Batch(tokens, valid, slot_pos, slot_target, slot_mask, r)


def batch_shardings(mesh: Mesh, rules: Rules) -> Batch:
  """Every batch array split over the rules' "batch" mesh axes on its first dimension."""
  two = NamedSharding(mesh, rules.spec(("batch", None)))
  one = NamedSharding(mesh, rules.spec(("batch",)))
  return Batch(two, two, two, two, two, one)


def put_batch(batch: Batch, mesh: Mesh, rules: Rules) -> Batch:
  """The host batch as global arrays on the batch shardings. Every process holds the whole (identical)
  batch and places only the shards of its own devices, so this also works across several processes."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return Batch(*(put(x, sh) for x, sh in zip(batch, batch_shardings(mesh, rules))))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
  """How many ways the rules split the batch dimension on ``mesh``."""
  entry = rules.spec(("batch",))[0]
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return int(np.prod([mesh.shape[n] for n in names]))


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step.

  Attributes:
    loss: the loss (losses.LossConfig).
    group_size: G rows per group for the baseline (the batch's rows are N groups of G).
    micro_batches: A slices of the batch whose gradients are summed before the update.
  """

  loss: losses.LossConfig = losses.LossConfig()
  group_size: int = 1
  micro_batches: int = 1


def _micro(x: jax.Array, a: int, mesh: Mesh, rules: Rules) -> jax.Array:
  """[B, ...] -> [A, B / A, ...] with micro-batch k = rows k, k + A, ... (spread over all shards)."""
  b = x.shape[0]
  y = x.reshape(b // a, a, *x.shape[1:]).swapaxes(0, 1)
  spec = rules.spec(("batch",))
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, *spec, *([None] * (x.ndim - 1)))))


def _ordered_remat(fn: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array], policy=None):
  """``fn(state, x, positions, valid) -> y`` whose backward pass recomputes ``fn`` from its inputs
  (``policy`` None), or keeps what the jax.checkpoint ``policy`` saves and recomputes the rest.

  Unlike ``jax.checkpoint``, the recomputation is tied to the arriving cotangent by an optimization
  barrier, so XLA cannot schedule it early (XLA:CPU hoists a plain checkpoint's recomputation into the
  forward pass, which keeps every block's activations alive and saves no memory).
  """

  @jax.custom_vjp
  def f(state, x, positions, valid):
    return fn(state, x, positions, valid)

  def fwd(state, x, positions, valid):
    if policy is not None:  # the residuals are what the policy saves, inside the VJP function
      return jax.vjp(jax.checkpoint(lambda s, x_: fn(s, x_, positions, valid), policy=policy), state, x)
    return fn(state, x, positions, valid), (state, x, positions, valid)

  def after(ct, tree):
    # XLA:CPU drops optimization barriers before scheduling; a real (numerically inert) data
    # dependency on the cotangent is what keeps the recomputation in the backward pass.
    zero = ct.reshape(-1)[0] * 0
    return jax.tree.map(lambda r: r + zero.astype(r.dtype) if jnp.issubdtype(r.dtype, jnp.floating) else r, tree)

  def bwd(res, ct):
    if policy is not None:  # the saved residuals wait for the cotangent
      d_state, d_x = after(ct, res)(ct)
      return d_state, d_x, None, None
    state, x, positions, valid, ct = jax.lax.optimization_barrier((*res, ct))
    x = after(ct, x)
    _, vjp = jax.vjp(lambda s, x_: fn(s, x_, positions, valid), state, x)
    d_state, d_x = vjp(ct)
    return d_state, d_x, None, None

  f.defvjp(fwd, bwd)
  return f


def hidden_states(model, tokens: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
  """The model's final hidden states [B, T, D] (what ``model(tokens, positions, valid)`` returns), with
  each block rematerialised in the backward pass when ``model.config.remat`` (see _ordered_remat)."""
  if not model.config.remat:
    return model(tokens, positions, valid)
  policy = checkpoint_policy(model.config.remat_policy)
  x = model.shard(model.embed(tokens), "batch", "seq", "act_embed")
  for block in model.layers:
    gd, st = nnx.split(block)
    x = _ordered_remat(lambda s, h, p, v, gd=gd: nnx.merge(gd, s)(h, p, v), policy)(st, x, positions, valid)
  return model.final_norm(x)


def slot_stats(graphdef: nnx.GraphDef, params: Params, batch: Batch, chunk: int,
               entropy: bool = True) -> losses.SlotStats:
  """The policy's log-probs (and entropies) at the loss slots: the model runs over all T positions, the
  LM head only over the S slots (losses.slot_logprobs)."""
  model = nnx.merge(graphdef, params)
  hidden = hidden_states(model, batch.tokens, positions_from_valid(batch.valid), batch.valid)
  h = losses.gather_slots(hidden, batch.slot_pos)
  return losses.slot_logprobs(model.logits, h, batch.slot_target, chunk, entropy)


def _step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, lr_fn: optax.Schedule,
          cfg: StepConfig, mesh: Mesh, rules: Rules, state: TrainState, ref_params: Params | None,
          batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  lc = cfg.loss
  a = cfg.micro_batches
  b = batch.tokens.shape[0]
  shards = batch_shards(mesh, rules)
  if b % (a * shards) or (lc.kind == "pg" and b % cfg.group_size):
    # Each micro-batch must spread evenly over the batch shards, or slicing it out moves data.
    raise ValueError(f"batch of {b} rows: not a multiple of micro_batches={a} x {shards} batch shards, or "
                     f"of group_size={cfg.group_size}")
  normalizer = jnp.maximum(jnp.sum(batch.slot_mask), 1).astype(jnp.float32)
  rewards = batch.rewards.astype(jnp.float32)
  if lc.kind == "pg":
    adv = losses.group_advantages(rewards.reshape(-1, cfg.group_size), lc.baseline, lc.normalize_std,
                                  lc.std_eps).reshape(b)
  else:
    adv = jnp.zeros_like(rewards)
  micro = jax.tree.map(lambda x: _micro(x, a, mesh, rules), (batch, adv))

  def loss_fn(params, mb: Batch, mb_adv, ref_logp):
    stats = slot_stats(graphdef, params, mb, lc.chunk)
    if lc.kind == "sft":
      parts = losses.sft_loss(stats, mb.slot_mask, normalizer)
    else:
      parts = losses.pg_loss(stats, mb.slot_mask, mb_adv, ref_logp, normalizer, lc.kl_coef, lc.kl_estimator)
    return parts.total, parts

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def body(acc, xs):
    mb, mb_adv = xs
    ref_logp = None
    if lc.uses_reference:
      ref_logp = jax.lax.stop_gradient(slot_stats(graphdef, ref_params, mb, lc.chunk, entropy=False).logp)
    (_, parts), grads = grad_fn(state.params, mb, mb_adv, ref_logp)
    return (grads if acc is None else jax.tree.map(jnp.add, acc, grads)), parts

  if a == 1:  # no accumulator: a zero-filled copy of the parameters costs memory for nothing
    grads, parts = body(None, jax.tree.map(lambda x: x[0], micro))
  else:
    grads, parts = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, state.params), micro)
    parts = jax.tree.map(jnp.sum, parts)  # each part is already divided by the global token count
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
  metrics = {
      "loss": parts.total, "pg_loss": parts.pg, "kl": parts.kl, "nll": parts.nll, "entropy": parts.entropy,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": lr_fn(state.step), "loss_tokens": normalizer,
      "advantage_abs_mean": jnp.mean(jnp.abs(adv)),
  }
  new = TrainState(params, opt_state, state.step + 1, new_rng, state.data_pos)
  return new, metrics


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, lr_fn: optax.Schedule,
                    cfg: StepConfig, mesh: Mesh, rules: Rules, state_sh: TrainState,
                    ref_sh: Params | None) -> Callable[[TrainState, Params | None, Batch],
                                                       tuple[TrainState, dict[str, jax.Array]]]:
  """``step(state, ref_params, batch) -> (new state, metrics)``, jitted on ``mesh``.

  ``graphdef`` decides the model (remat comes from its config); ``state`` is donated (the batch has no
  output to alias, so donating it would only warn);
  ``ref_params`` (None unless the loss uses the reference policy) is not. The caller advances
  ``state.data_pos`` (it is host bookkeeping). The step compiles with ``xla_options.compiler_options``
  for the mesh's platform (on XLA:CPU: only dots go to YNNPACK, ~13% faster for the 270M).
  """
  rep = replicated(mesh)
  fn = functools.partial(_step, graphdef, optimizer, lr_fn, cfg, mesh, rules)
  return jax.jit(fn, in_shardings=(state_sh, ref_sh, batch_shardings(mesh, rules)),
                 out_shardings=(state_sh, rep), donate_argnums=0,
                 compiler_options=compiler_options(mesh.devices.flat[0].platform))
