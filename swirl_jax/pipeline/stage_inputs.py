"""What each pipeline stage is made from: the settings and file digests its stamp records (stamps.py),
and how a record written by an earlier version is compared, so that an upgrade does not redo finished
stages and a change that cannot alter a stage's output (throughput, retries, checkpoint cadence) does not
either.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from swirl_jax.pipeline import stamps

if TYPE_CHECKING:
  from swirl_jax.modes import Paths


# What the eval reports depend on besides the policy: a change of any of these re-evaluates.
EVAL_SETTINGS = ("model.dtype", "model.param_dtype", "data", "eval", "rollout", "sampling", "sampler", "judge",
                 "search")


def settings_of(cfg, *names: str) -> dict:
  """The named settings (a group or a single key) as plain values, for a stage's stamp."""
  out = {}
  for name in names:
    v = cfg
    for part in name.split("."):
      v = v[part]
    out[name] = v.to_dict() if hasattr(v, "to_dict") else v
  return out


def checkpoint_step(source: str) -> int | None:
  """The step a checkpoint directory's latest checkpoint holds (what load() restores); None otherwise."""
  if not os.path.isdir(source):
    return None
  return max((int(d) for d in os.listdir(source) if d.isdigit()), default=None)


def checkpoint_saved(source: str) -> dict:
  """{"checkpoint_saved": time} of a checkpoint directory's latest checkpoint ({} for any other source):
  a run trained again to the same step is another policy, and its reports and export are redone."""
  from swirl_jax.training.checkpointing import read_meta

  step = checkpoint_step(source)
  if step is None:
    return {}
  try:
    saved = read_meta(source, step)[1].get("time")
  except Exception:  # noqa: BLE001 - not a swirl_jax checkpoint directory: the step alone identifies it
    return {}
  return {} if saved is None else {"checkpoint_saved": saved}


# Judge settings that do not change a label or a reward (throughput, retries, caching, which key pays).
_JUDGE_NEUTRAL = ("cache", "openai.max_concurrency", "openai.timeout_s", "openai.max_retries",
                  "openai.api_key_env", "model.batch_size")
# Train settings that do not change what the checkpoints hold: steps (raising it extends a run),
# checkpoint cadence, and the memory knobs (same gradients up to float rounding).
_TRAIN_NEUTRAL = ("steps", "save_every", "keep_checkpoints", "micro_batches", "remat", "remat_policy")


# Judge settings the backend in use never reads (the rule judge reads none of them).
_UNUSED_BY_BACKEND = {"rule": ("n_votes", "model", "openai"), "model": ("openai",), "openai": ("model",)}


# Settings an eval record holds that cannot change a report: evaluation samples greedily (whatever the
# generation temperature and top-k/top-p cut-offs) and takes eval.limit questions, not data.limit; the
# policy a report is of is recorded as "policy" (so naming the run's own checkpoints as eval.checkpoint,
# or another policy, leaves the base model's reports alone).
# Greedy evaluation takes one sample per question whatever rollout.samples_per_question says, so neither it
# nor the sampling seed matters; refilling changes only the throughput; the eval split is eval.split or each
# dataset's own, never data.split.
_EVAL_NEUTRAL = ("sampling.temperature", "sampling.top_k", "sampling.top_p", "data.limit", "eval.checkpoint",
                 "rollout.seed", "rollout.samples_per_question", "rollout.refill", "data.split")


def _drop(settings: dict, keys: tuple[str, ...]) -> None:
  for key in keys:
    *parents, leaf = key.split(".")
    d = settings
    for part in parents:
      d = d.get(part, {})
    d.pop(leaf, None)


def without_neutral(settings: dict | None) -> dict | None:
  """A stage's recorded settings (``settings_of(...)`` or a stamp's) less what cannot change its output:
  the _JUDGE_NEUTRAL keys and the settings of the judge backends not in use, and in an eval record (the one
  holding the "eval" group) the _EVAL_NEUTRAL keys. Applied to the recorded side as well, so records of
  earlier versions (which held them) compare equal."""
  if not isinstance(settings, dict):
    return settings
  out = json.loads(json.dumps(settings))
  if "judge" in out:
    _drop(out["judge"], _JUDGE_NEUTRAL)
    _drop(out["judge"], _UNUSED_BY_BACKEND.get(out["judge"].get("backend"), ()))
  if "eval" in out:
    _drop(out, _EVAL_NEUTRAL)
  return out


