"""The sharded train step (policy gradient or SFT), and the host-side packing of its batch.

Shapes: N rows held in R sequences of k rows each, T tokens per sequence, S loss slots per row, A
micro-batches, G rows per group (state).

``pack_batch`` turns (token ids, loss mask) pairs into a ``Batch`` of fixed shapes: T and S are rounded
up to buckets, so the step compiles once per (T, S) bucket pair however many batches it sees. Slot j of
row i holds the j-th loss token of the row: ``slot_target`` its id and ``slot_pos`` the index in the
sequence of the token whose hidden state predicts it (the token before it); unused slots are masked.
With k = 1 a sequence is one row. With k = G (``prefix_group``; RL with ``train.share_prefix``) a
sequence holds a state once and the G actions sampled from it after it, each attending to the state and
to itself only, so the state's tokens go through the model once per group instead of G times: the same
loss and gradient for fewer FLOPs.

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

from swirl_jax.models.gemma import checkpoint_policy
from swirl_jax.models.sharding import Rules
from swirl_jax.training import losses
from swirl_jax.training.train_state import Params, TrainState, replicated
from swirl_jax.xla_options import compiler_options


class Batch(NamedTuple):
  """One optimizer step's data (numpy on the host, sharded arrays in the step): N rows (token
  sequences with a loss mask) held in R sequences of k = N / R rows each (``pack_batch``).

  tokens: [R, T] int32, right-padded; valid: [R, T] bool; positions: [R, T] int32 (the position of each
  token in its row); segments: [R, T] int32 (0 = shared by the sequence's rows, i + 1 = only row i's;
  see gemma.attention_mask); slot_pos, slot_target, slot_mask: [R, k * S] (row i of a sequence owns
  slots i * S ... i * S + S - 1); rewards: [N] float32 (rows ordered group by group: G consecutive rows
  share a state; unused by SFT). With k = 1 every row is its own sequence and segments are all 0.
  """

  tokens: Any
  valid: Any
  positions: Any
  segments: Any
  slot_pos: Any
  slot_target: Any
  slot_mask: Any
  rewards: Any

  @property
  def rows_per_sequence(self) -> int:
    # size, not shape[0]: inside the step the rewards of a micro-batch are [R', k]
    return self.rewards.size // self.tokens.shape[0]

  def row_tokens(self) -> int:
    """Tokens of the N rows as written (a shared prefix counts once per row that holds it)."""
    valid, shared = np.asarray(self.valid), np.asarray(self.segments) == 0
    return int(np.count_nonzero(valid & ~shared) + self.rows_per_sequence * np.count_nonzero(valid & shared))


def _round_up(n: int, bucket: int) -> int:
  return max(bucket, -(-n // bucket) * bucket)


def _common_prefix(rows: Sequence[np.ndarray]) -> int:
  """The length of the longest common prefix of ``rows`` (the whole row for a single one)."""
  n = min(len(r) for r in rows)
  for r in rows[1:]:
    diff = np.flatnonzero(r[:n] != rows[0][:n])
    if diff.size:
      n = int(diff[0])
  return n


def pack_batch(rows: Sequence[tuple[Sequence[int], Sequence[bool]]], rewards: Sequence[float] | None = None,
               *, seq_bucket: int = 64, slot_bucket: int = 16, max_len: int | None = None,
               pad_id: int = 0, prefix_group: int = 1) -> Batch:
  """Packs rows of (token ids, loss mask over those ids) into a Batch of bucketed shapes.

  The first token of a row cannot carry loss (nothing predicts it); ``max_len`` caps a row's length (a
  longer row is an error: truncate when tokenizing).

  ``prefix_group`` = k > 1 packs each k consecutive rows into one sequence: their longest common prefix
  once (segment 0), then each row's remaining tokens (segment i + 1), positions continuing from the
  prefix. Attention keeps every row blind to the others, so each row's hidden states, and so the loss
  and its gradient, are those of the row alone; but the prefix (in RL: the state its G actions were
  sampled from) runs through the model once instead of k times.
  """
  n = len(rows)
  if n % prefix_group:
    raise ValueError(f"{n} rows do not split into groups of prefix_group={prefix_group}")
  toks_all, masks_all = [], []
  for i, (toks, mask) in enumerate(rows):
    toks, mask = np.asarray(toks, np.int32), np.asarray(mask, bool)
    if mask.shape != toks.shape:
      raise ValueError(f"row {i}: loss mask of shape {mask.shape} for {toks.shape} tokens")
    if mask[:1].any():
      raise ValueError(f"row {i}: the first token cannot carry loss")
    if max_len is not None and len(toks) > max_len:
      raise ValueError(f"row {i} of {len(toks)} tokens exceeds max_len={max_len}")
    toks_all.append(toks)
    masks_all.append(mask)
  seqs = []  # per sequence: (tokens, positions, segments, [(slot_pos, slot_target)] per row)
  for g in range(0, n, prefix_group):
    group = toks_all[g:g + prefix_group]
    shared = _common_prefix(group)
    parts, pos, seg = [group[0][:shared]], [np.arange(shared)], [np.zeros(shared, np.int32)]
    slots, offset = [], shared
    for i, toks in enumerate(group):
      tail = len(toks) - shared
      parts.append(toks[shared:])
      pos.append(np.arange(shared, len(toks)))
      seg.append(np.full(tail, i + 1, np.int32))
      where = np.flatnonzero(masks_all[g + i])
      pred = where - 1  # the position whose hidden state predicts the loss token
      slots.append((np.where(pred < shared, pred, pred - shared + offset), toks[where]))
      offset += tail
    seqs.append((np.concatenate(parts), np.concatenate(pos), np.concatenate(seg), slots))
  longest = max(len(s[0]) for s in seqs)
  t_len = _round_up(longest, seq_bucket)
  if max_len is not None:
    t_len = min(t_len, max(max_len, longest))
  s_len = _round_up(max([len(p) for s in seqs for p, _ in s[3]] + [1]), slot_bucket)
  r, k = len(seqs), prefix_group
  tokens = np.full((r, t_len), pad_id, np.int32)
  valid = np.zeros((r, t_len), bool)
  positions = np.zeros((r, t_len), np.int32)
  segments = np.zeros((r, t_len), np.int32)
  slot_pos = np.zeros((r, k * s_len), np.int32)
  slot_target = np.zeros((r, k * s_len), np.int32)
  slot_mask = np.zeros((r, k * s_len), bool)
  for j, (toks, pos, seg, slots) in enumerate(seqs):
    tokens[j, :len(toks)] = toks
    valid[j, :len(toks)] = True
    positions[j, :len(toks)] = pos
    segments[j, :len(toks)] = seg
    for i, (sp, st) in enumerate(slots):
      slot_pos[j, i * s_len:i * s_len + len(sp)] = sp
      slot_target[j, i * s_len:i * s_len + len(sp)] = st
      slot_mask[j, i * s_len:i * s_len + len(sp)] = True
  rw = np.zeros((n,), np.float32) if rewards is None else np.asarray(rewards, np.float32)
  if rw.shape != (n,):
    raise ValueError(f"{rw.shape[0]} rewards for {n} rows")
  return Batch(tokens, valid, positions, segments, slot_pos, slot_target, slot_mask, rw)


def batch_shardings(mesh: Mesh, rules: Rules) -> Batch:
  """Every batch array split over the rules' "batch" mesh axes on its first dimension."""
  two = NamedSharding(mesh, rules.spec(("batch", None)))
  one = NamedSharding(mesh, rules.spec(("batch",)))
  return Batch(two, two, two, two, two, two, two, one)


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


