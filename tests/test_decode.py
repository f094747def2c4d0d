"""The KV cache, the jitted decode loop, sampling and stop rules (tiny random models)."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from swirl_jax import host_cpu
from swirl_jax.checkpoints.build import random_model
from swirl_jax.loading import load_model, pad_batch
from swirl_jax.models.config import preset as config_preset
from swirl_jax.models.gemma import forward_logits, project
from swirl_jax.sampling.decode import (Sampler, SamplingConfig, StopTable, argmax, categorical, sample_logits,
                                      top_k)
from swirl_jax.sampling.generate import generate, write_rows


def _no_stops(vocab=512):
  return StopTable(np.zeros((0,), np.int32), np.full((1, 1), -2, np.int32), np.ones((1, vocab), bool))


def _reencode(model, seqs):
  tokens, valid = pad_batch(seqs, 0)
  return np.asarray(forward_logits(model, jnp.asarray(tokens), jnp.asarray(valid)))


@pytest.mark.parametrize("layout,span", [("row_major", None), ("feature_major", None), ("row_major", 48),
                                         ("feature_major", 48)])
@pytest.mark.parametrize("preset,kv_heads", [("tiny-gemma3", 4), ("tiny-gemma2", 4), ("tiny-gemma3", 1)])
def test_cache_extend_and_rollback_equal_reencoding(preset, kv_heads, layout, span):
  """Chunks appended to ring-buffer caches (local rings wrap: window 8, chunk 16 -> 23 slots) give the
  logits of re-encoding the whole conversation; rolling a row back by its length does too. Both the
  row-major extend and the feature-major one (relaid [out, in] fused weights, the CPU decode step),
  with grouped kv heads and with the single-kv-head attention path; with ``span`` 48 (no row holds more
  than 46 tokens) the global layers' 96-slot rings are read up to slot 48 only."""
  model = random_model(config_preset(preset, num_kv_heads=kv_heads), seed=1)
  rng = np.random.default_rng(0)
  cache = model.init_cache(3, 96, 16)
  assert cache.layers[0][0].shape[1] == 8 + 16 - 1  # a local layer keeps window + chunk - 1 slots
  history = [[], [], []]
  if layout == "row_major":
    extend = jax.jit(lambda m, t, v, c: m.extend(t, v, c, span))
  else:
    weights = jax.jit(lambda m: m.layer_weights())(model)
    extend = jax.jit(lambda m, t, v, c: m.extend_feature_major(t, v, c, weights, span))

  def append(chunks):
    nonlocal cache
    tokens, valid = pad_batch(chunks, 0, length=16)
    hidden, cache = extend(model, jnp.asarray(tokens), jnp.asarray(valid), cache)
    got = np.asarray(model.logits(hidden))
    for b, c in enumerate(chunks):
      history[b] += c
    want = _reencode(model, history)
    for b, c in enumerate(chunks):
      n, total = len(c), len(history[b])
      np.testing.assert_allclose(got[b, :n], want[b, total - n:total], atol=1e-5, rtol=0)

  for lengths in [(13, 5, 16), (7, 16, 1), (1, 1, 1), (16, 9, 12), (3, 0, 16)]:
    append([list(rng.integers(3, 512, n)) for n in lengths])
  assert [len(h) for h in history] == [40, 31, 46]
  # Roll row 0 back by 10 tokens and row 2 by 16 (<= the chunk length), then continue.
  cache = cache._replace(lengths=cache.lengths - jnp.array([10, 0, 16]))
  history[0], history[2] = history[0][:-10], history[2][:-16]
  append([list(rng.integers(3, 512, n)) for n in (5, 2, 11)])


