"""Multi-step evaluation: the stage-1 tool loop with any loadable policy, judged against the answer key.

For each question the policy runs the rollout loop (sampling.rollout.Rollout: the sampler, the tools,
the shared parser); the configured judge gives each trajectory an outcome verdict (judged accuracy);
exact match and token F1 of the final answer against the key and its aliases come from
judges.answers; the report also has the mean number of model steps and tool calls, how trajectories
ended (``end_reasons``: reason -> trajectories), ``questions_not_run`` (questions whose prompt does not
fit ``cache_len``: they have no steps and count as wrong in every mean), and optionally the process pass
rate (the judge's verdict on every step of the policy's own trajectories, which the paper reports rising
with SWiRL).

A policy is any source ``load_model`` reads, or a training checkpoint directory (training/
checkpointing.py), whose metadata names the model it started from: that model gives the architecture
and tokenizer, the checkpoint the parameters (``load_policy``).

With an output directory the rollouts are resumable: each finished trajectory is appended to
``DATASET.rollouts.partial.jsonl`` (after a first line holding what they depend on: policy, model
dtypes, the EvalConfig's rollout and sampler settings, the tools and the caller's ``resume_key``), so a
rerun after a crash or a preemption runs only the missing questions; the file is removed once the report
is written. Settings that cannot change a rollout are left out of that key, so changing them reuses the
rollouts and only redoes the judging: ``judge_process`` (the judge runs after the rollouts) and, when
decoding is greedy (temperature 0), ``top_k`` and ``top_p``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from swirl_jax.judges import answers
from swirl_jax.judges.base import Judge, step_contexts
from swirl_jax.loading import LoadedModel, load_model
from swirl_jax.models.sharding import Rules
from swirl_jax.pipeline.jsonl import JsonlAppender, numbered_records
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.rollout import PROMPT_TOO_LONG, Rollout, RolloutConfig
from swirl_jax.tools.base import Tool
from swirl_jax.tools.parser import STOP_STRINGS
from swirl_jax.types import Question, Trajectory, Verdict, dumps, write_jsonl


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Settings of an evaluation run.

  Attributes:
    rollout: the tool loop (task, samples per question, tool budget, demonstrations, seed).
    sampling: how turns are sampled (default greedy).
    batch_size / cache_len / steps_per_call / max_chunk: the sampler (decode.Sampler).
    judge_process: also judge every step of every trajectory (process pass rate; one judge call per
      step).
  """

  rollout: RolloutConfig = RolloutConfig()
  sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=96)
  batch_size: int = 8
  cache_len: int = 1024
  steps_per_call: int = 32
  max_chunk: int = 256
  judge_process: bool = False


def effective_sampling(sampling: SamplingConfig) -> SamplingConfig:
  """``sampling`` as decoding uses it: greedy decoding (temperature 0) ignores top_k and top_p, so they
  are reset to their no-limit values (and greedy runs that differ only there are the same run)."""
  if sampling.temperature == 0:
    return dataclasses.replace(sampling, top_k=0, top_p=1.0)
  return sampling


def rollout_settings(config: EvalConfig) -> dict[str, Any]:
  """The part of ``config`` the rollouts depend on (their resume key's "config"): all but the judge's
  settings, with the sampling settings as decoding uses them."""
  out = dataclasses.asdict(dataclasses.replace(config, sampling=effective_sampling(config.sampling)))
  del out["judge_process"]  # (judging comes after the rollouts)
  return out


def is_checkpoint_dir(path: str) -> bool:
  """Whether ``path`` is a training checkpoint directory (numbered steps holding a ``meta`` item)."""
  if not os.path.isdir(path):
    return False
  return any(name.isdigit() and os.path.isdir(os.path.join(path, name, "meta")) for name in os.listdir(path))


def with_checkpoint(base: LoadedModel, directory: str, step: int | None = None) -> tuple[LoadedModel, int]:
  """``base`` with the policy parameters of a training checkpoint (default: its latest step)."""
  from swirl_jax.training.checkpointing import restore_params
  from swirl_jax.training.train_state import model_params

  params, step = restore_params(directory, model_params(base.model), step)
  model = nnx.merge(nnx.graphdef(base.model), params)
  return dataclasses.replace(base, model=model, source=f"{directory}@{step}"), step


