"""Stage 2 training loops: step-wise RL (online), its offline variant, and the SFT baseline.

All three run the same jitted train step (train_step.py) over batches of offline states (StepExamples):

* ``mode="rl"`` (SWiRL): for each state the *current* policy samples G actions with the jitted sampler
  (no tool is executed), the judge scores each action in its context (``context_from_state``), and the
  step minimises REINFORCE with a group baseline plus a KL penalty to the initial policy (losses.py).
* ``mode="offline"``: the recorded actions, rewarded with their stored labels (process, outcome or
  both GOOD = 1, else 0; the judge scores unlabelled ones); the baseline group is the whole batch.
  Use ``LossConfig(baseline="none")`` here (A = r >= 0, reward-weighted likelihood): with a baseline,
  BAD recorded actions get negative weights, and pushing down the likelihood of off-policy text moves
  probability onto arbitrary tokens (tests/test_learning.py measured the reward collapsing).
* ``mode="sft"``: negative log-likelihood of the recorded actions (the paper's baseline).

Resumable: the data order is a seeded permutation per epoch indexed by the data position, and the
sampler's seeds derive from the checkpointed RNG, so a resumed run repeats the uninterrupted one.

Entry point: ``train(TrainConfig(...), examples, loaded_model, judge, loss=..., optimizer=...,
sampling=..., checkpoint=...)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Callable, Iterator, Literal, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from swirl_jax import prompts as task_prompts
from swirl_jax.checkpoints.build import abstract_model
from swirl_jax.distributed import to_host
from swirl_jax.judges.base import Judge, context_from_state
from swirl_jax.loading import LoadedModel
from swirl_jax.models.config import RematPolicy
from swirl_jax.models.sharding import MeshConfig, make_mesh
from swirl_jax.pipeline.decompose import tokenize_each
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import generate
from swirl_jax.sampling.turns import trained_tokens
from swirl_jax.tools.parser import STOP_STRINGS
from swirl_jax.training import metrics as metrics_lib
from swirl_jax.training import train_state as ts
from swirl_jax.training.checkpointing import CheckpointConfig, Checkpointer, SigtermFlag, read_meta
from swirl_jax.training.losses import LossConfig
from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
from swirl_jax.training.train_step import (Batch, StepConfig, batch_shards, make_train_step, pack_batch,
                                           put_batch)
from swirl_jax.types import StepExample, Verdict

Mode = Literal["rl", "offline", "sft"]
OfflineReward = Literal["process", "outcome", "process_and_outcome"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of a stage-2 run (the loss, optimiser, sampling and checkpoints have their own).

  Attributes:
    mode: "rl" (sample G actions per state and judge them), "offline" (recorded actions rewarded by
      their labels), or "sft" (likelihood of the recorded actions).
    task: "math" or "search": how sampled actions are parsed and judged.
    steps: optimizer steps of the whole run (a resumed run continues up to this many).
    states_per_step: states (StepExamples) per optimizer step; the batch has states_per_step *
      group_size rows in RL mode and states_per_step rows otherwise.
    group_size: G actions sampled per state (RL mode).
    micro_batches: the batch is processed in this many slices, gradients summed (accumulation).
    max_len: tokens per row (state + action); RL states are cut to max_len - max_new_tokens.
    seq_bucket / slot_bucket: row length and loss-slot count are rounded up to multiples of these
      (one compilation per bucket pair).
    sample_batch: rows per sampler call (0 = every row of a step in one call).
    steps_per_call: decode steps per sampler call.
    remat: rematerialise each transformer block in the backward pass.
    share_prefix: RL mode: each state goes through the train step once per group, its G actions packed
      after it in one sequence (``pack_batch``'s ``prefix_group``): the same loss and gradient, the state's
      tokens computed once instead of G times. Needs states_per_step divisible by micro_batches x the
      mesh's batch shards. Off: one sequence per row.
    remat_policy: "block" (recompute whole blocks) or "dots" (keep the weight matmuls' outputs: faster,
      more memory); see ModelConfig.
    seed: data order and sampling seeds.
    offline_reward: which stored label rewards a recorded action in offline mode.
    log_dir: metrics.jsonl and tensorboard/ go here (None = no files).
    tensorboard: also write TensorBoard event files.
    progress: print a progress bar with ETA to stderr.
  """

  mode: Mode = "rl"
  task: task_prompts.Task = "math"
  steps: int = 100
  states_per_step: int = 8
  group_size: int = 4
  micro_batches: int = 1
  max_len: int = 1024
  seq_bucket: int = 64
  slot_bucket: int = 16
  sample_batch: int = 0
  steps_per_call: int = 32
  remat: bool = False
  remat_policy: RematPolicy = "block"
  share_prefix: bool = True
  seed: int = 0
  offline_reward: OfflineReward = "process"
  log_dir: str | None = None
  tensorboard: bool = True
  progress: bool = True

  def __post_init__(self):
    if self.mode not in ("rl", "offline", "sft"):
      raise ValueError(f"train mode must be rl, offline or sft, got {self.mode!r}")
    if self.task not in ("math", "search"):
      raise ValueError(f"train task must be math or search, got {self.task!r}")
    if self.offline_reward not in ("process", "outcome", "process_and_outcome"):
      raise ValueError(f"train offline_reward must be process, outcome or process_and_outcome, "
                       f"got {self.offline_reward!r}")
    low = dict(steps=0, states_per_step=1, group_size=1, micro_batches=1, max_len=2, seq_bucket=1,
               slot_bucket=1, sample_batch=0, steps_per_call=1)
    bad = [f"{k}={getattr(self, k)!r} (must be >= {v})" for k, v in low.items() if getattr(self, k) < v]
    if bad:
      raise ValueError("invalid train settings: " + ", ".join(bad))

  @property
  def rows_per_step(self) -> int:
    return self.states_per_step * (self.group_size if self.mode == "rl" else 1)

  @property
  def prefix_group(self) -> int:
    """Rows packed per train-step sequence (``pack_batch``)."""
    return self.group_size if self.mode == "rl" and self.share_prefix else 1