@pytest.mark.parametrize("t", [1, 40])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_attention_forms_equal_a_numpy_reference(t, kv_heads):
  """Every form of ``Attention.attend`` (one kv head: one batch axis, keys on the left for one query
  token; grouped: (B, K)-batched) is
  softmax(soft-cap(q k^T * scale) masked) v, computed here in float64 numpy, with a fully masked query
  row (finite, ignored) among them."""
  cfg = config_preset("tiny-gemma2", num_kv_heads=kv_heads, attn_logit_softcap=5.0)
  attn = random_model(cfg, seed=0).layers[0].attn
  b, s, h, dh = 3, 37, cfg.num_heads, cfg.head_dim
  rng = np.random.default_rng(t)
  q = rng.normal(size=(b, t, h, dh)).astype(np.float32)
  k = rng.normal(size=(b, s, kv_heads, dh)).astype(np.float32)
  v = rng.normal(size=(b, s, kv_heads, dh)).astype(np.float32)
  mask = rng.random((b, t, s)) < 0.6
  mask[1, 0] = False
  got = np.asarray(jax.jit(attn.attend)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))
  kk, vv = np.repeat(k, h // kv_heads, axis=2), np.repeat(v, h // kv_heads, axis=2)  # [B, S, H, Dh]
  logits = np.einsum("bthd,bshd->bhts", q.astype(np.float64), kk) * attn.scaling
  logits = np.tanh(logits / 5.0) * 5.0
  logits = np.where(mask[:, None], logits, -1e300)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  want = np.einsum("bhts,bshd->bthd", probs / probs.sum(-1, keepdims=True), vv)
  live = mask.any(-1)  # [B, T]
  np.testing.assert_allclose(got[live], want[live], atol=2e-5, rtol=0)
  assert np.isfinite(got).all()


@pytest.mark.parametrize("kv_heads", [4, 1])  # 1: the single-kv-head attention in the decode step
@pytest.mark.parametrize("feature_major", [True, False])
def test_greedy_generate_matches_argmax_of_reencoding(feature_major, kv_heads):
  """Greedy decode calls, each attending over the cache's first 16 or 32 slots (span buckets), give the
  argmax of re-encoding every sequence."""
  model = random_model(config_preset("tiny-gemma3", num_kv_heads=kv_heads), seed=2)
  s = Sampler.create(model, batch=2, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=20),
                     stops=_no_stops(), steps_per_call=8, max_chunk=32, exit_when_done=2,
                     feature_major=feature_major)
  s = dataclasses.replace(s, span_buckets=(16, 32, 64), trace_counts={})
  prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41]]
  outs = generate(s, nnx.state(model), prompts)
  name = "decode/feature_major" if feature_major else "decode"
  assert s.trace_counts == {"extend/2x16": 1, f"{name}/span16": 1, f"{name}/span32": 1}  # 7+8, 15+8, 23+8
  assert [len(o) for o in outs] == [20, 20]
  for p, o in zip(prompts, outs):
    seq = p + o
    logits = _reencode(model, [seq])[0]
    np.testing.assert_array_equal(logits[len(p) - 1:len(seq) - 1].argmax(-1), o)


def test_shapes_are_bucketed_so_repeated_calls_do_not_recompile():
  lm = load_model("random:tiny-gemma3", seed=0)
  s = Sampler.create(lm.model, batch=3, cache_len=96, sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
                     stops=_no_stops(), steps_per_call=4, min_chunk=16, max_chunk=32)
  assert s.chunk_buckets == (16, 32)
  params = nnx.state(lm.model)
  assert s.row_buckets == (1, 3)
  for lengths in [(5, 9, 14), (16, 1, 3), (2, 2, 2)]:
    generate(s, params, [[7] * n for n in lengths])
  # generate() prepares the params, so on CPU the decode step is the feature-major program
  assert s.span_buckets == (96,)  # cache_len / 8 is below the smallest default bucket, 256
  assert s.trace_counts == {"extend/3x16": 1, "decode/feature_major/span96": 1}
  generate(s, params, [[7] * 20, [8] * 3])  # 2 rows: padded to the 3-row bucket
  for _ in range(2):
    generate(s, params, [[7] * 40])  # one row, split into a 32 and a 16 chunk
  assert s.trace_counts == {"extend/3x16": 1, "extend/3x32": 1, "extend/1x32": 1, "extend/1x16": 1,
                            "decode/feature_major/span96": 1}
  # a prompt the cache cannot hold (with the token it samples), or an empty one, is refused by index
  with pytest.raises(ValueError, match="prompt 1 has 96 tokens; a prompt needs 1 to cache_len - 1 = 95"):
    generate(s, params, [[7] * 5, [7] * 96])
  with pytest.raises(ValueError, match="prompt 0 has 0 tokens"):
    generate(s, params, [[]])
  with pytest.raises(ValueError, match="sampling.top_k=100000 exceeds the model's vocabulary of 512"):
    Sampler.create(lm.model, batch=1, cache_len=96, sampling=SamplingConfig(top_k=100_000), stops=_no_stops())