def load_policy(source: str, *, step: int | None = None, dtype: str = "float32", param_dtype: str = "float32",
                mesh: Mesh | None = None, rules: Rules = Rules(), cache_dir: str | None = None) -> LoadedModel:
  """A policy from a ``load_model`` source or a training checkpoint directory (module docstring)."""
  if not is_checkpoint_dir(source):
    return load_model(source, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules, cache_dir=cache_dir)
  from swirl_jax.training.checkpointing import read_meta

  _, meta = read_meta(source, step)
  base = load_model(meta["model_source"], dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules,
                    cache_dir=cache_dir)
  return with_checkpoint(base, source, step)[0]


def trajectory_scores(t: Trajectory, outcome: Verdict) -> dict[str, Any]:
  """Per-trajectory metrics: judged correct, exact match, token F1, steps, tool calls, how it ended."""
  golds = [t.question.answer, *t.question.aliases]
  final = t.final_answer
  return {
      "question_id": t.question.id, "sample_index": t.sample_index,
      "judged_correct": outcome.label == "GOOD", "judge_score": outcome.score,
      "exact_match": bool(final is not None and answers.exact_match(final, golds)),
      "token_f1": float(answers.token_f1(final, golds)) if final is not None else 0.0,
      "steps": len(t.steps), "tool_calls": sum(s.kind == "tool_call" for s in t.steps),
      "malformed_steps": sum(s.kind == "malformed" for s in t.steps),
      "answered": final is not None, "end_reason": t.provenance.get("end_reason", "answer"),
  }


def summarize(trajectories: Sequence[Trajectory], outcomes: Sequence[Verdict],
              process: Sequence[Sequence[Verdict]] | None = None) -> dict[str, Any]:
  """The aggregate metrics of a set of judged trajectories (means over trajectories)."""
  rows = [trajectory_scores(t, o) for t, o in zip(trajectories, outcomes)]
  n = len(rows)

  def mean(key):
    return float(np.mean([r[key] for r in rows])) if rows else 0.0

  ends = collections.Counter(r["end_reason"] for r in rows)
  out = {
      "num_trajectories": n, "num_questions": len({r["question_id"] for r in rows}),
      "judged_accuracy": mean("judged_correct"), "exact_match": mean("exact_match"),
      "token_f1": mean("token_f1"), "mean_steps": mean("steps"), "mean_tool_calls": mean("tool_calls"),
      "mean_malformed_steps": mean("malformed_steps"), "answered_rate": mean("answered"),
      "end_reasons": dict(sorted(ends.items())),
      "questions_not_run": len({r["question_id"] for r in rows if r["end_reason"] == PROMPT_TOO_LONG}),
  }
  if process is not None:
    labels = [v.label == "GOOD" for vs in process for v in vs]
    out["process_pass_rate"] = float(np.mean(labels)) if labels else 0.0
  return out


