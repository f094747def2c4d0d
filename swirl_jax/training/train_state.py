"""The train state: everything a checkpoint must hold to resume a run exactly.

``TrainState`` is a pytree of params (a plain nested dict of arrays, ``nnx.to_pure_dict`` of the model's
parameters: it merges back with the model's graphdef and checkpoints as a plain tree), the optimizer
state, the step, the RNG key data and the data position (examples consumed so far).

The reference policy of the KL penalty is *not* part of the state: it is the initial model, which the
caller can always load again from its source, so a checkpoint never stores the weights twice. A
fingerprint of the reference weights goes into the checkpoint metadata, so resuming against a different
initial model is refused rather than silently training against the wrong reference.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swirl_jax.distributed import to_host
from swirl_jax.models.gemma import Gemma
from swirl_jax.models.sharding import Rules, param_shardings

Params = dict[str, Any]


class TrainState(NamedTuple):
  """params: nested dict of arrays; opt_state: optax state; step: int32 []; rng: uint32 key data [2]
  (raw, so checkpoints need no key handler); data_pos: int32 [] examples consumed."""

  params: Params
  opt_state: optax.OptState
  step: jax.Array
  rng: jax.Array
  data_pos: jax.Array


def model_params(model: Gemma) -> Params:
  """The model's parameters as a plain nested dict (the arrays themselves, not copies)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def params_shardings(model: Gemma, mesh: Mesh, rules: Rules) -> Params:
  """NamedSharding of every parameter (same nested-dict structure as ``model_params``)."""
  return nnx.to_pure_dict(param_shardings(nnx.state(model, nnx.Param), mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(optimizer: optax.GradientTransformation, params: Params, param_sh: Params,
                    mesh: Mesh) -> TrainState:
  """Shardings of a TrainState: optimizer moments like their parameters, scalars replicated."""
  abstract_opt = jax.eval_shape(optimizer.init, params)
  rep = replicated(mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: rep)
  return TrainState(param_sh, opt_sh, rep, rep, rep)


def init_train_state(params: Params, optimizer: optax.GradientTransformation, seed: int,
                     shardings: TrainState) -> TrainState:
  """A fresh state at step 0 on the given shardings. ``params`` are copied (the step donates them)."""

  def init(p):
    return TrainState(jax.tree.map(jnp.copy, p), optimizer.init(p), jnp.zeros((), jnp.int32),
                      jax.random.key_data(jax.random.key(seed)), jnp.zeros((), jnp.int32))

  return jax.jit(init, out_shardings=shardings)(params)


def abstract_train_state(optimizer: optax.GradientTransformation, params: Params,
                         shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings of a TrainState: the restore target of a checkpoint."""
  shapes = jax.eval_shape(lambda p: TrainState(p, optimizer.init(p), jnp.zeros((), jnp.int32),
                                               jax.random.key_data(jax.random.key(0)),
                                               jnp.zeros((), jnp.int32)), params)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def copy_params(params: Params, shardings: Params | None = None) -> Params:
  """A distinct copy of the parameters (the reference policy must survive the step's donation)."""
  return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def fingerprint(params: Params) -> str:
  """A short hash of the parameters: every leaf's path, shape, dtype and first 64 values (exact, so the
  same weights give the same fingerprint on any mesh; no reduction whose rounding depends on layout)."""
  heads = jax.jit(lambda p: jax.tree.map(lambda x: x.reshape(-1)[:64], p))(params)
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.tree.map(to_host, heads))[0]:
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]