def test_extending_some_rows_equals_extending_the_whole_batch():
  """Writing chunks to a subset of rows (gathered, padded with out-of-range rows, scattered back) leaves
  every row of the state as writing them through the whole batch does."""
  lm = load_model("random:tiny-gemma3", seed=2)
  params = nnx.state(lm.model)
  kw = dict(batch=5, cache_len=64, sampling=SamplingConfig(temperature=1.0, max_new_tokens=8), stops=_no_stops(),
            max_chunk=16)
  subset = Sampler.create(lm.model, **kw)
  whole = Sampler.create(lm.model, **kw)
  object.__setattr__(whole, "row_buckets", (5,))
  assert subset.row_buckets == (1, 4, 5)
  prompts = {r: list(range(3 + r, 9 + 2 * r)) for r in range(5)}
  states = []
  for s in (subset, whole):
    st = write_rows(s, params, s.init_state(params, [11, 12, 13, 14, 15]), prompts,
                    set_lengths={r: 0 for r in range(5)})
    st, _ = s.decode(params, st)
    # one row refilled with a new seed, then two rows (padded to 4 with two out-of-range rows) continue
    st = write_rows(s, params, st, {3: [9, 9, 9]}, set_lengths={3: 0}, seeds={3: 99})
    st = write_rows(s, params, st, {0: [4, 5], 4: [6, 7, 8, 9, 10]})
    states.append(st)
  assert subset.trace_counts.keys() == {"extend/5x16", "extend/1x16", "extend/4x16", "decode/span64"}
  a, b = states
  np.testing.assert_array_equal(np.asarray(a.cache.lengths), np.asarray(b.cache.lengths))
  for name in ("pending", "active", "turn_len", "recent"):
    np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
  np.testing.assert_array_equal(jax.random.key_data(a.keys), jax.random.key_data(b.keys))
  for (ka, va), (kb, vb) in zip(a.cache.layers, b.cache.layers):
    # a 1-row and a 5-row matmul round differently (measured up to 1.5e-6)
    np.testing.assert_allclose(np.asarray(ka), np.asarray(kb), atol=1e-5)
    np.testing.assert_allclose(np.asarray(va), np.asarray(vb), atol=1e-5)


def _expected_stop(seq, table: StopTable, max_new):
  """Host reference of the stop rule: first index whose token, or whose tail + head, matches."""
  for i, t in enumerate(seq):
    if t in set(table.tokens.tolist()) or i + 1 >= max_new:
      return i
    for tail, head in zip(table.tails, table.heads):
      tail = [x for x in tail.tolist() if x != -1]
      n = len(tail)
      if i + 1 >= n and seq[i + 1 - n:i + 1] == tail:
        h = i - n
        if head.all() or (h >= 0 and head[seq[h]]):
          return i
  return None


def test_stop_tokens_and_tag_tails():
  lm = load_model("random:tiny-gemma3", seed=4)
  params = nnx.state(lm.model)
  free = Sampler.create(lm.model, batch=1, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=30),
                        stops=_no_stops(), max_chunk=32)
  g = generate(free, params, [[3, 4, 5]])[0]
  assert len(g) == 30
  heads = np.zeros((1, 512), bool)
  heads[0, g[9]] = True
  tables = [
      StopTable(np.array([g[6]], np.int32), np.full((1, 1), -2, np.int32), np.ones((1, 512), bool)),
      StopTable(np.zeros((0,), np.int32), np.array([[g[10], g[11]]], np.int32), heads),
      # the same tail but a head that never occurs: no stop from the tail
      StopTable(np.zeros((0,), np.int32), np.array([[g[10], g[11]]], np.int32), np.zeros((1, 512), bool)),
  ]
  for table in tables:
    s = Sampler.create(lm.model, batch=1, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=30),
                       stops=table, max_chunk=32)
    out = generate(s, params, [[3, 4, 5]])[0]
    stop = _expected_stop(g, table, 30)
    assert out == g[:stop + 1]
  assert len(generate(Sampler.create(lm.model, batch=1, cache_len=64, sampling=SamplingConfig(
      temperature=0, max_new_tokens=30), stops=tables[2], max_chunk=32), params, [[3, 4, 5]])[0]) == 30