@dataclasses.dataclass
class TrainResult:
  """What ``train`` returns.

  Attributes:
    state: the final TrainState (params, optimizer state, step, rng, data position).
    history: the metrics of every step run in this call.
    interrupted: stopped early by SIGTERM (after saving a checkpoint).
    resumed_from: the checkpoint step this call started from (None = a fresh start).
  """

  state: ts.TrainState
  history: list[dict[str, Any]]
  interrupted: bool = False
  resumed_from: int | None = None

  @property
  def params(self) -> ts.Params:
    return self.state.params


def with_params(model: LoadedModel, params: ts.Params) -> LoadedModel:
  """The loaded model with other parameters (e.g. trained ones), for sampling, evaluation or export."""
  return dataclasses.replace(model, model=nnx.merge(nnx.graphdef(model.model), params))


# --- data ---------------------------------------------------------------------------------------------


def _example_at(pos: int, n: int, seed: int, cache: dict[int, np.ndarray]) -> int:
  """Index of the example at data position ``pos``: epoch pos // n visits a seeded permutation."""
  epoch = pos // n
  if epoch not in cache:
    cache.clear()
    cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
  return int(cache[epoch][pos % n])


def _prompt_tokens(examples: Sequence[StepExample], tok, budget: int) -> Iterator[np.ndarray | None]:
  """Each state's prompt tokens (int32, ending with the model-turn opening), cut by decompose's policy to fit
  ``budget``; None where one cannot fit."""
  # An empty action makes tokenize_example's prefix budget exactly ``budget`` (+1 for end of turn).
  for out in tokenize_each((dataclasses.replace(ex, action="") for ex in examples), tok, budget + 1):
    # A copy: a view would keep the whole row alive. Arrays, not int lists: ~4 bytes a token, not ~36.
    yield None if out is None else out.tokens[:out.prompt_len].copy()


def _offline_reward(ex: StepExample, which: OfflineReward) -> float | None:
  labels = {"process": (ex.process_label,), "outcome": (ex.outcome_label,),
            "process_and_outcome": (ex.process_label, ex.outcome_label)}[which]
  if any(lab is None for lab in labels):
    return None
  return 1.0 if all(lab == "GOOD" for lab in labels) else 0.0


def _seeds(rng_data: np.ndarray, n: int) -> np.ndarray:
  return np.random.default_rng([int(x) for x in np.asarray(rng_data).ravel()]).integers(0, 2**31 - 1, n)


