"""The host-side tool loop over a mixed batch that exercises every branch, including refilling.

The decode loop itself is tested in test_decode.py; here a scripted sampler (same interface, plays
fixed model turns) makes each branch of the host loop happen on purpose.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pytest

from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.sampling.rollout import Rollout, RolloutConfig
from swirl_jax.tools import Calculator
from swirl_jax.types import Question
from tiny_tokenizer import tiny_tokenizer


class _Cache(NamedTuple):
  lengths: np.ndarray


class _State(NamedTuple):
  cache: _Cache
  pending: np.ndarray
  active: np.ndarray


@dataclasses.dataclass
class ScriptedSampler:
  """Plays ``scripts[question text][turn]`` as the model's turns, token by token.

  A turn ending in a closing tag stops there (as the device stop rule does); a turn ending in "!" is
  followed by <end_of_turn>; any other turn runs to max_new_tokens.
  """

  tok: object
  scripts: dict
  batch: int = 2
  cache_len: int = 4096
  steps_per_call: int = 3
  sampling: SamplingConfig = SamplingConfig(temperature=0, max_new_tokens=40)
  chunk_buckets: tuple = (16, 64, 256)
  exit_when_done: int = 1

  def __post_init__(self):
    self.rows = [dict(question=None, turn=0, queue=[]) for _ in range(self.batch)]
    self.resets, self.rollbacks, self.max_busy, self.chunks = [], [], 0, []
    # each row's cache as token ids, and (question, turn) -> the cache a turn was sampled after
    self.cache, self.contexts = [[] for _ in range(self.batch)], {}

  @property
  def max_chunk(self):
    return self.chunk_buckets[-1]

  def bucket(self, n):
    return next(b for b in self.chunk_buckets if n <= b)

  def row_bucket(self, n):
    return next(b for b in (1, self.batch) if n <= b)

  def row_indices(self, n):
    return np.arange(self.batch) if n == self.batch else np.full((n,), self.batch)

  def prepare(self, params):
    return params

  def init_state(self, params, seeds):
    z = np.zeros(self.batch, np.int64)
    return _State(_Cache(z.copy()), z.copy(), np.zeros(self.batch, bool))

  def _turn_tokens(self, row):
    turn = self.scripts[row["question"]][row["turn"]]
    # a tuple of pieces, each encoded alone: a split of the text that encoding it whole does not give
    pieces = turn if isinstance(turn, tuple) else (turn,)
    text = "".join(pieces)
    ids = [i for p in pieces for i in self.tok.encode(p, add_bos=False)]
    if text.endswith("!"):
      ids.append(self.tok.end_of_turn_id)
    return ids[:self.sampling.max_new_tokens]

  def extend(self, params, state, rows, tokens, valid, set_lengths, seeds, reseed):
    lengths, pending, active = (np.array(state.cache.lengths), np.array(state.pending), np.array(state.active))
    tokens, valid, set_lengths = np.asarray(tokens), np.asarray(valid), np.asarray(set_lengths)
    for i, r in enumerate(np.asarray(rows).tolist()):
      if r >= self.batch:  # padding
        continue
      n = int(valid[i].sum())
      if set_lengths[i] >= 0:
        if set_lengths[i] == 0:
          self.resets.append(r)
        else:
          self.rollbacks.append((r, int(lengths[r] - set_lengths[i])))
        lengths[r] = set_lengths[i]
        del self.cache[r][set_lengths[i]:]
      if n == 0:
        continue
      row = self.rows[r]
      if set_lengths[i] == 0:
        row["turn"] = 0
      else:
        row["turn"] += 1
      chunk = tokens[i, :n].tolist()
      self.chunks.append((r, chunk))
      lengths[r] += n
      text = self.tok.decode(chunk)
      if set_lengths[i] == 0:
        row["question"] = next(q for q in self.scripts if q in text)
      self.cache[r] += chunk
      self.contexts[row["question"], row["turn"]] = list(self.cache[r])
      row["queue"] = self._turn_tokens(row)
      pending[r] = row["queue"].pop(0)
      active[r] = bool(row["queue"])
    self.max_busy = max(self.max_busy, int(active.sum()))
    return _State(_Cache(lengths), pending, active)

  def decode(self, params, state):
    lengths, pending, active = (np.array(state.cache.lengths), np.array(state.pending), np.array(state.active))
    out = np.full((self.batch, self.steps_per_call), -1)
    start = active.copy()
    for i in range(self.steps_per_call):
      if not active.any() or (start & ~active).sum() >= self.exit_when_done:
        break
      for r in np.flatnonzero(active):
        lengths[r] += 1  # the pending token enters the cache
        self.cache[r].append(int(pending[r]))
        pending[r] = out[r, i] = self.rows[r]["queue"].pop(0)
        active[r] = bool(self.rows[r]["queue"])
    return _State(_Cache(lengths), pending, active), out


SCRIPTS = {
    "Q-call-then-answer": ["Let me compute. <math_exp>12 * 3</math_exp>", "<answer>36</answer>"],
    "Q-malformed-then-answer": ["I think it is thirty!", "<answer>30</answer>"],
    "Q-overshoot": ["<math_exp>2 + 2</math_exp> and then I keep talking without end",
                    "<answer>4</answer>"],
    "Q-budget": ["<math_exp>1 + 1</math_exp>", "<math_exp>2 + 2</math_exp>", "<math_exp>3 + 3</math_exp>",
                 "<answer>never</answer>"],
    "Q-disallowed-tool": ["<search_query>who knows</search_query>", "<answer>7</answer>"],
    "Q-call-and-answer": ["<answer>4, or <math_exp>5 - 1</math_exp>", "<answer>4</answer>"],
    "Q-bad-expression": ["<math_exp>__import__('os')</math_exp>", "<math_exp>1 / 0</math_exp>",
                         "<answer>0</answer>"],
}


def _questions():
  return [Question(id=q, dataset="test", text=q, answer="0") for q in SCRIPTS]


@pytest.fixture()
def scripted():
  return ScriptedSampler(tiny_tokenizer(), SCRIPTS)


def test_every_branch_of_the_tool_loop(scripted):
  tok = scripted.tok
  calc = Calculator()
  rollout = Rollout(scripted, None, tok, {"calculator": calc},
                    RolloutConfig(task="math", max_tool_calls=2, num_demos=0))
  trajs = {t.question.id: t for t in rollout.run(_questions())}
  assert set(trajs) == set(SCRIPTS)

  t = trajs["Q-call-then-answer"]
  assert [s.kind for s in t.steps] == ["tool_call", "answer"]
  assert t.steps[0].call.tool == "calculator" and t.steps[0].call.input == "12 * 3"
  assert t.steps[0].observation == "12 * 3 -> 36.0"
  assert t.final_answer == "36" and "end_reason" not in t.provenance

  t = trajs["Q-malformed-then-answer"]
  assert [s.kind for s in t.steps] == ["malformed", "answer"]
  assert t.steps[0].error.startswith("no_tag") and t.steps[0].observation.startswith("error: ")
  assert t.steps[0].text == "I think it is thirty!"  # end_of_turn is not part of the text

  t = trajs["Q-overshoot"]
  assert t.steps[0].text == "<math_exp>2 + 2</math_exp>"  # cut at the closing tag
  assert t.steps[0].observation == "2 + 2 -> 4.0" and t.final_answer == "4"

  t = trajs["Q-budget"]  # 2 calls allowed: the third is recorded, not run, and ends the trajectory
  assert [s.kind for s in t.steps] == ["tool_call", "tool_call", "malformed"]
  assert t.steps[2].error.startswith("over_budget") and t.steps[2].observation is None
  assert t.steps[2].call.input == "3 + 3"
  assert t.final_answer is None and t.provenance["end_reason"] == "step budget exhausted"

  t = trajs["Q-disallowed-tool"]
  assert t.steps[0].kind == "malformed" and t.steps[0].error.startswith("tool_not_allowed")

  t = trajs["Q-call-and-answer"]
  assert t.steps[0].kind == "malformed" and t.steps[0].error.startswith("call_and_answer")

  t = trajs["Q-bad-expression"]
  assert [s.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]
  assert t.steps[0].observation.startswith("__import__('os') -> error:")
  assert t.steps[1].observation == "1 / 0 -> error: division by zero"

  # Token accounting: a turn's new tokens are those kept; the next prompt starts after the tool result.
  call = trajs["Q-call-then-answer"].steps
  assert call[0].new_tokens == len(tok.encode("Let me compute. <math_exp>12 * 3</math_exp>", add_bos=False))
  assert call[1].prompt_tokens > call[0].prompt_tokens + call[0].new_tokens


def test_rows_are_refilled_and_overshoot_is_rolled_back(scripted):
  rollout = Rollout(scripted, None, scripted.tok, {"calculator": Calculator()},
                    RolloutConfig(task="math", max_tool_calls=2, num_demos=0, samples_per_question=2))
  trajs = list(rollout.run(_questions()))
  assert len(trajs) == 2 * len(SCRIPTS)
  assert sorted(t.key for t in trajs) == sorted((q, k) for q in SCRIPTS for k in range(2))
  assert len(scripted.resets) == 2 * len(SCRIPTS)  # each trajectory started in an emptied row
  assert scripted.max_busy <= 2
  overshoot = len(scripted.tok.encode(" and then I keep talking without end", add_bos=False))
  # rolled back by what was generated past the tag (up to the pending token, which never entered)
  assert all(0 < n <= overshoot for _, n in scripted.rollbacks) and len(scripted.rollbacks) == 2


def test_static_batch_waits_for_the_whole_batch(scripted):
  scripted.exit_when_done = 2
  rollout = Rollout(scripted, None, scripted.tok, {"calculator": Calculator()},
                    RolloutConfig(task="math", max_tool_calls=2, num_demos=0, refill=False))
  trajs = list(rollout.run(_questions()))
  assert len(trajs) == len(SCRIPTS)
  # rows are only emptied in pairs, when both have finished
  assert scripted.resets[:4] == [0, 1, 0, 1]


def test_missing_tool_is_refused(scripted):
  with pytest.raises(ValueError, match="needs tools \\['calculator'\\]"):
    Rollout(scripted, None, scripted.tok, {}, RolloutConfig(task="math"))


def test_a_prompt_that_does_not_fit_is_recorded_and_the_batch_goes_on(scripted):
  """A question too long for the cache ends as a trajectory without steps (its reason recorded), never
  as an error that would stop the batch and every resumed run that reaches it again."""
  long_q = Question(id="Q-long", dataset="test", text="word " * 5000, answer="0")
  rollout = Rollout(scripted, None, scripted.tok, {"calculator": Calculator()},
                    RolloutConfig(task="math", max_tool_calls=2, num_demos=0))
  seen = []
  qs = _questions()
  trajs = {t.question.id: t for t in rollout.run(qs[:1] + [long_q] + qs[1:], on_trajectory=seen.append)}
  assert set(trajs) == set(SCRIPTS) | {"Q-long"} and len(seen) == len(trajs)
  t = trajs["Q-long"]
  assert t.steps == () and t.final_answer is None
  # a fixed reason (counted as one), the lengths apart
  assert t.provenance["end_reason"] == "prompt too long"
  n = len(rollout.prompt_tokens(long_q))
  assert t.provenance["end_detail"] == f"{n} tokens + sampling.max_new_tokens=40 > cache_len=4096"
  assert trajs["Q-call-then-answer"].final_answer == "36"


def test_a_zero_budget_prompt_says_so_and_a_call_ends_the_trajectory(scripted):
  rollout = Rollout(scripted, None, scripted.tok, {"calculator": Calculator()},
                    RolloutConfig(task="math", max_tool_calls=0, num_demos=0))
  assert "at most 0 times" in scripted.tok.decode(rollout.prompt_tokens(_questions()[0]))
  t = next(t for t in rollout.run(_questions()[:1]))
  assert [s.kind for s in t.steps] == ["malformed"] and t.steps[0].error.startswith("over_budget")
  with pytest.raises(ValueError, match="max_tool_calls must be >= 0"):
    RolloutConfig(max_tool_calls=-1)


def test_a_turn_sampled_as_another_split_of_its_text_is_rewritten_as_its_encoding(scripted):
  """The cache held the sampled tokens (" wri" "t" "ing") while decompose's states and stage-2 RL encode
  the text (" writing"): later turns saw another context than the one trained on."""
  tok = scripted.tok
  turn = ("I am wri", "ting. <math_exp>2 + 2</math_exp>")
  sampled = [i for p in turn for i in tok.encode(p, add_bos=False)]
  canonical = tok.encode("".join(turn), add_bos=False)
  assert sampled != canonical and tok.decode(sampled) == tok.decode(canonical)  # the premise
  scripted.scripts = {"Q-split": [turn, "<answer>4</answer>"]}
  rollout = Rollout(scripted, None, tok, {"calculator": Calculator()},
                    RolloutConfig(task="math", max_tool_calls=2, num_demos=0))
  (t,) = rollout.run([Question(id="Q-split", dataset="test", text="Q-split", answer="4")])
  assert [s.kind for s in t.steps] == ["tool_call", "answer"] and t.final_answer == "4"
  in_cache = len(sampled) - 1  # the last sampled token was pending
  assert scripted.rollbacks == [(0, in_cache)]  # back to the turn's start
  (r, chunk), = [c for c in scripted.chunks[1:]]  # the prompt, then the turn and the tool result
  assert chunk[:len(canonical)] == canonical
  assert tok.decode(chunk[len(canonical):]).startswith("<end_of_turn>\n<start_of_turn>user\n2 + 2 -> 4.0")
  assert t.steps[1].prompt_tokens == t.steps[0].prompt_tokens + len(chunk)
  assert t.steps[0].new_tokens == len(canonical)  # the turn as the context holds it (was the sampled count)


def test_training_states_are_the_context_each_turn_was_sampled_in():
  """Every decomposed state tokenizes to the cache the rollout sampled that step's action after. The Gemma
  tokenizer has tokens for runs of newlines: a turn starting with "\n" right after "model\n" was one
  "\n\n" token when decompose encoded the state as one text, so every later state (and stage-2 RL's
  prompts) differed from the sampler's context."""
  from swirl_jax.loading import read_source
  from swirl_jax.pipeline.decompose import decompose, tokenize_example

  tok = read_source("gemma3-270m")[2]
  turns = ["\nFirst I multiply. <math_exp>3 * 4</math_exp>", "\n\nThen add. <math_exp>12 + 1</math_exp>",
           " So: <answer>13</answer>"]
  assert tok.encode("model\n" + turns[0], add_bos=False) != (tok.encode("model\n", add_bos=False)
                                                             + tok.encode(turns[0], add_bos=False))  # the premise
  smp = ScriptedSampler(tok, {"Q-newlines": turns}, batch=1, sampling=SamplingConfig(temperature=0, max_new_tokens=64),
                        chunk_buckets=(16, 64, 1024))  # (the prompt in one chunk)
  cfg = RolloutConfig(task="math", max_tool_calls=3, num_demos=1)
  rollout = Rollout(smp, None, tok, {"calculator": Calculator()}, cfg)
  (t,) = rollout.run([Question(id="q", dataset="test", text="Q-newlines", answer="13")])
  assert [s.kind for s in t.steps] == ["tool_call", "tool_call", "answer"]
  examples = decompose(t, "math", rollout.demos, cfg.budget)
  for k, ex in enumerate(examples):
    te = tokenize_example(ex, tok, 8192, "drop")
    assert te.tokens[:te.prompt_len].tolist() == smp.contexts["Q-newlines", k], k
    assert te.tokens[te.prompt_len:-1].tolist() == tok.encode(turns[k], add_bos=False)  # the sampled action