def test_closing_tags_merged_with_what_follows_stop_on_device():
  """The Gemma tokenizer merges a closing tag's ">" with what follows (">.", ">,", ">>"): such a turn never
  stopped on device and ran to max_new_tokens (the host cut it right, after the wasted steps). The rule is
  run as the decode loop runs it, token by token, on the packaged tokenizer."""
  from types import SimpleNamespace

  from swirl_jax.loading import read_source
  from swirl_jax.sampling.decode import build_stop_table
  from swirl_jax.tools import STOP_STRINGS

  tok = read_source("gemma3-270m")[2]
  table = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  device = StopTable(*(jnp.asarray(a) for a in table))
  loop = SimpleNamespace(sampling=SamplingConfig(max_new_tokens=1000), cache_len=10**6)

  def stopped_at(text):
    ids = tok.encode(text, add_bos=False)
    recent = [-1] * (table.tails.shape[1] + 1)
    for i, t in enumerate(ids):
      recent = recent[1:] + [t]
      if Sampler._stopped(loop, device, jnp.asarray([recent]), jnp.asarray([t]), jnp.asarray([i + 1]),
                          jnp.asarray([i]))[0]:
        return tok.decode(ids[:i + 1])
    return None

  assert any(tok.decode([i]) == ">." for i in tok.encode("x</answer>. y", add_bos=False))  # the premise
  cases = {
      "I multiply. <math_exp>15*8</math_exp>. Then more": "I multiply. <math_exp>15*8</math_exp>.",
      "So <answer>5</answer>, done": "So <answer>5</answer>,",
      "<answer>x</answer>> y": "<answer>x</answer>>",
      "Now <search_query>Paris</search_query>. And": "Now <search_query>Paris</search_query>.",
      "<math_exp>1 + 2</math_exp>\nmore": "<math_exp>1 + 2</math_exp>",  # the canonical ending: as before
      "the tag math_exp>. alone, and <answer>4</answer": None,  # no "</" before it; no ">" yet
  }
  for text, expected in cases.items():
    assert stopped_at(text) == expected, text
  # a word-ending stop string stops at its own word only
  verdicts = build_stop_table(tok, ["VERDICT: GOOD"], [])
  device = StopTable(*(jnp.asarray(a) for a in verdicts))
  table = verdicts
  assert stopped_at("so VERDICT: GOOD") == "so VERDICT: GOOD"
  assert stopped_at("so VERDICT: GO on") is None
  goods = tok.encode(" VERDICT: GOODS", add_bos=False)
  assert tok.decode(goods[-1:]) == " GOODS"  # the premise: one token that begins with " GOOD"
  assert stopped_at("VERDICT: GOODS are sold, but VERDICT: BAD") is None  # a longer word: no verdict


def test_sampling_rules():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)) * 3, jnp.float32)  # [B, V]
  keys = jax.vmap(jax.random.key)(jnp.arange(4))
  greedy = np.asarray(logits.argmax(-1))
  np.testing.assert_array_equal(sample_logits(logits.T, keys, SamplingConfig(temperature=0)), greedy)
  np.testing.assert_array_equal(sample_logits(logits.T, keys, SamplingConfig(temperature=1, top_k=1)), greedy)
  np.testing.assert_array_equal(sample_logits(logits.T, keys, SamplingConfig(temperature=1, top_p=1e-6)), greedy)
  # a temperature whose float32 reciprocal overflows drew the padding token (NaN logits): greedy instead
  for tiny in (1e-6, 1e-45, 1e-300):
    assert SamplingConfig(temperature=tiny).temperature == 0
    np.testing.assert_array_equal(sample_logits(logits.T, keys, SamplingConfig(temperature=tiny)), greedy)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    SamplingConfig(temperature=float("nan"))
  # Frequencies follow softmax(logits / T) restricted to the top k.
  row = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0]])
  n = 20000
  keys = jax.vmap(jax.random.key)(jnp.arange(n))
  for cfg, probs in [
      (SamplingConfig(temperature=1.0), jax.nn.softmax(row[0])),
      (SamplingConfig(temperature=2.0, top_k=3), jax.nn.softmax(row[0, :3] / 2.0)),
      (SamplingConfig(temperature=1.0, top_p=0.8), jax.nn.softmax(row[0, :3])),  # mass of top-2 < 0.8
  ]:
    toks = np.asarray(sample_logits(jnp.repeat(row, n, 0).T, keys, cfg))
    freq = np.bincount(toks, minlength=5)[:len(probs)] / n
    np.testing.assert_allclose(freq, np.asarray(probs), atol=0.015)
    assert (toks < len(probs)).all()