# --- the loop ------------------------------------------------------------------------------------------


class _Run:
  """Host-side state of one ``train`` call (kept out of the jitted step)."""

  def __init__(self, cfg: TrainConfig, examples: Sequence[StepExample], lm: LoadedModel, judge: Judge | None,
               sampling: SamplingConfig):
    if lm.tokenizer is None:
      raise ValueError(f"model {lm.source!r} has no tokenizer")
    self.cfg, self.lm, self.judge, self.sampling, self.tok = cfg, lm, judge, sampling, lm.tokenizer
    if cfg.mode == "rl" and judge is None:
      raise ValueError("mode='rl' needs a judge to reward the sampled actions")
    self.examples = list(examples)
    # Per example: the prompt's int32 tokens (rl), or (tokens, loss mask) arrays; None = does not fit.
    self.rows: list[Any] = []
    dropped = 0
    if cfg.mode == "rl":
      items = _prompt_tokens(self.examples, self.tok, cfg.max_len - sampling.max_new_tokens)
    else:
      items = (None if t is None else (t.tokens, t.loss_mask)
               for t in tokenize_each(self.examples, self.tok, cfg.max_len))
    for item in items:
      dropped += item is None
      self.rows.append(item)
    self.kept = [i for i, r in enumerate(self.rows) if r is not None]
    if not self.kept:
      if cfg.mode == "rl" and cfg.max_len <= sampling.max_new_tokens:
        raise ValueError(f"train max_len={cfg.max_len} leaves no room for a state: RL rows hold the state and "
                         f"max_new_tokens={sampling.max_new_tokens} sampled tokens (train.max_new_tokens)")
      raise ValueError(f"none of the {len(self.examples)} examples fits max_len={cfg.max_len}")
    self.dropped = dropped
    self._perm: dict[int, np.ndarray] = {}
    self.sampler = None
    if cfg.mode == "rl":
      stops = build_stop_table(self.tok, STOP_STRINGS, [self.tok.eos_id, self.tok.end_of_turn_id])
      self.sampler = Sampler.create(lm.model, batch=cfg.sample_batch or cfg.rows_per_step,
                                    cache_len=cfg.max_len, sampling=sampling, stops=stops,
                                    steps_per_call=cfg.steps_per_call)
    self._end_ids = {self.tok.eos_id, self.tok.end_of_turn_id}

  def take(self, pos: int) -> list[int]:
    n = len(self.kept)
    return [self.kept[_example_at(p, n, self.cfg.seed, self._perm)] for p in range(pos, pos + self.cfg.states_per_step)]

  def judge_texts(self, exs: Sequence[StepExample], texts: Sequence[str]):
    contexts = [context_from_state(self.cfg.task, ex.state, ex.step_index, text, budget=ex.budget)
                for ex, text in zip(exs, texts)]
    if jax.process_count() > 1 and _is_http_judge(self.judge):
      return judged_on_process_0(lambda: self.judge.judge_contexts(contexts), len(contexts))
    # Rule judges are free, and a JAX judge model on the global mesh needs every process.
    return self.judge.judge_contexts(contexts)

  def rl_batch(self, idx: Sequence[int], params: ts.Params, rng_data: np.ndarray,
               info: dict[str, float]) -> tuple[Batch, list[StepExample], np.ndarray, list]:
    g = self.cfg.group_size
    prompts = [self.rows[i].tolist() for i in idx for _ in range(g)]  # ints for this step's rows only
    seeds = _seeds(rng_data, len(prompts))
    t0 = time.perf_counter()
    outs: list[list[int]] = []
    per = self.sampler.batch
    sampler_params = self.sampler.prepare(params)  # once for this step's generate calls
    for s in range(0, len(prompts), per):
      outs.extend(generate(self.sampler, sampler_params, prompts[s:s + per],
                           [int(x) for x in seeds[s:s + per]]))
    t1 = time.perf_counter()
    texts = []
    for i, ids in enumerate(outs):
      text, outs[i] = trained_tokens(self.tok, ids, self._end_ids)  # (the loss covers what the judge saw)
      texts.append(text)
    exs = [self.examples[i] for i in idx for _ in range(g)]
    verdicts = self.judge_texts(exs, texts)
    t2 = time.perf_counter()
    rewards = np.asarray([v.score for v in verdicts], np.float32)
    rows = [(list(p) + list(o), [False] * len(p) + [True] * len(o)) for p, o in zip(prompts, outs)]
    info.update(sample_s=t1 - t0, judge_s=t2 - t1, sampled_tokens=float(sum(len(o) for o in outs)),
                mean_action_tokens=float(np.mean([len(o) for o in outs])),
                zero_variance_groups=float(np.mean(rewards.reshape(-1, g).std(axis=1) == 0)))
    batch = pack_batch(rows, rewards, seq_bucket=self.cfg.seq_bucket, slot_bucket=self.cfg.slot_bucket,
                       max_len=self.cfg.max_len, pad_id=self.tok.pad_id, prefix_group=self.cfg.prefix_group)
    return batch, exs, rewards, verdicts

  def recorded_batch(self, idx: Sequence[int], info: dict[str, float]):
    exs = [self.examples[i] for i in idx]
    rows = [self.rows[i] for i in idx]
    rewards, verdicts = np.zeros(len(idx), np.float32), None
    if self.cfg.mode == "offline":
      got = [_offline_reward(ex, self.cfg.offline_reward) for ex in exs]
      missing = [k for k, r in enumerate(got) if r is None]
      if missing:
        if self.judge is None:
          raise ValueError(f"offline mode: {len(missing)} examples lack a {self.cfg.offline_reward} label "
                           "and no judge was given to score them")
        vs = self.judge_texts([exs[k] for k in missing], [exs[k].action for k in missing])
        for k, v in zip(missing, vs):
          got[k] = v.score
      rewards = np.asarray(got, np.float32)
    batch = pack_batch(rows, rewards, seq_bucket=self.cfg.seq_bucket, slot_bucket=self.cfg.slot_bucket,
                       max_len=self.cfg.max_len, pad_id=self.tok.pad_id)
    return batch, exs, rewards, verdicts


