"""Step-wise RL update throughput: swirl_jax's jitted train step vs. the same loss in PyTorch.

Usage: python benchmarks/train_step.py [--source gemma3-270m] [--batch 8] [--seq 512] [--action 128]
           [--steps 2] [--chunk 32] [--remat 1] [--remat_policy block] [--share_prefix 1] [--skip_torch]

The batch is SWiRL's: B rows of T tokens in groups of 4 that share a state (the first T - ``--action``
tokens) and differ in the action sampled from it (the last ``--action`` tokens; random ids). One update
= the policy's forward and backward over the rows, the reference policy's forward (the KL term),
REINFORCE with a leave-one-out baseline over each group plus a k3 KL penalty on the action tokens,
global-norm clipping and AdamW. With ``--share_prefix 1`` (train.share_prefix, the default) swirl_jax
packs each group into one sequence, the state once and the four actions after it, each attending to the
state and itself only (train_step.pack_batch): the same loss and gradient from 2 x 896 instead of 8 x
512 tokens. The PyTorch side runs the rows as they are, as transformers-based trainers do; with
``--share_prefix 0`` both sides compute the same tokens. Both sides run float32 on the
same weights (the packaged Gemma 3 270M by default), the same batch and the same algorithm: LM head
only at the loss positions, in chunks of ``--chunk`` slots, each block rematerialised (``--remat``;
without it neither side fits 8 GiB at 8 x 512; ``--remat_policy dots`` keeps our blocks' weight-matmul
outputs, which transformers' gradient checkpointing cannot, so that run is not like for like). The
PyTorch side is transformers' Gemma3ForCausalLM (sdpa attention, gradient checkpointing) with
torch.optim.AdamW.

Each side runs in its own subprocess, so each reports its own peak memory (max RSS; plus XLA's own
buffer accounting for the jitted step). MFU = model FLOPs / step time / the float32 matmul peak
measured in the JAX subprocess of the same run (benchmarks/common.py). Model FLOPs (PaLM convention,
remat recomputation not counted) of the sequences a side computes: 3x the policy forward (forward +
backward) + 1x the reference forward, where a forward is 2 x (non-embedding matmul parameters) per
token, 4 x T x heads x head_dim per token per layer for attention (full T x T scores of a T-token
sequence), and 2 x d_model x vocab per loss slot for the LM head. So MFU is what the hardware did, and
a shared prefix lowers swirl_jax's FLOPs (``model_flops_per_step``) below those of the rows as written
(``row_model_flops_per_step``, PyTorch's). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

GROUP = 4
KL_COEF = 0.05


def batch_arrays(b: int, t: int, action: int, vocab: int, seed: int = 0):
  """Random tokens; each group of GROUP rows shares its first t - action tokens (the state) and the last
  ``action`` tokens of each row are its action; rewards per row."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (b, t)).astype(np.int32)
  tokens[:, :t - action] = np.repeat(tokens[::GROUP, :t - action], GROUP, axis=0)
  tokens[:, 0] = 2  # BOS
  mask = np.zeros((b, t), bool)
  mask[:, t - action:] = True
  rewards = (rng.random(b) < 0.5).astype(np.float32)
  return tokens, mask, rewards


def model_flops(cfg, seqs: int, t: int, slots: int) -> float:
  """Model FLOPs of one update over ``seqs`` sequences of ``t`` tokens with ``slots`` loss slots in all
  (module docstring)."""
  d, h, k, dh, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  per_token = 2 * cfg.num_layers * (d * dh * (2 * h + 2 * k) + 3 * d * f)
  attention = 4 * t * h * dh * cfg.num_layers
  forward = seqs * t * (per_token + attention) + slots * 2 * d * cfg.vocab_size
  return 4.0 * forward  # 3x policy (forward + backward) + 1x reference forward


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- JAX ---------------------------------------------------------------------------------------------