def test_two_level_categorical_is_exact():
  """The block-then-token draw follows softmax(logits) over a vocabulary that is not a multiple of the
  block (the last block is padded with -inf and never yields a padding id)."""
  rng = np.random.default_rng(1)
  v, n = 300, 60000
  logits = jnp.asarray(rng.normal(size=v) * 2, jnp.float32)
  keys = jax.random.split(jax.random.key(0), n)
  toks = np.asarray(jax.jit(lambda k: categorical(k, jnp.repeat(logits[:, None], n, 1), block=64))(keys))
  assert toks.min() >= 0 and toks.max() < v
  freq = np.bincount(toks, minlength=v) / n
  probs = np.asarray(jax.nn.softmax(logits))
  # per-token: within 5 binomial standard deviations; overall: total variation near its sampling floor
  np.testing.assert_array_less(np.abs(freq - probs), 5 * np.sqrt(probs * (1 - probs) / n) + 1e-4)
  assert 0.5 * np.abs(freq - probs).sum() < 0.04
  # sample_logits takes the two-level path above 512 entries; -inf entries are never drawn
  big = jnp.full((1100, 2), -jnp.inf).at[1099, 0].set(0.0).at[5, 1].set(1.0).at[700, 1].set(1.0)
  got = np.asarray(sample_logits(big, jax.vmap(jax.random.key)(jnp.arange(2)), SamplingConfig(temperature=1.0)))
  assert got[0] == 1099 and got[1] in (5, 700)


@pytest.mark.parametrize("v", [50, 512, 1100, 4096])
def test_two_level_argmax_equals_argmax(v):
  """The blockwise greedy choice is numpy's argmax (the first maximal index) for vocabularies below the
  block (one-level path), multiples of it and not, with ties inside a block, across blocks and at the
  padding."""
  rng = np.random.default_rng(v)
  logits = rng.integers(-40, 40, size=(v, 9)).astype(np.float32)  # integer values: many ties
  logits[:, 1] = 7.0  # all tied: index 0
  logits[[3, v - 1], 2] = 100.0  # tie across blocks: the earlier wins
  logits[:, 3] = -np.inf
  logits[v - 1, 3] = -1e30  # the last real id, next to the -inf padding of the last block
  logits[:, 4] = np.float32(-3.4e38)  # all equal, near float32's lowest finite value: index 0
  got = np.asarray(jax.jit(lambda x: argmax(x, block=64))(jnp.asarray(logits)))
  np.testing.assert_array_equal(got, logits.argmax(axis=0))
  assert got.dtype == np.int32