def _is_http_judge(judge: Judge | None) -> bool:
  from swirl_jax.judges.openai_backend import OpenAIBackend

  return isinstance(getattr(judge, "backend", None), OpenAIBackend)


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process (a collective when there are several: every process calls it
  at the same point). A SIGTERM reaches the hosts of a preempted job at different moments, and a process
  that left the loop or saved alone would leave the others in the next step's collectives."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def judged_on_process_0(judge_fn: Callable[[], Sequence[Verdict]], n: int) -> list[Verdict]:
  """Verdicts that process 0 obtains (``judge_fn()``) and every other process receives.

  Every process holds the same sampled actions, so an HTTP judge asked by each would be paid once per
  process; process 0 asks, and the scores and labels are broadcast (the others' verdicts carry no
  explanation: training uses only score and label). A collective: every process must call it.
  """
  from jax.experimental import multihost_utils

  verdicts = list(judge_fn()) if jax.process_index() == 0 else None
  payload = np.zeros((n, 2), np.float32)
  if verdicts is not None:
    payload[:] = [[v.score, v.label == "GOOD"] for v in verdicts]
  payload = np.asarray(multihost_utils.broadcast_one_to_all(payload))
  if verdicts is not None:
    return verdicts
  return [Verdict("GOOD" if good else "BAD", float(score), "(judged on process 0)", "process 0")
          for score, good in payload]


def _reward_metrics(exs: Sequence[StepExample], rewards: np.ndarray, verdicts) -> dict[str, float]:
  out = {"mean_reward": float(rewards.mean())}
  if verdicts is not None:
    out["judge_pass_rate"] = float(np.mean([v.label == "GOOD" for v in verdicts]))
  by_step: dict[int, list[float]] = {}
  for ex, r in zip(exs, rewards):
    by_step.setdefault(ex.step_index, []).append(float(r))
  for k, rs in sorted(by_step.items()):
    out[f"reward_by_step/{k}"] = float(np.mean(rs))
  return out


# Settings that decide which examples a step sees and how they are sampled: a resumed run that changed one
# would silently continue on another data order than the one it started.
_DATA_SETTINGS = ("task", "seed", "states_per_step", "group_size", "max_len", "offline_reward")


def examples_digest(examples: Sequence[StepExample]) -> str:
  """sha256 of the examples in order, as their JSON: what a checkpoint was trained on."""
  h = hashlib.sha256()
  for ex in examples:
    h.update(json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False).encode())
    h.update(b"\n")
  return h.hexdigest()


