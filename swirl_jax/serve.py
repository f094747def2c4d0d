"""An OpenAI-compatible chat endpoint over the swirl_jax sampler, so one run's model can judge another.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models`` (and ``/v1/models/<id>``), ``GET /health``.
Standard library HTTP (``ThreadingHTTPServer``), bound to 127.0.0.1 unless told otherwise: the server
has no authentication unless ``api_key_env`` names an environment variable holding a key.

Example::

    lm = load_model("gemma3-270m")
    server = serve(lm, port=0)                   # port 0: a free port, reported in server.url
    # OpenAIJudgeConfig(base_url=server.base_url, model=server.model_name) now judges with it
    server.shutdown()

or from a shell: ``python -m swirl_jax.serve --source=gemma3-270m --port=8000``.

How requests become model work:

* Chat mapping. OpenAI roles map to Gemma turns: user -> user, assistant -> model. Gemma has no
  system role, so system (and "developer") text is prepended to the next user turn (the first one, in
  the usual case), separated by a blank line; consecutive turns of one role are merged (Gemma's format
  alternates). The prompt is ``chat.render(..., add_generation_prompt=True)``, encoded with BOS: exactly
  what the rollout and the in-process judge feed the sampler.
* Batching. HTTP threads validate and tokenize, then queue the request. One model thread owns the
  sampler and runs continuous batching: when idle it waits up to ``batch_wait_ms`` after the first
  request for others (or until the batch is full), writes them into free rows in one extend call (a
  "batch" in ``stats``), and decodes; whenever a decode call returns (a row stopped, or
  ``steps_per_call`` steps), finished rows are answered and refilled with queued requests. Each of a
  request's ``n`` choices takes one row. Row order never changes a row's tokens: each row samples with
  its own key, folded with the token position.
* Compilation. temperature, top_p and top_k are Python constants of the jitted decode loop (greedy is
  an argmax, top-k a sort), so each distinct (temperature, top_p, top_k) gets its own ``Sampler``,
  built on first use (one compile of the decode loop, plus one extend program per chunk bucket) and
  kept in an LRU of ``max_samplers``. Requests with different settings never share a batch: the running
  batch drains, then the sampler switches (strict FIFO, so no request starves). ``max_tokens`` and
  ``stop`` do not compile anything: every sampler stops at end of turn / EOS or after
  ``max_tokens_limit`` tokens, and the model thread ends a row early on the host when it reaches the
  request's ``max_tokens`` or a stop string (checked whenever a decode call returns, so a row runs at
  most ``steps_per_call`` tokens past it; the extra tokens are discarded).
* Finish reasons: "stop" for end of turn / EOS (the marker is not in the content) or a stop string (cut
  before it, as OpenAI does); "length" for ``max_tokens`` or a full KV cache.
* Seeds: choice i of a request with ``seed`` s samples with row seed s + i; without a seed, a random
  one. With temperature 0 the seed does not matter.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``): 400 for a bad field
(``param`` names it, e.g. ``messages[1].role``), 400 ``context_length_exceeded`` when the prompt plus
``max_tokens`` does not fit ``cache_len``, 401 for a missing or wrong key (when one is configured;
/health needs none), 404 for an unknown path or model, 405 for a wrong method, 413 for a body over
``max_body_bytes``, 503 when the queue is full or the server is stopping, 504 when a request waited
longer than ``request_timeout_s``.

Also accepted beyond OpenAI's fields: ``top_k`` (vLLM's extension; 0 or -1 = off). Other unknown or
unsupported fields (penalties, logprobs, response_format, ...) are ignored; ``stream: true`` and
``tools`` are refused with 400, since a client relying on them would misread the reply.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hmac
import http.server
import json
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

from swirl_jax import chat
from swirl_jax.types import Message

log = logging.getLogger(__name__)

_MAX_STOPS = 4  # OpenAI's limit on stop strings
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Static settings of the server.

  Attributes:
    host: interface to bind; 127.0.0.1 by default (no authentication unless ``api_key_env``).
    port: TCP port; 0 (the default) picks a free one (see ``ChatServer.port`` / ``.url``).
    model_name: the model id clients send and ``/v1/models`` lists ("" = the model's source).
    batch_size: sampler rows (concurrent choices decoded together).
    cache_len: KV-cache tokens per row: prompt + completion must fit.
    max_tokens_limit: the most tokens one completion may have (every sampler's max_new_tokens); a larger
      ``max_tokens`` is a 400, and a request without one gets min(this, what fits the cache).
    steps_per_call: decode steps per jitted call; also how far a row may run past a host-side stop.
    max_chunk: longest chunk written to the cache at once (prompts are split); raised to
      ``max_tokens_limit`` when smaller (the sampler's rollback bound).
    batch_wait_ms: when idle, how long to wait after the first request for others to batch with it.
    max_samplers: distinct (temperature, top_p, top_k) samplers kept compiled (LRU).
    max_pending: queued requests at most; beyond that new ones get 503 (clients retry).
    request_timeout_s: a request not answered in this time gets 504 and is dropped.
    max_body_bytes: larger request bodies get 413.
    api_key_env: NAME of an environment variable holding a key that requests must send as
      ``Authorization: Bearer <key>``; None = no authentication (keep the loopback default then).
  """

  host: str = "127.0.0.1"
  port: int = 0
  model_name: str = ""
  batch_size: int = 8
  cache_len: int = 2048
  max_tokens_limit: int = 512
  steps_per_call: int = 16
  max_chunk: int = 512
  batch_wait_ms: float = 5.0
  max_samplers: int = 4
  max_pending: int = 1024
  request_timeout_s: float = 600.0
  max_body_bytes: int = 4 << 20
  api_key_env: str | None = None

  def __post_init__(self):
    for name in ("batch_size", "cache_len", "max_tokens_limit", "steps_per_call", "max_chunk", "max_samplers",
                 "max_pending", "max_body_bytes"):
      if getattr(self, name) < 1:
        raise ValueError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
    if not 0 <= self.port < 65536:
      raise ValueError(f"serve.port must be in [0, 65535], got {self.port}")
    if self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
      raise ValueError("serve.batch_wait_ms must be >= 0 and serve.request_timeout_s > 0")
    if self.max_tokens_limit >= self.cache_len:
      raise ValueError(f"serve.max_tokens_limit={self.max_tokens_limit} leaves no room for a prompt in "
                       f"cache_len={self.cache_len}")


