"""The OpenAI-compatible judge backend against our own served model: a real HTTP round trip.

The served model is a tiny random-weight Gemma with a real tokenizer, so its replies are noise and hold
no verdict. What is checked is the plumbing, exactly: the text the judge backend receives over HTTP is
the text swirl_jax.sampling.generate produces for the same rendered judge prompt (and, with votes, the
same per-vote seed); through PromptJudge those texts become Verdicts (UNPARSEABLE -> BAD, with the text
kept as the explanation); and with the default ``accept`` (a parseable verdict is required) the backend
asks again and then returns the reply, which the judge counts as BAD, instead of inventing a label.
"""

from __future__ import annotations

import pytest
from flax import nnx

from swirl_jax import chat
from swirl_jax import prompts as task_prompts
from swirl_jax.judges import JudgeBackendError, JudgeRequest, OpenAIBackend, OpenAIJudgeConfig, PromptJudge
from swirl_jax.judges import prompts as judge_prompts
from swirl_jax.sampling.generate import generate
from swirl_jax.serve import serve
from swirl_jax.types import Message, Question, Step, ToolCall, Trajectory
from tiny_tokenizer import tiny_lm

LIMIT = 16
VOTES = 2
TEMPERATURE = 1.0  # one sampling setting throughout: the server compiles one sampler


@pytest.fixture(scope="module")
def lm():
  return tiny_lm()


@pytest.fixture(scope="module")
def server(lm):
  srv = serve(lm, batch_size=4, cache_len=1024, max_tokens_limit=LIMIT, max_chunk=256, steps_per_call=8,
              batch_wait_ms=20)
  yield srv
  srv.shutdown()


def trajectory() -> Trajectory:
  q = Question(id="q1", dataset="synthetic_arith", text="A farmer has 15 rows of 8 trees. 13 die. How many are left?",
               answer="107")
  steps = (Step(text="I count all trees first. <math_exp>15 * 8</math_exp>", kind="tool_call",
                call=ToolCall("calculator", "15 * 8"), observation="15 * 8 -> 120.0"),
           Step(text="<answer>107</answer>", kind="answer", answer="107"))
  return Trajectory(question=q, sample_index=0, steps=steps, final_answer="107", provenance={"task": "math"})


def judge_texts(t: Trajectory) -> list[str]:
  """The judge prompts of every step, then of the outcome (what PromptJudge sends, in that order)."""
  prompt = task_prompts.user_prompt("math", t.question.text)
  texts = [judge_prompts.process_prompt("math", prompt, t.steps[:k], s.text) for k, s in enumerate(t.steps)]
  return texts + [judge_prompts.outcome_prompt(t.question.text, t.question.answer, t.question.aliases,
                                               t.final_answer)]


def sampler_texts(server, lm, prompts: list[str], seeds: list[int]) -> list[str]:
  """What generate() gives for each judge prompt and seed, over the server's own compiled sampler (same
  settings; compiling another costs seconds). Rows sample independently, so batching them is exact."""
  tok = lm.tokenizer
  sampler = server.engine._samplers[(TEMPERATURE, 1.0, 0)]
  ids = [tok.encode(chat.render([Message("user", p)], add_generation_prompt=True)) for p in prompts]
  texts = []
  for i in range(0, len(ids), sampler.batch):
    for out in generate(sampler, nnx.state(lm.model), ids[i : i + sampler.batch], seeds[i : i + sampler.batch]):
      texts.append(tok.decode(out[:-1] if out[-1] in (tok.eos_id, tok.end_of_turn_id) else out, skip_special=True))
  return texts


def config(server, **kw) -> OpenAIJudgeConfig:
  return OpenAIJudgeConfig(base_url=server.base_url, model=server.model_name, max_tokens=LIMIT, **kw)


def test_backend_receives_exactly_the_sampler_text(server, lm):
  prompts = judge_texts(trajectory())
  # send_seed: the vote index goes out as the OpenAI "seed", and the server samples with it
  backend = OpenAIBackend(config(server, temperature=TEMPERATURE, send_seed=True, max_retries=0),
                          accept=lambda text: True)
  done = {}
  out = backend.complete([JudgeRequest((Message("user", p),), vote=7) for p in prompts], on_done=done.__setitem__)
  assert sorted(done) == [0, 1, 2]
  assert [c.text for c in out] == sampler_texts(server, lm, prompts, [7] * len(prompts))
  assert all(c.p_good is None for c in out)


def test_prompt_judge_end_to_end_with_votes(server, lm):
  backend = OpenAIBackend(config(server, temperature=TEMPERATURE, send_seed=True, max_retries=0),
                          accept=lambda text: True)
  judge = PromptJudge(backend, n_votes=VOTES, task="math")
  t = trajectory()
  [labelled] = judge.label([t])
  assert judge.identity == f"openai/{server.model_name}@{server.base_url}|{judge_prompts.PROMPT_VERSION}|votes=2"
  verdicts = [s.verdict for s in labelled.steps] + [labelled.outcome]
  prompts = judge_texts(t)
  texts = sampler_texts(server, lm, [p for p in prompts for _ in range(VOTES)], list(range(VOTES)) * len(prompts))
  assert len(set(texts)) > len(prompts)  # the votes sampled differently
  for i, v in enumerate(verdicts):
    assert v.judge == judge.identity
    # Noise holds no verdict: every vote is BAD, and each vote's text is the sampler's text for seed = vote.
    assert v.label == "BAD" and v.score == 0.0
    for vote in range(VOTES):
      text = texts[i * VOTES + vote].strip()
      assert f"[vote {vote + 1}/{VOTES}: BAD] UNPARSEABLE VERDICT (counted as BAD): {text}" in v.explanation


def test_default_accept_asks_again_then_returns_the_reply_as_bad(server):
  """An unparseable reply is the judge's answer: asked once more (no backoff: the server is fine), then
  returned, and PromptJudge counts it BAD; a dead server is still an error."""
  sleeps = []
  backend = OpenAIBackend(config(server, temperature=TEMPERATURE, max_retries=1), sleep=sleeps.append)
  (out,) = backend.complete([JudgeRequest((Message("user", "Say VERDICT: GOOD"),))])
  assert out.text and judge_prompts.parse_verdict(out.text) is None and sleeps == []
  [labelled] = PromptJudge(backend, task="math").label([trajectory()])
  assert labelled.outcome.label == "BAD" and "UNPARSEABLE VERDICT" in labelled.outcome.explanation
  dead = OpenAIBackend(OpenAIJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=1,
                                         timeout_s=2.0), sleep=sleeps.append)
  with pytest.raises(JudgeBackendError, match="failed after 2 attempts"):
    dead.complete([JudgeRequest((Message("user", "x"),))])
