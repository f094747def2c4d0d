"""Multi-process start-up (swirl_jax.distributed) and the multi-device test harness (tests/multidevice.py).

jax.distributed.initialize is replaced by a recorder: these tests check what is detected and asked for,
not the coordination service itself (tests/test_multiprocess.py runs two real processes).
"""

from __future__ import annotations

import os

import pytest

from multidevice import run_with_devices, with_device_count
from swirl_jax import distributed

_CLUSTER_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


@pytest.fixture
def calls(monkeypatch):
  """A clean environment (no SLURM / TPU variables) and the recorded jax.distributed.initialize calls."""
  for k in list(os.environ):
    if k.startswith("SLURM_") or k in _CLUSTER_VARS:
      monkeypatch.delenv(k)
  recorded = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: recorded.append(kw))
  return recorded


def _srun_env(monkeypatch, ntasks):
  for k, v in {"SLURM_JOB_ID": "1234", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": str(ntasks),
               "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}.items():
    monkeypatch.setenv(k, v)


def test_single_process_without_flags_or_cluster(calls):
  assert distributed.cluster_in_environment() is None
  assert distributed.initialize() is False and calls == []


def test_explicit_flags(calls):
  assert distributed.initialize("host:1234", 2, 1) is True
  assert calls == [{"coordinator_address": "host:1234", "num_processes": 2, "process_id": 1}]
  with pytest.raises(ValueError, match="needs --num_processes"):
    distributed.initialize("host:1234", 2, -1)


@pytest.mark.parametrize("num_processes,process_id", [(2, 1), (2, -1), (0, 0)])
def test_process_flags_without_coordinator_are_refused(calls, num_processes, process_id):
  # main.py passes 0 / -1 when the flags are not given; anything else was asked for explicitly.
  with pytest.raises(ValueError, match="need --coordinator_address"):
    distributed.initialize("", num_processes, process_id)
  assert calls == []


def test_slurm_under_srun(calls, monkeypatch):
  from jax._src.clusters.slurm_cluster import SlurmCluster

  _srun_env(monkeypatch, ntasks=16)
  assert distributed.cluster_in_environment() == "slurm"
  assert SlurmCluster.is_env_present()  # what jax.distributed.initialize() will then rely on
  assert distributed.initialize() is True and calls == [{}]


def test_slurm_single_task_is_single_process(calls, monkeypatch):
  _srun_env(monkeypatch, ntasks=1)
  assert distributed.initialize() is False and calls == []


def test_slurm_tasks_without_srun_are_refused(calls, monkeypatch):
  # An sbatch script or salloc shell that runs python directly: JAX would fail with a cryptic
  # "coordinator_address should be defined".
  _srun_env(monkeypatch, ntasks=4)
  monkeypatch.delenv("SLURM_STEP_NODELIST")
  with pytest.raises(distributed.StartupError, match="4 SLURM tasks but not under srun"):
    distributed.initialize()
  assert calls == []


def test_bad_process_settings_are_named(calls, monkeypatch):
  """--process_id=5 of 2 reached JAX (its own error), SLURM_NTASKS=abc gave int()'s message naming no variable."""
  with pytest.raises(distributed.StartupError, match="--process_id=5 must be below --num_processes=2"):
    distributed.initialize("host:1234", 2, 5)
  monkeypatch.setenv("SLURM_NTASKS", "")  # outside a SLURM job (no SLURM_JOB_ID) it is not read
  assert distributed.initialize() is False
  _srun_env(monkeypatch, ntasks=4)
  monkeypatch.setenv("SLURM_NTASKS", "abc")
  with pytest.raises(distributed.StartupError, match="SLURM_NTASKS='abc' is not a number"):
    distributed.initialize()
  assert calls == []


def test_gke_and_multislice_tpu_variables(calls, monkeypatch):
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
  assert distributed.cluster_in_environment() == "tpu_pod"
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("MEGASCALE_COORDINATOR_ADDRESS", "w0:8080")
  assert distributed.cluster_in_environment() == "tpu_pod"


def _fake_tpu_vm(monkeypatch, on_tpu_vm, present, process_count):
  from jax._src import cloud_tpu_init
  from jax._src.clusters.cloud_tpu_cluster import GceTpuCluster

  monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", on_tpu_vm)
  monkeypatch.setattr(GceTpuCluster, "is_env_present", staticmethod(present))
  monkeypatch.setattr(GceTpuCluster, "get_process_count", staticmethod(lambda: process_count))


def test_tpu_vm_pod_found_from_metadata(calls, monkeypatch):
  # gcloud ssh --worker=all: no TPU variables in the environment, only the GCE metadata JAX reads.
  _fake_tpu_vm(monkeypatch, on_tpu_vm=True, present=lambda: True, process_count=4)
  assert distributed.cluster_in_environment() == "tpu_pod"
  assert distributed.initialize() is True and calls == [{}]


def test_single_host_tpu_vm_is_single_process(calls, monkeypatch):
  _fake_tpu_vm(monkeypatch, on_tpu_vm=True, present=lambda: True, process_count=1)
  assert distributed.initialize() is False and calls == []


def test_metadata_not_queried_without_tpu_chips(calls, monkeypatch):
  def query():
    raise AssertionError("queried the metadata server on a machine without TPU chips")

  _fake_tpu_vm(monkeypatch, on_tpu_vm=False, present=query, process_count=4)
  assert distributed.cluster_in_environment() is None


def test_metadata_failure_is_single_process(calls, monkeypatch):
  def query():
    raise OSError("metadata.google.internal unreachable")

  _fake_tpu_vm(monkeypatch, on_tpu_vm=True, present=query, process_count=4)
  assert distributed.cluster_in_environment() is None


def test_requested_device_count_wins_over_inherited_one(monkeypatch):
  flags = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2 --xla_bar"
  assert with_device_count(flags, 4) == "--xla_cpu_foo=1 --xla_bar --xla_force_host_platform_device_count=4"
  assert with_device_count("", 8) == "--xla_force_host_platform_device_count=8"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert run_with_devices("import jax; print(jax.device_count())", n=3, timeout=300).split()[-1] == "3"
