"""Multi-process start-up: ``jax.distributed.initialize`` from explicit flags or the environment.

- explicit: ``--coordinator_address=host:port --num_processes=N --process_id=I`` (any cluster, or
  several processes on one machine);
- TPU VM pods: every worker runs the same command; JAX finds the pod from the TPU metadata;
- SLURM: one task per host (``srun``); JAX reads SLURM_* variables.

Single-process runs (no flags, no cluster in the environment) skip initialisation.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def cluster_in_environment() -> str | None:
  """Which multi-process environment we are in, if any."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "slurm"
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu_pod"
  return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Initialises jax.distributed when asked to or when a cluster is detected; returns whether it did."""
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
  if cluster_in_environment():
    jax.distributed.initialize()
    return True
  return False


def to_host(x) -> np.ndarray:
  """A jax.Array as a numpy array on every process, also when it spans other processes' devices.

  Single-process (or fully addressable) arrays are read directly; otherwise every process must call
  this at the same point (it is a collective), as SPMD code does.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
