"""Multi-process start-up: ``jax.distributed.initialize`` from explicit flags or the environment.

- explicit: ``--coordinator_address=host:port --num_processes=N --process_id=I`` (any cluster, or
  several processes on one machine);
- TPU VM pods: every worker runs the same command. A pod is detected from TPU_WORKER_HOSTNAMES
  (GKE) or MEGASCALE_COORDINATOR_ADDRESS (multislice), or, on a Cloud TPU VM (JAX found libtpu and
  TPU chips when it was imported), from the GCE metadata server the way JAX itself does it; machines
  without TPU chips never query the metadata server;
- SLURM: one task per accelerator, started by ``srun``; JAX reads the SLURM_* variables and gives each
  task the device numbered SLURM_LOCALID among those the node's tasks all see.

Single-process runs (no flags, no cluster in the environment) skip initialisation.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

# What JAX's SlurmCluster.is_env_present needs: SLURM_STEP_NODELIST etc. only exist inside an srun step.
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


class StartupError(ValueError):
  """Multi-process settings (flags or environment) that cannot start a run; the message names them."""


def _multihost_cloud_tpu_vm() -> bool:
  """Whether this is one worker of a several-host Cloud TPU VM slice, asked as JAX asks it (GceTpuCluster)."""
  try:  # private JAX modules: treat their absence as "not detected" rather than fail every run
    from jax._src import cloud_tpu_init

    # Set at `import jax` from libtpu + TPU chips on the PCI bus: gates the metadata queries below, which
    # would otherwise wait on a metadata server that does not exist off Google Cloud.
    if not getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False):
      return False
    from jax._src.clusters.cloud_tpu_cluster import GceTpuCluster
  except ImportError:
    return False
  try:
    return GceTpuCluster.is_env_present() and GceTpuCluster.get_process_count() > 1
  except Exception as e:  # noqa: BLE001 - a broken metadata server should not stop a single-host run
    logging.warning("could not read the TPU VM metadata (%s); running as a single process", e)
    return False


def cluster_in_environment() -> str | None:
  """Which multi-process environment we are in, if any.

  Raises:
    StartupError: the SLURM allocation has several tasks but this process was not started by srun (e.g.
      run directly in an sbatch script or salloc shell), so JAX could not find the other tasks; or
      SLURM_NTASKS is not a number.
  """
  env = os.environ
  tasks = 1
  if "SLURM_JOB_ID" in env:
    try:
      tasks = int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
      raise StartupError(f"SLURM_NTASKS={env['SLURM_NTASKS']!r} is not a number of tasks") from None
  if tasks > 1:
    if not all(v in env for v in _SLURM_STEP_VARS):
      raise StartupError(f"{env['SLURM_NTASKS']} SLURM tasks but not under srun: start every task with "
                         "`srun python -m swirl_jax.main ...`, or unset SLURM_NTASKS for a single-process run")
    return "slurm"
  if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu_pod"
  if _multihost_cloud_tpu_vm():
    return "tpu_pod"
  return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Initialises jax.distributed when asked to or when a cluster is detected; returns whether it did.

  Args:
    coordinator_address: host:port of process 0; empty to detect a cluster from the environment.
    num_processes: number of processes (with coordinator_address); 0 means unset.
    process_id: this process's index (with coordinator_address); -1 means unset.

  Raises:
    StartupError: only some of the three explicit settings are given, or --process_id is not below
      --num_processes; see also cluster_in_environment.
  """
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise StartupError("--coordinator_address needs --num_processes and --process_id")
    if process_id >= num_processes:
      raise StartupError(f"--process_id={process_id} must be below --num_processes={num_processes} (processes "
                         "are numbered from 0)")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
  if num_processes > 0 or process_id >= 0:  # would otherwise silently become a single-process run
    raise StartupError("--num_processes and --process_id need --coordinator_address")
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