# Keys added to stage records after workdirs were made with the earlier ones: a record without one is
# compared without it, so an upgrade does not redo finished stages.
_LATER_KEYS = ("checkpoint_saved", "data_files", "policy", "decay_schedule")


def record_matches(workdir: str, name: str, inputs: dict) -> bool:
  """Whether stage ``name``'s record matches ``inputs``, reading records of earlier versions: the neutral
  judge settings compare as absent, a key of _LATER_KEYS the record lacks is not compared, and a train
  record of the step examples alone compares on them."""
  return inputs_match(stamps.read(workdir, name), inputs, workdir, name)


def inputs_match(recorded: dict | None, inputs: dict, workdir: str, name: str) -> bool:
  """``record_matches`` on a record already read (or one nested in another: an eval run's in-progress one)."""
  if not isinstance(recorded, dict):
    return False
  now = stamps.plain(inputs, workdir)
  now = {k: v for k, v in now.items() if k not in _LATER_KEYS or k in recorded}
  if "settings" in recorded:
    recorded = {**recorded, "settings": without_neutral(recorded["settings"])}
  if name == "train" and "settings" not in recorded:
    now.pop("settings", None)
  return recorded == now


def label_inputs(cfg, paths: Paths) -> dict:
  return {"trajectories": stamps.file_digest(paths.trajectories),
          "settings": without_neutral(settings_of(cfg, "judge"))}


def train_inputs(cfg, paths: Paths) -> dict:
  """What the checkpoints are made from: the step examples and the settings that change the updates."""
  from swirl_jax.config import decay_steps

  settings = settings_of(cfg, "train", "rollout.task", "model.source", "model.dtype", "model.param_dtype")
  for key in _TRAIN_NEUTRAL:
    settings["train"].pop(key)
  if cfg.train.mode != "sft":  # the judge rewards rl samples (and unlabelled offline actions)
    settings.update(without_neutral(settings_of(cfg, "judge")))
  # The schedule, besides its spelling: train.decay_steps=-1 follows train.steps, which is neutral (raising it
  # extends a run) but then moves the decay of the steps already taken.
  return {"step_examples": stamps.file_digest(paths.step_examples), "settings": settings,
          "decay_schedule": decay_steps(cfg)}


def generate_inputs(cfg) -> dict:
  """What trajectories are made from. data.limit is left out: raising it extends a run (resume adds the
  new questions' trajectories)."""
  inputs = settings_of(cfg, "data", "rollout", "sampling", "search", "model.source", "model.dtype",
                       "model.param_dtype")
  inputs["data"].pop("limit", None)
  return inputs


def final_checkpoint_step(paths: Paths) -> int:
  """The run's latest checkpoint step, -1 before the first one."""
  step = checkpoint_step(paths.checkpoints)
  return -1 if step is None else step


def filter_inputs(cfg, paths: Paths) -> dict:
  """What kept.jsonl and step_examples.jsonl are made from."""
  return {"labelled": stamps.file_digest(paths.labelled),
          "settings": settings_of(cfg, "filter", "rollout.task", "rollout.num_demos", "rollout.max_tool_calls")}


def export_inputs(cfg, paths: Paths) -> dict:
  """What the exported directory is made from: the policy (which one, its step and save time) and the export
  settings. (The policy is named: a model source has no save time, and mode=export of another policy left
  a record the pipeline's matched.)"""
  policy = cfg.eval.checkpoint or paths.checkpoints
  return {"policy": policy, "checkpoint_step": final_checkpoint_step(paths), "dtype": cfg.export.dtype,
          "out": cfg.export.out, **checkpoint_saved(policy)}
