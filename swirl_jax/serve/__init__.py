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
  alternates). User and model text is trimmed and content parts are joined as they are, as Gemma 3's
  published chat template does (so a prompt is what ``apply_chat_template`` and vLLM give). The prompt is
  ``chat.render(..., add_generation_prompt=True)``, encoded with BOS: what the rollout and the in-process
  judge feed the sampler. Completion text leaves special tokens out.
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
  kept in an LRU of ``max_samplers``. Greedy requests (temperature 0) ignore top_p and top_k, so they all
  share one sampler. Requests with different settings never share a batch: the running
  batch drains, then the sampler switches (strict FIFO, so no request starves). ``max_tokens`` and
  ``stop`` do not compile anything: every sampler stops at end of turn / EOS or after
  ``max_tokens_limit`` tokens, and the model thread ends a row early on the host when it reaches the
  request's ``max_tokens`` or a stop string (checked whenever a decode call returns, so a row runs at
  most ``steps_per_call`` tokens past it; the extra tokens are discarded).
* Cancellation. A request whose client disconnects before the answer is ready (checked every 0.25 s
  while it waits), or that waits longer than ``request_timeout_s`` (504), is cancelled: it leaves the
  queue (no longer counting toward ``max_pending``, no sampler built for it) or its rows stop decoding
  at the next decode call. A client that half-closes its connection after sending counts as gone. So a
  judge client's own timeout (``OpenAIJudgeConfig.timeout_s``) should exceed the server's worst-case
  latency (queueing behind other requests included): a client that gives up and retries gets its
  request started over, and its earlier work is lost.
* Finish reasons: "stop" for end of turn / EOS (the marker is not in the content) or a stop string (cut
  before it, as OpenAI does); "length" for ``max_tokens`` or a full KV cache.
* Seeds: choice 0 of a request with ``seed`` s samples with row seed s, choice i > 0 with a hash of
  (s, i) (``engine.choice_seed``); without a seed, a random one. With temperature 0 (or below 1e-5,
  treated as 0) the seed does not matter.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``): 400 for a bad field
(``param`` names it, e.g. ``messages[1].role``), 400 ``context_length_exceeded`` when the prompt plus
``max_tokens`` does not fit ``cache_len``, 401 for a missing or wrong key (when one is configured;
/health needs none), 404 for an unknown path or model, 405 for a wrong method (HEAD is answered as GET
without the body), 413 for a body over ``max_body_bytes`` (read and dropped first, up to twice that, so a
client still sending gets the answer rather than a broken pipe), 503 when the queue (``max_pending``
requests not cancelled) is full or the server is stopping, 504 when a request waited longer than
``request_timeout_s``. ``shutdown()`` answers queued and running requests with 503, closes idle
keep-alive connections, and answers 503 (then closes) on any connection still open; /health then
reports ``"status": "stopping"`` with 503.

Also accepted beyond OpenAI's fields: ``top_k`` (vLLM's extension; 0 or -1 = off). Other unknown or
unsupported fields (penalties, logprobs, response_format, ...) are ignored; ``stream: true`` and
``tools`` are refused with 400, since a client relying on them would misread the reply.
"""

from swirl_jax.serve.engine import BatchingEngine
from swirl_jax.serve.requests import ChatRequest, RequestError, ServeConfig, parse_request, to_gemma_messages
from swirl_jax.serve.server import ChatServer, main, run_serve, serve

__all__ = ["BatchingEngine", "ChatRequest", "ChatServer", "RequestError", "ServeConfig", "main", "parse_request",
           "run_serve", "serve", "to_gemma_messages"]