def run_jax(args) -> dict:
  import jax
  from flax import nnx

  from benchmarks.common import machine_info, matmul_peak
  from swirl_jax.checkpoints.build import abstract_model
  from swirl_jax.loading import load_model
  from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
  from swirl_jax.training import train_state as ts
  from swirl_jax.training.losses import LossConfig
  from swirl_jax.training.optimizer import OptimizerConfig, make_optimizer
  from swirl_jax.training.train_step import StepConfig, make_train_step, pack_batch

  peak_before = matmul_peak("float32", n=2048)
  lm = load_model(args.source)
  cfg = lm.config
  mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
  rules = Rules()
  opt, lr = make_optimizer(OptimizerConfig(learning_rate=1e-6, warmup_steps=0))
  params = ts.model_params(lm.model)
  psh = ts.params_shardings(lm.model, mesh, rules)
  ssh = ts.state_shardings(opt, params, psh, mesh)
  state = ts.init_train_state(params, opt, 0, ssh)  # a copy: the step donates it
  ref = params  # the loaded weights are the reference policy (never donated)
  del params, lm
  graphdef = nnx.graphdef(abstract_model(cfg.replace(remat=bool(args.remat), remat_policy=args.remat_policy),
                                         mesh, rules))
  step = make_train_step(graphdef, opt, lr, StepConfig(LossConfig(kl_coef=KL_COEF, chunk=args.chunk), GROUP), mesh,
                         rules, ssh, psh)
  tokens, mask, rewards = batch_arrays(args.batch, args.seq, args.action, cfg.vocab_size)
  group = GROUP if args.share_prefix else 1
  state_len = args.seq - args.action
  seq_len = state_len + group * args.action  # a packed group: the state once, then the actions
  batch = pack_batch(list(zip(tokens, mask)), rewards, seq_bucket=seq_len, slot_bucket=args.action,
                     prefix_group=group)
  assert batch.tokens.shape == (args.batch // group, seq_len), batch.tokens.shape
  t0 = time.perf_counter()
  compiled = step.lower(state, ref, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                    - mem.alias_size_in_bytes)
  times, losses = [], []
  for _ in range(args.steps + 1):  # the first run is warmup
    t0 = time.perf_counter()
    state, m = compiled(state, ref, batch)
    losses.append(float(jax.block_until_ready(m["loss"])))
    times.append(time.perf_counter() - t0)
  peak_after = matmul_peak("float32", n=2048)
  best = min(times[1:]) if len(times) > 1 else times[0]
  flops = model_flops(cfg, args.batch // group, seq_len, args.batch * args.action)
  peak = max(peak_before, peak_after)
  return {
      "step_s": best, "step_s_all": times, "compile_s": compile_s, "tokens_per_s": args.batch * args.seq / best,
      "share_prefix": bool(args.share_prefix), "sequences": list(batch.tokens.shape),
      "model_flops_per_step": flops, "row_model_flops_per_step": model_flops(
          cfg, args.batch, args.seq, args.batch * args.action),
      "achieved_flops": flops / best, "matmul_peak_flops": peak,
      "matmul_peak_before_after": [peak_before, peak_after], "mfu": flops / best / peak,
      "loss_first_step": losses[0], "peak_rss_bytes": peak_rss_bytes(), "xla_step_buffer_bytes": xla_bytes,
      "machine": machine_info(), "num_params": cfg.num_params(),
  }


# --- PyTorch -----------------------------------------------------------------------------------------


def run_torch(args) -> dict:
  import torch
  from torch.utils.checkpoint import checkpoint
  from transformers import Gemma3ForCausalLM, Gemma3TextConfig

  from swirl_jax.checkpoints.layout import entries
  from swirl_jax.loading import read_source
  from swirl_jax.models.config import to_hf_config

  torch.set_num_threads(os.cpu_count() or 1)
  cfg, fetch, _ = read_source(args.source)
  hf_cfg = {k: v for k, v in to_hf_config(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
  config = Gemma3TextConfig(**hf_cfg, attn_implementation="sdpa")
  # np.array copies: the fetched arrays may be read-only views of the memory-mapped weights file.
  state = {e.hf: torch.from_numpy(np.array(e.to_hf(np.asarray(fetch(e.path), np.float32)), order="C"))
           for e in entries(cfg)}
  state["lm_head.weight"] = state["model.embed_tokens.weight"]

  def build(weights, assign: bool):
    m = Gemma3ForCausalLM(config)
    m.load_state_dict(weights, strict=False, assign=assign)
    m.tie_weights()
    return m.float()

  reference = build(state, assign=False)  # a copy
  policy = build(state, assign=True)  # takes the loaded tensors themselves: one copy less in memory
  del state, fetch  # also unmaps the weights file (its pages would count in the peak RSS)
  for p in reference.parameters():
    p.requires_grad_(False)
  reference.eval()
  policy.train()
  if args.remat:
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # remat
  # fused: one kernel per step, no foreach temporaries of the parameters' size (memory and speed).
  opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, fused=True)

  tokens, mask, rewards = batch_arrays(args.batch, args.seq, args.action, cfg.vocab_size)
  ids = torch.from_numpy(tokens).long()
  pos = torch.arange(args.seq).expand(args.batch, -1)
  slot_pos = torch.arange(args.seq - args.action - 1, args.seq - 1).expand(args.batch, -1)
  targets = ids[:, args.seq - args.action:]
  r = torch.from_numpy(rewards).view(-1, GROUP)
  adv = (r - (r.sum(1, keepdim=True) - r) / (GROUP - 1)).view(-1, 1)
  n_tok = float(args.batch * args.action)

  def slot_logp(model, hidden, grad: bool):
    h = hidden.gather(1, slot_pos[..., None].expand(-1, -1, hidden.shape[-1]))
    out = []

    def chunk_fn(hc, tc):
      logits = model.lm_head(hc).float()
      return torch.gather(torch.log_softmax(logits, -1), -1, tc[..., None])[..., 0]

    for s in range(0, args.action, args.chunk):
      hc, tc = h[:, s:s + args.chunk], targets[:, s:s + args.chunk]
      out.append(checkpoint(chunk_fn, hc, tc, use_reentrant=False) if grad else chunk_fn(hc, tc))
    return torch.cat(out, 1)

  def one_step() -> float:
    with torch.no_grad():
      ref_logp = slot_logp(reference, reference.model(input_ids=ids, position_ids=pos).last_hidden_state, False)
    hidden = policy.model(input_ids=ids, position_ids=pos).last_hidden_state
    logp = slot_logp(policy, hidden, True)
    d = ref_logp - logp
    loss = ((-adv * logp) + KL_COEF * (torch.exp(d) - d - 1)).sum() / n_tok
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

  times, losses = [], []
  for _ in range(args.steps + 1):
    t0 = time.perf_counter()
    losses.append(one_step())
    times.append(time.perf_counter() - t0)
  best = min(times[1:]) if len(times) > 1 else times[0]
  flops = model_flops(cfg, args.batch, args.seq, args.batch * args.action)
  return {"step_s": best, "step_s_all": times, "tokens_per_s": args.batch * args.seq / best,
          "achieved_flops": flops / best, "loss_first_step": losses[0], "peak_rss_bytes": peak_rss_bytes(),
          "torch": torch.__version__, "threads": torch.get_num_threads()}


# --- driver ------------------------------------------------------------------------------------------


def _sub(part: str, argv: list[str]) -> dict:
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--part", part, *argv], env=env,
                        capture_output=True, text=True, cwd=root)
  if proc.returncode != 0:
    return {"error": f"exit status {proc.returncode}: {proc.stderr[-3000:]}"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  from swirl_jax.models.config import REMAT_POLICIES

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--source", default="gemma3-270m")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--action", type=int, default=128)
  p.add_argument("--chunk", type=int, default=32)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--remat", type=int, default=1)
  p.add_argument("--remat_policy", choices=REMAT_POLICIES, default="block")
  p.add_argument("--share_prefix", type=int, default=1,
                 help="1: swirl_jax packs each group's state once (train.share_prefix); 0: one row per sequence")
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--part", choices=("jax", "torch"), default=None)
  args = p.parse_args()
  if args.part:
    out = run_jax(args) if args.part == "jax" else run_torch(args)
    print(json.dumps(out), flush=True)
    return
  from benchmarks.common import log, print_json

  argv = [a for a in sys.argv[1:] if a != "--skip_torch"]
  log("running the JAX train step ...")
  jx = _sub("jax", argv)
  th = {"skipped": True}
  if not args.skip_torch:
    log("running the PyTorch train step ...")
    th = _sub("torch", argv)
  out = {"benchmark": "train_step", "source": args.source, "batch": args.batch, "seq_len": args.seq,
         "loss_tokens_per_row": args.action, "chunk": args.chunk, "remat": bool(args.remat),
         "remat_policy": args.remat_policy, "group": GROUP, "share_prefix": bool(args.share_prefix),
         "dtype": "float32", "jax": jx, "torch": th}
  if "step_s" in jx:
    out["mfu"] = jx["mfu"]
    out["goal_mfu_0.35_met"] = jx["mfu"] >= 0.35
  if "step_s" in jx and "step_s" in th:
    out["speedup_vs_torch"] = th["step_s"] / jx["step_s"]
    out["goal_speedup_1.5_met"] = out["speedup_vs_torch"] >= 1.5
    out["loss_rel_diff_jax_vs_torch"] = abs(jx["loss_first_step"] - th["loss_first_step"]) / max(
        abs(th["loss_first_step"]), 1e-12)
  print_json(out)


if __name__ == "__main__":
  main()
