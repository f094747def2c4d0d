"""Judge backend "openai": any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with vLLM, SGLang, the llama.cpp server, Ollama, Gemini's OpenAI-compatible endpoint, OpenAI, and
swirl_jax's own server (swirl_jax/serve). Standard library only (urllib + json + threads), so it adds no dependency.

The API key. The config holds only the NAME of the environment variable (``api_key_env``); the key is
read from the environment at each request and never stored on an object, logged, cached, written to
outputs or put into an exception message: every text that leaves this module (errors, log lines,
response snippets, even completions) is passed through a redaction of the key. URLs lose any
``user:password@`` part and query string before they are shown or used as an identity.

Retries (``max_retries`` after the first attempt, so ``1 + max_retries`` attempts in all) on HTTP 408,
429 and 5xx, on connection errors and timeouts, and on a body that is not a chat completion. Other 4xx
(a bad request, a wrong key) fail at once. Between attempts: exponential backoff with full jitter,
uniform(0, min(backoff_max_s, backoff_initial_s * 2**attempt)); a ``Retry-After`` header (seconds or an
HTTP date) replaces it, capped at backoff_max_s. After the last attempt a ``JudgeBackendError`` names the
URL, the last status and a snippet of the last response.

A chat completion whose verdict cannot be parsed (``accept``) is a judge's answer, not a failure: it is
asked again without backoff (at most once at temperature 0, where the endpoint would repeat it; up to
``max_retries`` times otherwise), then returned as it is, so the judge counts it as BAD ("UNPARSEABLE
VERDICT", judges/base.py) and does not cache it, instead of aborting the whole labelling or RL call.

Concurrency: at most ``max_concurrency`` requests in flight per backend object (a semaphore shared by
every ``complete`` call, also from several threads); the semaphore is not held while backing off.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

from swirl_jax.judges.base import Completion, JudgeRequest, OnDone
from swirl_jax.judges.prompts import parse_verdict
from swirl_jax.types import Message

log = logging.getLogger(__name__)

_REDACTED = "[REDACTED]"
_RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
_SNIPPET_CHARS = 300
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class JudgeBackendError(RuntimeError):
  """A request to the judge endpoint failed for good (after retries, or with a non-retryable status)."""


@dataclasses.dataclass(frozen=True)
class OpenAIJudgeConfig:
  """Static settings of the OpenAI-compatible judge backend.

  Attributes:
    base_url: the API root, e.g. "http://127.0.0.1:8000/v1" ("/chat/completions" is appended unless
      the URL already ends with it).
    model: the served model name sent as "model".
    api_key_env: NAME of the environment variable holding the API key, or None for endpoints without
      authentication (a local vLLM). Never the key itself.
    max_concurrency: requests in flight at once.
    timeout_s: how long one attempt may take, from sending the request to the reply's last byte (a reply
      still arriving then is cut off at its next read: it ends within about twice this).
    max_retries: retries after the first attempt.
    backoff_initial_s / backoff_max_s: exponential backoff bounds (full jitter).
    temperature / max_tokens: sampling settings of the judge.
    send_seed: send the vote index as "seed" (vLLM, OpenAI and llama.cpp honour it; some endpoints
      reject unknown fields, so it is off by default).
  """

  base_url: str
  model: str
  api_key_env: str | None = None
  max_concurrency: int = 8
  timeout_s: float = 60.0
  max_retries: int = 5
  backoff_initial_s: float = 1.0
  backoff_max_s: float = 60.0
  temperature: float = 0.0
  max_tokens: int = 512
  send_seed: bool = False

  def __post_init__(self):
    if not self.base_url.startswith(("http://", "https://")):
      raise ValueError(f"base_url must start with http:// or https://, got {_public_url(self.base_url)!r}")
    if not self.model:
      raise ValueError("model must be set")
    if self.max_concurrency < 1:
      raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
    if self.max_retries < 0:
      raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
    if self.timeout_s <= 0 or self.backoff_initial_s < 0 or self.backoff_max_s < 0:
      raise ValueError("timeout_s must be > 0 and the backoff bounds >= 0")


def _public_url(url: str) -> str:
  """The URL without credentials (user:password@) or query string: safe to show and to use as an id."""
  p = urllib.parse.urlsplit(url)
  host = p.hostname or ""
  if ":" in host:
    host = f"[{host}]"
  netloc = host + (f":{p.port}" if p.port else "")
  return urllib.parse.urlunsplit((p.scheme, netloc, p.path.rstrip("/"), "", ""))


def _endpoint(base_url: str) -> str:
  p = urllib.parse.urlsplit(base_url)
  path = p.path.rstrip("/")
  if not path.endswith("/chat/completions"):
    path += "/chat/completions"
  return urllib.parse.urlunsplit((p.scheme, p.netloc, path, p.query, ""))


def _retry_after(value: str | None) -> float | None:
  """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
  if not value:
    return None
  value = value.strip()
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())


