"""Decode throughput of swirl_jax's sampler vs. transformers' generate, against a measured roofline.

Usage: python benchmarks/decode.py [--quick] [--skip-torch] [--dtypes float32,bfloat16] [--batches 1,16,64]
       [--temperature T]

Workload: the packaged pretrained Gemma 3 270M (the same dequantized GGUF weights for both), prompts of
exactly ``--prompt_len`` tokens (the SWiRL math prompt of different synthetic questions, cut to length),
``--new_tokens`` tokens per row with no stop rule (every row generates all of them): greedy by default;
``--temperature T`` > 0 samples from the full softmax(logits / T) in both (no top-k, no top-p), which
adds each side's sampling cost to its step.

Phases, timed the same way for both (fewest seconds over ``--repeats`` runs after a warm-up):
  * prefill: the prompt pass and the first sampled token (swirl_jax: ``init_state`` + ``write_rows``;
    transformers: from the ``generate`` call to its streamer receiving the first new token);
  * decode: the other new_tokens - 1 tokens (swirl_jax: the ``Sampler.decode`` loop until no row is
    active; transformers: from the first new token to the last, by the same streamer);
  * end to end: new_tokens * batch / (prefill + decode).
Decode tokens/s = (new_tokens - 1) * batch / decode seconds. swirl_jax's params go through
``Sampler.prepare`` once per batch size, outside the timed runs (on CPU the feature-major relayout of
the block weights; its seconds are reported as ``prepare_s``), as every caller of the sampler does once
per parameter version. On a CPU without bfloat16 arithmetic the bfloat16 run's relaid weights and LM head
are float32 copies (``Sampler.upcast_weights``; ``upcast_weights`` and ``prepared_copy_bytes`` say so):
its steps stream float32 weights, while its roofline below still counts bfloat16 bytes. On the CPU
backend the bfloat16 run's KV cache is float32 (``Sampler.upcast_cache``; ``cache_dtype`` says so).

Roofline (per decode step, measured on this machine in this run):
  * weight bytes: every parameter once per step, the embedding included (the tied LM head reads all of
    it; the embedding lookup reads only B rows and is not counted again), in the parameter dtype;
  * FLOPs: batch * (2 * parameters + attention), attention = 4 * layers * heads * head_dim * context with
    the mean context of the decode (prompt + half the new tokens); norms and sampling are not counted;
  * bandwidth: a float32 sum over a 1 GB array (numpy or XLA, the faster); compute peak: an XLA
    2048^3 matmul in the benchmark's dtype. Both are measured before and after the timed runs and the
    higher value kept (this machine is shared: noise only lowers a peak).
  * roofline step time = max(weight bytes / bandwidth, FLOPs / peak); the KV-cache read is left out (a
    generous roofline; its bytes are reported beside it).

Prints one JSON object on stdout; a compact table and progress go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from swirl_jax import chat, load_model, prompts
from swirl_jax.data.synthetic_arith import ArithConfig
from swirl_jax.data.synthetic_arith import generate as arith_questions
from swirl_jax.sampling.decode import Sampler, SamplerParams, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import write_rows

MODEL = "gemma3-270m"


def make_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
  """``batch`` different prompts of exactly ``length`` tokens (BOS included): real SWiRL math prompts."""
  questions = arith_questions(ArithConfig(num_questions=max(batch, 1)), seed=0, split="test")
  out = []
  for q in questions[:batch]:
    msgs = prompts.initial_messages("math", q.text, prompts.DEFAULT_DEMOS["math"][:1], 10)
    ids = tokenizer.encode(chat.render(msgs))
    if len(ids) < length:  # pad with the question again (never needed for 128 tokens; kept for safety)
      ids = (ids + tokenizer.encode(" " + q.text, add_bos=False) * length)[:length]
    out.append(ids[:length])
  return out


# -- swirl_jax ------------------------------------------------------------------------------------


def swirl_run(sampler: Sampler, params: SamplerParams, rows: list[list[int]]) -> tuple[float, float, list]:
  """One timed generation, mirroring ``generate()``: (prefill s, decode s, completions)."""
  b = len(rows)
  start = time.perf_counter()
  state = sampler.init_state(params, list(range(sampler.batch)))
  state = write_rows(sampler, params, state, dict(enumerate(rows)), set_lengths={i: 0 for i in range(b)})
  outs = [[t] for t in np.asarray(state.pending)[:b].tolist()]  # waits for the prefill
  mid = time.perf_counter()
  while bool(np.any(np.asarray(state.active))):
    state, out = sampler.decode(params, state)
    out = np.asarray(out)
    for i in range(b):
      outs[i].extend(int(t) for t in out[i] if t >= 0)
  end = time.perf_counter()
  return mid - start, end - mid, outs


def swirl_warmup(sampler: Sampler, params: SamplerParams, rows: list[list[int]]) -> None:
  """Compiles init_state, the prompt's extend bucket and decode without running a full generation:
  decode is compiled on a state whose rows are all inactive, so its loop exits at once."""
  state = sampler.init_state(params, list(range(sampler.batch)))
  state = write_rows(sampler, params, state, dict(enumerate(rows)), set_lengths={i: 0 for i in range(len(rows))})
  state = state._replace(active=jnp.zeros_like(state.active))
  jax.block_until_ready(sampler.decode(params, state))


def bench_swirl(dtype: str, batches: list[int], args) -> tuple[dict, dict, dict]:
  """Loads the model in ``dtype`` and times each batch. Returns (results, model facts, prompts)."""
  lm = load_model(MODEL, dtype=dtype, param_dtype=dtype)
  params = nnx.state(lm.model)
  leaves = jax.tree.leaves(params)
  cfg = lm.config
  facts = {
      "parameters": int(sum(x.size for x in leaves)),
      "weight_bytes": int(sum(x.size * x.dtype.itemsize for x in leaves)),
      "embedding_parameters": cfg.vocab_size * cfg.d_model,
      "layers": cfg.num_layers, "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
  }
  stops = build_stop_table(lm.tokenizer, [], [])  # no stop strings, no EOS: every row runs to the end
  results, rows_by_batch = {}, {}
  for b in batches:
    rows = make_prompts(lm.tokenizer, b, args.prompt_len)
    rows_by_batch[b] = rows
    sampler = Sampler.create(
        lm.model, batch=b, cache_len=args.prompt_len + args.new_tokens,
        sampling=SamplingConfig(temperature=args.temperature, max_new_tokens=args.new_tokens), stops=stops,
        steps_per_call=args.new_tokens, exit_when_done=b, max_chunk=args.prompt_len)
    t0 = time.perf_counter()
    sampler_params = sampler.prepare(params)  # the feature-major relayout on CPU, once per params
    swirl_warmup(sampler, sampler_params, rows)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(sampler.prepare(params))  # compiled now: the relayout alone
    prepare_s = time.perf_counter() - t0
    runs = []
    for _ in range(1 if b >= 64 else args.repeats):
      runs.append(swirl_run(sampler, sampler_params, rows))
      common.log(f"  swirl_jax {dtype} B={b}: prefill {runs[-1][0]:.2f}s decode {runs[-1][1]:.2f}s")
    outs = runs[-1][2]
    if any(len(o) != args.new_tokens for o in outs):
      raise RuntimeError(f"swirl_jax generated {[len(o) for o in outs]} tokens, expected {args.new_tokens}")
    prefill = min(r[0] for r in runs)
    decode = min(r[1] for r in runs)
    e2e = min(r[0] + r[1] for r in runs)
    results[b] = {
        "prefill_s": prefill, "decode_s": decode, "end_to_end_s": e2e,
        "decode_ms_per_step": 1e3 * decode / (args.new_tokens - 1),
        "decode_tokens_per_s": (args.new_tokens - 1) * b / decode,
        "end_to_end_tokens_per_s": args.new_tokens * b / e2e,
        "warmup_compile_s": compile_s, "prepare_s": prepare_s, "feature_major": sampler.feature_major,
        "upcast_weights": sampler_params.head is not None,
        "cache_dtype": "float32" if sampler.upcast_cache else dtype,
        "prepared_copy_bytes": int(sum(x.size * x.dtype.itemsize
                                       for x in jax.tree.leaves((sampler_params.layers, sampler_params.head)))),
        "runs": len(runs), "outputs": outs,
    }
    del sampler, sampler_params
    gc.collect()
  del lm, params, leaves
  gc.collect()
  return results, facts, rows_by_batch


# -- transformers ---------------------------------------------------------------------------------


def load_torch_model():
  import torch
  from transformers import AutoModelForCausalLM

  from swirl_jax.checkpoints.packaged import packaged_gguf

  path = packaged_gguf(MODEL)
  return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval()


class _Clock:
  """A generate() streamer that only records when each put happens: the prompt at the start, then every
  new token as soon as it is sampled (on CPU transformers streams each token synchronously)."""

  def __init__(self):
    self.times: list[float] = []

  def put(self, value) -> None:
    del value
    self.times.append(time.perf_counter())

  def end(self) -> None:
    pass


def bench_torch(model, rows: list[list[int]], new_tokens: int, repeats: int, pad_id: int,
                temperature: float = 0.0) -> dict:
  """transformers' generate (greedy, or sampling at ``temperature``) on left-padded rows (all rows are
  full length here).

  One generate call per run; its streamer's timestamps split it into prefill (start to the first new
  token) and decode (first to last new token), the same split as swirl_jax's.
  """
  import torch
  from transformers.generation.streamers import BaseStreamer

  clock_cls = type("Clock", (_Clock, BaseStreamer), {})
  width = max(len(r) for r in rows)
  ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
  mask = torch.zeros((len(rows), width), dtype=torch.long)
  for i, r in enumerate(rows):
    ids[i, width - len(r):] = torch.tensor(r)
    mask[i, width - len(r):] = 1

  def gen(n: int, streamer=None):
    with torch.inference_mode():
      sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
      return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                            pad_token_id=pad_id, top_k=None, top_p=None, streamer=streamer, **sampling)

  gen(2)  # warm-up (allocations, lazy inits)
  runs, out = [], None
  for _ in range(repeats):
    clock = clock_cls()
    t0 = time.perf_counter()
    out = gen(new_tokens, clock)
    end = time.perf_counter()
    if len(clock.times) != new_tokens + 1:
      raise RuntimeError(f"expected {new_tokens + 1} streamer calls, got {len(clock.times)}")
    runs.append((clock.times[1] - t0, clock.times[-1] - clock.times[1], end - t0))
  prefill, decode, total = (min(r[i] for r in runs) for i in range(3))
  b = len(rows)
  return {
      "new_tokens": new_tokens, "prefill_s": prefill, "decode_s": decode, "end_to_end_s": total,
      "decode_ms_per_step": 1e3 * decode / (new_tokens - 1),
      "decode_tokens_per_s": (new_tokens - 1) * b / decode,
      "end_to_end_tokens_per_s": new_tokens * b / total, "runs": repeats,
      "outputs": out[:, width:].tolist(),
  }


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
  """Greedy parity: mean tokens before the first difference, and the share of rows identical."""
  firsts = []
  for x, y in zip(a, b):
    n = min(len(x), len(y))
    firsts.append(next((i for i in range(n) if x[i] != y[i]), n))
  n = min(len(a[0]), len(b[0]))
  return {"mean_tokens_before_first_difference": float(np.mean(firsts)),
          "rows_identical": float(np.mean([f == n for f in firsts])), "compared_tokens": n}


# -- roofline -------------------------------------------------------------------------------------


def roofline(facts: dict, b: int, dtype: str, peaks: dict, args) -> dict:
  """The fastest a decode step of batch ``b`` could be on this machine (see the module docstring)."""
  itemsize = jnp.dtype(dtype).itemsize
  context = args.prompt_len + args.new_tokens / 2
  attn_flops = 4 * facts["layers"] * facts["heads"] * facts["head_dim"] * context
  flops_per_token = 2 * facts["parameters"] + attn_flops
  weight_s = facts["weight_bytes"] / peaks["bandwidth_bytes_per_s"]
  compute_s = b * flops_per_token / peaks["matmul_flops_per_s"][dtype]
  step_s = max(weight_s, compute_s)
  kv_bytes = b * facts["layers"] * 2 * facts["kv_heads"] * facts["head_dim"] * context * itemsize
  return {
      "weight_bytes_per_step": facts["weight_bytes"], "flops_per_step": b * flops_per_token,
      "kv_cache_bytes_per_step_not_counted": kv_bytes,
      "weight_streaming_ms": 1e3 * weight_s, "compute_ms": 1e3 * compute_s,
      "bound": "memory" if weight_s >= compute_s else "compute",
      "step_ms": 1e3 * step_s, "tokens_per_s": b / step_s,
  }


def measure_peaks(dtypes: list[str]) -> dict:
  bw = common.memory_bandwidth(1.0)
  return {"bandwidth": bw, "matmul": {d: common.matmul_peak(d, 2048) for d in dtypes}}


def merge_peaks(a: dict, b: dict) -> dict:
  return {
      "bandwidth_bytes_per_s": max(a["bandwidth"]["best"], b["bandwidth"]["best"]),
      "matmul_flops_per_s": {d: max(a["matmul"][d], b["matmul"][d]) for d in a["matmul"]},
      "measurements": {"before": a, "after": b},
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="batches 1 and 16 only, one timed run each")
  ap.add_argument("--skip-torch", action="store_true", help="do not run transformers")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--batches", default=None, help="comma-separated (default 1,16,64; --quick: 1,16)")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=2, help="timed runs per config (1 for batch >= 64)")
  ap.add_argument("--peer_new_tokens_large_batch", type=int, default=32,
                  help="transformers generates this many tokens at batch >= 64 (tokens/s stays comparable; "
                       "a shorter context only flatters the peer)")
  ap.add_argument("--keep_outputs", action="store_true", help="include generated token ids in the JSON")
  ap.add_argument("--temperature", type=float, default=0.0,
                  help="0 = greedy (default); > 0 samples from the full softmax(logits / T) in both")
  args = ap.parse_args()
  dtypes = args.dtypes.split(",")
  batches = [int(b) for b in (args.batches or ("1,16" if args.quick else "1,16,64")).split(",")]
  if args.quick:
    args.repeats = 1
  if args.new_tokens < 2:
    ap.error("--new_tokens must be >= 2 (the decode phase needs at least one step)")

  start = time.perf_counter()
  info = common.machine_info()
  common.log("measuring peaks ...")
  peaks_before = measure_peaks(dtypes)

  swirl, facts_by_dtype, rows_by_batch = {}, {}, {}
  for dtype in dtypes:
    common.log(f"swirl_jax {dtype} ...")
    swirl[dtype], facts_by_dtype[dtype], rows_by_batch = bench_swirl(dtype, batches, args)

  peer, load_s = {}, None
  if not args.skip_torch:
    import torch

    torch.set_num_threads(2)
    common.log("transformers: loading the GGUF ...")
    t0 = time.perf_counter()
    model32 = load_torch_model()
    load_s = time.perf_counter() - t0
    pad_id = 0
    for dtype in dtypes:
      model = model32 if dtype == "float32" else copy.deepcopy(model32).to(getattr(torch, dtype))
      peer[dtype] = {}
      for b in batches:
        n = args.new_tokens if b < 64 else min(args.new_tokens, args.peer_new_tokens_large_batch)
        common.log(f"transformers {dtype} B={b} ({n} new tokens) ...")
        peer[dtype][b] = bench_torch(model, rows_by_batch[b], n, 1 if b >= 64 else args.repeats, pad_id,
                                     args.temperature)
        common.log(f"  prefill {peer[dtype][b]['prefill_s']:.2f}s decode {peer[dtype][b]['decode_s']:.2f}s")
      if model is not model32:
        del model
        gc.collect()
    del model32
    gc.collect()

  common.log("measuring peaks again ...")
  peaks = merge_peaks(peaks_before, measure_peaks(dtypes))

  table, results = [], {}
  for dtype in dtypes:
    results[dtype] = {}
    for b in batches:
      ours = swirl[dtype][b]
      roof = roofline(facts_by_dtype[dtype], b, dtype, peaks, args)
      entry = {"swirl_jax": {k: v for k, v in ours.items() if k != "outputs"}, "roofline": roof,
               "share_of_roofline": ours["decode_tokens_per_s"] / roof["tokens_per_s"]}
      if b == 1:
        mem_tps = peaks["bandwidth_bytes_per_s"] / facts_by_dtype[dtype]["weight_bytes"]
        entry["memory_roofline_tokens_per_s"] = mem_tps
        entry["share_of_memory_roofline"] = ours["decode_tokens_per_s"] / mem_tps
      if dtype in peer:
        p = peer[dtype][b]
        entry["transformers"] = {k: v for k, v in p.items() if k != "outputs"}
        entry["decode_speedup_vs_transformers"] = ours["decode_tokens_per_s"] / p["decode_tokens_per_s"]
        entry["end_to_end_speedup_vs_transformers"] = (ours["end_to_end_tokens_per_s"]
                                                       / p["end_to_end_tokens_per_s"])
        entry["prefill_speedup_vs_transformers"] = p["prefill_s"] / ours["prefill_s"]
        if args.temperature == 0:
          entry["greedy_agreement"] = agreement(ours["outputs"], p["outputs"])
        if args.keep_outputs:
          entry["transformers"]["outputs"] = p["outputs"]
      if args.keep_outputs:
        entry["swirl_jax"]["outputs"] = ours["outputs"]
      results[dtype][str(b)] = entry
      table.append((dtype, b, ours["prefill_s"], ours["decode_tokens_per_s"], ours["end_to_end_tokens_per_s"],
                    roof["tokens_per_s"], entry["share_of_roofline"],
                    entry.get("transformers", {}).get("decode_tokens_per_s", float("nan")),
                    entry.get("decode_speedup_vs_transformers", float("nan"))))

  goals = {}
  for dtype in dtypes:
    r = results[dtype]
    g = {}
    for b in (1, 16):
      if str(b) in r:
        g[f"roofline_share_ge_0.6_batch{b}"] = r[str(b)]["share_of_roofline"] >= 0.6
    if "16" in r and "decode_speedup_vs_transformers" in r["16"]:
      g["speedup_ge_2x_transformers_batch16"] = r["16"]["decode_speedup_vs_transformers"] >= 2.0
    goals[dtype] = g

  report = {
      "benchmark": "decode", "model": MODEL, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
      "sampling": (f"temperature {args.temperature}, full vocabulary" if args.temperature > 0 else "greedy")
                  + ", no stop tokens or strings", "batches": batches, "dtypes": dtypes,
      "machine": info, "peaks": {"bandwidth_bytes_per_s": peaks["bandwidth_bytes_per_s"],
                                 "matmul_flops_per_s": peaks["matmul_flops_per_s"],
                                 "measurements": peaks["measurements"]},
      "model_facts": {d: facts_by_dtype[d] for d in dtypes},
      "transformers_load_s": load_s,
      "results": results, "goals": goals, "total_s": time.perf_counter() - start,
      "load_average_1m_at_end": common.load_average(),
  }
  common.log("dtype     B  prefill_s  decode_tok/s  e2e_tok/s  roofline_tok/s  share  hf_decode_tok/s  speedup")
  for row in table:
    common.log("%-8s %3d %9.2f %13.1f %10.1f %15.1f %6.2f %16.1f %8.2f" % row)
  common.print_json(report)


if __name__ == "__main__":
  main()
