"""What each ``--config.mode`` of ``python -m swirl_jax.main`` does, one function per mode.

Every stage reads and writes files in the workdir (JSON Lines a person can open), so each can be rerun
or resumed alone, and ``pipeline`` runs them in order, skipping a stage whose output is complete and
made from the current inputs (pipeline/stamps.py):

  trajectories.jsonl -> labelled.jsonl -> kept.jsonl (+ filter_report.json) -> step_examples.jsonl
  -> checkpoints/ -> eval/base/*.json, eval/trained/*.json -> export/hf/
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
import time

import jax

from swirl_jax.pipeline import stamps
from swirl_jax.pipeline.stage_inputs import (EVAL_SETTINGS, checkpoint_saved, checkpoint_step, export_inputs,
                                              filter_inputs, final_checkpoint_step, generate_inputs,
                                              inputs_match, label_inputs, record_matches, settings_of,
                                              train_inputs, without_neutral)


class Paths:
  """The files of a run, under its workdir."""

  def __init__(self, workdir: str):
    j = lambda *p: os.path.join(workdir, *p)
    self.workdir = workdir
    self.trajectories = j("trajectories.jsonl")
    self.labelled = j("labelled.jsonl")
    self.kept = j("kept.jsonl")
    self.filter_report = j("filter_report.json")
    self.step_examples = j("step_examples.jsonl")
    self.judge_cache = j("judge_cache.jsonl")
    self.checkpoints = j("checkpoints")
    self.train_logs = j("train_logs")
    self.eval_base = j("eval", "base")
    self.eval_trained = j("eval", "trained")
    self.export = j("export", "hf")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _train_questions(cfg, check_eval: bool = False) -> list:
  """The training questions (data.*), and with ``check_eval`` every eval set loaded once (``eval_questions``):
  process 0 first, the others after a barrier, since TFDS prepares a dataset into the shared data_dir on
  its first load and two processes preparing it at once would race on the same folder."""
  from swirl_jax.config import dataset_spec, eval_dataset_specs
  from swirl_jax.data.registry import load_questions

  if jax.process_index() == 0:
    questions = load_questions(dataset_spec(cfg))
    if check_eval:  # a missing eval set fails now, not after generation and training
      eval_questions(cfg, eval_dataset_specs(cfg))
  _barrier("datasets prepared")
  if jax.process_index() != 0:
    questions = load_questions(dataset_spec(cfg))
  return questions


def _mesh(cfg, global_mesh: bool = False):
  from swirl_jax.config import mesh_config
  from swirl_jax.models.sharding import make_mesh

  # Sampling is data-parallel across processes (each shards the model over its own devices); training
  # uses one global mesh.
  devices = jax.devices() if global_mesh else jax.local_devices()
  return make_mesh(mesh_config(cfg), devices) if len(devices) > 1 else None


def load(cfg, global_mesh: bool = False, source: str | None = None):
  from swirl_jax.config import rules
  from swirl_jax.evaluation.evaluate import load_policy

  source = source or cfg.model.source
  t = time.perf_counter()
  lm = load_policy(source, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                   mesh=_mesh(cfg, global_mesh), rules=rules(cfg), cache_dir=cfg.model.cache_dir or None)
  print(f"loaded {source} ({lm.config.num_params() / 1e6:.0f}M parameters, {cfg.model.param_dtype}) "
        f"in {time.perf_counter() - t:.1f}s", flush=True)
  if lm.tokenizer is None:
    raise ValueError(f"model.source={source!r} has no tokenizer; choose one with tokenizer files")
  return lm


def sampler(cfg, lm, stop_strings):
  from swirl_jax.config import sampling_config
  from swirl_jax.sampling.decode import Sampler, build_stop_table

  tok = lm.tokenizer
  stops = build_stop_table(tok, stop_strings, [tok.eos_id, tok.end_of_turn_id])
  s = cfg.sampler
  return Sampler.create(lm.model, batch=s.batch_size, cache_len=s.cache_len,
                        sampling=sampling_config(cfg), stops=stops, steps_per_call=s.steps_per_call,
                        max_chunk=s.max_chunk, exit_when_done=1 if cfg.rollout.refill else s.batch_size)


def _file_name(spec) -> str:
  """The dataset's name in file names: "hotpot_qa/fullwiki" (a config) becomes hotpot_qa-fullwiki."""
  return spec.name.replace("/", "-")


