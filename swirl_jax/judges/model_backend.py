"""Judge backend "model": an in-process JAX model (any ``load_model`` source) answers the judge prompts.

Two modes:

* ``generate``: the judge writes its explanation and verdict with the Sampler, as an HTTP judge would.
  Requests are batched ``batch_size`` at a time (sorted by length, so rows of a batch end together).
  Each request samples with a seed derived from (``seed``, vote index, request text), so the n votes of
  a ``PromptJudge(n_votes=n)`` differ (with temperature > 0) and every completion is reproducible
  whatever the batch it ran in (rows sample with their own keys). With ``stop_at_verdict`` a row also
  stops right after "VERDICT: GOOD" / "VERDICT: BAD" (VERDICT_STOPS), since a base model rambles on after
  its verdict.
* ``score``: no generation. The judge prompt is rendered with the model's turn opened and forced to start
  with ``verdict_prefix`` ("VERDICT:"); one batched forward pass gives the next-token logits there, and
  P(GOOD) = softmax over the logits of the two candidate tokens, the first tokens of " GOOD" and " BAD".
  When the two encodings share leading tokens (a byte-level BPE may split off the space), the shared
  tokens are forced too and the first tokens that differ are compared. Only those two rows of the LM head
  are computed (the head is a vocabulary-sized matmul). The completion text is "VERDICT: GOOD" or
  "VERDICT: BAD" (P(GOOD) >= 0.5) with P(GOOD) alongside; votes are pointless here (it is deterministic).

The model is loaded from ``config.source`` on ``mesh`` (so a judge shares the policy's devices), or an
already loaded ``LoadedModel`` is passed in (``model=``), e.g. the policy's initial model when the judge
has the same source (one copy of the weights). Each call reads the model's weights as they are then:
SWiRL's judge is a fixed model, so pass a model whose weights stay fixed (the training loop trains a
copy of the parameters), or give each weights version its own ``name`` (the cache is keyed by it).

The backend's ``settings`` (part of every judge cache key) name the model's compute dtype and the dtypes its
parameters are stored in, so a float32 and a bfloat16 judge of one source never share cached verdicts.
(Cache entries written before these were part of the settings no longer match: they are judged once more.)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import zlib
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from swirl_jax import chat
from swirl_jax.judges.base import Completion, JudgeRequest, OnDone
from swirl_jax.loading import LoadedModel, load_model, pad_batch
from swirl_jax.models.gemma import positions_from_valid

Mode = Literal["generate", "score"]
MODES: tuple[Mode, ...] = ("generate", "score")
# stop_at_verdict's stop strings: any "VERDICT: GOOD" / "VERDICT: BAD" (at the reply's start, in markdown,
# after a newline). A base model copying out the instruction ('a line that is exactly "VERDICT: GOOD" or
# ...') is stopped inside it too; parse_verdict reads that as no verdict (counted BAD), never as GOOD.
VERDICT_STOPS = ("VERDICT: GOOD", "VERDICT: BAD")
_MIN_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class ModelJudgeConfig:
  """Static settings of the in-process model judge.

  Attributes:
    source: what ``load_model`` loads (packaged name, HF directory, .gguf, random:PRESET); ignored
      when a loaded model is passed to ModelBackend (its own source names it then).
    mode: "generate" (explanation + verdict with the sampler) or "score" (P(GOOD) from logits).
    batch_size: requests per batch (sampler rows, or rows of one forward pass).
    max_new_tokens: tokens a generated judgement may have (generate).
    temperature / top_k / top_p: sampling (generate); 0 = greedy.
    cache_len: tokens a judge prompt (+ generated tokens) may hold; longer prompts are an error.
    steps_per_call / max_chunk: sampler shapes (generate; see Sampler).
    seed: base seed of the per-request, per-vote sampling seeds (generate).
    stop_at_verdict: stop a row after "VERDICT: GOOD" / "VERDICT: BAD" (generate).
    verdict_prefix / good_text / bad_text: the forced start of the model turn and the two continuations
      compared (score).
    dtype / param_dtype: model dtypes when loading ``source``.
  """

  source: str = "gemma3-270m"
  mode: Mode = "score"
  batch_size: int = 8
  max_new_tokens: int = 256
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  cache_len: int = 2048
  steps_per_call: int = 32
  max_chunk: int = 512
  seed: int = 0
  stop_at_verdict: bool = True
  verdict_prefix: str = "VERDICT:"
  good_text: str = " GOOD"
  bad_text: str = " BAD"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"model judge mode must be one of {list(MODES)}, got {self.mode!r}")
    if self.batch_size < 1 or self.cache_len < 2 or self.max_new_tokens < 1:
      raise ValueError("model judge batch_size, max_new_tokens must be >= 1 and cache_len >= 2")
    if self.mode == "generate" and self.max_new_tokens >= self.cache_len:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in "
                       f"cache_len={self.cache_len}")
    if self.good_text == self.bad_text:
      raise ValueError("good_text and bad_text must differ")


@functools.partial(jax.jit, static_argnums=0)
def _candidate_logits(graphdef, state, tokens, valid, last, candidates):
  """Logits [B, C] of the ``candidates`` ids at position ``last`` [B] of each row."""
  model = nnx.merge(graphdef, state)
  hidden = model(tokens, positions_from_valid(valid), valid)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
  # Gemma.logits over just C rows of the tied embedding (same ops, same soft-cap), not the vocabulary.
  emb = jnp.take(model.embedding[...], candidates, axis=0).astype(model.config.jnp_dtype)
  out = jnp.einsum("bd,cd->bc", h, emb, preferred_element_type=jnp.float32)
  cap = model.config.final_logit_softcap
  return jnp.tanh(out / cap) * cap if cap is not None else out


def request_seed(base: int, request: JudgeRequest) -> int:
  """The sampling seed of one (request, vote): independent of batching and of the other requests."""
  return zlib.crc32(f"{base}/{request.vote}/{request.text}".encode("utf-8")) & 0x7FFFFFFF


def _bucket(n: int, cap: int) -> int:
  b = _MIN_BUCKET
  while b < n:
    b *= 2
  return min(b, cap)


class ModelBackend:
  """A JudgeBackend over an in-process model (see the module docstring)."""

  def __init__(self, config: ModelJudgeConfig, model: LoadedModel | None = None, mesh=None,
               name: str | None = None):
    """Args:
      config: the settings.
      model: an already loaded model (its tokenizer is required); None loads ``config.source``.
      mesh: where to load ``config.source`` (the policy's mesh); unused when ``model`` is given.
      name: the model's name in the identity (default: its source). The identity keys the judge cache,
        so a model whose weights change under one source (a checkpoint being trained) needs a name per
        version, or cached verdicts of the old weights would be reused.
    """
    self.config = config
    self.lm = model if model is not None else load_model(config.source, dtype=config.dtype,
                                                         param_dtype=config.param_dtype, mesh=mesh)
    if self.lm.tokenizer is None:
      raise ValueError(f"judge model {self.lm.source!r} has no tokenizer; pass a LoadedModel with one")
    self.tok = self.lm.tokenizer
    self.params = nnx.state(self.lm.model)
    self.identity = f"model/{name or self.lm.source}/{config.mode}"
    c = config
    if c.mode == "generate":
      self.settings = (f"temperature={c.temperature!r},top_k={c.top_k},top_p={c.top_p!r},"
                       f"max_new_tokens={c.max_new_tokens},seed={c.seed},stops={VERDICT_STOPS if c.stop_at_verdict else ()!r}")
      self._sampler = self._make_sampler()
      self._sampler_params = self._sampler.prepare(self.params)
    else:
      self.settings = f"prefix={c.verdict_prefix!r},good={c.good_text!r},bad={c.bad_text!r}"
      self.shared, self.candidates = self._candidate_ids()
    # The dtypes change the verdicts (bfloat16 rounds the logits), so they key the cache too: those of the
    # model as loaded (a passed-in model's own, whatever config.dtype says), parameters as stored.
    param_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(self.params) if hasattr(x, "dtype")})
    self.settings += f",dtype={self.lm.model.config.dtype},param_dtype={'+'.join(param_dtypes)}"
    self._lock = threading.Lock()  # one batch on the model at a time, whoever calls

  def __repr__(self) -> str:
    return f"ModelBackend(identity={self.identity!r}, settings={self.settings!r})"

  # -- shared --

  def prompt_ids(self, request: JudgeRequest) -> list[int]:
    """The token ids of a request as the model sees it (BOS, the chat, the opened model turn, and in
    score mode the forced verdict prefix and any shared candidate tokens)."""
    text = chat.render(request.messages, add_generation_prompt=True)
    if self.config.mode == "generate":
      return self.tok.encode(text)
    return self.tok.encode(text + self.config.verdict_prefix) + self.shared

  def _check_len(self, ids: Sequence[int], extra: int) -> None:
    if len(ids) + extra > self.config.cache_len:
      raise ValueError(f"judge prompt of {len(ids)} tokens (+{extra} to generate) exceeds the model judge's "
                       f"cache_len={self.config.cache_len}; raise ModelJudgeConfig.cache_len")

  def complete(self, requests: Sequence[JudgeRequest], on_done: OnDone | None = None) -> list[Completion]:
    """One completion per request, in order; ``on_done(i, c)`` after each batch finishes."""
    if not requests:
      return []
    with self._lock:
      if self.config.mode == "score":
        return self._score(requests, on_done)
      return self._generate(requests, on_done)

  # -- score --

  def _candidate_ids(self) -> tuple[list[int], list[int]]:
    good = self.tok.encode(self.config.good_text, add_bos=False)
    bad = self.tok.encode(self.config.bad_text, add_bos=False)
    k = 0
    while k < min(len(good), len(bad)) and good[k] == bad[k]:
      k += 1
    if k == len(good) or k == len(bad):
      raise ValueError(f"{self.config.good_text!r} and {self.config.bad_text!r} tokenize as {good} and {bad}: "
                       "one is a prefix of the other, so their next-token logits cannot tell them apart")
    return good[:k], [good[k], bad[k]]

  def p_good(self, requests: Sequence[JudgeRequest]) -> np.ndarray:
    """P(GOOD) per request: softmax over the two candidate logits, batched (no generation)."""
    if self.config.mode != "score":
      raise ValueError("p_good needs a model judge in score mode")
    with self._lock:
      return np.concatenate([self._p_good_batch(requests[i : i + self.config.batch_size])
                             for i in range(0, len(requests), self.config.batch_size)])

  def _p_good_batch(self, requests: Sequence[JudgeRequest]) -> np.ndarray:
    ids = [self.prompt_ids(r) for r in requests]
    for s in ids:
      self._check_len(s, 0)
    length = _bucket(max(len(s) for s in ids), self.config.cache_len)
    rows = ids + [[self.tok.pad_id]] * (self.config.batch_size - len(ids))  # fixed shapes: one compile per bucket
    tokens, valid = pad_batch(rows, self.tok.pad_id, length=length)
    last = np.asarray([len(s) - 1 for s in rows], np.int32)
    tokens, valid, last = jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(last)
    if self.lm.mesh is not None:  # inputs sharded like the parameters' batch axis
      from jax.sharding import NamedSharding

      sh = NamedSharding(self.lm.mesh, self.lm.rules.spec(("batch", None)))
      tokens, valid = jax.device_put(tokens, sh), jax.device_put(valid, sh)
    graphdef, state = nnx.split(self.lm.model)
    logits = np.asarray(_candidate_logits(graphdef, state, tokens, valid, last,
                                          jnp.asarray(self.candidates, jnp.int32)), np.float64)[: len(ids)]
    # softmax over (good, bad) = sigmoid of the difference, computed stably
    return 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))

  def _score(self, requests: Sequence[JudgeRequest], on_done: OnDone | None) -> list[Completion]:
    out: list[Completion] = []
    for start in range(0, len(requests), self.config.batch_size):
      batch = requests[start : start + self.config.batch_size]
      for j, p in enumerate(self._p_good_batch(batch)):
        label = "GOOD" if p >= 0.5 else "BAD"
        c = Completion(text=f"VERDICT: {label} (P(GOOD) = {p:.4f} from the next-token logits after "
                            f"{self.config.verdict_prefix!r})", p_good=float(p))
        out.append(c)
        if on_done is not None:
          on_done(start + j, c)
    return out

  # -- generate --

  def _make_sampler(self):
    from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table

    c = self.config
    stop_strings = list(VERDICT_STOPS) if c.stop_at_verdict else []
    stops = build_stop_table(self.tok, stop_strings, [self.tok.eos_id, self.tok.end_of_turn_id])
    sampling = SamplingConfig(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                              max_new_tokens=c.max_new_tokens)
    # exit_when_done=batch: generate() waits for the whole batch anyway, so fewer host round trips.
    return Sampler.create(self.lm.model, batch=c.batch_size, cache_len=c.cache_len, sampling=sampling,
                          stops=stops, steps_per_call=c.steps_per_call, exit_when_done=c.batch_size,
                          max_chunk=max(c.max_chunk, c.max_new_tokens))

  def text_of(self, tokens: Sequence[int]) -> str:
    """The completion text of generated tokens: without the end-of-turn / EOS token that stopped them."""
    ends = (self.tok.eos_id, self.tok.end_of_turn_id)
    return self.tok.decode(tokens[:-1] if tokens and tokens[-1] in ends else tokens)

  def _generate(self, requests: Sequence[JudgeRequest], on_done: OnDone | None) -> list[Completion]:
    from swirl_jax.sampling.generate import generate

    ids = [self.prompt_ids(r) for r in requests]
    for s in ids:
      self._check_len(s, self.config.max_new_tokens)
    order = sorted(range(len(requests)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    out: list[Completion | None] = [None] * len(requests)
    b = self.config.batch_size
    for start in range(0, len(order), b):
      idx = order[start : start + b]
      seeds = [request_seed(self.config.seed, requests[i]) for i in idx]
      tokens = generate(self._sampler, self._sampler_params, [ids[i] for i in idx], seeds)
      for i, t in zip(idx, tokens):
        out[i] = Completion(text=self.text_of(t))
        if on_done is not None:
          on_done(i, out[i])
    return out  # type: ignore[return-value]
