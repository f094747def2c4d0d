"""Plain batched generation (no tools): prompts in, completions out. Built on the decode loop."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import nnx

from swirl_jax.distributed import to_host
from swirl_jax.sampling.decode import DecodeState, Sampler, SamplerParams


def write_rows(sampler: Sampler, params: nnx.State | SamplerParams, state: DecodeState,
               chunks: dict[int, Sequence[int]], set_lengths: dict[int, int] | None = None,
               seeds: dict[int, int] | None = None) -> DecodeState:
  """Appends token lists to the given rows, splitting long ones into bucket-sized pieces.

  set_lengths: row -> length to set before writing (0 empties a row, less than now rolls it back).
  seeds: row -> new seed (for a row refilled with new work). Each written row starts a new turn.
  Only the rows with tokens are computed (padded to a row bucket), so one row's prompt costs a
  one-row prefill whatever the batch.
  """
  todo = {r: list(t) for r, t in sorted(chunks.items()) if len(t)}
  lengths = dict(set_lengths or {})
  new_seeds = dict(seeds or {})
  while todo:
    longest = max(len(t) for t in todo.values())
    width = sampler.bucket(min(longest, sampler.max_chunk))
    n_rows = sampler.row_bucket(len(todo))
    # the whole batch goes in row order; a subset is listed in front of the padding entries
    slot_of = {r: r for r in todo} if n_rows == sampler.batch else {r: i for i, r in enumerate(todo)}
    rows = sampler.row_indices(n_rows)
    tokens = np.zeros((n_rows, width), np.int32)
    valid = np.zeros((n_rows, width), bool)
    set_len = np.full((n_rows,), -1, np.int32)
    seed_arr = np.zeros((n_rows,), np.uint32)
    reseed = np.zeros((n_rows,), bool)
    for r, t in list(todo.items()):
      i = slot_of[r]
      rows[i] = r
      piece, todo[r] = t[:width], t[width:]
      tokens[i, :len(piece)] = piece
      valid[i, :len(piece)] = True
      if r in lengths:
        set_len[i] = lengths.pop(r)
      if r in new_seeds:
        seed_arr[i], reseed[i] = new_seeds.pop(r), True
      if not todo[r]:
        del todo[r]
    # numpy, not jnp: under several processes jit takes numpy arguments as the same global value.
    state = sampler.extend(params, state, rows, tokens, valid, set_len, seed_arr, reseed)
  return state


def generate(sampler: Sampler, params: nnx.State | SamplerParams, prompts: Sequence[Sequence[int]],
             seeds: Sequence[int] | None = None) -> list[list[int]]:
  """Completions (token ids, including the token that stopped each row) for up to ``sampler.batch``
  prompts. Rows beyond the prompts stay empty. Pass ``sampler.prepare(params)`` when calling it
  repeatedly with the same params (raw params are prepared here, each call)."""
  if len(prompts) > sampler.batch:
    raise ValueError(f"{len(prompts)} prompts for a sampler of batch {sampler.batch}")
  for i, p in enumerate(prompts):
    if not 0 < len(p) < sampler.cache_len:  # a row holds its prompt and at least the token it samples
      raise ValueError(f"prompt {i} has {len(p)} tokens; a prompt needs 1 to cache_len - 1 = "
                       f"{sampler.cache_len - 1} tokens")
  params = sampler.prepare(params)
  seeds = list(seeds) if seeds is not None else list(range(sampler.batch))
  seeds += [0] * (sampler.batch - len(seeds))
  state = sampler.init_state(params, seeds)
  state = write_rows(sampler, params, state, dict(enumerate(prompts)),
                     set_lengths={i: 0 for i in range(len(prompts))})
  pending = to_host(state.pending)
  outs: list[list[int]] = [[int(pending[i])] for i in range(len(prompts))]
  while bool(np.any(to_host(state.active))):
    state, out = sampler.decode(params, state)
    out = to_host(out)
    for i in range(len(prompts)):
      outs[i].extend(int(t) for t in out[i] if t >= 0)
  return outs
