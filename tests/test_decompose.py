"""Tests for swirl_jax.pipeline.decompose: states, actions, exact loss masks, over-length policies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from swirl_jax import chat
from swirl_jax import prompts
from swirl_jax.pipeline.decompose import (
    decompose,
    decompose_all,
    split_state,
    tokenize_example,
    tokenize_examples,
)
from swirl_jax.tokenizer import END_OF_TURN
from swirl_jax.types import Message, Question, RecordError, Step, StepExample, ToolCall, Trajectory, Verdict
from tiny_tokenizer import tiny_tokenizer

TOK = tiny_tokenizer()
DEMOS = prompts.DEFAULT_DEMOS["math"]
QUESTION = Question(id="q7", dataset="gsm8k", text="Tom has 3 bags of 12 apples and eats 5. How many are left?",
                    answer="31")
GOOD = Verdict("GOOD", 1.0, "fine", "test")
BAD = Verdict("BAD", 0.0, "no", "test")
STEPS = (
    # The model rambled past its closing tag; the rollout kept the raw text.
    Step(text="First the total. <math_exp>3 * 12</math_exp> and then I will", kind="tool_call",
         call=ToolCall("calculator", "3 * 12"), observation="3 * 12 -> 36.0", verdict=GOOD),
    Step(text="Now subtract. <math_exp>36 - 5</math_exp>", kind="tool_call", call=ToolCall("calculator", "36 - 5"),
         observation="36 - 5 -> 31.0", verdict=BAD),
    Step(text="<answer>31</answer>", kind="answer", answer="31", verdict=GOOD),
)
TRAJ = Trajectory(question=QUESTION, sample_index=2, steps=STEPS, final_answer="31",
                  outcome=Verdict("GOOD", 1.0, "matches", "test"))
ACTIONS = ["First the total. <math_exp>3 * 12</math_exp>", "Now subtract. <math_exp>36 - 5</math_exp>",
           "<answer>31</answer>"]


def test_three_steps_give_three_examples_with_the_right_states():
  examples = decompose(TRAJ, "math", DEMOS)
  assert len(examples) == 3
  initial = prompts.initial_messages("math", QUESTION.text, DEMOS)
  assert examples[0].state == tuple(initial)
  assert examples[1].state == tuple(initial) + (Message("model", ACTIONS[0]), Message("user", "3 * 12 -> 36.0"))
  assert examples[2].state == examples[1].state + (Message("model", ACTIONS[1]), Message("user", "36 - 5 -> 31.0"))
  assert [ex.action for ex in examples] == ACTIONS  # cut after the first closing tag
  assert [ex.step_index for ex in examples] == [0, 1, 2]
  assert all((ex.question_id, ex.sample_index) == ("q7", 2) for ex in examples)
  assert [ex.process_label for ex in examples] == ["GOOD", "BAD", "GOOD"]
  assert all(ex.outcome_label == "GOOD" for ex in examples)
  # Without demonstrations the state starts at the question; records round-trip through JSON.
  bare = decompose_all([TRAJ, TRAJ], "math")
  assert len(bare) == 6 and bare[0].state == (Message("user", prompts.user_prompt("math", QUESTION.text)),)
  assert StepExample.from_json(bare[2].to_json()) == bare[2]


def test_examples_carry_the_step_budget_and_old_files_still_load():
  """The budget (for stage 2's over-budget rule): the one decompose is given, else the trajectory's
  recorded one, else unknown; JSON without it (files written before the field) loads as unknown."""
  recorded = dataclasses.replace(TRAJ, provenance={"task": "math", "budget": 4})
  assert [ex.budget for ex in decompose(recorded, "math", DEMOS, 4)] == [4, 4, 4]
  assert [ex.budget for ex in decompose(recorded, "math", DEMOS)] == [4, 4, 4]
  assert [ex.budget for ex in decompose(recorded, "math", DEMOS, 6)] == [6, 6, 6]  # what the prompt says
  assert [ex.budget for ex in decompose(TRAJ, "math", DEMOS)] == [None, None, None]
  ex = decompose(recorded, "math", DEMOS)[1]
  assert ex.to_json()["budget"] == 4 and StepExample.from_json(ex.to_json()) == ex
  old = dataclasses.replace(ex, budget=None).to_json()
  assert "budget" not in old  # an example without a budget keeps the JSON (and digest) it had before
  assert StepExample.from_json(old).budget is None
  assert StepExample.from_json({**old, "budget": None}).budget is None
  for bad in ("4", True, 4.0):
    with pytest.raises(RecordError, match="budget"):
      StepExample.from_json({**old, "budget": bad})


def test_split_state():
  examples = decompose(TRAJ, "math", DEMOS)
  n_demo = len(prompts.initial_messages("math", "x", DEMOS)) - 1
  for ex in examples:
    demos, prompt, history = split_state(ex.state, ex.step_index)
    assert len(demos) == n_demo == 6
    assert prompt == Message("user", prompts.user_prompt("math", QUESTION.text))
    assert len(history) == 2 * ex.step_index
  with pytest.raises(ValueError, match="does not hold 3 model turns"):
    split_state(decompose(TRAJ, "math")[1].state, 3)


def _check_exact_mask(tok_ex, example):
  tokens, mask = tok_ex.tokens, tok_ex.loss_mask
  assert tokens.dtype == np.int32 and mask.dtype == np.bool_ and tokens.shape == mask.shape
  # The mask is one contiguous run at the end, starting at prompt_len.
  assert not mask[: tok_ex.prompt_len].any() and mask[tok_ex.prompt_len :].all()
  assert int(mask.sum()) == len(tokens) - tok_ex.prompt_len
  # Exactly the action tokens and the closing <end_of_turn>.
  assert TOK.decode(tokens[mask]) == example.action + END_OF_TURN
  assert tokens[-1] == TOK.end_of_turn_id and tokens[0] == TOK.bos_id
  assert list(tokens[mask][:-1]) == TOK.encode(example.action, add_bos=False)


def test_masks_cover_exactly_the_action_tokens():
  examples = decompose(TRAJ, "math", DEMOS)
  out, report = tokenize_examples(examples, TOK, max_len=100_000)
  assert (report.total, report.kept, report.truncated, report.dropped_over_length) == (3, 3, 0, 0)
  for tok_ex, ex in zip(out, examples):
    _check_exact_mask(tok_ex, ex)
    assert TOK.decode(tok_ex.tokens[~tok_ex.loss_mask]) == "<bos>" + chat.render(ex.state, add_generation_prompt=True)
    assert (tok_ex.question_id, tok_ex.sample_index, tok_ex.step_index) == ("q7", 2, ex.step_index)
    assert not tok_ex.truncated


def _full_len(example: StepExample) -> int:
  return len(tokenize_example(example, TOK, 100_000))


def test_drop_policy_skips_over_length_examples():
  examples = decompose(TRAJ, "math", DEMOS)
  lengths = [_full_len(ex) for ex in examples]
  assert lengths[0] < lengths[1] < lengths[2]
  max_len = lengths[1]  # examples 0 and 1 fit exactly, 2 does not
  assert tokenize_example(examples[1], TOK, max_len, "drop") is not None
  assert tokenize_example(examples[2], TOK, max_len, "drop") is None
  out, report = tokenize_examples(examples, TOK, max_len, "drop")
  assert [t.step_index for t in out] == [0, 1]
  assert (report.kept, report.dropped_over_length, report.truncated) == (2, 1, 0)
  assert report.to_json()["policy"] == "drop"


def test_truncate_left_drops_whole_demonstrations_first():
  demos = DEMOS + (dataclasses.replace(DEMOS[0], question="Another worked example with 2 rows of 3."),)
  ex = decompose(TRAJ, "math", demos)[2]
  one_demo = decompose(TRAJ, "math", DEMOS)[2]
  no_demo = decompose(TRAJ, "math")[2]
  full, with_one, bare = _full_len(ex), _full_len(one_demo), _full_len(no_demo)
  assert full > with_one > bare

  # Room for one demonstration: the earliest one goes, whole.
  t = tokenize_example(ex, TOK, with_one + 5, "truncate_left")
  assert t.dropped_demo_messages == 6 and t.truncated_tokens == 0 and t.truncated
  second_demo_first = dataclasses.replace(ex, state=ex.state[6:])
  assert TOK.decode(t.tokens[~t.loss_mask]) == "<bos>" + chat.render(second_demo_first.state)
  _check_exact_mask(t, ex)

  # Room for none: both go, nothing else is cut.
  t = tokenize_example(ex, TOK, bare, "truncate_left")
  assert t.dropped_demo_messages == 12 and t.truncated_tokens == 0
  assert np.array_equal(t.tokens, tokenize_example(no_demo, TOK, bare).tokens)
  _check_exact_mask(t, ex)


def test_truncate_left_then_cuts_the_oldest_tokens_keeping_bos():
  ex = decompose(TRAJ, "math", DEMOS)[2]
  no_demo = tokenize_example(decompose(TRAJ, "math")[2], TOK, 100_000)
  max_len = len(no_demo) - 40
  t = tokenize_example(ex, TOK, max_len, "truncate_left")
  assert len(t) == max_len
  assert t.truncated_tokens == 40 and t.dropped_demo_messages == 6
  assert t.tokens[0] == TOK.bos_id
  # The most recent context survives: the tail of the prefix is untouched.
  assert np.array_equal(t.tokens[1:], no_demo.tokens[41:])
  assert TOK.decode(t.tokens[~t.loss_mask]).endswith("36 - 5 -> 31.0<end_of_turn>\n<start_of_turn>model\n")
  _check_exact_mask(t, ex)
  out, report = tokenize_examples(decompose(TRAJ, "math", DEMOS), TOK, max_len, "truncate_left")
  assert report.kept == 3 and report.truncated >= 1 and all(len(x) <= max_len for x in out)


def test_action_too_long_is_dropped_under_both_policies():
  ex = decompose(TRAJ, "math")[0]
  ex = dataclasses.replace(ex, action="<answer>" + "very long answer " * 50 + "</answer>")
  action_len = len(TOK.encode(ex.action, add_bos=False)) + 1
  for policy in ("truncate_left", "drop"):
    assert tokenize_example(ex, TOK, action_len + 2, policy) is None
  _, report = tokenize_examples([ex], TOK, action_len + 2, "truncate_left")
  assert report.dropped_action_too_long == 1 and report.kept == 0
  # With room for BOS and the model-turn opening it fits, the prefix cut to its tail.
  opening = len(TOK.encode(chat.MODEL_PREFIX, add_bos=False))
  t = tokenize_example(ex, TOK, action_len + 1 + opening, "truncate_left")
  assert TOK.decode(t.tokens[~t.loss_mask]) == "<bos>" + chat.MODEL_PREFIX
  _check_exact_mask(t, ex)


def test_unknown_policy():
  ex = decompose(TRAJ, "math")[0]
  with pytest.raises(ValueError, match="unknown over-length policy"):
    tokenize_example(ex, TOK, 10_000, "truncate_right")
