"""Command line: ``python -m swirl_jax.main --config=configs/NAME.py --workdir=DIR [--config.a.b=value]``.

Modes (``--config.mode``):
  generate  stage-1 rollouts (the model + tools) over a dataset, appended to DIR/trajectories.jsonl;
            rerunning continues where a previous run stopped.
  sample    plain completions of ``sample.prompts`` (a smoke test of a model source).

Every setting is documented in swirl_jax/config.py (``HELP``); ``--helpfull`` lists the overrides.
"""

from __future__ import annotations

import collections
import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/quickstart.py", "ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Directory for every output of the run.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-process runs "
                             "(TPU pods and SLURM are detected without it).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def _load(cfg):
  from swirl_jax.config import mesh_config
  from swirl_jax.loading import load_model
  from swirl_jax.models.sharding import make_mesh

  import jax

  # Sampling is data-parallel across processes: each process shards the model over its own devices.
  devices = jax.local_devices()
  mesh = make_mesh(mesh_config(cfg), devices) if len(devices) > 1 else None
  t = time.perf_counter()
  lm = load_model(cfg.model.source, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, mesh=mesh,
                  cache_dir=cfg.model.cache_dir or None)
  print(f"loaded {cfg.model.source} ({lm.config.num_params() / 1e6:.0f}M parameters, "
        f"{cfg.model.param_dtype}) in {time.perf_counter() - t:.1f}s")
  if lm.tokenizer is None:
    raise ValueError(f"model.source={cfg.model.source!r} has no tokenizer; choose one with tokenizer files")
  return lm


def _sampler(cfg, lm, stop_strings):
  from swirl_jax.config import sampling_config
  from swirl_jax.sampling.decode import Sampler, build_stop_table

  tok = lm.tokenizer
  stops = build_stop_table(tok, stop_strings, [tok.eos_id, tok.end_of_turn_id])
  s = cfg.sampler
  return Sampler.create(lm.model, batch=s.batch_size, cache_len=s.cache_len, sampling=sampling_config(cfg),
                        stops=stops, steps_per_call=s.steps_per_call, max_chunk=s.max_chunk,
                        exit_when_done=1 if cfg.rollout.refill else s.batch_size)


def _tools(cfg, workdir):
  from swirl_jax.config import dataset_spec
  from swirl_jax.data.registry import build_corpus
  from swirl_jax.tools import Calculator, make_search

  if cfg.rollout.task == "math":
    return {"calculator": Calculator()}
  files = [f for f in cfg.search.corpus.split(",") if f]
  if not files:  # the union of the split's paragraphs, as in the paper
    path = os.path.join(workdir, "corpus.json")
    if not os.path.exists(path):
      build_corpus(dataset_spec(cfg), out_path=path)
    files = [path]
  return {"search": make_search(files, top_k=cfg.search.top_k, max_words=cfg.search.max_words)}


def run_generate(cfg, workdir: str) -> None:
  import jax
  from flax import nnx

  from swirl_jax.config import dataset_spec, rollout_config
  from swirl_jax.data.registry import load_questions
  from swirl_jax.pipeline.generate import generate
  from swirl_jax.sampling.rollout import Rollout
  from swirl_jax.tools import STOP_STRINGS

  questions = load_questions(dataset_spec(cfg))
  lm = _load(cfg)
  sampler = _sampler(cfg, lm, STOP_STRINGS)
  rollout = Rollout(sampler, nnx.state(lm.model), lm.tokenizer, _tools(cfg, workdir), rollout_config(cfg),
                    provenance={"model": cfg.model.source, "dtype": cfg.model.dtype})
  n = len(questions) * cfg.rollout.samples_per_question
  ends, steps, t0 = collections.Counter(), [], time.perf_counter()

  def progress(traj):
    ends[traj.provenance.get("end_reason", "answer")] += 1
    steps.append(len(traj.steps))
    done = sum(ends.values())
    print(f"[{done}/{n}] {traj.question.id}#{traj.sample_index}: {len(traj.steps)} steps, "
          f"answer={traj.final_answer!r} (gold {traj.question.answer!r}) {time.perf_counter() - t0:.0f}s",
          flush=True)

  out = os.path.join(workdir, "trajectories.jsonl")
  path = generate(rollout, questions, out, process_index=jax.process_index(),
                  process_count=jax.process_count(), on_trajectory=progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    from swirl_jax.pipeline.generate import merge_shards

    multihost_utils.sync_global_devices("generate: all shards written")
    if jax.process_index() == 0:
      path = merge_shards(out, jax.process_count())
  print(json.dumps({"trajectories_file": path, "written_now": sum(ends.values()), "end_reasons": dict(ends),
                    "mean_steps": sum(steps) / max(len(steps), 1),
                    "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


def run_sample(cfg, workdir: str) -> None:
  from flax import nnx

  from swirl_jax.sampling.generate import generate as generate_tokens

  lm = _load(cfg)
  sampler = _sampler(cfg, lm, ())
  texts = [p for p in cfg.sample.prompts.split("|||") if p]
  outs = generate_tokens(sampler, nnx.state(lm.model), [lm.tokenizer.encode(p) for p in texts])
  for p, o in zip(texts, outs):
    print(f"--- {p!r}\n{lm.tokenizer.decode(o)}")


MODES = {"generate": run_generate, "sample": run_sample}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from swirl_jax.config import check_documented

  from swirl_jax import distributed

  distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  cfg = _CONFIG.value
  check_documented(cfg)
  if cfg.mode not in MODES:
    raise app.UsageError(f"--config.mode={cfg.mode!r}; choose one of {sorted(MODES)}")
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  import jax

  if jax.process_index() == 0:  # outputs are written once
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(cfg.to_json(indent=1))
  logging.set_verbosity(logging.WARNING)
  MODES[cfg.mode](cfg, workdir)


if __name__ == "__main__":
  app.run(main)
