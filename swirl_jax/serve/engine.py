"""The model thread: continuous batching of chat requests over the swirl_jax sampler."""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import random
import threading
import time
import zlib
from typing import Any, Sequence

import numpy as np

from swirl_jax import chat
from swirl_jax.serve.requests import ChatRequest, RequestError, ServeConfig, bad_request
from swirl_jax.types import Message

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# The model thread.


@dataclasses.dataclass(eq=False)
class _Choice:
  """One row's worth of work: choice ``index`` of a request."""

  job: "_Job"
  index: int
  seed: int
  tokens: list[int] = dataclasses.field(default_factory=list)
  text: str = ""
  finish_reason: str | None = None
  completion_tokens: int = 0


def choice_seed(seed: int, index: int) -> int:
  """Row seed of choice ``index`` of a request with ``seed``: the seed itself for the first choice, a hash
  for the others (``seed + index`` made choice 1 of seed s the same sample as choice 0 of seed s + 1)."""
  return seed & 0xFFFFFFFF if index == 0 else zlib.crc32(f"{seed}/{index}".encode())


@dataclasses.dataclass(eq=False)
class _Job:
  """A tokenized request waiting for (or being served by) the model thread."""

  prompt: list[int]
  key: tuple[float, float, int]  # (temperature, top_p, top_k): which sampler
  max_tokens: int
  stop: tuple[str, ...]
  n: int
  seed: int
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  choices: list[_Choice] = dataclasses.field(default_factory=list)
  error: RequestError | None = None
  cancelled: bool = False
  queued: bool = False  # counted toward max_pending (submitted, not yet admitted, failed or cancelled)

  def fail(self, error: RequestError) -> None:
    self.error = error
    self.done.set()