def test_rl_trains_only_on_sampled_tokens_within_the_judged_action():
  """A closing tag's ">" merged with what followed (">.") ends the kept tokens past the action: RL
  reinforced a token the judge never saw and the stop rule cannot end a turn on."""
  from swirl_jax.loading import read_source
  from swirl_jax.sampling.turns import trained_tokens

  tok = read_source("gemma3-270m")[2]
  ends = {tok.eos_id, tok.end_of_turn_id}
  merged = tok.encode("<answer>5</answer>. And more", add_bos=False) + [tok.end_of_turn_id]
  assert any(tok.decode([i]) == ">." for i in merged)  # the premise: one token
  text, ids = trained_tokens(tok, merged, ends)
  assert text == "<answer>5</answer>" and tok.decode(ids) == "<answer>5</answer"
  assert merged[:len(ids)] == ids
  clean = tok.encode("Go. <math_exp>1+2</math_exp> then more", add_bos=False)  # " then" starts a token
  text, ids = trained_tokens(tok, clean, ends)
  assert text == "Go. <math_exp>1+2</math_exp>" and tok.decode(ids) == text
  ended = tok.encode("<answer>5</answer>.", add_bos=False) + [tok.end_of_turn_id]  # ">." then end of turn
  text, ids = trained_tokens(tok, ended, ends)
  assert text == "<answer>5</answer>" and ids == ended[:-2] and tok.decode(ids) == "<answer>5</answer"
  stopped = tok.encode("<answer>5</answer>", add_bos=False) + [tok.end_of_turn_id]  # ended at its action
  assert trained_tokens(tok, stopped, ends) == ("<answer>5</answer>", stopped)
