"""Orbax checkpoints of the train state: every N steps, at the end, and on SIGTERM; the last K kept.

Layout of ``directory/<step>/`` (one Orbax CheckpointManager step):

  params/   the policy parameters (a nested dict of arrays, the model's own parameter paths); evaluation
            and export restore this item alone.
  train/    opt_state, step, rng (key data) and data_pos: the rest of ``TrainState``.
  meta/     JSON: step, data_pos, the model source and config, the reference-policy fingerprint, the
            run's settings, wall time.

The reference policy is not stored (train_state.py). Restoring gives each array back on the sharding
of the abstract target, so a run may resume on another mesh. Saving is asynchronous (training goes on
while the files are written); ``close`` waits for the last save. A step directory appears only when
its save is complete, so a run killed mid-save resumes from the previous checkpoint.

SIGTERM (preemption): ``SigtermFlag`` turns the signal into a flag; the loop saves at the next step
boundary and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from swirl_jax.training.train_state import Params, TrainState


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where and how often to checkpoint.

  Attributes:
    directory: the checkpoint directory (created if missing); a run resumes from its latest step.
    save_every: save every this many optimizer steps (0 = only at the end and on SIGTERM).
    max_to_keep: keep the last K checkpoints (0 = keep all).
    async_save: write in a background thread while training goes on.
  """

  directory: str
  save_every: int = 100
  max_to_keep: int = 3
  async_save: bool = True


class Checkpointer:
  """A thin CheckpointManager wrapper for the (params, train, meta) layout."""

  def __init__(self, cfg: CheckpointConfig):
    self.cfg = cfg
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.max_to_keep or None, create=True, enable_async_checkpointing=cfg.async_save)
    self.manager = ocp.CheckpointManager(os.path.abspath(cfg.directory), options=options,
                                         item_names=("params", "train", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return bool(self.cfg.save_every) and step % self.cfg.save_every == 0

  def save(self, state: TrainState, meta: Mapping[str, Any]) -> bool:
    """Saves ``state`` under its step (skipped when that step is already saved)."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng, "data_pos": state.data_pos}
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave(dict(meta))), force=True)

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
    """The state saved at ``step`` (default: latest), on the shardings of ``target`` (abstract), and
    its metadata."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.cfg.directory}")
    train_t = {"opt_state": target.opt_state, "step": target.step, "rng": target.rng,
               "data_pos": target.data_pos}
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target.params), train=ocp.args.StandardRestore(train_t),
        meta=ocp.args.JsonRestore()))
    t = out["train"]
    return TrainState(out["params"], t["opt_state"], t["step"], t["rng"], t["data_pos"]), dict(out["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class _DropReadOnlyNotice(logging.Filter):
  """Orbax warns on every read-only manager that its directory is read only: that is the point here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Given directory is read only" not in record.getMessage()


_READ_ONLY_NOTICE = _DropReadOnlyNotice()


def _reader(directory: str) -> ocp.CheckpointManager:
  """A read-only manager for this process alone (eval and export read checkpoints on process 0 while
  the others wait), so it must not wait on the other processes."""
  me = jax.process_index()
  options = ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False, save_root_metadata=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))
  logging.getLogger("absl").addFilter(_READ_ONLY_NOTICE)  # idempotent: filters are a set
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("params", "train", "meta"))


def read_meta(directory: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, metadata) of a checkpoint (default: the latest) without touching its arrays."""
  mngr = _reader(directory)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return step, dict(meta)
  finally:
    mngr.close()


def restore_params(directory: str, target: Params, step: int | None = None) -> tuple[Params, int]:
  """Only the policy parameters of a checkpoint (default: the latest), on ``target``'s shardings.

  ``target``: a nested dict of arrays or ShapeDtypeStructs (with shardings), e.g. the parameters of the
  model the run started from. Returns (params, step).
  """
  mngr = _reader(directory)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), target)
    out = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
    return out["params"], step
  finally:
    mngr.close()


class SigtermFlag:
  """Context manager: while active, SIGTERM sets ``requested`` instead of killing the process.

  Only installs the handler from the main thread (signal handlers cannot be set elsewhere); the
  previous handler is put back on exit.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __enter__(self) -> "SigtermFlag":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