@pytest.mark.parametrize("v,k", [(50, 8), (1100, 1), (1100, 5), (4096, 64), (4100, 3)])
def test_two_level_top_k_equals_top_k(v, k):
  """The blockwise top-k gives jax.lax.top_k's values, ids and order over the transposed logits: with ties
  inside and across blocks (equal values: the lower id first), -inf entries, a vocabulary that is not a
  multiple of the block (the padding is never returned), and k blocks covering the whole vocabulary
  (one-level path)."""
  rng = np.random.default_rng(v + k)
  logits = rng.integers(-40, 40, size=(v, 8)).astype(np.float32)  # integer values: many ties
  logits[:, 1] = 7.0  # all tied: ids 0..k-1
  logits[[3, v - 1, v // 2], 2] = 100.0  # ties across blocks
  logits[:, 3] = -np.inf
  logits[[v - 1, 1], 3] = 5.0  # fewer finite values than k: the rest are -inf at the lowest ids
  logits[:, 4] = np.float32(-3.4e38)
  # equal values in blocks whose maxima rank the other way round: the lower id still comes first
  logits[:, 5] = -1000.0
  logits[[v - 5, 2], 5] = [100.0, 50.0]
  logits[[v - 4, 3], 5] = 10.0
  x = jnp.asarray(logits)
  vals, ids = jax.jit(lambda x: top_k(x, k, block=64))(x)
  want_vals, want_ids = jax.lax.top_k(x.T, k)
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
  np.testing.assert_array_equal(np.asarray(vals), np.asarray(want_vals))
  assert ids.dtype == jnp.int32 and ids.shape == (8, k)


@pytest.mark.parametrize("preset", ["tiny-gemma3", "tiny-gemma2"])
def test_vocab_major_head_equals_the_head(preset):
  """The sampler's [V, B] head gives the [B, V] head's logits (Gemma 2's final soft-cap included)."""
  model = load_model(f"random:{preset}", seed=3).model
  hidden = jnp.asarray(np.random.default_rng(0).normal(size=(5, model.config.d_model)), jnp.float32)
  np.testing.assert_allclose(np.asarray(model.logits_vocab_major(hidden)).T, np.asarray(model.logits(hidden)),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("token_major", [True, False])
def test_project_is_a_float32_accumulated_matmul(weights, n, token_major):
  """``project`` = numpy's float32 matmul of the operands' values, rounded to the activations' dtype, for
  every path: float32 (upcast) or bfloat16 weights, one column (padded to two) or several, activations
  that are a transposed token-major array or a dot's output. Where YNNPACK multiplies bfloat16 natively
  the float32 sum may differ in order, so the rounded result may be one bfloat16 step off."""
  rng = np.random.default_rng(n)
  w = jnp.asarray(rng.normal(size=(48, 40)), jnp.float32).astype(weights)
  xt = jnp.asarray(rng.normal(size=(n, 40)), jnp.bfloat16)  # token-major, as the residual stream is held
  got = jax.jit(lambda w, xt: project(w, xt.T, token_major=token_major))(w, xt)
  assert got.shape == (48, n) and got.dtype == jnp.bfloat16
  want = (np.asarray(w.astype(jnp.float32)) @ np.asarray(xt.astype(jnp.float32)).T).astype(jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2 ** -7, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's loop-invariant code motion")
@pytest.mark.parametrize("feature_major", [True, False])
def test_decode_and_extend_read_embedding_rows_without_converting_the_table(feature_major):
  """A bfloat16 model's decode call does not convert or copy the whole embedding table ahead of its loop
  (as XLA:CPU does with a loop-invariant table: the 270M's 335 MB at every call); the loop's lookups
  read single rows. Neither does an extend call."""
  model = random_model(config_preset("tiny-gemma3", dtype="bfloat16", param_dtype="bfloat16"), seed=4)
  s = Sampler.create(model, batch=2, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=12),
                     stops=_no_stops(), steps_per_call=6, max_chunk=16, exit_when_done=2,
                     feature_major=feature_major, upcast_weights=False)
  p = s.prepare(nnx.state(model))
  state = s.init_state(p, [0, 1])
  rows, tokens, valid = np.arange(2, dtype=np.int32), np.ones((2, 16), np.int32), np.ones((2, 16), bool)
  v, d = model.embedding.shape
  for program in (s._decode.lower(s, p.state, p.layers, p.head, state, s.device_stops, s.cache_len),
                  s._extend.lower(s, p.state, p.head, state, rows, tokens, valid, np.full(2, -1, np.int32),
                                  np.zeros(2, np.uint32), np.zeros(2, bool), s.device_stops)):
    hlo = program.compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    whole_table = re.findall(rf"= \w+\[{v},{d}\]\S* (?:fusion|convert|copy|bitcast-convert)\(", entry)
    assert not whole_table, whole_table


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion of a one-row cache write")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_batch_one_decode_writes_the_cache_without_copying_it(dtype):
  """At batch 1 the decode loop updates each layer's cache in place: no copy of a cache buffer in the
  compiled program (a one-row write lowered as a dynamic-update-slice was copied twice per layer and step)."""
  model = random_model(config_preset("tiny-gemma3", dtype=dtype, param_dtype=dtype, num_kv_heads=1), seed=4)
  s = Sampler.create(model, batch=1, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=12),
                     stops=_no_stops(), steps_per_call=6, max_chunk=16)
  p = s.prepare(nnx.state(model))
  state = s.init_state(p, [0])
  hlo = s._decode.lower(s, p.state, p.layers, p.head, state, s.device_stops, s.cache_len).compile().as_text()
  shapes = {",".join(map(str, x.shape)) for layer in state.cache.layers for x in layer}
  copied = [m for m in re.findall(r"= \w+\[([\d,]+)\]\S* copy\(", hlo) if m in shapes]
  assert not copied, copied


@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("rows", [3, 1])
def test_upcast_weights_and_cache_keep_bfloat16_values(kv_heads, rows):
  """A bfloat16 model's feature-major decode step with float32 copies of its relaid weights and head
  (the sampler's ``upcast_weights``) and/or a float32 KV cache (``upcast_cache``) keeps the bfloat16
  model's values, once XLA may not keep excess precision (by default it may skip a float32 -> bfloat16
  -> float32 rounding; then values differ within bfloat16 rounding):

  * the float32 cache changes nothing, bit for bit, whatever the weights (the keys and values it holds
    are bfloat16-rounded, and attention rounds its probabilities and output as with the bfloat16 cache);
  * float32 weights give bit for bit the hidden states of bfloat16 weights where XLA:CPU multiplies
    bfloat16 by upcasting to float32; on a CPU with bfloat16 arithmetic (AVX512-BF16) YNNPACK's bfloat16
    kernels sum in another order, and the two differ by bfloat16 rounding steps. Logits agree to float32
    summation order or, there, to that rounding.

  The second step has one token per row: with ``rows`` = 1, the single column ``project`` pads to two."""
  model = random_model(config_preset("tiny-gemma3", num_kv_heads=kv_heads, dtype="bfloat16",
                                     param_dtype="bfloat16"), seed=1)
  tokens, valid = pad_batch([[5, 6, 7, 8], [9, 10], [11]][:rows], 0, length=16)
  strict = {"xla_allow_excess_precision": False}
  got = {}
  for weights_dtype in (None, jnp.float32):
    weights = jax.jit(lambda m: m.layer_weights(weights_dtype))(model)
    assert weights[0].qkv.dtype == (weights_dtype or jnp.bfloat16)
    head = None if weights_dtype is None else model.embedding[...].astype(weights_dtype)
    for cache_dtype in (None, jnp.float32):
      step = jax.jit(lambda m, t, v, c: m.extend_feature_major(t, v, c, weights), compiler_options=strict)
      cache = model.init_cache(rows, 64, 16, cache_dtype)
      hidden, cache = step(model, jnp.asarray(tokens), jnp.asarray(valid), cache)
      # a second step attends over what the first one cached
      hidden, cache = step(model, jnp.asarray(tokens[:, :1]) + 1, jnp.asarray(valid[:, :1]), cache)
      assert hidden.dtype == jnp.bfloat16 and cache.layers[0][0].dtype == (cache_dtype or jnp.bfloat16)
      logits = jax.jit(lambda m, x: m.logits_vocab_major(x, head), compiler_options=strict)(model, hidden[:, 0])
      assert logits.shape == (model.config.vocab_size, rows)
      got[weights_dtype, cache_dtype] = (np.asarray(hidden.astype(jnp.float32)), np.asarray(logits))
  for w in (None, jnp.float32):
    np.testing.assert_array_equal(got[w, jnp.float32][0], got[w, None][0])
    np.testing.assert_array_equal(got[w, jnp.float32][1], got[w, None][1])
  (h_bf16, l_bf16), (h_f32, l_f32) = got[None, None], got[jnp.float32, None]
  if host_cpu.has_bf16_arithmetic() or jax.default_backend() != "cpu":
    np.testing.assert_allclose(h_f32, h_bf16, rtol=2 ** -6, atol=2 ** -6)
    np.testing.assert_allclose(l_f32, l_bf16, rtol=0, atol=0.05)
  else:
    np.testing.assert_array_equal(h_f32, h_bf16)
    np.testing.assert_allclose(l_f32, l_bf16, atol=1e-5, rtol=0)


def test_sampler_upcasts_a_bfloat16_models_weights_and_cache_only():
  """``prepare`` holds float32 relaid weights and head for a bfloat16 model with ``upcast_weights``, none
  for a float32 model; ``upcast_cache`` makes the state's cache float32; the upcast samplers decode like
  the plain one (same greedy tokens on this model)."""
  bf16 = random_model(config_preset("tiny-gemma3", dtype="bfloat16", param_dtype="bfloat16"), seed=4)
  kw = dict(batch=2, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=12), stops=_no_stops(),
            steps_per_call=6, max_chunk=16, exit_when_done=2, feature_major=True)
  prompts = [[5, 6, 7, 8, 9], [40, 41]]
  outs = []
  for upcast, cache in ((True, True), (False, False), (False, True), (True, False)):
    s = Sampler.create(bf16, upcast_weights=upcast, upcast_cache=cache, **kw)
    p = s.prepare(nnx.state(bf16))
    assert p.layers[0].gate_up.dtype == (jnp.float32 if upcast else jnp.bfloat16)
    assert (p.head is not None) == upcast
    if upcast:
      assert p.head.dtype == jnp.float32 and p.head.shape == bf16.embedding.shape
    assert s.init_state(p, [0, 1]).cache.layers[0][1].dtype == (jnp.float32 if cache else jnp.bfloat16)
    outs.append(generate(s, p, prompts))
  assert all(o == outs[0] for o in outs) and [len(o) for o in outs[0]] == [12, 12]
  f32 = random_model(config_preset("tiny-gemma3"), seed=4)
  s = Sampler.create(f32, upcast_weights=True, upcast_cache=True, **kw)
  p = s.prepare(nnx.state(f32))
  assert p.head is None and p.layers[0].qkv.dtype == jnp.float32
  assert s.init_state(p, [0, 1]).cache.layers[0][0].dtype == jnp.float32


def test_prepare_rounds_a_mixed_precision_models_matrices_to_the_compute_dtype():
  """float32 parameters with bfloat16 compute (how training holds a bfloat16 model): ``prepare`` rounds
  the weight matrices to bfloat16 once (norm scales stay float32), so decode streams bfloat16 weights and
  decodes exactly as the model rounding them at every use; the upcast copies hold the rounded values (they
  copied the unrounded float32 weights: another policy than the one trained)."""
  mixed = random_model(config_preset("tiny-gemma3", dtype="bfloat16", param_dtype="float32"), seed=4)
  raw = nnx.state(mixed)
  kw = dict(batch=2, cache_len=64, sampling=SamplingConfig(temperature=0, max_new_tokens=12), stops=_no_stops(),
            steps_per_call=6, max_chunk=16, exit_when_done=2)
  prompts = [[5, 6, 7, 8, 9], [40, 41]]
  s = Sampler.create(mixed, feature_major=False, **kw)
  p = s.prepare(raw)
  assert p.state["embedding"].value.dtype == jnp.bfloat16 and p.layers is None
  assert p.state["layers"][0]["mlp"]["gate"].value.dtype == jnp.bfloat16
  assert p.state["final_norm"]["scale"].value.dtype == jnp.float32
  assert raw["embedding"].value.dtype == jnp.float32  # the caller's parameters are not touched
  want = [list(map(int, row)) for row in generate(s, raw, prompts)]  # unprepared: rounded at every use
  assert [list(map(int, row)) for row in generate(s, p, prompts)] == want

  for upcast in (True, False):
    fm = Sampler.create(mixed, feature_major=True, upcast_weights=upcast, **kw)
    q = fm.prepare(raw)
    gate = np.asarray(mixed.layers[0].mlp.gate[...].astype(jnp.bfloat16).astype(jnp.float32))
    d = gate.shape[0]
    np.testing.assert_array_equal(np.asarray(q.layers[0].gate_up[:gate.shape[1]].astype(jnp.float32)), gate.T)
    assert q.layers[0].gate_up.dtype == (jnp.float32 if upcast else jnp.bfloat16) and d == mixed.config.d_model
    if upcast:
      np.testing.assert_array_equal(np.asarray(q.head), np.asarray(
          mixed.embedding[...].astype(jnp.bfloat16).astype(jnp.float32)))
    assert generate(fm, q, prompts) == generate(s, p, prompts)


def test_upcast_weights_default_follows_the_cpus_bfloat16_arithmetic():
  avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
  spr = "model name\t: Intel Xeon\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n"
  assert host_cpu.parse_cpuinfo(avx2) == {"cpu_model": "AMD EPYC", "cpu_extensions": ["avx2", "fma"]}
  assert not host_cpu.has_bf16_arithmetic(host_cpu.parse_cpuinfo(avx2))
  assert host_cpu.has_bf16_arithmetic(host_cpu.parse_cpuinfo(spr))
  assert host_cpu.has_bf16_arithmetic({})  # unknown host: leave XLA's own bfloat16 path alone
  # ARM lists no "model name"/"flags": unknown too (it read as a CPU without bfloat16), and two ARM cores
  # with other features are other hosts (they shared one compilation cache)
  n1 = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd aes crc32\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
  v1 = "processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
  assert host_cpu.parse_cpuinfo(n1) == {} and host_cpu.has_bf16_arithmetic(host_cpu.parse_cpuinfo(v1))
  assert host_cpu.cpuinfo_identity(n1) != host_cpu.cpuinfo_identity(v1)
  assert host_cpu.cpuinfo_identity(avx2) == "AMD EPYC|avx avx2 fma fpu sse2"  # x86 ids unchanged
  s = Sampler.create(random_model(config_preset("tiny-gemma3"), seed=0), batch=1, cache_len=32,
                     sampling=SamplingConfig(max_new_tokens=4), stops=_no_stops())
  assert s.upcast_weights == (jax.default_backend() == "cpu" and not host_cpu.has_bf16_arithmetic())
  assert s.upcast_cache == (jax.default_backend() == "cpu")


def test_a_row_samples_the_same_whatever_shares_its_batch():
  lm = load_model("random:tiny-gemma3", seed=5)
  s = Sampler.create(lm.model, batch=3, cache_len=64, sampling=SamplingConfig(temperature=1.5, max_new_tokens=12),
                     stops=_no_stops(), steps_per_call=5, max_chunk=16, exit_when_done=3)
  params = nnx.state(lm.model)
  a = [9, 8, 7, 6]
  first = generate(s, params, [a, [1, 2]], seeds=[11, 12, 0])
  second = generate(s, params, [[5] * 9, [3], a], seeds=[13, 14, 11])
  assert first[0] == second[2]
  assert first[0] != generate(s, params, [a], seeds=[12, 0, 0])[0]