def _ordered_remat(fn: Callable[[Any, jax.Array, tuple[jax.Array, ...]], jax.Array], policy=None):
  """``fn(state, x, aux) -> y`` (``aux``: a tuple of arrays that get no gradient, such as positions)
  whose backward pass recomputes ``fn`` from its inputs (``policy`` None), or keeps what the
  jax.checkpoint ``policy`` saves and recomputes the rest.

  Unlike ``jax.checkpoint``, the recomputation is tied to the arriving cotangent by an optimization
  barrier, so XLA cannot schedule it early (XLA:CPU hoists a plain checkpoint's recomputation into the
  forward pass, which keeps every block's activations alive and saves no memory).
  """

  @jax.custom_vjp
  def f(state, x, aux):
    return fn(state, x, aux)

  def fwd(state, x, aux):
    if policy is not None:  # the residuals are what the policy saves, inside the VJP function
      return jax.vjp(jax.checkpoint(lambda s, x_: fn(s, x_, aux), policy=policy), state, x)
    return fn(state, x, aux), (state, x, aux)

  def after(ct, tree):
    # XLA:CPU drops optimization barriers before scheduling; a real (numerically inert) data
    # dependency on the cotangent is what keeps the recomputation in the backward pass.
    zero = ct.reshape(-1)[0] * 0
    return jax.tree.map(lambda r: r + zero.astype(r.dtype) if jnp.issubdtype(r.dtype, jnp.floating) else r, tree)

  def bwd(res, ct):
    if policy is not None:  # the saved residuals wait for the cotangent
      d_state, d_x = after(ct, res)(ct)
      return d_state, d_x, None
    state, x, aux, ct = jax.lax.optimization_barrier((*res, ct))
    x = after(ct, x)
    _, vjp = jax.vjp(lambda s, x_: fn(s, x_, aux), state, x)
    d_state, d_x = vjp(ct)
    return d_state, d_x, None

  f.defvjp(fwd, bwd)
  return f