def _check_same_data(directory: str, step: int, meta: dict, cfg: TrainConfig, examples: int, digest: str) -> None:
  saved = meta.get("train_config") or {}
  changed = [f"{k}: {saved[k]!r} in the checkpoint, {getattr(cfg, k)!r} now" for k in _DATA_SETTINGS
             if k in saved and saved[k] != getattr(cfg, k)]
  if "examples" in meta and meta["examples"] != examples:
    changed.append(f"examples: {meta['examples']} in the checkpoint, {examples} now")
  elif "examples_digest" in meta and meta["examples_digest"] != digest:
    # as many examples, other ones (another filter, or trajectories generated again)
    changed.append("examples: as many as the checkpoint's, but other ones (their sha256 differs)")
  if changed:
    raise ValueError(f"checkpoint {directory} step {step} was trained with other data settings "
                     f"({'; '.join(changed)}); resuming would continue on another data order: use the saved "
                     "settings, or train into a new checkpoint directory")


def _changes(saved: Any, now: Any, prefix: str = "") -> list[str]:
  """"FIELD: SAVED in the checkpoint, NOW now" for each field of the dataclass ``now`` that ``saved`` (its dict
  in a checkpoint's metadata; None for a checkpoint without one) holds with another value."""
  if not isinstance(saved, dict):
    return []
  now = json.loads(json.dumps(dataclasses.asdict(now)))  # (as the checkpoint's JSON holds it)
  return [f"{prefix}{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in sorted(now)
          if k in saved and saved[k] != now[k]]


def _check_same_updates(directory: str, step: int, meta: dict, cfg: TrainConfig, loss: LossConfig,
                        optimizer: OptimizerConfig, sampling: SamplingConfig) -> None:
  """Refuses to resume under another optimizer, loss or (rl) sampling: the run would continue as another
  experiment under the first one's name (the pipeline's stage record catches this too, but not for a
  workdir without one, nor for a library caller)."""
  groups = {"optimizer": optimizer, "loss": loss, **({"sampling": sampling} if cfg.mode == "rl" else {})}
  changed = [c for group, now in groups.items() for c in _changes(meta.get(group), now, f"{group}.")]
  if changed:
    hint = (" (train.decay_steps=-1 derives the decay from train.steps: pass the checkpoint's decay_steps to "
            "extend the run on its schedule)" if any(c.startswith("optimizer.decay_steps") for c in changed) else "")
    raise ValueError(f"checkpoint {directory} step {step} was trained with other settings ({'; '.join(changed)})"
                     f"{hint}; resume with the saved settings, or train into a new checkpoint directory")


def _explain_restore_failure(directory: str, step: int, optimizer: OptimizerConfig, error: Exception) -> None:
  """Raises a ValueError naming the optimizer settings that differ from the checkpoint's, when they do:
  they change the optimizer state's structure (clip_norm on or off, ...), and Orbax's own message only
  says that two trees differ."""
  changed = _changes(read_meta(directory, step)[1].get("optimizer"), optimizer)
  if changed:
    raise ValueError(f"checkpoint {directory} step {step} was saved with other optimizer settings "
                     f"({'; '.join(changed)}), and its optimizer state does not fit them: resume with the "
                     "saved settings, or train into a new checkpoint directory") from error


def check_trainable(cfg: TrainConfig, loss: LossConfig, param_dtype: str) -> None:
  """Refuses settings under which training runs but cannot learn (both would otherwise log normal losses).

  * Low-precision parameter storage: the parameters and AdamW's moments take the parameters' dtype, and
    an AdamW step moves an entry by about the learning rate, under half a bfloat16 rounding step for
    most weights: at 1e-6, 99% of the Gemma 3 270M's entries round back to their old value (90% at 1e-5).
    Float32 parameters with a bfloat16 compute dtype are the mixed-precision setting that learns.
  * rl with one action per state and a group baseline: every advantage is r - r = 0, so only the KL
    term has a gradient.
  """
  if cfg.steps > 0 and param_dtype != "float32":
    raise ValueError(f"cannot train {param_dtype} parameters: AdamW updates smaller than half a {param_dtype} "
                     "rounding step are lost (at learning rate 1e-6, 99% of the Gemma 3 270M's weights would "
                     "never change); load the model with param_dtype='float32' and keep dtype='bfloat16' for "
                     "bfloat16 matmuls (CLI: --config.model.param_dtype=float32 --config.model.dtype=bfloat16)")
  if cfg.mode == "rl" and cfg.group_size == 1 and loss.baseline != "none":
    raise ValueError(f"train group_size=1 with baseline={loss.baseline!r}: the baseline of a one-action group "
                     "is its own reward, so every advantage is 0 and the rewards teach nothing; sample "
                     "group_size >= 2 actions per state, or use baseline='none' (advantage = reward)")