# ---------------------------------------------------------------------------------------------------
# Requests: validation and the chat mapping.


class RequestError(Exception):
  """A request the server refuses; becomes an OpenAI-style error response."""

  def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error", headers: Mapping[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
    self.headers = dict(headers or {})

  def to_json(self) -> dict[str, Any]:
    return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: str | None = "invalid_value") -> RequestError:
  return RequestError(400, f"{param}: {message}", param=param, code=code)


def _content_text(content: Any, where: str) -> str:
  """A message's text: a string, or a list of text parts (OpenAI's content-part form)."""
  if isinstance(content, str):
    return content
  if isinstance(content, list):
    texts = []
    for j, part in enumerate(content):
      if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise _bad(f"{where}[{j}]", "only text content parts ({'type': 'text', 'text': ...}) are supported")
      texts.append(part["text"])
    return "\n".join(texts)
  raise _bad(where, f"must be a string or a list of text parts, got {type(content).__name__}")


def to_gemma_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
  """OpenAI chat messages -> Gemma turns (see the module docstring). Raises RequestError naming the field."""
  if not isinstance(messages, list) or not messages:
    raise _bad("messages", "must be a non-empty list of {role, content} objects")
  out: list[Message] = []
  system: list[str] = []

  def add(role: str, text: str) -> None:
    if out and out[-1].role == role:  # Gemma alternates turns: merge a repeated role
      out[-1] = Message(role, f"{out[-1].content}\n\n{text}")
    else:
      out.append(Message(role, text))

  for i, m in enumerate(messages):
    where = f"messages[{i}]"
    if not isinstance(m, dict):
      raise _bad(where, "must be an object with role and content")
    role = m.get("role")
    if role not in ("system", "developer", "user", "assistant"):
      raise _bad(f"{where}.role", f"must be system, user or assistant, got {role!r}")
    if m.get("tool_calls"):
      raise _bad(f"{where}.tool_calls", "tool calls are not supported")
    if "content" not in m or m["content"] is None:
      raise _bad(f"{where}.content", "is required")
    text = _content_text(m["content"], f"{where}.content")
    if role in ("system", "developer"):
      system.append(text)
    elif role == "user":
      add("user", "\n\n".join(system + [text]))
      system = []
    else:
      add("model", text)
  if system:  # system text with no user turn after it becomes a user turn of its own
    add("user", "\n\n".join(system))
  return out


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float,
            lo_open: bool = False) -> float:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _bad(name, f"must be a number, got {type(value).__name__}")
  if not (lo < value if lo_open else lo <= value) or value > hi:
    raise _bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
  return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int):
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    else:
      raise _bad(name, f"must be an integer, got {type(value).__name__}")
  if value < lo or (hi is not None and value > hi):
    raise _bad(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
  return value


@dataclasses.dataclass(frozen=True)
class ChatRequest:
  """A validated chat completion request (before tokenization).

  Attributes:
    messages: the Gemma turns.
    temperature / top_p / top_k: sampling settings (top_k 0 = off).
    max_tokens: None = as many as fit (up to max_tokens_limit).
    stop: stop strings (at most 4).
    n: choices.
    seed: None = random.
  """

  messages: tuple[Message, ...]
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_tokens: int | None = None
  stop: tuple[str, ...] = ()
  n: int = 1
  seed: int | None = None


def parse_request(body: Any, model_names: Sequence[str], config: ServeConfig) -> ChatRequest:
  """Validates a /v1/chat/completions body. Raises RequestError (400 naming the field, 404 for a model)."""
  if not isinstance(body, dict):
    raise RequestError(400, "the request body must be a JSON object", code="invalid_json")
  model = body.get("model")
  if model is not None:
    if not isinstance(model, str):
      raise _bad("model", f"must be a string, got {type(model).__name__}")
    if model and model not in model_names:
      raise RequestError(404, f"The model {model!r} does not exist; this server serves {model_names[0]!r}",
                         param="model", code="model_not_found")
  if body.get("stream"):
    raise _bad("stream", "streaming is not supported; send stream: false", code="unsupported_value")
  if body.get("tools") or body.get("functions"):
    raise _bad("tools" if body.get("tools") else "functions", "tool calling is not supported",
               code="unsupported_value")
  messages = to_gemma_messages(body.get("messages"))
  temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
  top_k = _integer(body, "top_k", 0, -1)
  max_tokens = _integer(body, "max_completion_tokens", None, 1)
  if body.get("max_tokens") is not None:  # the older name wins when both are sent (as vLLM does)
    max_tokens = _integer(body, "max_tokens", None, 1)
  if max_tokens is not None and max_tokens > config.max_tokens_limit:
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    raise _bad(name, f"must be <= {config.max_tokens_limit} (this server's max_tokens_limit), got {max_tokens}")
  stop = body.get("stop")
  if stop is None:
    stops: tuple[str, ...] = ()
  elif isinstance(stop, str):
    stops = (stop,)
  elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
    stops = tuple(stop)
  else:
    raise _bad("stop", "must be a string or a list of strings")
  if len(stops) > _MAX_STOPS or any(not s for s in stops):
    raise _bad("stop", f"at most {_MAX_STOPS} non-empty strings")
  n = _integer(body, "n", 1, 1, config.batch_size)
  seed = _integer(body, "seed", None, -(1 << 63), (1 << 64) - 1)
  return ChatRequest(tuple(messages), temperature, top_p, max(top_k, 0), max_tokens, stops, n, seed)


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

  def fail(self, error: RequestError) -> None:
    self.error = error
    self.done.set()


class BatchingEngine:
  """Owns the model and its samplers; one thread runs every decode (see the module docstring)."""

  def __init__(self, loaded_model, config: ServeConfig):
    from flax import nnx

    from swirl_jax.sampling.decode import build_stop_table

    tok = loaded_model.tokenizer
    if tok is None:
      raise ValueError(f"model {loaded_model.source!r} has no tokenizer; a chat server needs one")
    self.lm, self.tok, self.config = loaded_model, tok, config
    self.params = nnx.state(loaded_model.model)
    self.end_ids = frozenset({tok.eos_id, tok.end_of_turn_id})
    # End of turn and EOS stop on device; stop strings and max_tokens are per request, so on the host.
    self.stop_table = build_stop_table(tok, [], sorted(self.end_ids))
    self.tok_lock = threading.Lock()  # HF fast tokenizers are not safe to call from several threads
    self._queue: queue.Queue[_Job] = queue.Queue()
    self._waiting: collections.deque[_Job] = collections.deque()
    self._samplers: collections.OrderedDict = collections.OrderedDict()
    self._stopping = threading.Event()
    self._stats_lock = threading.Lock()
    self._stats: dict[str, Any] = dict(requests=0, choices=0, batches=0, batch_rows=[], decode_calls=0,
                                       samplers_built=0, completion_tokens=0, errors=0)
    self._rng = random.SystemRandom()
    self._thread = threading.Thread(target=self._run, name="swirl-serve-model", daemon=True)
    self._thread.start()

  # -- called from HTTP threads --

  def encode(self, messages: Sequence[Message]) -> list[int]:
    with self.tok_lock:
      return self.tok.encode(chat.render(messages, add_generation_prompt=True), add_bos=True)

  def decode_text(self, ids: Sequence[int]) -> str:
    with self.tok_lock:
      return self.tok.decode(ids)

  def make_job(self, request: ChatRequest) -> _Job:
    """Tokenizes and sizes a request; RequestError when it does not fit the cache."""
    if request.top_k > self.lm.config.vocab_size:
      raise _bad("top_k", f"must be <= the vocabulary size {self.lm.config.vocab_size}, got {request.top_k}")
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
    job.choices = [_Choice(job, i, (seed + i) & 0xFFFFFFFF) for i in range(request.n)]
    return job

  def submit(self, job: _Job) -> None:
    if self._stopping.is_set():
      raise RequestError(503, "the server is shutting down", kind="server_error", code="unavailable")
    if self._queue.qsize() + len(self._waiting) >= self.config.max_pending:
      raise RequestError(503, f"too many queued requests (max_pending={self.config.max_pending}); retry later",
                         kind="server_error", code="overloaded", headers={"Retry-After": "1"})
    with self._stats_lock:
      self._stats["requests"] += 1
      self._stats["choices"] += job.n
    self._queue.put(job)

  def stats(self) -> dict[str, Any]:
    """Counters: requests, choices, batches (admission rounds), batch_rows (rows admitted per round,
    the last 1000), decode_calls, samplers_built, completion_tokens, errors, samplers (cached now)."""
    with self._stats_lock:
      out = dict(self._stats, batch_rows=list(self._stats["batch_rows"]))
    out["samplers"] = len(self._samplers)
    out["queued"] = self._queue.qsize() + len(self._waiting)
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
    """Moves queued jobs to the waiting line. When ``idle`` (no busy rows) and none waits, blocks for a
    first one and then up to batch_wait_ms for more (or until a batch's worth of rows waits). False
    when stopping."""
    while True:
      try:
        self._waiting.append(self._queue.get_nowait())
      except queue.Empty:
        break
    if self._waiting or not idle:
      return True
    while not self._stopping.is_set():
      try:
        first = self._queue.get(timeout=0.1)
        break
      except queue.Empty:
        continue
    else:
      return False
    self._waiting.append(first)
    deadline = time.monotonic() + self.config.batch_wait_ms / 1000
    while sum(j.n for j in self._waiting if j.key == first.key) < self.config.batch_size:
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
      for choice in job.choices:
        rows[free[len(rows)]] = choice
    return rows

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
      self._waiting.popleft().fail(err)
    while True:
      try:
        self._queue.get_nowait().fail(err)
      except queue.Empty:
        break


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
          eng._waiting.popleft().fail(RequestError(400, f"cannot sample with these settings: {e}",
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
      self.state = self.state._replace(active=jnp.asarray(active))
    return True


# ---------------------------------------------------------------------------------------------------
# HTTP.


class _HTTPServer(http.server.ThreadingHTTPServer):
  daemon_threads = True
  app: "ChatServer"


class _HTTPServer6(_HTTPServer):
  address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
  server: _HTTPServer
  protocol_version = "HTTP/1.1"

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
    log.debug("%s %s", self.address_string(), format % args)

  def _send(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.end_headers()
    self.wfile.write(data)

  def _error(self, e: RequestError) -> None:
    if self.command == "POST" and not self._body_read:
      self.close_connection = True  # an unread body would be taken for the next request on this connection
    self._send(e.status, e.to_json(), e.headers)

  def _route(self, method: str) -> None:
    app = self.server.app
    self._body_read = False
    path = self.path.split("?", 1)[0].rstrip("/") or "/"
    try:
      if path not in ("/health", "/v1/health"):  # liveness probes need no key
        app.check_auth(self.headers.get("Authorization"))
      if path == "/v1/chat/completions":
        if method != "POST":
          raise RequestError(405, f"use POST for {path}", code="method_not_allowed")
        self._send(200, app.chat_completion(self._read_json()))
      elif path in ("/health", "/v1/health"):
        self._only_get(method, path)
        self._send(200, app.health())
      elif path == "/v1/models":
        self._only_get(method, path)
        self._send(200, {"object": "list", "data": [app.model_card()]})
      elif path.startswith("/v1/models/"):
        self._only_get(method, path)
        name = path[len("/v1/models/"):]
        if name not in app.model_names:
          raise RequestError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
        self._send(200, app.model_card())
      else:
        raise RequestError(404, f"Unknown path {path!r}; this server has /v1/chat/completions, /v1/models "
                                "and /health", code="not_found")
    except RequestError as e:
      self._error(e)
    except Exception as e:  # noqa: BLE001
      log.exception("request handler failed")
      self._error(RequestError(500, f"internal error: {type(e).__name__}", kind="server_error",
                               code="internal_error"))

  def _only_get(self, method: str, path: str) -> None:
    if method != "GET":
      raise RequestError(405, f"use GET for {path}", code="method_not_allowed")

  def _read_json(self) -> Any:
    length = self.headers.get("Content-Length")
    if length is None:
      raise RequestError(411, "a Content-Length header is required", code="length_required")
    try:
      n = int(length)
    except ValueError:
      raise RequestError(400, "Content-Length is not an integer", code="invalid_header") from None
    limit = self.server.app.config.max_body_bytes
    if n > limit:
      raise RequestError(413, f"request body of {n} bytes exceeds max_body_bytes={limit}", code="body_too_large")
    raw = self.rfile.read(n)
    self._body_read = True
    try:
      return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise RequestError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None

  def do_GET(self) -> None:  # noqa: N802 - the base class's name
    self._route("GET")

  def do_POST(self) -> None:  # noqa: N802
    self._route("POST")


class ChatServer:
  """A running server: ``url`` / ``base_url`` / ``port``, ``stats()``, ``shutdown()``; a context manager."""

  def __init__(self, loaded_model, config: ServeConfig):
    self.config = config
    self.model_name = config.model_name or loaded_model.source
    self.model_names = tuple(dict.fromkeys([self.model_name, loaded_model.source]))
    self.created = int(time.time())
    if config.api_key_env is not None and not os.environ.get(config.api_key_env):
      raise ValueError(f"serve.api_key_env={config.api_key_env!r}: that environment variable is not set or empty")
    if config.host not in _LOOPBACK and not config.host.startswith("127.") and config.api_key_env is None:
      log.warning("Serving on %s without authentication: anyone who can reach it can use the model. Set "
                  "api_key_env, or keep the default host 127.0.0.1.", config.host)
    self.engine = BatchingEngine(loaded_model, config)
    cls = _HTTPServer6 if ":" in config.host else _HTTPServer
    try:
      self._http = cls((config.host, config.port), _Handler)
    except BaseException:
      self.engine.stop()
      raise
    self._http.app = self
    self.host = config.host
    self.port = int(self._http.server_address[1])
    self._thread = threading.Thread(target=self._http.serve_forever, kwargs=dict(poll_interval=0.2),
                                    name="swirl-serve-http", daemon=True)
    self._thread.start()

  @property
  def url(self) -> str:
    """The server root, e.g. http://127.0.0.1:8000."""
    host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{self.port}"

  @property
  def base_url(self) -> str:
    """The OpenAI API root (what OpenAIJudgeConfig.base_url takes)."""
    return self.url + "/v1"

  def check_auth(self, header: str | None) -> None:
    if self.config.api_key_env is None:
      return
    key = os.environ.get(self.config.api_key_env, "")
    given = header[7:] if header and header.startswith("Bearer ") else ""
    if not key or not hmac.compare_digest(given.encode(), key.encode()):
      raise RequestError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error",
                         code="invalid_api_key")

  def model_card(self) -> dict[str, Any]:
    return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "swirl_jax",
            "max_model_len": self.config.cache_len}

  def health(self) -> dict[str, Any]:
    return {"status": "ok", "model": self.model_name, "stats": self.engine.stats()}

  def stats(self) -> dict[str, Any]:
    return self.engine.stats()

  def chat_completion(self, body: Any) -> dict[str, Any]:
    """Answers one /v1/chat/completions body (blocking until the model thread is done with it)."""
    request = parse_request(body, self.model_names, self.config)
    job = self.engine.make_job(request)
    self.engine.submit(job)
    if not job.done.wait(self.config.request_timeout_s):
      job.cancelled = True
      raise RequestError(504, f"no answer within request_timeout_s={self.config.request_timeout_s}",
                         kind="server_error", code="timeout")
    if job.error is not None:
      raise job.error
    completion = sum(c.completion_tokens for c in job.choices)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": self.model_name,
        "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish_reason, "logprobs": None} for c in job.choices],
        "usage": {"prompt_tokens": len(job.prompt), "completion_tokens": completion,
                  "total_tokens": len(job.prompt) + completion},
    }

  def serve_forever(self) -> None:
    """Blocks until ``shutdown`` (or Ctrl-C, which shuts down)."""
    try:
      while self._thread.is_alive():
        self._thread.join(0.5)
    except KeyboardInterrupt:
      pass
    finally:
      self.shutdown()

  def shutdown(self) -> None:
    """Stops accepting requests, answers queued ones with 503 and stops the model thread."""
    self.engine.stop()
    self._http.shutdown()
    self._http.server_close()

  def __enter__(self) -> "ChatServer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.shutdown()


def serve(loaded_model, host: str | None = None, port: int | None = None, *, config: ServeConfig | None = None,
          **overrides: Any) -> ChatServer:
  """Starts serving ``loaded_model`` (a swirl_jax.loading.LoadedModel with a tokenizer) in background threads.

  Args:
    loaded_model: the model and tokenizer to serve.
    host / port: where to bind; None = the config's (127.0.0.1 and port 0 = a free port by default;
      read it from ``server.port`` / ``server.url``).
    config: the other settings (ServeConfig); ``host``, ``port`` and ``overrides`` (ServeConfig field
      names) replace its fields.

  Returns:
    The running ChatServer; call ``shutdown()`` (or use it as a context manager) when done.
  """
  config = config or ServeConfig()
  if host is not None:
    overrides["host"] = host
  if port is not None:
    overrides["port"] = port
  return ChatServer(loaded_model, dataclasses.replace(config, **overrides))


def run_serve(source: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str = "",
              dtype: str = "float32", param_dtype: str = "float32", cache_dir: str | None = None,
              batch_size: int = 8, cache_len: int = 2048, max_tokens_limit: int | None = None,
              steps_per_call: int = 16, max_chunk: int = 512, batch_wait_ms: float = 5.0, max_samplers: int = 4,
              api_key_env: str | None = None, mesh=None) -> None:
  """Loads ``source`` (any swirl_jax.loading.load_model source) and serves it until Ctrl-C / SIGTERM.

  Prints one JSON line with the URL, base_url and model name once listening (port 0 picks a free port,
  so a launcher reads it from there). Every argument is a plain value: the CLI maps its config onto them.
  ``max_tokens_limit`` None = min(512, cache_len // 2); the other settings are ServeConfig's.
  """
  import signal

  from swirl_jax.loading import load_model

  if max_tokens_limit is None:
    max_tokens_limit = min(512, cache_len // 2)
  config = ServeConfig(host=host, port=port, model_name=model_name, batch_size=batch_size, cache_len=cache_len,
                       max_tokens_limit=max_tokens_limit, steps_per_call=steps_per_call, max_chunk=max_chunk,
                       batch_wait_ms=batch_wait_ms, max_samplers=max_samplers, api_key_env=api_key_env)
  t = time.perf_counter()  # settings are checked above, before the (slow) load
  lm = load_model(source, dtype=dtype, param_dtype=param_dtype, mesh=mesh, cache_dir=cache_dir)
  server = ChatServer(lm, config)

  def on_term(signum, frame):  # SIGTERM ends like Ctrl-C
    raise KeyboardInterrupt

  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, on_term)
  print(json.dumps({"url": server.url, "base_url": server.base_url, "model": server.model_name,
                    "load_seconds": round(time.perf_counter() - t, 1)}), flush=True)
  server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m swirl_jax.serve --source=gemma3-270m [--port=8000 ...]``; flags mirror run_serve."""
  p = argparse.ArgumentParser(prog="python -m swirl_jax.serve", description=__doc__.split("\n", 1)[0])
  p.add_argument("--source", default="gemma3-270m", help="load_model source (packaged name, HF dir, .gguf)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0 = a free port (printed)")
  p.add_argument("--model_name", default="", help="model id clients send ('' = the source)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--param_dtype", default="float32")
  p.add_argument("--cache_dir", default=None)
  for name, kind in (("batch_size", int), ("cache_len", int), ("steps_per_call", int), ("max_chunk", int),
                     ("batch_wait_ms", float), ("max_samplers", int)):
    p.add_argument(f"--{name}", type=kind, default=getattr(ServeConfig, name))
  p.add_argument("--max_tokens_limit", type=int, default=None, help="longest completion (default min(512, "
                 "cache_len // 2))")
  p.add_argument("--api_key_env", default=None, help="NAME of an env var holding the key clients must send")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr)
  run_serve(**vars(args))


if __name__ == "__main__":
  main()
