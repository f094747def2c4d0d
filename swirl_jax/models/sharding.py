"""Device mesh and logical-axis sharding rules.

Every parameter carries logical axis names (``nnx.Param(..., axes=("embed", "mlp"))``). A rule table maps
each logical name to mesh axes; ``param_shardings`` turns the names into ``NamedSharding``s and refuses a
mesh that does not divide a dimension, naming the parameter, the dimension and the axis. Activations use
the same rules through ``ActivationSharding`` so that the batch is split over (data, fsdp) everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. FSDP shards the residual (embed) dimension of every weight; tensor
# parallelism shards heads, the MLP hidden dimension and the vocabulary (Megatron layout).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


class ShardingError(ValueError):
  """A mesh that cannot hold a parameter or activation as the rules ask."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Shape of the (data, fsdp, tensor) device mesh. One entry may be -1: it takes the remaining devices."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    dims = [self.data, self.fsdp, self.tensor]
    for axis, d in zip(MESH_AXES, dims):
      # bool is an int; a float or 0 would fail later with an unrelated numpy or division error
      if isinstance(d, bool) or not isinstance(d, numbers.Integral) or (d < 1 and d != -1):
        raise ShardingError(f"mesh.{axis}={d!r}: each of mesh.data / mesh.fsdp / mesh.tensor must be a "
                            "positive integer or -1 (the remaining devices)")
    if dims.count(-1) > 1:
      named = ", ".join(f"mesh.{a}" for a, d in zip(MESH_AXES, dims) if d == -1)
      raise ShardingError(f"mesh {dims}: at most one axis may be -1 ({named} are)")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
      if num_devices % known:
        raise ShardingError(f"mesh {dims}: {num_devices} devices are not divisible by {known}; set "
                            "mesh.data / mesh.fsdp / mesh.tensor so their product divides the device count")
      dims[dims.index(-1)] = num_devices // known
    if math.prod(dims) != num_devices:
      raise ShardingError(
          f"mesh (data={dims[0]}, fsdp={dims[1]}, tensor={dims[2]}) needs {math.prod(dims)} devices, "
          f"there are {num_devices}; set mesh.data / mesh.fsdp / mesh.tensor (one may be -1) to match")
    return tuple(dims)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor) over ``devices`` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = config.shape(len(devices))
  try:
    from jax.experimental import mesh_utils
    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class Rules:
  """Logical axis name -> mesh axis (str), several mesh axes (tuple) or None (replicated)."""

  table: tuple[tuple[str, Any], ...] = DEFAULT_RULES

  @classmethod
  def make(cls, overrides: Mapping[str, Any] | None = None) -> "Rules":
    d = dict(DEFAULT_RULES)
    for k, v in (overrides or {}).items():
      if k not in d:
        raise ShardingError(f"unknown logical axis {k!r} in sharding rules; known: {sorted(d)}")
      d[k] = tuple(v) if isinstance(v, list) else v
    return cls(tuple(d.items()))

  def spec(self, axes: Sequence[str | None]) -> P:
    d = dict(self.table)
    out = []
    for a in axes:
      if a is not None and a not in d:
        raise ShardingError(f"logical axis {a!r} has no sharding rule; known: {sorted(d)}")
      out.append(None if a is None else d[a])
    return P(*out)


def _mesh_size(mesh: Mesh, entry: Any) -> int:
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[n] for n in names)


def checked_spec(name: str, shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh, rules: Rules) -> P:
  """The PartitionSpec of one array, after checking the mesh divides every sharded dimension."""
  if len(axes) != len(shape):
    raise ShardingError(f"{name}: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}")
  spec = rules.spec(axes)
  for dim, (size, logical, entry) in enumerate(zip(shape, axes, spec)):
    n = _mesh_size(mesh, entry)
    if size % n:
      raise ShardingError(
          f"parameter {name!r}: dimension {dim} ({logical!r}, size {size}) is not divisible by mesh axis "
          f"{entry!r} of size {n}; {_remedy(logical, entry)}")
  return spec


def _remedy(logical: str | None, entry: Any) -> str:
  """How a user fixes an indivisible dimension, in the config keys the CLI exposes."""
  names = entry if isinstance(entry, tuple) else (entry,)
  keys = " / ".join(f"--config.mesh.{a}" for a in names if a in MESH_AXES) or "the mesh"
  hint = f"change {keys} so that it divides the dimension"
  if logical == "kv_heads":
    hint = f"set --config.mesh.replicate_kv_heads=true (replicate K/V projections) or {hint}"
  # a rules override is only reachable from Python (Rules.make), not from the command line
  return f"{hint}, or from Python map {logical!r} to None with Rules.make"


def _path_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_specs(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
  """PartitionSpec for every Param of ``state`` (abstract or concrete) from its ``axes`` metadata."""

  def one(path, v):
    axes = v.get_metadata().get("axes")
    if axes is None:
      raise ShardingError(f"parameter {_path_name(path)!r} has no logical axes")
    return v.replace(checked_spec(_path_name(path), v.shape, axes, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
  """NamedSharding for every Param of ``state``, as a State of the same structure."""
  specs = param_specs(state, mesh, rules)
  return jax.tree.map(lambda v: v.replace(NamedSharding(mesh, v.get_value())), specs,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = Rules()) -> nnx.Module:
  """Places every parameter of ``model`` on ``mesh`` as the rules say (in place); returns the model."""
  state = nnx.state(model)
  shardings = param_shardings(state, mesh, rules)
  placed = jax.tree.map(lambda v, s: v.replace(jax.device_put(v.get_value(), s.get_value())),
                        state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  nnx.update(model, placed)
  return model


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
  """Constrains activations inside the jitted model to the rules' layout.

  ``None`` mesh means single-device: constraints are skipped. A dimension the mesh does not divide is
  left to XLA's propagation rather than refused, because batch sizes vary between calls.
  """

  mesh: Mesh | None = None
  rules: Rules = Rules()

  def __call__(self, x: jax.Array, *axes: str | None) -> jax.Array:
    if self.mesh is None:
      return x
    spec = self.rules.spec(axes)
    # UNCONSTRAINED, not None: None would force the dimension to be replicated (a batch of 2 split over
    # data=2 gathered onto every device)
    spec = P(*(e if x.shape[i] % _mesh_size(self.mesh, e) == 0 else P.UNCONSTRAINED for i, e in enumerate(spec)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))