def train(config: TrainConfig, examples: Sequence[StepExample], model: LoadedModel, judge: Judge | None = None,
          *, loss: LossConfig = LossConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
          sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_new_tokens=128),
          checkpoint: CheckpointConfig | None = None, mesh: Mesh | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
  """Runs (or resumes) a stage-2 run; see the module docstring.

  Args:
    config: the run's settings.
    examples: the offline states (and recorded actions) to train on.
    model: the initial policy with its tokenizer. It is also the reference policy of the KL penalty,
      so a resumed run must be given the same initial model (checked by fingerprint).
    judge: rewards sampled actions (rl) or unlabelled recorded ones (offline).
    loss: the loss settings; its ``kind`` is set from the mode ("sft" for sft, "pg" otherwise).
    optimizer: AdamW, schedule and clipping.
    sampling: temperature, top-k/p and max_new_tokens of the RL sampler (temperature 1, no top-k is
      the unbiased on-policy setting).
    checkpoint: where and how often to save; a run resumes from the latest checkpoint there.
    mesh: the device mesh (default: the model's mesh, else one device).
    on_step: called after every step with (step, metrics).

  Returns:
    The final state and the metrics of the steps run.
  """
  cfg = config
  loss = dataclasses.replace(loss, kind="sft" if cfg.mode == "sft" else "pg")
  check_trainable(cfg, loss, model.config.param_dtype)
  if loss.chunk and cfg.slot_bucket % loss.chunk:
    # every step's loss-slot count is a multiple of slot_bucket, and the loss cuts it into chunks
    raise ValueError(f"loss.chunk={loss.chunk} must divide slot_bucket={cfg.slot_bucket}")
  mesh = mesh or model.mesh or make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
  rules = model.rules
  shards = batch_shards(mesh, rules)
  rows = cfg.rows_per_step
  seqs = rows // cfg.prefix_group
  if seqs % (cfg.micro_batches * shards):
    shared = " (train.share_prefix: one per state)" if cfg.prefix_group > 1 else ""
    raise ValueError(f"{seqs} sequences per step{shared} must divide into train.micro_batches="
                     f"{cfg.micro_batches} x {shards} batch shards of the mesh")
  run = _Run(cfg, examples, model, judge, sampling)

  opt, lr_fn = make_optimizer(optimizer)
  init_params = ts.model_params(model.model)
  model_cfg = model.config.replace(remat=cfg.remat, remat_policy=cfg.remat_policy)
  graphdef = nnx.graphdef(abstract_model(model_cfg, mesh, rules))
  psh = ts.params_shardings(model.model, mesh, rules)
  ssh = ts.state_shardings(opt, init_params, psh, mesh)
  group = cfg.group_size if cfg.mode == "rl" else rows
  step_fn = make_train_step(graphdef, opt, lr_fn, StepConfig(loss, group, cfg.micro_batches), mesh, rules, ssh,
                            psh if loss.uses_reference else None)
  ref_fp = ts.fingerprint(init_params)
  digest = examples_digest(run.examples)
  ckpt = Checkpointer(checkpoint) if checkpoint is not None else None
  resumed_from = ckpt.latest_step() if ckpt is not None else None
  if resumed_from is not None:
    try:
      state, meta = ckpt.restore(ts.abstract_train_state(opt, init_params, ssh), resumed_from)
    except (ValueError, KeyError, TypeError) as e:
      _explain_restore_failure(checkpoint.directory, resumed_from, optimizer, e)
      raise
    if meta.get("reference_fingerprint") != ref_fp:
      raise ValueError(f"checkpoint {checkpoint.directory} step {resumed_from} was trained from another initial "
                       f"model (fingerprint {meta.get('reference_fingerprint')} != {ref_fp}); pass the model "
                       "the run started from")
    if meta.get("mode") != cfg.mode:
      raise ValueError(f"checkpoint mode {meta.get('mode')!r} != config mode {cfg.mode!r}")
    _check_same_data(checkpoint.directory, resumed_from, meta, cfg, len(run.examples), digest)
    _check_same_updates(checkpoint.directory, resumed_from, meta, cfg, loss, optimizer, sampling)
  else:
    state = ts.init_train_state(init_params, opt, cfg.seed, ssh)
  # The initial model's own arrays are the reference (the step never donates them): no extra copy.
  ref_params = jax.device_put(init_params, psh) if loss.uses_reference else None

  meta_base = {"mode": cfg.mode, "model_source": model.source, "model_config": model.config.to_json(),
               "reference_fingerprint": ref_fp, "train_config": dataclasses.asdict(cfg),
               "loss": dataclasses.asdict(loss), "optimizer": dataclasses.asdict(optimizer),
               "sampling": dataclasses.asdict(sampling), "examples": len(run.examples),
               "examples_digest": digest, "examples_dropped": run.dropped}
  main_process = jax.process_index() == 0  # logs and the console are written once
  logger = metrics_lib.MetricsLogger(cfg.log_dir, cfg.tensorboard) if cfg.log_dir and main_process else None
  step = int(to_host(state.step))
  pos = int(to_host(state.data_pos))
  bar = metrics_lib.ProgressBar(cfg.steps, start=step) if cfg.progress and main_process else None
  rep = ts.replicated(mesh)
  history: list[dict[str, Any]] = []
  interrupted = False

  def save():
    if ckpt is not None:
      ckpt.save(state, {**meta_base, "step": step, "data_pos": pos, "time": time.time()})

  try:
    with SigtermFlag() as sigterm:
      stop = any_process(sigterm.requested)
      while step < cfg.steps and not stop:
        t0 = time.perf_counter()
        idx = run.take(pos)
        info: dict[str, float] = {}
        if cfg.mode == "rl":
          batch, exs, rewards, verdicts = run.rl_batch(idx, state.params, to_host(state.rng), info)
        else:
          batch, exs, rewards, verdicts = run.recorded_batch(idx, info)
        pos += cfg.states_per_step
        state = state._replace(data_pos=jax.make_array_from_callback((), rep, lambda _: np.int32(pos)))
        t1 = time.perf_counter()
        state, dev_metrics = step_fn(state, ref_params, put_batch(batch, mesh, rules))
        m = {k: float(to_host(v)) for k, v in dev_metrics.items()}
        t2 = time.perf_counter()
        step += 1
        tokens = float(batch.row_tokens())  # the rows' tokens, a shared state counted once per row
        m.update(info)
        m.update(_reward_metrics(exs, rewards, verdicts))
        # tokens_per_s: the update alone; step_tokens_per_s: including sampling and judging.
        m.update(update_s=t2 - t1, step_s=t2 - t0, train_tokens=tokens, tokens_per_s=tokens / (t2 - t1),
                 step_tokens_per_s=tokens / (t2 - t0),
                 loss_tokens_per_s=m["loss_tokens"] / (t2 - t1), epoch=pos / len(run.kept), data_pos=pos,
                 sequence_tokens=float(np.count_nonzero(batch.valid)), seq_len=float(batch.tokens.shape[1]),
                 loss_slots=float(batch.slot_mask.shape[1] // batch.rows_per_sequence))
        history.append({"step": step, **m})
        if logger:
          logger.write(step, m)
        if bar:
          bar.update(step, m)
        if on_step:
          on_step(step, m)
        stop = any_process(sigterm.requested)
        if ckpt is not None and (ckpt.should_save(step) or stop):
          save()
      interrupted = stop and step < cfg.steps
    if ckpt is not None and not interrupted and step > 0:
      # the end of the run (a no-op when this step was just saved); steps=0 trained nothing, and a step-0
      # checkpoint would be evaluated and exported as a trained policy
      save()
  finally:
    if ckpt is not None:
      ckpt.close()
    if logger:
      logger.close()
    if bar:
      bar.close()
  return TrainResult(state, history, interrupted, resumed_from)
