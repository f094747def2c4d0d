"""Building a Gemma model from a source of weights, placing each tensor directly on its shards.

The model is created abstractly (no memory), then each parameter is read, converted to our layout, cast to
the parameter dtype and put on the mesh one at a time, so host memory holds one tensor at a time and a
sharded model never exists unsharded on one device.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from swirl_jax.models.config import ModelConfig
from swirl_jax.models.gemma import Gemma
from swirl_jax.models.sharding import ActivationSharding, Rules, param_shardings


def _path(p) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)


def abstract_model(cfg: ModelConfig, mesh: Mesh | None = None, rules: Rules = Rules()) -> Gemma:
  """A Gemma whose parameters are ShapeDtypeStructs (no memory allocated)."""
  return nnx.eval_shape(lambda: Gemma(cfg, rngs=nnx.Rngs(0), shard=ActivationSharding(mesh, rules)))


def build_model(cfg: ModelConfig, fetch: Callable[[str], np.ndarray], mesh: Mesh | None = None,
                rules: Rules = Rules()) -> Gemma:
  """A Gemma of ``cfg`` whose parameters come from ``fetch(our_path) -> array in our layout``."""
  graphdef, state = nnx.split(abstract_model(cfg, mesh, rules))
  shardings = param_shardings(state, mesh, rules) if mesh is not None else None
  flat_sh = ({".".join(map(str, k)): v for k, v in nnx.to_flat_state(shardings)}
             if shardings is not None else {})
  dtype = cfg.jnp_param_dtype

  def place(path, var):
    name = _path(path)
    arr = np.asarray(fetch(name))
    if arr.shape != var.shape:
      raise ValueError(f"weight {name!r} has shape {arr.shape}, the model config expects {var.shape}")
    arr = arr.astype(dtype)
    if mesh is not None and name not in flat_sh:
      raise KeyError(f"no sharding computed for parameter {name!r}")
    sh = flat_sh[name].get_value() if mesh is not None else None
    return var.replace(jax.device_put(arr, sh))

  state = jax.tree_util.tree_map_with_path(place, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def random_model(cfg: ModelConfig, seed: int = 0, mesh: Mesh | None = None, rules: Rules = Rules()) -> Gemma:
  """A randomly initialised Gemma (for tests and benchmarks), sharded like a loaded one."""
  from swirl_jax.models.sharding import shard_model

  model = Gemma(cfg, rngs=nnx.Rngs(seed), shard=ActivationSharding(mesh, rules))
  return shard_model(model, mesh, rules) if mesh is not None else model


def model_weights(model: Gemma) -> dict[str, np.ndarray]:
  """Our path -> host numpy array, for every parameter (gathers sharded arrays)."""
  state = nnx.state(model, nnx.Param)
  return {".".join(str(k) for k in path): np.asarray(jax.device_get(v.get_value()))
          for path, v in nnx.to_flat_state(state)}