class EvalDataError(ValueError):
  """An evaluation dataset cannot be loaded (the message names each one and why)."""


def eval_questions(cfg, specs) -> dict:
  """Every eval dataset's questions by ``_file_name``, or one error naming each dataset that cannot load:
  checked before hours of generation and training (pipeline) or a model load (eval) are spent."""
  from swirl_jax.data.registry import load_questions

  out, errors = {}, []
  for sp in specs:
    try:
      out[_file_name(sp)] = load_questions(sp)
    except Exception as e:  # noqa: BLE001 - a missing file, a malformed record, a TFDS failure: all named
      errors.append(f"{sp.name} ({sp.split}): {type(e).__name__}: {e}")
  if errors:
    raise EvalDataError("--config.eval.datasets: cannot load " + ("these evaluation datasets" if len(errors) > 1
                            else "this evaluation dataset") + " (see data.manual_dir / data.source / "
                            "data.path, or drop it from eval.datasets):\n  " + "\n  ".join(errors))
  return out


def tools(cfg, paths: Paths, spec=None, task: str | None = None):
  from swirl_jax.config import dataset_spec
  from swirl_jax.data.registry import build_corpus, source_file
  from swirl_jax.tools import Calculator, make_search

  if (task or cfg.rollout.task) == "math":
    return {"calculator": Calculator()}
  files = [f for f in cfg.search.corpus.split(",") if f]
  if not files:  # the union of the split's paragraphs, as in the paper
    spec = spec or dataset_spec(cfg)
    # named by what it is built from (another data.seed makes another synthetic world), so a changed
    # setting builds a new corpus instead of searching the old one
    key = dataclasses.asdict(dataclasses.replace(spec, limit=None, drop_easy=False, shuffle_seed=None))
    source = source_file(spec)
    if source is not None:  # and by the file's contents: questions added to it add their paragraphs
      key["source_digest"] = stamps.file_digest(str(source))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = os.path.join(paths.workdir, f"corpus-{_file_name(spec)}-{spec.split}-{digest}.json")
    if not os.path.exists(path):
      build_corpus(spec, out_path=path)
    files = [path]
  return {"search": make_search(files, top_k=cfg.search.top_k, max_words=cfg.search.max_words)}


def judge(cfg, paths: Paths, policy=None, task: str | None = None):
  from swirl_jax.config import model_judge_config, openai_judge_config
  from swirl_jax.judges import make_judge

  backend = cfg.judge.backend
  # Reuse the loaded policy as the judge model only when it holds exactly the judge's weights (not a
  # trained checkpoint of the same base, which would change the judge between base and trained).
  same_model = backend == "model" and policy is not None and policy.source == cfg.judge.model.source
  return make_judge(
      backend, task=task or cfg.rollout.task, cache_path=paths.judge_cache if cfg.judge.cache else None,
      n_votes=cfg.judge.n_votes, openai=openai_judge_config(cfg) if backend == "openai" else None,
      model=model_judge_config(cfg) if backend == "model" else None,
      model_instance=policy if same_model else None,
      cache_read_only=jax.process_index() != 0)  # one writer per cache file


def check_judge_endpoint(cfg) -> None:
  """One small request to an openai judge endpoint (process 0), so that a wrong URL, model name or key stops
  the run now, not after the hours of generation or evaluation rollouts before the judge's first call."""
  if cfg.judge.backend != "openai" or jax.process_index() != 0:
    return
  from swirl_jax.config import openai_judge_config
  from swirl_jax.judges.openai_backend import OpenAIBackend

  OpenAIBackend(openai_judge_config(cfg)).check()


