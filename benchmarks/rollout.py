"""Trajectories per minute of the refilling rollout batch vs. a static batch, on the synthetic calculator task.

Usage: python benchmarks/rollout.py [--batch 8] [--questions 32] [--dtype float32] [--quick]

Both modes run the same questions with the same per-trajectory seeds and the same sampling, through the
same ``Rollout`` code; only the scheduling differs:
  * refill: ``RolloutConfig(refill=True)`` and ``exit_when_done=1``: a decode call returns as soon as one
    row ends its turn; that row gets its tool result (or, when its trajectory ended, the next question)
    at once while the other rows keep going.
  * static: ``RolloutConfig(refill=False)`` and ``exit_when_done=batch``: each decode call runs until every
    row has ended its turn, and new questions enter only when the whole batch has finished.
A trajectory's tokens depend only on its seed (``trajectory_seed``), not on which rows share its batch, so
both modes should produce the same trajectories (reported as ``identical_trajectories``); the speed-up
comes from not idling rows while the longest trajectory of a batch finishes.

Compilation (one decode program per mode, one extend program per row and chunk bucket) happens before
timing.
Also reported per mode: time in decode and extend calls (each waited for), the decode steps run, the
share of row-steps that produced a token (``row_utilisation``), mean steps per trajectory and how
trajectories ended (``answer``, ``step budget exhausted``, ``context full``).

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import nnx

from benchmarks import common
from swirl_jax import load_model
from swirl_jax.data.synthetic_arith import ArithConfig
from swirl_jax.data.synthetic_arith import generate as arith_questions
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.rollout import Rollout, RolloutConfig
from swirl_jax.tools import STOP_STRINGS, Calculator

MODEL = "gemma3-270m"


@dataclasses.dataclass(frozen=True, eq=False)
class TimedSampler(Sampler):
  """A Sampler that waits for each extend and decode call and adds up their seconds and steps.

  Waiting costs the rollout nothing: its host loop reads every call's results right away.
  """

  def __post_init__(self):
    super().__post_init__()
    self.reset()

  def reset(self) -> None:
    object.__setattr__(self, "stats", collections.Counter())

  def extend(self, params, state, rows, tokens, valid, *rest):
    t0 = time.perf_counter()
    state = jax.block_until_ready(super().extend(params, state, rows, tokens, valid, *rest))
    self.stats["extend_s"] += time.perf_counter() - t0
    self.stats["extend_calls"] += 1
    self.stats["extend_rows"] += int(np.asarray(valid).any(axis=1).sum())
    self.stats["extend_valid_tokens"] += int(np.asarray(valid).sum())
    self.stats["extend_padded_tokens"] += int(np.prod(tokens.shape))
    return state

  def decode(self, params, state):
    t0 = time.perf_counter()
    state, out = jax.block_until_ready(super().decode(params, state))
    self.stats["decode_s"] += time.perf_counter() - t0
    self.stats["decode_calls"] += 1
    o = np.asarray(out)
    self.stats["decode_steps"] += int((o >= 0).any(axis=0).sum())
    self.stats["decode_tokens"] += int((o >= 0).sum())
    return state, out


def compile_all(sampler: Sampler, params: nnx.State) -> float:
  """Compiles decode and every (row, chunk) extend bucket on an empty state (no row gets tokens, no row
  is active: every call returns at once)."""
  t0 = time.perf_counter()
  b = sampler.batch
  state = sampler.init_state(params, np.zeros(b, np.uint32))
  for n in sampler.row_buckets:
    rows = sampler.row_indices(n)
    for width in sampler.chunk_buckets:
      state = sampler.extend(params, state, rows, np.zeros((n, width), np.int32), np.zeros((n, width), bool),
                             np.full((n,), -1, np.int32), np.zeros((n,), np.uint32), np.zeros((n,), bool))
  jax.block_until_ready(sampler.decode(params, state))
  return time.perf_counter() - t0


def run_mode(lm, params, questions, args, refill: bool) -> tuple[dict, list]:
  tok = lm.tokenizer
  stops = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
  sampler = TimedSampler.create(lm.model, batch=args.batch, cache_len=args.cache_len, sampling=sampling,
                                stops=stops, steps_per_call=args.steps_per_call,
                                exit_when_done=1 if refill else args.batch)
  compile_s = compile_all(sampler, params)
  sampler.reset()
  cfg = RolloutConfig(task="math", samples_per_question=1, num_demos=args.num_demos, seed=args.seed,
                      refill=refill, max_tool_calls=args.max_tool_calls)
  rollout = Rollout(sampler, params, tok, {"calculator": Calculator()}, cfg)
  t0 = time.perf_counter()
  trajs = list(rollout.run(questions))
  wall = time.perf_counter() - t0
  st = sampler.stats
  steps = [len(t.steps) for t in trajs]
  new_tokens = sum(s.new_tokens for t in trajs for s in t.steps)
  ends = collections.Counter(t.provenance.get("end_reason", "answer") for t in trajs)
  kinds = collections.Counter(s.kind for t in trajs for s in t.steps)
  result = {
      "trajectories": len(trajs), "wall_s": wall, "trajectories_per_minute": 60 * len(trajs) / wall,
      "kept_tokens_per_s": new_tokens / wall,
      "mean_steps_per_trajectory": float(np.mean(steps)), "max_steps": int(max(steps)),
      "steps_histogram": dict(sorted(collections.Counter(steps).items())),
      "end_reasons": dict(ends), "step_kinds": dict(kinds),
      "decode_s": st["decode_s"], "extend_s": st["extend_s"],
      "host_s": wall - st["decode_s"] - st["extend_s"],
      "decode_calls": st["decode_calls"], "decode_steps": st["decode_steps"],
      "decode_ms_per_step": 1e3 * st["decode_s"] / max(st["decode_steps"], 1),
      "row_utilisation": st["decode_tokens"] / max(st["decode_steps"] * args.batch, 1),
      "extend_calls": st["extend_calls"], "extend_rows_per_call": st["extend_rows"] / max(st["extend_calls"], 1),
      "extend_valid_share": st["extend_valid_tokens"] / max(st["extend_padded_tokens"], 1),
      "compile_s": compile_s,
  }
  return result, trajs


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="16 questions")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--questions", type=int, default=32)
  ap.add_argument("--dtype", default="float32",
                  help="param and compute dtype (float32 by default: on a CPU without bf16 units bfloat16 "
                       "is slower, and in bfloat16 a trajectory may depend on what shares its batch, so "
                       "the two modes may not produce the same trajectories; see identical_trajectories)")
  ap.add_argument("--temperature", type=float, default=0.7)
  ap.add_argument("--top_k", type=int, default=64)
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--max_tool_calls", type=int, default=None, help="default: the task's (10 for math)")
  ap.add_argument("--num_demos", type=int, default=1)
  ap.add_argument("--cache_len", type=int, default=1024)
  ap.add_argument("--steps_per_call", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--min_ops", type=int, default=2)
  ap.add_argument("--max_ops", type=int, default=6)
  args = ap.parse_args()
  if args.quick:
    args.questions = min(args.questions, 16)

  start = time.perf_counter()
  info = common.machine_info()
  lm = load_model(MODEL, dtype=args.dtype, param_dtype=args.dtype)
  params = nnx.state(lm.model)
  questions = arith_questions(ArithConfig(num_questions=args.questions, min_ops=args.min_ops,
                                          max_ops=args.max_ops), seed=0, split="test")
  modes, trajs = {}, {}
  for name, refill in (("refill", True), ("static", False)):
    common.log(f"{name} ...")
    modes[name], trajs[name] = run_mode(lm, params, questions, args, refill)
    common.log(f"  {modes[name]['trajectories_per_minute']:.2f} trajectories/min in {modes[name]['wall_s']:.0f}s")

  texts = {name: {t.key: [s.text for s in t.steps] for t in ts} for name, ts in trajs.items()}
  same = np.mean([texts["refill"][k] == texts["static"].get(k) for k in texts["refill"]])
  ratio = modes["refill"]["trajectories_per_minute"] / modes["static"]["trajectories_per_minute"]
  report = {
      "benchmark": "rollout", "model": MODEL, "dtype": args.dtype, "batch": args.batch,
      "questions": args.questions, "task": "math (synthetic_arith test split, calculator)",
      "sampling": {"temperature": args.temperature, "top_k": args.top_k, "max_new_tokens": args.max_new_tokens},
      "num_demos": args.num_demos, "cache_len": args.cache_len, "steps_per_call": args.steps_per_call,
      "max_tool_calls": args.max_tool_calls, "machine": info,
      "refill": modes["refill"], "static": modes["static"],
      "refill_over_static": ratio, "goal_ge_1.5x": ratio >= 1.5,
      "identical_trajectories": float(same),
      "sample_trajectory": {"question": trajs["refill"][0].question.text,
                            "steps": [s.text for s in trajs["refill"][0].steps][:4]},
      "total_s": time.perf_counter() - start,
      "load_average_1m_at_end": common.load_average(),
  }
  common.print_json(report)


if __name__ == "__main__":
  main()