class BatchingEngine:
  """Owns the model and its samplers; one thread runs every decode (see the module docstring)."""

  def __init__(self, loaded_model, config: ServeConfig):
    from flax import nnx

    from swirl_jax.sampling.decode import build_stop_table, prepare_params

    tok = loaded_model.tokenizer
    if tok is None:
      raise ValueError(f"model {loaded_model.source!r} has no tokenizer; a chat server needs one")
    self.lm, self.tok, self.config = loaded_model, tok, config
    # prepared once for every sampler the engine builds (the same model graph)
    self.params = prepare_params(nnx.graphdef(loaded_model.model), nnx.state(loaded_model.model))
    self.end_ids = frozenset({tok.eos_id, tok.end_of_turn_id})
    # End of turn and EOS stop on device; stop strings and max_tokens are per request, so on the host.
    self.stop_table = build_stop_table(tok, [], sorted(self.end_ids))
    self.tok_lock = threading.Lock()  # HF fast tokenizers are not safe to call from several threads
    self._queue: queue.Queue[_Job] = queue.Queue()
    self._waiting: collections.deque[_Job] = collections.deque()
    self._samplers: collections.OrderedDict = collections.OrderedDict()
    self._stopping = threading.Event()
    # Guards _pending and orders submit's stopping check + put against the model thread's final drain: a
    # job put after that drain would wait for request_timeout_s instead of getting 503 at once.
    self._lock = threading.Lock()
    self._pending = 0  # queued jobs that are not cancelled (what max_pending bounds)
    self._stats_lock = threading.Lock()
    self._stats: dict[str, Any] = dict(requests=0, choices=0, batches=0, batch_rows=[], decode_calls=0,
                                       samplers_built=0, completion_tokens=0, errors=0, cancelled=0)
    self._rng = random.SystemRandom()
    self._thread = threading.Thread(target=self._run, name="swirl-serve-model", daemon=True)
    self._thread.start()

  # -- called from HTTP threads --

  def encode(self, messages: Sequence[Message]) -> list[int]:
    with self.tok_lock:
      return self.tok.encode(chat.render(messages, add_generation_prompt=True), add_bos=True)

  def decode_text(self, ids: Sequence[int]) -> str:
    with self.tok_lock:  # special tokens are not text (vLLM's and OpenAI's default as well)
      return self.tok.decode(ids, skip_special=True)

  def make_job(self, request: ChatRequest) -> _Job:
    """Tokenizes and sizes a request; RequestError when it does not fit the cache."""
    if request.top_k > self.lm.config.vocab_size:
      raise bad_request("top_k", f"must be <= the vocabulary size {self.lm.config.vocab_size}, got {request.top_k}")
    prompt = self.encode(request.messages)
    room = self.config.cache_len - len(prompt)
    wanted = request.max_tokens
    if wanted is None:
      wanted = min(self.config.max_tokens_limit, room)
    if wanted < 1 or len(prompt) + wanted > self.config.cache_len:
      asked = len(prompt) + (request.max_tokens or 1)
      raise RequestError(
          400, f"This model's maximum context length is {self.config.cache_len} tokens. However, you requested "
          f"{asked} tokens ({len(prompt)} in the messages, {asked - len(prompt)} in the completion). Please "
          "reduce the length of the messages or the completion.", param="messages", code="context_length_exceeded")
    seed = request.seed if request.seed is not None else self._rng.getrandbits(32)
    job = _Job(prompt=prompt, key=(request.temperature, request.top_p, request.top_k), max_tokens=wanted,
               stop=request.stop, n=request.n, seed=seed)
    job.choices = [_Choice(job, i, choice_seed(seed, i)) for i in range(request.n)]
    return job

  def submit(self, job: _Job) -> None:
    with self._lock:
      if self._stopping.is_set():
        raise RequestError(503, "the server is shutting down", kind="server_error", code="unavailable")
      if self._pending >= self.config.max_pending:
        raise RequestError(503, f"too many queued requests (max_pending={self.config.max_pending}); retry later",
                           kind="server_error", code="overloaded", headers={"Retry-After": "1"})
      self._pending += 1
      job.queued = True
      self._queue.put(job)
    with self._stats_lock:
      self._stats["requests"] += 1
      self._stats["choices"] += job.n

  def cancel(self, job: _Job) -> None:
    """Gives up on ``job`` (its client timed out or left): it leaves the queue, or its rows stop decoding."""
    with self._lock:
      job.cancelled = True
      self._dequeued(job)
    with self._stats_lock:
      self._stats["cancelled"] += 1

  def _dequeued(self, job: _Job) -> None:  # with self._lock held
    if job.queued:
      job.queued = False
      self._pending -= 1

  def stats(self) -> dict[str, Any]:
    """Counters: requests, choices, batches (admission rounds), batch_rows (rows admitted per round,
    the last 1000), decode_calls, samplers_built, completion_tokens, errors, cancelled (requests given up:
    timed out or disconnected), samplers (cached now), queued (waiting requests not cancelled)."""
    with self._stats_lock:
      out = dict(self._stats, batch_rows=list(self._stats["batch_rows"]))
    out["samplers"] = len(self._samplers)
    out["queued"] = self._pending
    return out

  def stop(self, timeout: float = 30.0) -> None:
    self._stopping.set()
    self._thread.join(timeout)

  # -- the model thread --

  def _sampler(self, key: tuple[float, float, int]):
    from swirl_jax.sampling.decode import Sampler, SamplingConfig

    if key in self._samplers:
      self._samplers.move_to_end(key)
      return self._samplers[key]
    c = self.config
    temperature, top_p, top_k = key
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=c.max_tokens_limit)
    sampler = Sampler.create(self.lm.model, batch=c.batch_size, cache_len=c.cache_len, sampling=sampling,
                             stops=self.stop_table, steps_per_call=c.steps_per_call,
                             max_chunk=max(c.max_chunk, c.max_tokens_limit), exit_when_done=1)
    self._samplers[key] = sampler
    while len(self._samplers) > c.max_samplers:
      self._samplers.popitem(last=False)
    with self._stats_lock:
      self._stats["samplers_built"] += 1
    return sampler

  def _collect(self, idle: bool) -> bool:
    """Moves queued jobs to the waiting line, dropping cancelled ones (so no sampler is chosen or compiled
    for a request nobody waits for). When ``idle`` (no busy rows) and none waits, blocks for a first one
    and then up to batch_wait_ms for more (or until a batch's worth of rows waits). False when stopping."""
    while True:
      try:
        self._waiting.append(self._queue.get_nowait())
      except queue.Empty:
        break
    if any(j.cancelled for j in self._waiting):
      self._waiting = collections.deque(j for j in self._waiting if not j.cancelled)
    if self._waiting or not idle:
      return True
    while True:
      if self._stopping.is_set():
        return False
      try:
        first = self._queue.get(timeout=0.1)
      except queue.Empty:
        continue
      if not first.cancelled:
        break
    self._waiting.append(first)
    deadline = time.monotonic() + self.config.batch_wait_ms / 1000
    while sum(j.n for j in self._waiting if j.key == first.key and not j.cancelled) < self.config.batch_size:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        break
      try:
        self._waiting.append(self._queue.get(timeout=remaining))
      except queue.Empty:
        break
    return True

  def _admit(self, key, free: list[int]) -> dict[int, _Choice]:
    """Takes waiting jobs of sampler ``key`` into free rows, strictly first come first served."""
    rows: dict[int, _Choice] = {}
    while self._waiting:
      job = self._waiting[0]
      if job.cancelled:
        self._waiting.popleft()
        continue
      if job.key != key or job.n > len(free) - len(rows):
        break
      self._waiting.popleft()
      with self._lock:
        self._dequeued(job)
      for choice in job.choices:
        rows[free[len(rows)]] = choice
    return rows

  def _fail_waiting(self, job: _Job, error: RequestError) -> None:
    with self._lock:
      self._dequeued(job)
    job.fail(error)

  def _settle(self, choice: _Choice, device_done: bool) -> bool:
    """Applies max_tokens, end of turn and stop strings to a row's tokens; True when it is finished."""
    job = choice.job
    body = choice.tokens[: job.max_tokens]
    ended = bool(body) and body[-1] in self.end_ids
    content = body[:-1] if ended else body
    text = self.decode_text(content)
    cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
    if cut >= 0:
      # tokens generated up to the one that completed the stop string
      stop_end = min(text.find(s) + len(s) for s in job.stop if text.find(s) == cut)
      used = next((k for k in range(1, len(content) + 1) if len(self.decode_text(content[:k])) >= stop_end),
                  len(content))
      choice.text, choice.finish_reason, choice.completion_tokens = text[:cut], "stop", used
      return True
    if ended:
      choice.text, choice.finish_reason, choice.completion_tokens = text, "stop", len(body)
      return True
    if len(body) >= job.max_tokens or device_done:  # device_done without an end token: cache full
      choice.text, choice.finish_reason, choice.completion_tokens = text, "length", len(body)
      return True
    return False

  def _finish(self, choice: _Choice) -> None:
    job = choice.job
    with self._stats_lock:
      self._stats["completion_tokens"] += choice.completion_tokens
    if all(c.finish_reason is not None for c in job.choices):
      job.done.set()

  def _run(self) -> None:
    loop = _Loop(self)
    while not self._stopping.is_set():
      try:
        if not loop.step():
          break
      except Exception as e:  # noqa: BLE001 - answer the affected requests, keep serving
        log.exception("model thread: a batch failed")
        with self._stats_lock:
          self._stats["errors"] += 1
        loop.fail_all(RequestError(500, f"the model failed on this batch: {type(e).__name__}: {e}"[:500],
                                   kind="server_error", code="internal_error"))
        loop = _Loop(self)  # rebuild the sampler state from scratch
    err = RequestError(503, "the server is shutting down", kind="server_error", code="unavailable")
    loop.fail_all(err)
    while self._waiting:
      self._fail_waiting(self._waiting.popleft(), err)
    with self._lock:  # submit checks _stopping and puts under this lock: no job lands after this drain
      while True:
        try:
          job = self._queue.get_nowait()
        except queue.Empty:
          break
        self._dequeued(job)
        job.fail(err)


