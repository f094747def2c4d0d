"""The in-process model judge backend: P(GOOD) from logits (score) and sampled judgements (generate)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from flax import nnx

from swirl_jax import chat
from swirl_jax.judges import (BACKENDS, JudgeRequest, ModelBackend, ModelJudgeConfig, PromptJudge, RuleJudge,
                              make_judge)
from swirl_jax.judges import prompts as judge_prompts
from swirl_jax.loading import LoadedModel
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import generate
from swirl_jax.types import Message, Question, Step, ToolCall, Trajectory
from tiny_tokenizer import tiny_lm


@pytest.fixture(scope="module")
def lm():
  return tiny_lm()


def requests() -> list[JudgeRequest]:
  texts = ["Is 15 * 8 a sensible first step? Explain, then give your verdict.",
           judge_prompts.outcome_prompt("How many trees are left?", "107", ("107 trees",), "$107"),
           "The quick brown fox jumps over the lazy dog."]
  return [JudgeRequest((Message("user", t),)) for t in texts]


def trajectory() -> Trajectory:
  q = Question(id="q1", dataset="gsm8k", text="A farmer has 15 rows of 8 trees. 13 die. How many are left?",
               answer="107")
  steps = (Step(text="<math_exp>15 * 8</math_exp>", kind="tool_call", call=ToolCall("calculator", "15 * 8"),
                observation="15 * 8 -> 120.0"),
           Step(text="<answer>107</answer>", kind="answer", answer="107"))
  return Trajectory(question=q, sample_index=0, steps=steps, final_answer="107")


@pytest.fixture(scope="module")
def scorer(lm):
  return ModelBackend(ModelJudgeConfig(mode="score", batch_size=2, cache_len=1024), model=lm)


def test_score_mode_equals_softmax_of_the_two_logits(lm, scorer):
  assert scorer.identity == "model/tiny-gemma3-random/score"
  reqs = requests()
  done = {}
  out = scorer.complete(reqs, on_done=done.__setitem__)  # 3 requests, batches of 2: a padding row too
  assert sorted(done) == [0, 1, 2]

  # By hand: the byte-level BPE splits " GOOD" / " BAD" into a shared space token and then different
  # tokens; force the shared part after "VERDICT:" and compare the first differing tokens' logits.
  tok = lm.tokenizer
  good, bad = tok.encode(" GOOD", add_bos=False), tok.encode(" BAD", add_bos=False)
  k = next(i for i in range(min(len(good), len(bad))) if good[i] != bad[i])
  ids = [tok.encode(chat.render(r.messages, add_generation_prompt=True) + "VERDICT:") + good[:k] for r in reqs]
  logits = lm.logits(ids).astype(np.float64)  # full-vocabulary logits, right-padded, computed independently
  for s, r, c in zip(ids, reqs, out):
    last = logits[ids.index(s), len(s) - 1]
    want = np.exp(last[good[k]]) / (np.exp(last[good[k]]) + np.exp(last[bad[k]]))
    assert 0.0 <= c.p_good <= 1.0
    np.testing.assert_allclose(c.p_good, want, rtol=1e-5, atol=1e-6)
    assert judge_prompts.parse_verdict(c.text) == ("GOOD" if c.p_good >= 0.5 else "BAD")
  assert len({round(c.p_good, 6) for c in out}) == 3  # different prompts, different scores


def test_score_mode_through_prompt_judge(lm, scorer):
  judge = make_judge("model", task="math", model=ModelJudgeConfig(mode="score", batch_size=2, cache_len=1024),
                     model_instance=lm)
  assert isinstance(judge, PromptJudge)
  assert judge.identity == f"model/tiny-gemma3-random/score|{judge_prompts.PROMPT_VERSION}"
  judge.backend = scorer  # the same settings; reuse its compiled programs
  [t] = judge.label([trajectory()])
  direct = scorer.p_good([JudgeRequest((Message("user", judge_prompts.outcome_prompt(
      t.question.text, "107", (), "107")),))])
  assert t.outcome.score == pytest.approx(float(direct[0]), rel=1e-6)
  for v in [s.verdict for s in t.steps] + [t.outcome]:
    assert 0.0 <= v.score <= 1.0 and v.label == ("GOOD" if v.score >= 0.5 else "BAD")


def test_generate_mode_equals_the_sampler(lm):
  cfg = ModelJudgeConfig(mode="generate", batch_size=2, max_new_tokens=12, temperature=0.8, cache_len=1024,
                         steps_per_call=8, max_chunk=256, seed=3)
  backend = ModelBackend(cfg, model=lm)
  assert backend.identity == "model/tiny-gemma3-random/generate"
  short = [requests()[0], requests()[2]]
  reqs = [JudgeRequest(r.messages, vote=v) for r in short for v in range(2)]
  out = backend.complete(reqs)

  # An independent sampler with the same settings, stops and per-request seeds.
  tok = lm.tokenizer
  sampler = Sampler.create(lm.model, batch=2, cache_len=1024,
                           sampling=SamplingConfig(temperature=0.8, max_new_tokens=12),
                           stops=build_stop_table(tok, ["VERDICT: GOOD", "VERDICT: BAD"],
                                                  [tok.eos_id, tok.end_of_turn_id]),
                           steps_per_call=8, max_chunk=256)
  ids = [tok.encode(chat.render(r.messages, add_generation_prompt=True)) for r in reqs]
  seeds = [zlib.crc32(f"3/{r.vote}/{r.text}".encode()) & 0x7FFFFFFF for r in reqs]
  want = [t for i in range(0, 4, 2) for t in generate(sampler, nnx.state(lm.model), ids[i : i + 2], seeds[i : i + 2])]
  for c, toks in zip(out, want):
    ended = toks[-1] in (tok.eos_id, tok.end_of_turn_id)
    assert c.text == tok.decode(toks[:-1] if ended else toks)
    assert c.p_good is None
  assert out[0].text != out[1].text  # votes sample with different seeds


def test_make_judge_backends(lm):
  with pytest.raises(ValueError, match=r"unknown judge backend 'gpt'; choose one of \['rule', 'model', 'openai'\]"):
    make_judge("gpt")
  assert BACKENDS == ("rule", "model", "openai")
  assert isinstance(make_judge("rule", task="math"), RuleJudge)
  with pytest.raises(ValueError, match="needs an OpenAIJudgeConfig"):
    make_judge("openai")
  with pytest.raises(ValueError, match="mode must be one of"):
    ModelJudgeConfig(mode="vibes")
  named = make_judge("model", model_instance=lm, model_name="policy@step100")  # a name per weights version
  assert named.identity.startswith("model/policy@step100/score|")
  no_tok = LoadedModel(lm.model, None, lm.config, "random:tiny-gemma3")
  with pytest.raises(ValueError, match="has no tokenizer"):
    ModelBackend(ModelJudgeConfig(), model=no_tok)


def test_judges_of_other_dtypes_do_not_share_cached_verdicts(lm, scorer, tmp_path):
  """bfloat16 rounds the logits: a bfloat16 judge of the same weights must not reuse a float32 verdict."""
  from swirl_jax.judges import JudgeCache
  from swirl_jax.loading import load_model

  base = load_model("random:tiny-gemma3", dtype="bfloat16", param_dtype="bfloat16")  # same seed, same weights
  half = ModelBackend(ModelJudgeConfig(mode="score", batch_size=2, cache_len=1024, dtype="bfloat16",
                                       param_dtype="bfloat16"),
                      model=LoadedModel(base.model, lm.tokenizer, base.config, lm.source))
  assert half.identity == scorer.identity  # one source and mode: only the dtypes tell them apart

  req = requests()[:1]
  want32, want16 = scorer.complete(req)[0].p_good, half.complete(req)[0].p_good  # uncached, each its own
  assert want32 != want16
  path = str(tmp_path / "judge_cache.jsonl")
  for backend, want in ((scorer, want32), (half, want16)):
    judge = PromptJudge(backend, JudgeCache(path))
    assert judge.complete(req)[0].p_good == want and judge.cache.hits == 0
    judge.cache.close()
  assert scorer.settings.endswith(",dtype=float32,param_dtype=float32")
  assert half.settings.endswith(",dtype=bfloat16,param_dtype=bfloat16")
