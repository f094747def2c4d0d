"""Tests for the OpenAI-compatible judge backend against a real loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time

import pytest

from swirl_jax.judges.base import JudgeRequest, PromptJudge
from swirl_jax.judges.cache import JudgeCache
from swirl_jax.judges.openai_backend import JudgeBackendError, OpenAIBackend, OpenAIJudgeConfig
from swirl_jax.types import Message, Question, Step, ToolCall, Trajectory

SECRET = "sk-SWIRL-TEST-7f3a9c1e-DO-NOT-LEAK"
KEY_ENV = "SWIRL_TEST_JUDGE_API_KEY"


def chat_completion(content: str) -> dict:
  return {"id": "x", "object": "chat.completion", "model": "judge",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


class Server:
  """A threaded HTTP server on 127.0.0.1 that answers POSTs from a script.

  ``script(n, body, headers)`` returns (status, headers, body bytes) for the n-th request (0-based).
  """

  def __init__(self, script, delay_s: float = 0.0):
    self.script = script
    self.delay_s = delay_s
    self.lock = threading.Lock()
    self.count = 0
    self.in_flight = 0
    self.max_in_flight = 0
    self.bodies: list[dict] = []
    self.auth: list[str | None] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          n = server.count
          server.count += 1
          server.in_flight += 1
          server.max_in_flight = max(server.max_in_flight, server.in_flight)
          server.bodies.append(body)
          server.auth.append(self.headers.get("Authorization"))
        try:
          if server.delay_s:
            time.sleep(server.delay_s)
          status, headers, payload = server.script(n, body, self.headers)
        finally:
          with server.lock:
            server.in_flight -= 1
        self.send_response(status)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def log_message(self, *args):  # keep test output quiet
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def ok(content: str):
  return 200, {"Content-Type": "application/json"}, json.dumps(chat_completion(content)).encode()


def config(server: Server, **kw) -> OpenAIJudgeConfig:
  defaults = dict(base_url=server.base_url, model="judge-model", max_retries=3, backoff_initial_s=0.001,
                  backoff_max_s=0.01, timeout_s=5.0)
  defaults.update(kw)
  return OpenAIJudgeConfig(**defaults)


REQUEST = JudgeRequest((Message("user", "Is 2+2 a sensible step?"),))


def test_retries_429_500_unparseable_then_succeeds():
  def script(n, body, headers):
    if n == 0:
      return 429, {"Retry-After": "0"}, b"rate limited"
    if n == 1:
      return 500, {}, b"internal error"
    if n == 2:
      return ok("I am not sure what to say.")  # no verdict: retried
    return ok("It helps.\nVERDICT: GOOD")

  with Server(script) as server:
    backend = OpenAIBackend(config(server))
    [completion] = backend.complete([REQUEST])
  assert completion.text == "It helps.\nVERDICT: GOOD" and completion.p_good is None
  assert server.count == 4
  body = server.bodies[0]
  assert body["model"] == "judge-model" and body["messages"] == [{"role": "user", "content": "Is 2+2 a sensible step?"}]
  assert body["temperature"] == 0.0 and body["max_tokens"] == 512 and "seed" not in body
  assert server.auth == [None] * 4  # no api_key_env: no Authorization header


def test_retry_after_is_honoured_and_backoff_is_bounded():
  sleeps: list[float] = []

  def script(n, body, headers):
    if n == 0:
      return 429, {"Retry-After": "2"}, b"slow down"
    if n == 1:
      return 503, {}, b"busy"
    return ok("VERDICT: BAD")

  with Server(script) as server:
    backend = OpenAIBackend(config(server, backoff_initial_s=0.5, backoff_max_s=60.0), sleep=sleeps.append)
    assert backend.complete([REQUEST])[0].text == "VERDICT: BAD"
  assert sleeps[0] == 2.0  # Retry-After
  assert 0.0 <= sleeps[1] <= 1.0  # full jitter: uniform(0, initial * 2**1)
  with Server(lambda n, b, h: (429, {"Retry-After": "3600"}, b"") if n == 0 else ok("VERDICT: GOOD")) as server:
    sleeps.clear()
    OpenAIBackend(config(server, backoff_max_s=5.0), sleep=sleeps.append).complete([REQUEST])
  assert sleeps == [5.0]  # capped at backoff_max_s


def test_always_failing_gives_a_clear_error_after_the_last_retry():
  with Server(lambda n, b, h: (503, {}, b"service temporarily down")) as server:
    backend = OpenAIBackend(config(server, max_retries=2))
    with pytest.raises(JudgeBackendError) as e:
      backend.complete([REQUEST])
  msg = str(e.value)
  assert server.count == 3
  assert f"{server.base_url}/chat/completions" in msg
  assert "after 3 attempts" in msg and "503" in msg and "service temporarily down" in msg


def test_unparseable_reply_is_asked_once_more_at_temperature_0_then_counts_as_bad(tmp_path, monkeypatch):
  """A 200 reply without a verdict (cut by max_tokens, say) is the judge's answer: at temperature 0 it is
  asked for once more (the endpoint repeats itself), then returned, and PromptJudge labels it BAD
  (UNPARSEABLE, not cached) instead of the whole call failing."""
  monkeypatch.setenv(KEY_ENV, SECRET)
  sleeps: list[float] = []
  with Server(lambda n, b, h: ok(f"Hmm, hard to say ({SECRET}) because")) as server:
    backend = OpenAIBackend(config(server, max_retries=5, api_key_env=KEY_ENV), sleep=sleeps.append)
    [completion] = backend.complete([REQUEST])
    assert server.count == 2 and sleeps == []  # one retry, no backoff: the server is fine
    assert completion.text == "Hmm, hard to say ([REDACTED]) because"
    cache_path = tmp_path / "cache.jsonl"
    with JudgeCache(str(cache_path)) as cache:
      labelled = PromptJudge(backend, cache=cache, task="math").label([_trajectory()], outcome=False)
      assert len(cache) == 0  # not cached: a rerun asks again
  assert server.count == 2 + 2 * 2
  for s in labelled[0].steps:
    assert s.verdict.label == "BAD" and s.verdict.explanation.startswith("UNPARSEABLE VERDICT")
  assert not cache_path.exists() or cache_path.read_text() == ""


def test_unparseable_reply_is_retried_up_to_max_retries_above_temperature_0():
  replies = iter(["Let me think", "Still thinking", "It helps.\nVERDICT: GOOD"])
  with Server(lambda n, b, h: ok(next(replies))) as server:
    assert OpenAIBackend(config(server, temperature=0.7, max_retries=3)).complete([REQUEST])[0].text == \
        "It helps.\nVERDICT: GOOD"
    assert server.count == 3
  with Server(lambda n, b, h: ok("Hmm.")) as server:
    assert OpenAIBackend(config(server, temperature=0.7, max_retries=3)).complete([REQUEST])[0].text == "Hmm."
    assert server.count == 4
  with Server(lambda n, b, h: ok("Hmm.")) as server:  # no retries asked for: none made
    assert OpenAIBackend(config(server, max_retries=0)).complete([REQUEST])[0].text == "Hmm."
    assert server.count == 1


def test_unparseable_reply_then_server_errors_returns_the_reply():
  """Once the judge has answered, later transport failures do not turn its answer into an error."""
  def script(n, body, headers):
    return ok("No verdict here.") if n == 0 else (503, {}, b"busy")

  with Server(script) as server:
    [completion] = OpenAIBackend(config(server, temperature=0.7, max_retries=2)).complete([REQUEST])
    assert completion.text == "No verdict here." and server.count == 3


def test_non_retryable_status_fails_at_once():
  with Server(lambda n, b, h: (400, {}, b'{"error": "bad model name"}')) as server:
    with pytest.raises(JudgeBackendError, match="HTTP 400 .not retryable.*bad model name"):
      OpenAIBackend(config(server)).complete([REQUEST])
    assert server.count == 1


def test_connection_errors_are_retried():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed when the block ends: nothing listens there
  backend = OpenAIBackend(OpenAIJudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2,
                                            backoff_initial_s=0.0, timeout_s=2.0))
  with pytest.raises(JudgeBackendError, match="after 3 attempts; last status: none .connection error."):
    backend.complete([REQUEST])


def test_concurrency_limit_is_respected():
  with Server(lambda n, b, h: ok(f"request {n}\nVERDICT: GOOD"), delay_s=0.05) as server:
    backend = OpenAIBackend(config(server, max_concurrency=3))
    requests = [JudgeRequest((Message("user", f"q{i}"),)) for i in range(12)]
    done: list[int] = []
    out = backend.complete(requests, on_done=lambda i, c: done.append(i))
  assert len(out) == 12 and all(c.text.endswith("VERDICT: GOOD") for c in out)
  assert sorted(done) == list(range(12))
  assert server.max_in_flight <= 3
  assert server.max_in_flight >= 2  # it did run requests in parallel
  # Results come back in request order whatever the completion order.
  prompts = [b["messages"][0]["content"] for b in server.bodies]
  assert len(set(prompts)) == 12


def test_the_limit_holds_across_concurrent_complete_calls():
  with Server(lambda n, b, h: ok("VERDICT: GOOD"), delay_s=0.03) as server:
    backend = OpenAIBackend(config(server, max_concurrency=2))
    threads = [threading.Thread(target=backend.complete, args=([REQUEST] * 4,)) for _ in range(3)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert server.count == 12 and server.max_in_flight <= 2


def _trajectory() -> Trajectory:
  q = Question(id="q1", dataset="gsm8k", text="What is 2 + 2?", answer="4")
  steps = (Step(text="<math_exp>2 + 2</math_exp>", kind="tool_call", call=ToolCall("calculator", "2 + 2"),
                observation="2 + 2 -> 4.0"),
           Step(text="<answer>4</answer>", kind="answer", answer="4"))
  return Trajectory(question=q, sample_index=0, steps=steps, final_answer="4")


def test_api_key_never_leaks(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv(KEY_ENV, SECRET)
  caplog.set_level(logging.DEBUG)

  def echo_key(n, body, headers):
    auth = headers.get("Authorization", "")
    if body["messages"][0]["content"] == "fail":
      return 500, {}, f"invalid token {auth}".encode()  # a server that echoes the key back
    if n % 2 == 0:
      return 502, {}, f"upstream rejected {auth}".encode()
    return ok(f"Your key is {auth}.\nVERDICT: GOOD")

  cache_path = tmp_path / "cache.jsonl"
  with Server(echo_key) as server:
    cfg = config(server, api_key_env=KEY_ENV, max_retries=2)
    backend = OpenAIBackend(cfg)
    with JudgeCache(str(cache_path)) as cache:
      labelled = PromptJudge(backend, cache=cache, task="math").label([_trajectory()])
    with pytest.raises(JudgeBackendError) as e:
      backend.complete([JudgeRequest((Message("user", "fail"),))])
  assert all(a == f"Bearer {SECRET}" for a in server.auth)  # the key was sent...
  texts = {
      "exception": str(e.value) + repr(e.value),
      "logs": caplog.text + "".join(str(r.args) for r in caplog.records),
      "cache": cache_path.read_text(encoding="utf-8"),
      "outputs": json.dumps(labelled[0].to_json()),
      "repr": repr(cfg) + repr(backend) + str(vars(backend)) + repr(PromptJudge(backend)),
  }
  for where, text in texts.items():
    assert SECRET not in text, f"the API key leaked into the {where}"
  assert "[REDACTED]" in texts["exception"] and "[REDACTED]" in texts["cache"]
  assert "retry" in caplog.text  # the retries were logged, without the key
  assert labelled[0].steps[0].verdict.judge.startswith(f"openai/judge-model@{server.base_url}|")


def test_missing_key_variable_is_a_clear_error(monkeypatch):
  monkeypatch.delenv(KEY_ENV, raising=False)
  with pytest.raises(JudgeBackendError, match=f"{KEY_ENV} .api_key_env. is not set"):
    OpenAIBackend(OpenAIJudgeConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY_ENV))


def test_identity_and_url_handling():
  b = OpenAIBackend(OpenAIJudgeConfig(base_url="https://user:pw@judge.example.com:8443/v1/?token=abc", model="g"))
  assert b.identity == "openai/g@https://judge.example.com:8443/v1"
  assert b.url == "https://user:pw@judge.example.com:8443/v1/chat/completions?token=abc"
  assert "pw" not in repr(b) and "abc" not in repr(b)
  b = OpenAIBackend(OpenAIJudgeConfig(base_url="http://h:1/v1/chat/completions", model="g", send_seed=True))
  assert b.url == "http://h:1/v1/chat/completions"
  assert json.loads(b._body(JudgeRequest((Message("user", "x"), Message("model", "y")), vote=2))) == {
      "model": "g", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
      "temperature": 0.0, "max_tokens": 512, "stream": False, "seed": 2}
  with pytest.raises(ValueError):
    OpenAIJudgeConfig(base_url="judge:8000", model="g")


def test_check_sends_one_small_request_and_names_a_missing_model(tmp_path, monkeypatch):
  """The paper recipe's judge model is first asked at the label stage, after every trajectory is generated:
  a retired model name (gemini-1.5-pro) or a wrong URL cost the whole generation. check() asks once first,
  and run_pipeline calls it before generating."""
  def script(n, body, headers):
    if body["model"] != "judge-model":
      return 404, {}, json.dumps({"error": {"message": f"models/{body['model']} is not found"}}).encode()
    return ok("OK")  # not a verdict: check() accepts any completion

  with Server(script) as server:
    OpenAIBackend(config(server)).check()
    assert server.count == 1 and server.bodies[0]["messages"][0]["role"] == "user"
    with pytest.raises(JudgeBackendError, match=r"did not answer a test request for model 'retired'.*HTTP 404.*"
                                                r"models/retired is not found.*judge.openai.base_url, .model"):
      OpenAIBackend(config(server, model="retired")).check()
    assert server.count == 2  # a 404 is not retried

    from swirl_jax import config as config_lib
    from swirl_jax import modes

    cfg = config_lib.base_config()
    config_lib.use_openai_judge(cfg, base_url=server.base_url, model="retired", api_key_env="")
    cfg.data.num_questions = 2
    monkeypatch.setattr(modes, "run_generate", lambda *a, **k: pytest.fail("generated before the judge check"))
    with pytest.raises(JudgeBackendError, match="retired"):
      modes.run_pipeline(cfg, modes.Paths(str(tmp_path)))
    assert server.count == 3


def test_a_reply_that_trickles_in_times_out():
  """timeout_s bounded each socket read, not the request: a server sending a byte every 0.1 s held a judge
  worker for as long as it liked (8.9 s with timeout_s=1 in the review)."""
  body = json.dumps(chat_completion("VERDICT: GOOD")).encode()

  class Trickle(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
      self.rfile.read(int(self.headers["Content-Length"]))
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      for i in range(len(body)):
        self.wfile.write(body[i:i + 1])
        self.wfile.flush()
        time.sleep(0.05)

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
  httpd.daemon_threads = True
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  try:
    backend = OpenAIBackend(OpenAIJudgeConfig(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                              model="m", timeout_s=0.5, max_retries=0))
    t = time.monotonic()
    with pytest.raises(JudgeBackendError, match="not complete after timeout_s=0.5s"):
      backend.complete_one(REQUEST)
    assert time.monotonic() - t < 2.0  # the whole reply takes len(body) x 0.05 s > 5 s
    assert len(body) * 0.05 > 5
  finally:
    httpd.shutdown()
    httpd.server_close()