def hidden_states(model, tokens: jax.Array, positions: jax.Array, valid: jax.Array,
                  segments: jax.Array | None = None) -> jax.Array:
  """The model's final hidden states [B, T, D] (what ``model(tokens, positions, valid, segments)``
  returns), with each block rematerialised in the backward pass when ``model.config.remat`` (see
  _ordered_remat)."""
  if not model.config.remat:
    return model(tokens, positions, valid, segments)
  policy = checkpoint_policy(model.config.remat_policy)
  x = model.shard(model.embed(tokens), "batch", "seq", "act_embed")
  for block in model.layers:
    gd, st = nnx.split(block)
    x = _ordered_remat(lambda s, h, aux, gd=gd: nnx.merge(gd, s)(h, aux[0], aux[1], segments=aux[2]),
                       policy)(st, x, (positions, valid, segments))
  return model.final_norm(x)


def slot_stats(graphdef: nnx.GraphDef, params: Params, batch: Batch, chunk: int,
               entropy: bool = True) -> losses.SlotStats:
  """The policy's log-probs (and entropies) at the loss slots [R, k * S]: the model runs over all T
  positions of the R sequences, the LM head only over the slots (losses.slot_logprobs)."""
  model = nnx.merge(graphdef, params)
  hidden = hidden_states(model, batch.tokens, batch.positions, batch.valid, batch.segments)
  h = losses.gather_slots(hidden, batch.slot_pos)
  return losses.slot_logprobs(model.logits, h, batch.slot_target, chunk, entropy)


def _step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, lr_fn: optax.Schedule,
          cfg: StepConfig, mesh: Mesh, rules: Rules, state: TrainState, ref_params: Params | None,
          batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  lc = cfg.loss
  a = cfg.micro_batches
  r, n = batch.tokens.shape[0], batch.rewards.shape[0]  # sequences, rows
  shards = batch_shards(mesh, rules)
  if n % r or r % (a * shards) or (lc.kind == "pg" and n % cfg.group_size):
    # Each micro-batch must spread evenly over the batch shards, or slicing it out moves data.
    raise ValueError(f"batch of {n} rows in {r} sequences: the sequences are not a multiple of "
                     f"micro_batches={a} x {shards} batch shards, or the rows not of "
                     f"group_size={cfg.group_size}")
  k = batch.rows_per_sequence  # pack_batch's prefix_group
  normalizer = jnp.maximum(jnp.sum(batch.slot_mask), 1).astype(jnp.float32)
  rewards = batch.rewards.astype(jnp.float32)
  if lc.kind == "pg":
    adv = losses.group_advantages(rewards.reshape(-1, cfg.group_size), lc.baseline, lc.normalize_std,
                                  lc.std_eps).reshape(n)
  else:
    adv = jnp.zeros_like(rewards)
  # rows as [R, k] so that a micro-batch takes whole sequences with their rows
  micro = jax.tree.map(lambda x: _micro(x, a, mesh, rules),
                       (batch._replace(rewards=rewards.reshape(r, k)), adv.reshape(r, k)))

  def by_row(x):  # [R', k * S] -> [R' * k, S]: one row of slots per row
    return None if x is None else x.reshape(x.shape[0] * k, -1)

  def loss_fn(params, mb: Batch, mb_adv, ref_logp):
    stats = losses.SlotStats(*map(by_row, slot_stats(graphdef, params, mb, lc.chunk)))
    mask = by_row(mb.slot_mask)
    if lc.kind == "sft":
      parts = losses.sft_loss(stats, mask, normalizer)
    else:
      parts = losses.pg_loss(stats, mask, mb_adv.reshape(-1), by_row(ref_logp), normalizer, lc.kl_coef,
                             lc.kl_estimator)
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