# -- stages ------------------------------------------------------------------------------------------


def run_generate(cfg, paths: Paths, questions=None) -> dict:
  from flax import nnx

  from swirl_jax.config import rollout_config
  from swirl_jax.pipeline.generate import generate, merge_shards
  from swirl_jax.sampling.rollout import Rollout
  from swirl_jax.tools import STOP_STRINGS

  if questions is None:
    questions = _train_questions(cfg)
  _check_generate_inputs(cfg, paths, questions)
  lm = load(cfg)
  rollout = Rollout(sampler(cfg, lm, STOP_STRINGS), nnx.state(lm.model), lm.tokenizer, tools(cfg, paths),
                    rollout_config(cfg), provenance={"model": cfg.model.source, "dtype": cfg.model.dtype,
                                                     "sampler_batch": cfg.sampler.batch_size})
  n = len(questions) * cfg.rollout.samples_per_question
  ends, steps, t0 = collections.Counter(), [], time.perf_counter()

  def progress(traj):
    ends[traj.provenance.get("end_reason", "answer")] += 1
    steps.append(len(traj.steps))
    print(f"[generate {sum(ends.values())}/{n}] {traj.question.id}#{traj.sample_index}: {len(traj.steps)} steps, "
          f"answer={traj.final_answer!r} (gold {traj.question.answer!r}) {time.perf_counter() - t0:.0f}s",
          flush=True)

  path = generate(rollout, questions, paths.trajectories, process_index=jax.process_index(),
                  process_count=jax.process_count(), on_trajectory=progress)
  if jax.process_count() > 1:
    _barrier("generate: all shards written")
    if jax.process_index() == 0:
      path = merge_shards(paths.trajectories, jax.process_count())
  return {"trajectories_file": path, "written_now": sum(ends.values()), "end_reasons": dict(ends),
          "mean_steps": sum(steps) / max(len(steps), 1), "seconds": round(time.perf_counter() - t0, 1)}


def run_label(cfg, paths: Paths, policy=None) -> dict:
  """Labels the trajectories not yet labelled; refuses to add labels of other judge settings to a file."""
  from swirl_jax.pipeline import stages

  summary = {}
  if jax.process_index() == 0:
    inputs = label_inputs(cfg, paths)
    recorded = stamps.read(paths.workdir, "label")
    changed = stamps.setting_changes(without_neutral(recorded.get("settings")), inputs["settings"]) \
        if recorded is not None and os.path.exists(paths.labelled) else []
    if changed:
      raise ValueError(f"{paths.labelled} was labelled with other judge settings ({'; '.join(changed)}); its "
                       "labels would be mixed with these, or kept under these settings' name. Use a new workdir, or "
                       f"remove {paths.labelled} (and what was made from it: {paths.kept}, {paths.step_examples}) "
                       "to label again")
    # recorded before labelling (labelling changes neither input): a run killed mid-way must not leave
    # labels without their settings
    stamps.write(paths.workdir, "label", inputs)
    summary = stages.label(paths.trajectories, paths.labelled, judge(cfg, paths, policy))
  _barrier("label done")
  return summary


def run_filter(cfg, paths: Paths) -> dict:
  from swirl_jax.config import rollout_config
  from swirl_jax.pipeline import stages

  out = {}
  if jax.process_index() == 0:
    inputs = filter_inputs(cfg, paths)
    stamps.clear(paths.workdir, "filter")  # (run alone, the pipeline's record of the old output must go)
    f = cfg.filter
    out["filter"] = stages.filter_stage(paths.labelled, paths.kept, paths.filter_report, f.strategy,
                                        equalize="auto" if f.equalize < 0 else (f.equalize or None), seed=f.seed)
    r = rollout_config(cfg)
    # the states show the prompt each trajectory was generated with (its provenance); the run's rollout
    # settings only fill in for trajectories that do not record them
    out["decompose"] = stages.decompose_stage(paths.kept, paths.step_examples, defaults=dict(
        task=r.task, num_demos=r.num_demos, budget=r.budget))
    stamps.write(paths.workdir, "filter", inputs)
  _barrier("filter done")
  return out


