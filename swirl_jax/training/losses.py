"""Pure loss functions of stage 2: step-wise policy gradient (REINFORCE + group baseline + KL) and SFT.

Shapes: B rows (sequences), T tokens per row, S loss slots per row, D d_model, V vocabulary, N groups
(states) of G rows (sampled actions) each, so B = N * G.

Loss positions. A row's loss covers only its action tokens (a few dozen of its T tokens), and a full
[B, T, V] logits tensor would dwarf the rest of the step (Gemma 3 has V = 262,144). So the host packs
each row's targets into S fixed *slots* (``slot_pos`` = the position whose hidden state predicts the
target, ``slot_target``, ``slot_mask``; see train_step.pack_batch), the step gathers the hidden states
of those positions ([B, S, D]), and the LM head runs on them in chunks of ``chunk`` slots under
``jax.checkpoint``: at most [B, chunk, V] float32 logits exist at once, in the forward and the backward.

The policy-gradient objective (``pg_loss``), per action token t of row i with advantage A_i:

  loss = sum_{i,t} m_it * ( -A_i * logp_it + kl_coef * kl_it ) / n_tokens

with logp_it = log pi_theta(a_it | s_i, a_i<t), n_tokens = the number of loss tokens of the whole
(global, all micro-batches) batch; so the gradient is REINFORCE with a baseline, summed over each
action's tokens, times one constant per batch (no per-sequence length normalisation, which would bias
the estimator), and gradient accumulation gives exactly the full-batch gradient. The KL penalty to the
reference policy pi_ref uses, per sampled token (``kl_estimator``):

  "k3": exp(r) - r - 1 with r = ref_logp - logp (Schulman's k3; unbiased for KL(pi_theta || pi_ref),
        always >= 0; the estimator of GRPO);
  "k2": (logp - ref_logp)^2 / 2, whose gradient (logp - ref_logp) * grad logp is the per-token
        on-policy gradient of KL(pi_theta || pi_ref).

Both are computed from the sampled tokens' log-probs only (no full-distribution KL).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

Baseline = Literal["loo", "mean", "none"]
KLEstimator = Literal["k3", "k2"]
LossKind = Literal["pg", "sft"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """What the train step minimises.

  Attributes:
    kind: "pg" (policy gradient on rewarded actions: step-wise RL, online or offline) or "sft"
      (negative log-likelihood of the recorded actions: the paper's baseline).
    baseline: per group of G actions of one state: "loo" (leave-one-out mean of the other G - 1
      rewards; unbiased), "mean" (the group mean, including the action itself), "none" (A = r).
    normalize_std: divide advantages by the group's reward standard deviation (+ std_eps). Needs a
      baseline ("loo" or "mean"): a group of equal rewards has std 0, and only centred advantages are 0
      there (with "none", A = r would become r / std_eps).
    std_eps: keeps a group of equal rewards (std 0) finite (> 0).
    kl_coef: weight of the KL penalty to the reference (initial) policy; 0 skips the reference
      forward pass entirely.
    kl_estimator: "k3" or "k2" (module docstring).
    chunk: loss slots whose logits are computed at once (0 = all S slots in one piece).
  """

  kind: LossKind = "pg"
  baseline: Baseline = "loo"
  normalize_std: bool = False
  std_eps: float = 1e-4
  kl_coef: float = 0.05
  kl_estimator: KLEstimator = "k3"
  chunk: int = 0

  def __post_init__(self):
    if self.kind not in ("pg", "sft"):
      raise ValueError(f"loss.kind must be pg or sft, got {self.kind!r}")
    if self.baseline not in ("loo", "mean", "none"):
      raise ValueError(f"loss.baseline must be loo, mean or none, got {self.baseline!r}")
    if self.kl_estimator not in ("k3", "k2"):
      raise ValueError(f"loss.kl_estimator must be k3 or k2, got {self.kl_estimator!r}")
    if self.kl_coef < 0 or self.chunk < 0:
      raise ValueError("loss.kl_coef and loss.chunk must be >= 0")
    if self.normalize_std and self.baseline == "none":
      raise ValueError("loss.normalize_std needs baseline loo or mean: with baseline none (A = r) a group of "
                       f"equal rewards r would get advantages r / std_eps = r * {1 / self.std_eps:g}")
    if not self.std_eps > 0:
      raise ValueError(f"loss.std_eps must be > 0, got {self.std_eps}")

  @property
  def uses_reference(self) -> bool:
    return self.kind == "pg" and self.kl_coef > 0


def group_advantages(rewards: jax.Array, baseline: Baseline = "loo", normalize_std: bool = False,
                     eps: float = 1e-4) -> jax.Array:
  """Advantages [N, G] from rewards [N, G] (row n = the G actions sampled for state n).

  "loo": A = r - (sum(r) - r) / (G - 1); "mean": A = r - mean(r); "none": A = r. With G == 1 both
  baselines are 0 (no other sample to compare with). ``normalize_std`` divides by std(r) + eps
  (population std over the group).
  """
  rewards = rewards.astype(jnp.float32)
  g = rewards.shape[-1]
  if baseline == "none":
    adv = rewards
  elif baseline == "mean":
    adv = rewards - rewards.mean(axis=-1, keepdims=True)
  elif baseline == "loo":
    if g == 1:
      adv = jnp.zeros_like(rewards)
    else:
      adv = rewards - (rewards.sum(axis=-1, keepdims=True) - rewards) / (g - 1)
  else:
    raise ValueError(f"unknown baseline {baseline!r}")
  if normalize_std:
    adv = adv / (rewards.std(axis=-1, keepdims=True) + eps)
  return adv


def gather_slots(hidden: jax.Array, slot_pos: jax.Array) -> jax.Array:
  """hidden [B, T, D], slot_pos [B, S] int -> the hidden states of the loss slots [B, S, D]."""
  return jnp.take_along_axis(hidden, slot_pos[:, :, None], axis=1)


class SlotStats(NamedTuple):
  """Per-slot statistics of the policy: logp [B, S] of the target and entropy [B, S] (float32)."""

  logp: jax.Array
  entropy: jax.Array


def slot_logprobs(logits_fn: Callable[[jax.Array], jax.Array], slot_hidden: jax.Array, targets: jax.Array,
                  chunk: int = 0, entropy: bool = True) -> SlotStats:
  """Log-probabilities of ``targets`` [B, S] under logits_fn(slot_hidden [B, S, D]) -> [B, S, V].

  Computed ``chunk`` slots at a time under ``jax.checkpoint``, so the backward pass recomputes each
  chunk's logits instead of keeping [B, S, V] alive. The entropy is a by-product for metrics (no
  gradient; zeros when ``entropy`` is False, which saves a pass over the logits).
  """
  b, s, d = slot_hidden.shape
  chunk = s if chunk <= 0 or chunk >= s else chunk
  if s % chunk:
    raise ValueError(f"{s} loss slots are not a multiple of chunk={chunk}")

  @jax.checkpoint
  def one(h, t):
    logits = logits_fn(h).astype(jnp.float32)  # [B, c, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse
    if not entropy:
      return logp, jnp.zeros_like(logp)
    probs = jax.lax.stop_gradient(jnp.exp(logits - lse[..., None]))
    ent = lse - jnp.sum(probs * logits, axis=-1)
    return logp, jax.lax.stop_gradient(ent)

  if chunk == s:
    return SlotStats(*one(slot_hidden, targets))
  n = s // chunk
  hs = slot_hidden.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, c, D]
  ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
  logp, ent = jax.lax.map(lambda xs: one(*xs), (hs, ts))
  return SlotStats(logp.swapaxes(0, 1).reshape(b, s), ent.swapaxes(0, 1).reshape(b, s))


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: KLEstimator = "k3") -> jax.Array:
  """Per-token KL estimate (module docstring) from sampled-token log-probs; same shape as logp."""
  if estimator == "k3":
    r = ref_logp - logp
    return jnp.exp(r) - r - 1.0
  if estimator == "k2":
    return 0.5 * jnp.square(logp - ref_logp)
  raise ValueError(f"unknown kl_estimator {estimator!r}")


class LossParts(NamedTuple):
  """Sums over the loss tokens of a (micro-)batch, each already divided by the global token count.

  total: the loss the gradient is taken of; pg: the policy-gradient part; kl: the mean per-token KL
  estimate (not multiplied by kl_coef); nll: mean negative log-likelihood of the target tokens;
  entropy: mean per-token entropy of the policy.
  """

  total: jax.Array
  pg: jax.Array
  kl: jax.Array
  nll: jax.Array
  entropy: jax.Array


def pg_loss(stats: SlotStats, mask: jax.Array, advantages: jax.Array, ref_logp: jax.Array | None,
            normalizer: jax.Array, kl_coef: float = 0.0, estimator: KLEstimator = "k3") -> LossParts:
  """REINFORCE with a baseline plus a KL penalty (module docstring).

  Args:
    stats: the policy's per-slot log-probs and entropies [B, S].
    mask: [B, S] bool, True on loss slots.
    advantages: [B] per-row advantage (treated as a constant).
    ref_logp: [B, S] the reference policy's log-probs, or None when kl_coef == 0.
    normalizer: scalar, the number of loss tokens of the global batch.
  """
  m = mask.astype(jnp.float32)
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]
  # Slots outside the mask (padding, state tokens) are zeroed before any arithmetic, not only weighted by
  # 0: k3's exp(ref - logp) overflows where the two policies disagree about a padding token, and inf * 0
  # (or a -inf logp) would make the loss and every gradient NaN.
  logp = jnp.where(mask, stats.logp, 0.0)
  pg = jnp.sum(-adv * logp * m) / normalizer
  if ref_logp is not None and kl_coef > 0:
    ref = jnp.where(mask, jax.lax.stop_gradient(ref_logp), 0.0)
    kl = jnp.sum(kl_penalty(logp, ref, estimator) * m) / normalizer
  else:
    kl = jnp.zeros((), jnp.float32)
  nll = -jnp.sum(jax.lax.stop_gradient(logp) * m) / normalizer
  ent = jnp.sum(stats.entropy * m) / normalizer
  return LossParts(pg + kl_coef * kl, pg, kl, nll, ent)


def sft_loss(stats: SlotStats, mask: jax.Array, normalizer: jax.Array) -> LossParts:
  """Negative log-likelihood of the target tokens, summed and divided by the global token count."""
  m = mask.astype(jnp.float32)
  nll = -jnp.sum(jnp.where(mask, stats.logp, 0.0) * m) / normalizer  # (as in pg_loss: no -inf * 0)
  ent = jnp.sum(stats.entropy * m) / normalizer
  zero = jnp.zeros((), jnp.float32)
  return LossParts(nll, zero, zero, jax.lax.stop_gradient(nll), ent)