class _Loop:
  """The model thread's batch: the current sampler, its decode state and the busy rows."""

  def __init__(self, engine: BatchingEngine):
    self.engine = engine
    self.sampler = None
    self.state = None
    self.rows: dict[int, _Choice] = {}
    self.admitting: dict[int, _Choice] = {}  # rows being written (failed with the batch if that raises)

  @staticmethod
  def key_of(sampler) -> tuple[float, float, int]:
    return (sampler.sampling.temperature, sampler.sampling.top_p, sampler.sampling.top_k)

  def fail_all(self, error: RequestError) -> None:
    for c in list(self.rows.values()) + list(self.admitting.values()):
      c.job.fail(error)
    self.rows, self.admitting = {}, {}

  def step(self) -> bool:
    """Admits waiting jobs into free rows, or runs one decode call; then answers finished rows.
    False when the engine is stopping."""
    import jax.numpy as jnp

    from swirl_jax.sampling.generate import write_rows

    eng = self.engine
    if not self.rows:
      if not eng._collect(idle=True):
        return False
      head = eng._waiting[0]
      if self.sampler is None or self.key_of(self.sampler) != head.key:
        try:
          self.sampler = eng._sampler(head.key)
        except Exception as e:  # noqa: BLE001 - a sampler that cannot be built fails its request only
          eng._fail_waiting(eng._waiting.popleft(), RequestError(400, f"cannot sample with these settings: {e}",
                                                                 code="invalid_value"))
          self.sampler = None
          return True
        self.state = self.sampler.init_state(eng.params, np.zeros(self.sampler.batch, np.uint32))
    else:
      eng._collect(idle=False)
    s = self.sampler
    self.admitting = eng._admit(self.key_of(s), [r for r in range(s.batch) if r not in self.rows])
    if self.admitting:
      new = self.admitting
      self.state = write_rows(s, eng.params, self.state, {r: c.job.prompt for r, c in new.items()},
                              set_lengths={r: 0 for r in new}, seeds={r: c.seed for r, c in new.items()})
      pending = np.array(self.state.pending)
      for r, c in new.items():
        c.tokens = [int(pending[r])]
      self.rows.update(new)
      self.admitting = {}
      with eng._stats_lock:
        eng._stats["batches"] += 1
        eng._stats["batch_rows"] = (eng._stats["batch_rows"] + [len(new)])[-1000:]
    elif self.rows:
      self.state, out = s.decode(eng.params, self.state)
      out = np.array(out)
      for r, c in self.rows.items():
        c.tokens.extend(int(t) for t in out[r] if t >= 0)
      with eng._stats_lock:
        eng._stats["decode_calls"] += 1
    else:
      return True  # only cancelled jobs were waiting
    active = np.array(self.state.active)  # a writable copy (the device buffer is donated next call)
    host_stopped = []
    for r in list(self.rows):
      c = self.rows[r]
      if c.job.cancelled or eng._settle(c, not active[r]):
        if active[r]:
          host_stopped.append(r)
        del self.rows[r]
        if not c.job.cancelled:
          eng._finish(c)
    if host_stopped:  # end these rows on the device too, so the next decode call skips them
      active[host_stopped] = False
      # combined with the device array, which keeps its sharding (a fresh host array on a mesh made the
      # next decode and extend calls compile again)
      self.state = self.state._replace(active=self.state.active & jnp.asarray(active))
    return True