def evaluate(model: LoadedModel, questions: Sequence[Question], judge: Judge, tools: Mapping[str, Tool],
             config: EvalConfig = EvalConfig(), *, dataset: str | None = None, out_dir: str | None = None,
             label: str | None = None, provenance: Mapping[str, Any] | None = None,
             resume_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Runs the multi-step loop over ``questions`` and returns (and writes) the dataset's report.

  Args:
    model: the policy (with tokenizer).
    questions: the test set.
    judge: gives the outcome verdicts (and process verdicts when ``config.judge_process``).
    tools: the tools of the task (``{"calculator": Calculator()}`` or ``{"search": ...}``).
    config: rollout, sampling and sampler settings.
    dataset: name in the report (default: the questions' dataset field).
    out_dir: when given, writes ``{out_dir}/{dataset}.json`` (the report) and
      ``{out_dir}/{dataset}.trajectories.jsonl`` (the judged trajectories).
    label: names the policy in the report (default: the model source).
    provenance: written into the report as it is (e.g. the policy's source and checkpoint step).
    resume_key: what else the rollouts depend on (the tools' settings, the data files): rollouts appended
      to ``out_dir`` by an interrupted run are reused only under the same key (module docstring). Its
      entries replace the key's own ("source", "provenance": the pipeline names the policy by its path
      relative to the workdir, so a moved workdir's rollouts are reused).
  """
  tok = model.tokenizer
  if tok is None:
    raise ValueError(f"model {model.source!r} has no tokenizer")
  dataset = dataset or (questions[0].dataset if questions else "empty")
  ids = collections.Counter(q.id for q in questions)
  if any(n > 1 for n in ids.values()):  # (trajectories are keyed by question id)
    raise ValueError(f"evaluate: question ids must be unique in {dataset}; repeated: "
                     f"{sorted(i for i, n in ids.items() if n > 1)[:5]}")
  stops = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  # (the effective settings, which the trajectories' provenance records: rollouts reused across greedy runs
  # with other top_k / top_p say the same as new ones)
  sampling = effective_sampling(config.sampling)
  sampler = Sampler.create(model.model, batch=config.batch_size, cache_len=config.cache_len,
                           sampling=sampling, stops=stops, steps_per_call=config.steps_per_call,
                           max_chunk=max(config.max_chunk, sampling.max_new_tokens))
  rollout = Rollout(sampler, nnx.state(model.model), tok, tools, config.rollout,
                    provenance={"model": model.source})
  t0 = time.perf_counter()
  partial = None
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    partial = os.path.join(out_dir, f"{dataset}.rollouts.partial.jsonl")
  key = {"policy": label or model.source, "source": model.source, "provenance": dict(provenance or {}),
         "dtype": model.config.dtype, "param_dtype": model.config.param_dtype,
         "config": rollout_settings(config), "tools": sorted(tools), **dict(resume_key or {})}
  trajs = _resumable_rollouts(rollout, questions, partial, key)
  t1 = time.perf_counter()
  outcomes = judge.judge_outcomes(trajs)
  process = None
  if config.judge_process:
    contexts = [step_contexts(t, config.rollout.task) for t in trajs]
    flat = judge.judge_contexts([c for cs in contexts for c in cs])
    process, pos = [], 0
    for cs in contexts:
      process.append(flat[pos:pos + len(cs)])
      pos += len(cs)
  report = {
      "dataset": dataset, "policy": label or model.source, "judge": judge.identity,
      "provenance": dict(provenance or {"source": model.source}),
      **summarize(trajs, outcomes, process),
      "rollout_seconds": round(t1 - t0, 3), "judge_seconds": round(time.perf_counter() - t1, 3),
      "config": {"rollout": dataclasses.asdict(config.rollout), "sampling": dataclasses.asdict(sampling)},
  }
  if out_dir:
    from swirl_jax.evaluation.report import write_report

    judged = []
    for i, (t, o) in enumerate(zip(trajs, outcomes)):
      steps = t.steps
      if process is not None:
        steps = tuple(dataclasses.replace(s, verdict=v) for s, v in zip(t.steps, process[i]))
      judged.append(dataclasses.replace(t, steps=steps, outcome=o))
    write_jsonl(os.path.join(out_dir, f"{dataset}.trajectories.jsonl"), judged)
    write_report(os.path.join(out_dir, f"{dataset}.json"), report)
    os.remove(partial)  # (after the report: a crash before it leaves the rollouts for the rerun)
  return report


def _resumable_rollouts(rollout: Rollout, questions: Sequence[Question], path: str | None,
                        key: Mapping[str, Any]) -> list[Trajectory]:
  """Every (question, sample) trajectory, in question order. With ``path`` each is appended there as it
  finishes, after a first line holding ``key``; trajectories already there under the same key (and the
  same question) are reused, a file of another key is started over."""
  jobs = [(q, k) for q in questions for k in range(rollout.cfg.samples_per_question)]
  done: dict[tuple[str, int], Trajectory] = {}
  if path is not None and os.path.exists(path):
    records = numbered_records(path)
    first = next(records, (0, None))[1]
    if first is not None and first.get("eval_key") == json.loads(json.dumps(key, sort_keys=True)):
      current = {q.id: q for q in questions}
      for lineno, rec in records:
        t = Trajectory.from_json(rec, where=f"{path}:{lineno}")
        if current.get(t.question.id) == t.question:
          done[t.question.id, t.sample_index] = t
    else:  # made under other settings or by another policy (or torn before its first line)
      os.remove(path)
  todo = [(q, k) for q, k in jobs if (q.id, k) not in done]
  if path is None:
    done.update(((t.question.id, t.sample_index), t) for t in rollout.run_jobs(todo))
  else:
    with JsonlAppender(path) as out:
      if os.path.getsize(path) == 0:
        out.write(json.dumps({"eval_key": key}, sort_keys=True))
      for t in rollout.run_jobs(todo):
        out.write(dumps(t))
        done[t.question.id, t.sample_index] = t
  return [done[q.id, k] for q, k in jobs]