@dataclasses.dataclass
class _Attempt:
  """What one HTTP attempt ended with (for the retry decision and the final error)."""

  status: int | None = None  # HTTP status, None for a connection error
  snippet: str = ""
  retry_after: float | None = None
  unparseable: str | None = None  # the completion text (redacted) when it came back but was not accepted


class OpenAIBackend:
  """A JudgeBackend over an OpenAI-compatible chat completions endpoint."""

  def __init__(self, config: OpenAIJudgeConfig, accept: Callable[[str], bool] | None = None,
               sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
    """Args:
      config: the endpoint and its settings.
      accept: whether a completion text is usable; default: it holds a parseable verdict. A text
        that is not accepted is asked again (see the module docstring), then returned as it is.
      sleep: how to wait between attempts (tests may pass a fake).
      rng: jitter source (default: an unseeded private Random).
    """
    self.config = config
    self._accept = accept or (lambda text: parse_verdict(text) is not None)
    self._sleep = sleep
    self._rng = rng or random.Random()
    self._rng_lock = threading.Lock()
    self._semaphore = threading.BoundedSemaphore(config.max_concurrency)
    self.url = _endpoint(config.base_url)
    self.public_url = _public_url(self.url)
    self.identity = f"openai/{config.model}@{_public_url(config.base_url)}"
    self.settings = f"temperature={config.temperature!r},max_tokens={config.max_tokens},seed={config.send_seed}"
    host = urllib.parse.urlsplit(self.url).hostname or ""
    # Loopback servers are never reached through an environment proxy.
    handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK or host.startswith("127.") else []
    self._opener = urllib.request.build_opener(*handlers)
    if config.api_key_env is not None and not os.environ.get(config.api_key_env):
      raise JudgeBackendError(f"the environment variable {config.api_key_env} (api_key_env) is not set or "
                              f"empty; set it to the API key of {self.public_url}, or set api_key_env=None "
                              f"(on the command line: --config.judge.openai.api_key_env='')")

  def __repr__(self) -> str:
    return f"OpenAIBackend(identity={self.identity!r}, settings={self.settings!r})"

  # -- secrets --

  def _key(self) -> str | None:
    return os.environ.get(self.config.api_key_env) if self.config.api_key_env else None

  def _redact(self, text: str) -> str:
    key = self._key()
    return text.replace(key, _REDACTED) if key else text

  # -- one request --

  def _body(self, request: JudgeRequest) -> bytes:
    body: dict[str, Any] = {
        "model": self.config.model,
        "messages": [{"role": "assistant" if m.role == "model" else m.role, "content": m.content}
                     for m in request.messages],
        "temperature": self.config.temperature,
        "max_tokens": self.config.max_tokens,
        "stream": False,
    }
    if self.config.send_seed:
      body["seed"] = request.vote
    return json.dumps(body, ensure_ascii=False).encode("utf-8")

  def _post(self, body: bytes, accept: Callable[[str], bool]) -> tuple[str | None, _Attempt]:
    """One attempt: (completion text or None when it should be retried, what happened)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = self._key()
    if key:
      headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
    try:
      with self._semaphore:
        deadline = time.monotonic() + self.config.timeout_s
        with self._opener.open(req, timeout=self.config.timeout_s) as resp:
          status, raw = resp.status, self._read_by(resp, deadline)
    except urllib.error.HTTPError as e:
      try:
        raw = e.read()
      except (OSError, http.client.HTTPException):
        raw = b""
      attempt = _Attempt(status=e.code, snippet=self._snippet(raw),
                         retry_after=_retry_after(e.headers.get("Retry-After") if e.headers else None))
      if e.code not in _RETRY_STATUS:
        raise JudgeBackendError(f"POST {self.public_url} failed with HTTP {e.code} (not retryable); "
                                f"response: {attempt.snippet!r}") from None
      return None, attempt
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as e:
      reason = getattr(e, "reason", e)
      return None, _Attempt(status=None, snippet=self._redact(f"{type(e).__name__}: {reason}")[:_SNIPPET_CHARS])
    attempt = _Attempt(status=status, snippet=self._snippet(raw))
    try:
      content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
      attempt.snippet = "not a chat completion: " + attempt.snippet
      return None, attempt
    if content is None:  # no text (e.g. max_tokens spent on hidden reasoning): an empty answer
      content = ""
    if not isinstance(content, str):
      attempt.snippet = "not a chat completion: " + attempt.snippet
      return None, attempt
    if not accept(content):
      attempt.snippet = "no parseable verdict: " + self._snippet(content.encode("utf-8"))
      attempt.unparseable = self._redact(content)
      return None, attempt
    return self._redact(content), attempt

  def _read_by(self, resp, deadline: float) -> bytes:
    """The body, read as it arrives; a reply still coming at ``deadline`` is a timeout (the socket timeout
    alone bounds each read, so a server sending a byte at a time would hold the request for ever)."""
    chunks = []
    while chunk := resp.read1(1 << 16):
      chunks.append(chunk)
      if time.monotonic() > deadline:
        raise TimeoutError(f"the reply was not complete after timeout_s={self.config.timeout_s}s")
    return b"".join(chunks)

  def _snippet(self, raw: bytes) -> str:
    return self._redact(raw.decode("utf-8", errors="replace"))[:_SNIPPET_CHARS]

  def _delay(self, retry: int, attempt: _Attempt) -> float:
    cap = self.config.backoff_max_s
    if attempt.retry_after is not None:
      return min(attempt.retry_after, cap)
    with self._rng_lock:
      return self._rng.uniform(0.0, min(cap, self.config.backoff_initial_s * 2**retry))

  def complete_one(self, request: JudgeRequest) -> Completion:
    """The completion of one request, retrying as described in the module docstring."""
    return self._complete(self._body(request), self._accept)

  def check(self) -> None:
    """Sends one small request (retried like any other) and raises JudgeBackendError, naming the endpoint,
    the model and the reply, unless a chat completion comes back: a wrong URL, model name or key then stops
    a run before the hours of generation or evaluation rollouts that come before the judge's first call."""
    probe = JudgeRequest(messages=(Message(role="user", content="Reply with the word OK."),))
    try:
      self._complete(self._body(probe), lambda text: True)
    except JudgeBackendError as e:
      raise JudgeBackendError(f"the judge endpoint did not answer a test request for model {self.config.model!r}: "
                              f"{e}. Check --config.judge.openai.base_url, .model and .api_key_env") from None

  def _complete(self, body: bytes, accept: Callable[[str], bool]) -> Completion:
    attempts = 1 + self.config.max_retries
    # At temperature 0 a second unparseable reply would be the same text, paid for again; one retry
    # still covers an endpoint that is not exactly deterministic.
    unparseable_retries = min(self.config.max_retries, 1 if self.config.temperature == 0 else attempts)
    kept: str | None = None  # the latest reply without a parseable verdict
    n_unparseable = 0
    last = _Attempt()
    for i in range(attempts):
      text, last = self._post(body, accept)
      if text is not None:
        return Completion(text=text)
      if last.unparseable is not None:
        kept = last.unparseable
        n_unparseable += 1
        if n_unparseable > unparseable_retries:
          break
      what = f"HTTP {last.status}" if last.status is not None else "connection error"
      if i + 1 < attempts:
        # the server did answer after an unparseable reply: nothing to back off from
        delay = 0.0 if last.unparseable is not None else self._delay(i, last)
        log.warning("Judge request to %s: %s (%s); retry %d/%d in %.2fs.", self.public_url, what,
                    last.snippet[:120], i + 1, self.config.max_retries, delay)
        if last.unparseable is None:
          self._sleep(delay)
    if kept is not None:
      # A reply is a judge's answer: counted as BAD (UNPARSEABLE VERDICT) rather than failing the run.
      log.warning("Judge request to %s: no parseable verdict after %d reply(ies); returning the last one, "
                  "which counts as BAD: %.120r", self.public_url, n_unparseable, kept)
      return Completion(text=kept)
    status = last.status if last.status is not None else "none (connection error)"
    raise JudgeBackendError(f"POST {self.public_url} failed after {attempts} attempts; last status: {status}; "
                            f"last response: {last.snippet!r}")

  # -- the backend interface --

  def complete(self, requests: Sequence[JudgeRequest], on_done: OnDone | None = None) -> list[Completion]:
    """Completions for ``requests`` in order, up to ``max_concurrency`` at a time.

    On the first request that fails for good, requests not yet started are cancelled, those in flight
    are finished (and reported through ``on_done``), then the error is raised.
    """
    results: list[Completion | None] = [None] * len(requests)
    if not requests:
      return []
    workers = min(self.config.max_concurrency, len(requests))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
      futures = {pool.submit(self.complete_one, r): i for i, r in enumerate(requests)}
      error: BaseException | None = None
      for fut in concurrent.futures.as_completed(futures):
        i = futures[fut]
        if fut.cancelled():
          continue
        exc = fut.exception()
        if exc is not None:
          if error is None:
            error = exc
            for f in futures:
              f.cancel()
          continue
        results[i] = fut.result()
        if on_done is not None:
          on_done(i, results[i])
    if error is not None:
      raise error
    return results  # type: ignore[return-value]
