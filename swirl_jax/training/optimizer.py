"""AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay on matrices only.

Gradient accumulation is not an optax wrapper here: the train step splits its batch into
``micro_batches`` and sums their gradients before the one update (train_step.py), so an optimizer step
always sees the gradient of the whole batch and the optimizer state never holds a partial sum (which
keeps checkpoints simple and resume exact).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Settings of the optimiser.

  Attributes:
    learning_rate: peak learning rate (reached after warmup).
    warmup_steps: linear warmup from 0 over this many steps.
    decay_steps: length of the cosine decay after warmup (0 = constant after warmup).
    end_lr_ratio: the learning rate at the end of the decay, as a fraction of the peak.
    b1 / b2 / eps: Adam moments.
    weight_decay: decoupled weight decay, applied to parameters with 2+ dimensions (not to norms).
    clip_norm: clip the gradient to this global norm (0 = no clipping).
  """

  learning_rate: float = 1e-5
  warmup_steps: int = 10
  decay_steps: int = 0
  end_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0

  def __post_init__(self):
    if self.learning_rate <= 0 or self.warmup_steps < 0 or self.decay_steps < 0 or self.clip_norm < 0:
      raise ValueError(f"invalid optimizer settings: {self}")


def schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Learning rate of optimizer step s (s = 0 is the first update).

  Warmup: peak * (s + 1) / warmup_steps for s < warmup_steps (the first update is not zero); then a
  cosine from the peak to peak * end_lr_ratio over decay_steps, constant afterwards.
  """
  peak, warm, decay = cfg.learning_rate, cfg.warmup_steps, cfg.decay_steps
  end = peak * cfg.end_lr_ratio

  def lr(step):
    s = jnp.asarray(step, jnp.float32)
    out = jnp.full_like(s, peak)
    if decay:
      t = jnp.clip((s - warm) / decay, 0.0, 1.0)
      out = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    if warm:
      out = jnp.where(s < warm, peak * (s + 1.0) / warm, out)
    return out

  return lr


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(the optax transformation, its learning-rate schedule)."""
  lr = schedule(cfg)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=_decay_mask))
  return optax.chain(*parts), lr