def run_train(cfg, paths: Paths) -> dict:
  from swirl_jax.config import decay_steps
  from swirl_jax.sampling.decode import SamplingConfig
  from swirl_jax.training.checkpointing import CheckpointConfig
  from swirl_jax.training.losses import LossConfig
  from swirl_jax.training.optimizer import OptimizerConfig
  from swirl_jax.training.rl import TrainConfig, train
  from swirl_jax.types import StepExample, read_jsonl

  t = cfg.train
  examples = read_jsonl(StepExample, paths.step_examples)
  if not examples:
    raise ValueError(f"{paths.step_examples} holds no step examples: nothing passed the filter "
                     f"(filter.strategy={cfg.filter.strategy!r}); see {paths.filter_report}")
  lm = load(cfg, global_mesh=True)
  jdg = judge(cfg, paths, lm) if t.mode != "sft" else None
  result = train(
      TrainConfig(mode=t.mode, task=cfg.rollout.task, steps=t.steps, states_per_step=t.states_per_step,
                  group_size=t.group_size, micro_batches=t.micro_batches, max_len=t.max_len, remat=t.remat,
                  remat_policy=t.remat_policy, share_prefix=t.share_prefix, seed=t.seed, offline_reward=t.offline_reward,
                  log_dir=paths.train_logs, steps_per_call=cfg.sampler.steps_per_call),
      examples, lm, jdg,
      loss=LossConfig(baseline=t.baseline or ("none" if t.mode == "offline" else "loo"),
                      normalize_std=t.normalize_std, kl_coef=t.kl_coef),
      optimizer=OptimizerConfig(learning_rate=t.learning_rate, warmup_steps=t.warmup_steps,
                                decay_steps=decay_steps(cfg), end_lr_ratio=t.end_lr_ratio,
                                weight_decay=t.weight_decay, clip_norm=t.clip_norm),
      sampling=SamplingConfig(temperature=t.temperature, max_new_tokens=t.max_new_tokens),
      checkpoint=CheckpointConfig(directory=os.path.abspath(paths.checkpoints), save_every=t.save_every,
                                  max_to_keep=t.keep_checkpoints))
  last = result.history[-1] if result.history else {}
  first = result.history[0] if result.history else {}
  return {"steps_run": len(result.history), "final_step": int(result.state.step),
          "first_mean_reward": first.get("mean_reward"), "last_mean_reward": last.get("mean_reward"),
          "interrupted": result.interrupted, "resumed_from": result.resumed_from,
          "last_metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))}}


def run_eval(cfg, paths: Paths) -> dict:
  from swirl_jax.config import dataset_task, eval_dataset_specs, rollout_config, sampling_config
  from swirl_jax.data.registry import source_file
  from swirl_jax.evaluation.evaluate import EvalConfig, evaluate
  from swirl_jax.evaluation.report import comparison_table, load_reports

  if jax.process_index() != 0:
    _barrier("eval done")
    return {}
  s = cfg.sampler

  def eval_config(task: str) -> EvalConfig:
    rollout = dataclasses.replace(rollout_config(cfg), task=task, samples_per_question=1)
    if task != cfg.rollout.task:  # another tool: its own default budget
      rollout = dataclasses.replace(rollout, max_tool_calls=None)
    return EvalConfig(rollout=rollout, sampling=dataclasses.replace(sampling_config(cfg), temperature=0.0),
                      batch_size=s.batch_size, cache_len=s.cache_len, steps_per_call=s.steps_per_call,
                      max_chunk=s.max_chunk, judge_process=cfg.eval.judge_process)

  policies = [("base", cfg.model.source, paths.eval_base)]
  # (no checkpoint, or step 0 = the initial weights, which older versions saved for train.steps=0: no
  # trained policy)
  trained = cfg.eval.checkpoint or (paths.checkpoints if checkpoint_step(paths.checkpoints) else "")
  if trained:
    policies.append(("trained", trained, paths.eval_trained))
  specs = eval_dataset_specs(cfg)
  # the question files' contents (an edited file at the same path is other questions)
  data_files = {}
  for sp in specs:
    try:
      path = source_file(sp)
    except FileNotFoundError:  # load_questions names what is missing, when it gets there
      path = None
    if path is not None:
      data_files[_file_name(sp)] = stamps.file_digest(str(path))
  judges = {}  # task -> judge, shared by base and trained (a judge model loads once)
  questions = None  # loaded (all of them, which checks them) before the first model load
  for label, source, out_dir in policies:
    # Reports are reused only when made from the same policy (checkpoint step) and settings.
    saved = checkpoint_saved(source)
    inputs = {"policy": source, "checkpoint_step": checkpoint_step(source), **saved,
              "settings": without_neutral(settings_of(cfg, *EVAL_SETTINGS)),
              **({"data_files": data_files} if data_files else {})}
    record = f"eval-{label}"
    recorded = stamps.read(paths.workdir, record)
    fresh = inputs_match(recorded, inputs, paths.workdir, record)
    # An interrupted run of these inputs names the datasets it finished: their reports stand.
    partial = recorded if isinstance(recorded, dict) and isinstance(recorded.get("in_progress"), dict) else {}
    finished = set(partial.get("done", [])) if inputs_match(partial.get("in_progress"), inputs, paths.workdir,
                                                            record) else set()
    # "hotpot_qa/fullwiki" names a config; its report is hotpot_qa-fullwiki.json
    todo = [sp for sp in specs if not ((fresh or _file_name(sp) in finished)
                                       and os.path.exists(os.path.join(out_dir, f"{_file_name(sp)}.json")))]
    if not todo:
      if not fresh:
        stamps.write(paths.workdir, record, inputs)
      continue
    if finished and not fresh:
      print(f"[eval {label}] resuming an interrupted run: {len(specs) - len(todo)} of {len(specs)} datasets "
            "are done", flush=True)
    elif not fresh and recorded is not None:
      print(f"[eval {label}] re-evaluating: changed since the reports were made: "
            f"{stamps.changed(paths.workdir, record, inputs)}", flush=True)
    if questions is None:
      questions = eval_questions(cfg, specs)
      check_judge_endpoint(cfg)
    waiting = {_file_name(sp) for sp in todo}
    done = sorted(_file_name(sp) for sp in specs if _file_name(sp) not in waiting)
    # never fresh while partial; names the finished datasets as it goes
    stamps.write(paths.workdir, record, {"in_progress": inputs, "done": done})
    lm = load(cfg, source=source)
    for sp in todo:
      task = dataset_task(sp.name)
      if task not in judges:
        judges[task] = judge(cfg, paths, lm, task)
      provenance = {"source": source, "checkpoint_step": inputs["checkpoint_step"], **saved}  # (a retrained
      # step is another policy)
      report = evaluate(lm, questions[_file_name(sp)], judges[task], tools(cfg, paths, sp, task),
                        eval_config(task), dataset=_file_name(sp), out_dir=out_dir, label=label,
                        provenance=provenance,
                        # (the search corpus and settings, the data files; the policy's paths as the stage
                        # record names them, so a moved workdir's saved rollouts are reused)
                        resume_key=stamps.plain({**inputs, "settings": _rollout_settings(inputs["settings"]),
                                                 "source": source, "provenance": provenance}, paths.workdir))
      print(f"[eval {label}] {sp.name}: " + json.dumps({k: v for k, v in report.items()
                                                       if isinstance(v, (int, float))}), flush=True)
      done = sorted({*done, _file_name(sp)})
      stamps.write(paths.workdir, record, {"in_progress": inputs, "done": done})
    stamps.write(paths.workdir, record, inputs)
  names = [_file_name(sp) for sp in specs]  # this run's datasets, not reports an earlier run left
  base = load_reports(paths.eval_base, names)
  table = comparison_table(base, load_reports(paths.eval_trained, names)) if trained else ""
  _barrier("eval done")
  return {"table": table, "base": base}


def _rollout_settings(settings: dict) -> dict:
  """An eval record's settings less the judge's (judge.*, eval.judge_process): what the saved rollouts of an
  interrupted evaluation depend on. The judge runs after them, so a changed judge reuses them."""
  out = {k: v for k, v in settings.items() if k != "judge"}
  if isinstance(out.get("eval"), dict):
    out["eval"] = {k: v for k, v in out["eval"].items() if k != "judge_process"}
  return out


def run_export(cfg, paths: Paths) -> dict:
  from swirl_jax.checkpoints.build import model_weights
  from swirl_jax.checkpoints.hf_export import export_hf

  out = cfg.export.out or paths.export
  source = cfg.eval.checkpoint or paths.checkpoints
  if not cfg.eval.checkpoint and not checkpoint_step(paths.checkpoints):  # none, or step 0 (untrained)
    # exporting model.source unchanged under the trained policy's name would pass it off as trained
    raise FileNotFoundError(f"mode=export: {paths.checkpoints} holds no checkpoint; train first, or name the "
                            f"policy to export with --config.eval.checkpoint (a checkpoint directory or any "
                            f"model.source)")
  real = lambda p: os.path.realpath(p) + os.sep
  for key, src in (("model.source", cfg.model.source), ("the policy exported", source)):
    if os.path.exists(src) and real(src).startswith(real(out)):
      # (the base model the checkpoints were trained from, or the checkpoints themselves)
      raise ValueError(f"--config.export.out={out!r} would replace {key} ({src}): export into another directory")
  if jax.process_index() == 0:
    inputs = export_inputs(cfg, paths)
    stamps.clear(paths.workdir, "export")  # (run alone, the pipeline's record of the old export must go)
    lm = load(cfg, source=source)
    # (the workdir's own export folder may hold an export made before exports were marked)
    export_hf(lm.config, model_weights(lm.model), out, tokenizer=lm.tokenizer, dtype=cfg.export.dtype,
              overwrite=True, replace_unmarked=real(out) == real(paths.export))
    stamps.write(paths.workdir, "export", inputs)
  _barrier("export done")
  return {"export_dir": out, "from": source}


def run_serve(cfg, paths: Paths) -> dict:
  from swirl_jax.config import rules
  from swirl_jax.serve import run_serve as serve

  s = cfg.serve
  serve(cfg.model.source, host=s.host, port=s.port, model_name=s.model_name, dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype, cache_dir=cfg.model.cache_dir or None,
        batch_size=cfg.sampler.batch_size, cache_len=cfg.sampler.cache_len,
        steps_per_call=cfg.sampler.steps_per_call, max_chunk=cfg.sampler.max_chunk,
        max_tokens_limit=s.max_tokens_limit or None, batch_wait_ms=s.batch_wait_ms, max_samplers=s.max_samplers,
        request_timeout_s=s.request_timeout_s, max_pending=s.max_pending, max_body_bytes=s.max_body_bytes,
        api_key_env=s.api_key_env or None, mesh=_mesh(cfg), rules=rules(cfg))
  return {}


def run_sample(cfg, paths: Paths) -> dict:
  from flax import nnx

  from swirl_jax.sampling.generate import generate as generate_tokens

  lm = load(cfg)
  smp = sampler(cfg, lm, ())
  texts = [p for p in cfg.sample.prompts.split("|||") if p]
  outs = generate_tokens(smp, nnx.state(lm.model), [lm.tokenizer.encode(p) for p in texts])
  return {"completions": [{"prompt": p, "completion": lm.tokenizer.decode(o)} for p, o in zip(texts, outs)]}


# -- the whole pipeline ------------------------------------------------------------------------------


def _check_generate_inputs(cfg, paths: Paths, questions) -> None:
  """Refuses to add trajectories of other settings to a file generated with these (or, without a record, of
  other questions); stamps them first."""
  from swirl_jax.pipeline.generate import check_questions

  inputs = generate_inputs(cfg)
  root, ext = os.path.splitext(paths.trajectories)
  shards = glob.glob(f"{glob.escape(root)}-*-of-*{ext}")
  written = os.path.exists(paths.trajectories) or shards
  recorded = stamps.read(paths.workdir, "generate")
  if written and recorded is None:
    for path in [paths.trajectories] * os.path.exists(paths.trajectories) + sorted(shards):
      check_questions(path, questions)
  if written and recorded is not None and not stamps.matches(paths.workdir, "generate", inputs):
    raise ValueError(f"{paths.trajectories} was generated with other settings (changed: "
                     f"{', '.join(stamps.changed(paths.workdir, 'generate', inputs))}); its trajectories would be "
                     f"mixed with these. Use a new workdir, or remove {paths.trajectories} (and what was made "
                     "from it) to generate again")
  if jax.process_index() == 0:
    stamps.write(paths.workdir, "generate", inputs)


def _train_stage(cfg, paths: Paths) -> dict:
  """run_train, refusing to resume checkpoints made from other step examples or other train settings."""
  inputs = train_inputs(cfg, paths)
  recorded = stamps.read(paths.workdir, "train")
  trained = final_checkpoint_step(paths) >= 0
  if trained and recorded is not None and not record_matches(paths.workdir, "train", inputs):
    if recorded.get("step_examples") != inputs["step_examples"]:
      why = f"{paths.step_examples} changed since they were trained on it (the trajectories or filter settings changed)"
    else:
      changes = stamps.setting_changes(without_neutral(recorded["settings"]), inputs["settings"])
      if recorded.get("decay_schedule", inputs["decay_schedule"]) != inputs["decay_schedule"]:
        changes.append(f"the learning-rate decay: {recorded['decay_schedule']} -> {inputs['decay_schedule']} steps "
                       f"(train.decay_steps=-1 follows train.steps; pass --config.train.decay_steps="
                       f"{recorded['decay_schedule']} to extend the run on its schedule)")
      why = f"they were trained with other settings ({'; '.join(changes)})"
    raise ValueError(f"{paths.checkpoints} would continue under other inputs: {why}. Remove {paths.checkpoints} "
                     "to train again, or use a new workdir")
  # What the checkpoints are made from, before the first one; checkpoints without a record get one once
  # run_train has accepted the resume (it checks the examples' digest in the checkpoint).
  record_first = recorded is not None or not trained
  if jax.process_index() == 0 and record_first:
    stamps.write(paths.workdir, "train", inputs)
  out = run_train(cfg, paths)
  if jax.process_index() == 0 and not record_first:
    stamps.write(paths.workdir, "train", inputs)
  return out


def run_pipeline(cfg, paths: Paths) -> dict:
  from swirl_jax.pipeline.generate import check_questions, done_keys

  summary, t0 = {}, time.perf_counter()
  questions = _train_questions(cfg, check_eval=True)

  def stage(name, done, fn, inputs=None):
    """Runs ``fn`` unless ``done()``; ``inputs()`` (the stage's stamp) must also match to skip it."""
    t = time.perf_counter()
    stamp = inputs() if inputs else None
    fresh = stamp is None or record_matches(paths.workdir, name, stamp)
    if done() and fresh:
      print(f"== {name}: already complete, skipped", flush=True)
      summary[name] = "skipped (complete)"
      return
    why = "" if fresh or stamps.read(paths.workdir, name) is None else \
        f" (inputs changed: {', '.join(stamps.changed(paths.workdir, name, stamp))})"
    print(f"== {name}{why}", flush=True)
    summary[name] = fn()
    summary[name + "_seconds"] = round(time.perf_counter() - t, 1)
    if stamp is not None and jax.process_index() == 0:
      stamps.write(paths.workdir, name, stamp)

  wanted = {(q.id, k) for q in questions for k in range(cfg.rollout.samples_per_question)}

  def generated() -> bool:
    if not (os.path.exists(paths.trajectories) and wanted <= done_keys(paths.trajectories)):
      return False  # (run_generate checks a file without a record before it appends)
    if stamps.read(paths.workdir, "generate") is None:  # complete, but no record of its settings: are they
      check_questions(paths.trajectories, questions)  # these questions?
    return True

  complete = generated()  # (reads the whole file: once)
  if complete and stamps.read(paths.workdir, "generate") is not None and not stamps.matches(
      paths.workdir, "generate", generate_inputs(cfg)):
    # complete for these questions: kept (sampling settings are eval settings too), but never silently
    print(f"== note: {paths.trajectories} was generated with other settings (changed: "
          f"{', '.join(stamps.changed(paths.workdir, 'generate', generate_inputs(cfg)))}); it is used as it is. "
          "Use a new workdir to generate with these.", flush=True)
  if not complete:
    check_judge_endpoint(cfg)  # (the label stage is the judge's first call)
  stage("generate", lambda: complete, lambda: run_generate(cfg, paths, questions))
  # (every trajectory of the file, not a count: a killed label run leaves its record and part of the file)
  labelled = lambda: done_keys(paths.trajectories) <= done_keys(paths.labelled)
  stage("label", labelled, lambda: run_label(cfg, paths), lambda: label_inputs(cfg, paths))
  stage("filter", lambda: os.path.exists(paths.step_examples), lambda: run_filter(cfg, paths),
        lambda: filter_inputs(cfg, paths))
  if cfg.train.steps == 0:  # base-model evaluation only
    print("== train: train.steps=0, skipped", flush=True)
    summary["train"] = "skipped (train.steps=0)"
  else:
    stage("train", lambda: final_checkpoint_step(paths) >= cfg.train.steps, lambda: _train_stage(cfg, paths),
          lambda: train_inputs(cfg, paths))
    if isinstance(summary["train"], dict) and summary["train"].get("interrupted"):
      # Preempted (SIGTERM, checkpoint saved): the grace period is not spent evaluating and exporting a half-
      # trained policy, and main exits non-zero so that a scheduler requeues the job.
      print("== train interrupted (SIGTERM) with its checkpoint saved: eval and export skipped; run the same "
            "command again to resume", flush=True)
      summary.update(interrupted=True, total_seconds=round(time.perf_counter() - t0, 1))
      return summary
  stage("eval", lambda: False, lambda: run_eval(cfg, paths))  # fresh reports are skipped inside
  if cfg.eval.checkpoint or checkpoint_step(paths.checkpoints):  # (step 0: the initial weights)
    stage("export", lambda: os.path.exists(os.path.join(cfg.export.out or paths.export, "config.json")),
          lambda: run_export(cfg, paths), lambda: export_inputs(cfg, paths))
  else:  # train.steps=0 trained nothing: nothing to export
    summary["export"] = "skipped (no checkpoint)"
  summary["total_seconds"] = round(time.perf_counter() - t0, 1)
  return summary


MODES = {"pipeline": run_pipeline, "generate": run_generate, "label": run_label, "filter": run_filter,
         "train": _train_stage, "eval": run_eval, "export": run_export, "serve": run_serve, "sample": run_sample}
