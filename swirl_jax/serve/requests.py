"""Server settings and the parsing of OpenAI chat requests into our chat format (errors name the field)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from swirl_jax.sampling.decode import GREEDY_BELOW
from swirl_jax.types import Message

_MAX_STOPS = 4  # OpenAI's limit on stop strings


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


def bad_request(param: str, message: str, code: str | None = "invalid_value") -> RequestError:
  return RequestError(400, f"{param}: {message}", param=param, code=code)


def _content_text(content: Any, where: str, trim: bool) -> str:
  """A message's text: a string, or a list of text parts (OpenAI's content-part form) joined as they are.

  ``trim``: strip each string or part, as Gemma's chat template in transformers does for user and model
  turns (``| trim``), so a prompt tokenizes as ``apply_chat_template`` gives it (and as vLLM serves it).
  """
  if isinstance(content, list):
    texts = []
    for j, part in enumerate(content):
      if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise bad_request(f"{where}[{j}]", "only text content parts ({'type': 'text', 'text': ...}) are supported")
      texts.append(part["text"].strip() if trim else part["text"])
    text = "".join(texts)
  elif isinstance(content, str):
    text = content.strip() if trim else content
  else:
    raise bad_request(where, f"must be a string or a list of text parts, got {type(content).__name__}")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise bad_request(where, "is not valid Unicode text (it holds a lone surrogate)") from None
  return text


def to_gemma_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
  """OpenAI chat messages -> Gemma turns (see the module docstring). Raises RequestError naming the field."""
  if not isinstance(messages, list) or not messages:
    raise bad_request("messages", "must be a non-empty list of {role, content} objects")
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
      raise bad_request(where, "must be an object with role and content")
    role = m.get("role")
    if role not in ("system", "developer", "user", "assistant"):
      raise bad_request(f"{where}.role", f"must be system, user or assistant, got {role!r}")
    if m.get("tool_calls"):
      raise bad_request(f"{where}.tool_calls", "tool calls are not supported")
    if "content" not in m or m["content"] is None:
      raise bad_request(f"{where}.content", "is required")
    text = _content_text(m["content"], f"{where}.content", trim=role not in ("system", "developer"))
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
    raise bad_request(name, f"must be a number, got {type(value).__name__}")
  if not (lo < value if lo_open else lo <= value) or value > hi:
    raise bad_request(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
  return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int):
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    else:
      raise bad_request(name, f"must be an integer, got {type(value).__name__}")
  if value < lo or (hi is not None and value > hi):
    raise bad_request(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
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
      raise bad_request("model", f"must be a string, got {type(model).__name__}")
    if model and model not in model_names:
      raise RequestError(404, f"The model {model!r} does not exist; this server serves {model_names[0]!r}",
                         param="model", code="model_not_found")
  if body.get("stream"):
    raise bad_request("stream", "streaming is not supported; send stream: false", code="unsupported_value")
  if body.get("tools") or body.get("functions"):
    raise bad_request("tools" if body.get("tools") else "functions", "tool calling is not supported",
               code="unsupported_value")
  messages = to_gemma_messages(body.get("messages"))
  temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
  if temperature < GREEDY_BELOW:  # greedy, as the sampler would treat it (one sampler for all of them)
    temperature = 0.0
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
  top_k = _integer(body, "top_k", 0, -1)
  max_tokens = _integer(body, "max_completion_tokens", None, 1)
  if body.get("max_tokens") is not None:  # the older name wins when both are sent (as vLLM does)
    max_tokens = _integer(body, "max_tokens", None, 1)
  if max_tokens is not None and max_tokens > config.max_tokens_limit:
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    raise bad_request(name, f"must be <= {config.max_tokens_limit} (this server's max_tokens_limit), got {max_tokens}")
  stop = body.get("stop")
  if stop is None:
    stops: tuple[str, ...] = ()
  elif isinstance(stop, str):
    stops = (stop,)
  elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
    stops = tuple(stop)
  else:
    raise bad_request("stop", "must be a string or a list of strings")
  if len(stops) > _MAX_STOPS or any(not s for s in stops):
    raise bad_request("stop", f"at most {_MAX_STOPS} non-empty strings")
  n = _integer(body, "n", 1, 1, config.batch_size)
  seed = _integer(body, "seed", None, -(1 << 63), (1 << 64) - 1)
  top_k = max(top_k, 0)
  if temperature == 0.0:  # greedy ignores top_p and top_k: one sampler (one compile, one batch) for all of them
    top_p, top_k = 1.0, 0
  return ChatRequest(tuple(messages), temperature, top_p, top_k, max_tokens, stops, n, seed)
