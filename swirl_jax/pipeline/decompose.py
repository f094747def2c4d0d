"""Step-wise decomposition of kept trajectories, and tokenization of the resulting examples.

A trajectory with K model turns becomes K ``StepExample``s. State s_k is the conversation before turn
k: the initial messages of the question (``prompts.initial_messages`` with the task, demonstrations and
step budget the rollout used), then each earlier model turn followed by its observation as a user turn.
Action a_k is the text of turn k. Turn texts are cut after their first closing tag
(``truncate_after_action``), which is what the rollout kept in context; on already-cut text this is a
no-op. Each example also carries the step budget (StepExample.budget), so that stage 2 judges a sampled
tool call past it as the rollout would have recorded it (``judges.base.context_from_state``).

Tokenization (``tokenize_example``): tokens = the state's ids as the rollout built its cache
(``chat.encode_state``: the opening messages rendered with the model's turn opened and BOS, then each
earlier turn and tool result encoded on its own), then encode(action) without BOS, then the
``<end_of_turn>`` id. The prefix and the action are encoded
separately, so the boundary is exact (no token straddles the prompt and the action). ``loss_mask`` is
True on exactly the action tokens AND the closing ``<end_of_turn>``: the policy must learn to end its
turn (the base model does not; DESIGN.md), and the sampler stops at end of turn. The ``\\n`` that the
chat format puts after ``<end_of_turn>`` is not part of the sequence. ``tokenize_examples`` /
``tokenize_each`` encode consecutive steps of a trajectory incrementally (each state extends the previous
one), with the same result as ``tokenize_example`` on each.

Over-length states (tokens > ``max_len``):

* ``"drop"``: the example is skipped (counted in the TokenizeReport).
* ``"truncate_left"``: first whole demonstrations are dropped, earliest first (they are optional
  context; the question and the trajectory so far are not); if it is still too long, the prefix is
  cut on the left, keeping BOS, so the most recent context (the last tool results and the opening of
  the model's turn) survives. The action is never cut: when the action alone does not fit with BOS and
  the model-turn opening, the example is dropped as ``action_too_long``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from swirl_jax import chat
from swirl_jax import prompts as task_prompts
from swirl_jax.tokenizer import Tokenizer
from swirl_jax.tools.parser import truncate_after_action
from swirl_jax.types import Message, StepExample, Trajectory

Policy = Literal["truncate_left", "drop"]
POLICIES: tuple[Policy, ...] = ("truncate_left", "drop")


# ---------------------------------------------------------------------------------------------------
# Trajectories -> step examples.


def _recorded_budget(trajectory: Trajectory) -> int | None:
  """The step budget the rollout recorded in the trajectory's provenance, or None."""
  value = trajectory.provenance.get("budget")
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def decompose(trajectory: Trajectory, task: task_prompts.Task,
              demos: Sequence[task_prompts.Demonstration] = (), budget: int | None = None) -> list[StepExample]:
  """The K step examples of a trajectory with K model turns (state s_k, action a_k).

  ``budget`` is the step budget the states' prompts state (None: the task's default); each example's
  StepExample.budget is ``budget``, else the one recorded in the trajectory's provenance, else None.
  """
  state: list[Message] = task_prompts.initial_messages(task, trajectory.question.text, demos, budget)
  outcome = trajectory.outcome.label if trajectory.outcome is not None else None
  ex_budget = budget if budget is not None else _recorded_budget(trajectory)
  out = []
  for k, step in enumerate(trajectory.steps):
    action = truncate_after_action(step.text)
    out.append(StepExample(
        question_id=trajectory.question.id,
        sample_index=trajectory.sample_index,
        step_index=k,
        state=tuple(state),
        action=action,
        process_label=step.verdict.label if step.verdict is not None else None,
        outcome_label=outcome,
        budget=ex_budget,
    ))
    state.append(Message("model", action))
    if step.observation is not None:
      state.append(Message("user", step.observation))
  return out


def decompose_all(trajectories: Sequence[Trajectory], task: task_prompts.Task,
                  demos: Sequence[task_prompts.Demonstration] = (), budget: int | None = None) -> list[StepExample]:
  """The step examples of every trajectory, in order."""
  return [ex for t in trajectories for ex in decompose(t, task, demos, budget)]


def split_state(state: Sequence[Message], step_index: int) -> tuple[tuple[Message, ...], Message, tuple[Message, ...]]:
  """(demonstration messages, the question's prompt, the history after it) of a decomposed state.

  The state holds exactly ``step_index`` model turns after the question's prompt, so counting model
  turns back from the end finds the prompt; everything before it is demonstrations.
  """
  state = tuple(state)
  if step_index == 0:
    p = len(state) - 1
  else:
    seen = 0
    p = -1
    for i in range(len(state) - 1, -1, -1):
      if state[i].role == "model":
        seen += 1
        if seen == step_index:
          p = i - 1
          break
  if p < 0 or p >= len(state) or state[p].role != "user":
    raise ValueError(f"a state of {len(state)} messages does not hold {step_index} model turns after a user "
                     "prompt; was it made by decompose()?")
  return state[:p], state[p], state[p + 1 :]


def _demo_units(demos: Sequence[Message], prompt: Message) -> list[int]:
  """Start indices of the demonstrations in ``demos``: user turns that open with the task prompt's first
  line (every demonstration repeats the task prompt). Falls back to one unit per message."""
  first_line = prompt.content.split("\n", 1)[0]
  starts = [i for i, m in enumerate(demos) if m.role == "user" and first_line and m.content.startswith(first_line)]
  if not starts or starts[0] != 0:
    return list(range(len(demos)))
  return starts


# ---------------------------------------------------------------------------------------------------
# Step examples -> token ids with a loss mask.


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedExample:
  """A step example as token ids, ready to batch (no padding: T varies, T <= max_len).

  Attributes:
    tokens: int32 [T]: BOS, the rendered state (ending with ``<start_of_turn>model\\n``), the action,
      ``<end_of_turn>``.
    loss_mask: bool [T]: True exactly on the action tokens and the final ``<end_of_turn>``.
    question_id / sample_index / step_index: where it came from.
    prompt_len: index of the first action token (== number of False entries of loss_mask).
    dropped_demo_messages: demonstration messages removed to fit (truncate_left).
    truncated_tokens: prefix tokens cut on the left after that (truncate_left).
  """

  tokens: np.ndarray
  loss_mask: np.ndarray
  question_id: str
  sample_index: int
  step_index: int
  prompt_len: int
  dropped_demo_messages: int = 0
  truncated_tokens: int = 0

  @property
  def truncated(self) -> bool:
    return self.dropped_demo_messages > 0 or self.truncated_tokens > 0

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


@dataclasses.dataclass(frozen=True)
class TokenizeReport:
  """Counts of a tokenization pass.

  Attributes:
    total: examples in.
    kept: examples out.
    truncated: kept examples that lost demonstrations or prefix tokens.
    dropped_over_length: skipped by the "drop" policy.
    dropped_action_too_long: skipped because the action alone does not fit.
    max_len / policy: the settings.
  """

  total: int
  kept: int
  truncated: int
  dropped_over_length: int
  dropped_action_too_long: int
  max_len: int
  policy: Policy

  def to_json(self) -> dict[str, int | str]:
    return dataclasses.asdict(self)


def _make(example: StepExample, prefix: list[int], action: list[int], dropped_demos: int,
          truncated: int) -> TokenizedExample:
  tokens = np.asarray(prefix + action, np.int32)
  mask = np.zeros(len(tokens), bool)
  mask[len(prefix):] = True
  return TokenizedExample(tokens=tokens, loss_mask=mask, question_id=example.question_id,
                          sample_index=example.sample_index, step_index=example.step_index,
                          prompt_len=len(prefix), dropped_demo_messages=dropped_demos, truncated_tokens=truncated)


def _tokenize(example: StepExample, tokenizer: Tokenizer, max_len: int, policy: Policy, prefix: list[int],
              action: list[int]) -> tuple[TokenizedExample | None, str]:
  """(the tokenized example or None, status: ok / truncated / over_length / action_too_long), from the whole
  state's ``encode_state`` ids and the action's ids + end of turn (``_tokenize_all``)."""
  if len(prefix) + len(action) <= max_len:
    return _make(example, prefix, action, 0, 0), "ok"
  if policy == "drop":
    return None, "over_length"

  # The smallest prefix we accept: BOS + the opening of the model's turn.
  min_prefix = 1 + len(tokenizer.encode(chat.MODEL_PREFIX, add_bos=False))
  if min_prefix + len(action) > max_len:
    return None, "action_too_long"
  demos, prompt, history = split_state(example.state, example.step_index)
  units = _demo_units(demos, prompt)
  for start in units[1:] + [len(demos)]:  # drop demonstrations [0, start), earliest first
    prefix = chat.encode_state(tokenizer, demos[start:] + (prompt,), history)
    if len(prefix) + len(action) <= max_len:
      return _make(example, prefix, action, start, 0), "truncated"
  keep = max_len - len(action) - 1
  cut = len(prefix) - 1 - keep
  return _make(example, [tokenizer.bos_id] + prefix[1 + cut :], action, len(demos), cut), "truncated"


def _extends(prev: StepExample, ex: StepExample) -> bool:
  """Whether ``ex`` is the step after ``prev`` in one trajectory: its state is ``prev``'s plus one model turn
  and one tool result (so encode_state's ids of it are ``prev``'s plus the ids of those two pieces)."""
  n = len(prev.state)
  return (ex.step_index == prev.step_index + 1 and ex.question_id == prev.question_id
          and ex.sample_index == prev.sample_index and len(ex.state) == n + 2
          and ex.state[n].role == "model" and ex.state[n + 1].role == "user" and ex.state[:n] == prev.state)


def _tokenize_all(examples: Iterable[StepExample], tokenizer: Tokenizer, max_len: int,
                  policy: Policy) -> Iterator[tuple[TokenizedExample | None, str]]:
  """``_tokenize`` of each example, in order. Consecutive steps of one trajectory are encoded incrementally:
  the state of step k + 1 holds step k's state, so its ids are step k's ids plus the encoded model turn and
  ``chat.continuation`` of the tool result, the pieces ``chat.encode_state`` encodes one by one (the same
  ids, without encoding the whole history again for every step). Anything else takes the full path."""
  prev: tuple[StepExample, list[int], list[int]] | None = None  # (example, its whole state's ids, action ids)
  for ex in examples:
    if policy not in POLICIES:  # (before any encoding)
      raise ValueError(f"unknown over-length policy {policy!r}; known: {list(POLICIES)}")
    action = tokenizer.encode(ex.action, add_bos=False) + [tokenizer.end_of_turn_id]
    if prev is not None and _extends(prev[0], ex):
      p_ex, p_prefix, p_action = prev
      turn, result = ex.state[-2], ex.state[-1]
      # The model turn is usually the previous example's action, already encoded.
      turn_ids = p_action[:-1] if turn.content == p_ex.action else tokenizer.encode(turn.content, add_bos=False)
      prefix = p_prefix + turn_ids + chat.encode_continuation(tokenizer, result.content)
    else:
      demos, prompt, history = split_state(ex.state, ex.step_index)
      prefix = chat.encode_state(tokenizer, demos + (prompt,), history)  # the sampler's context, token for token
    prev = (ex, prefix, action)
    yield _tokenize(ex, tokenizer, max_len, policy, prefix, action)


def tokenize_each(examples: Iterable[StepExample], tokenizer: Tokenizer, max_len: int,
                  policy: Policy = "truncate_left") -> Iterator[TokenizedExample | None]:
  """``tokenize_example`` of each example, in order (None where ``policy`` drops one); consecutive steps of
  a trajectory share their history's encoding (``_tokenize_all``)."""
  for tok, _ in _tokenize_all(examples, tokenizer, max_len, policy):
    yield tok


def tokenize_example(example: StepExample, tokenizer: Tokenizer, max_len: int,
                     policy: Policy = "truncate_left") -> TokenizedExample | None:
  """Token ids and loss mask of one example; None when ``policy`` drops it (see the module docstring)."""
  return next(_tokenize_all([example], tokenizer, max_len, policy))[0]


def tokenize_examples(examples: Sequence[StepExample], tokenizer: Tokenizer, max_len: int,
                      policy: Policy = "truncate_left") -> tuple[list[TokenizedExample], TokenizeReport]:
  """Tokenizes every example (as ``tokenize_each``); the report counts what was truncated or dropped and why."""
  out: list[TokenizedExample] = []
  counts = {"ok": 0, "truncated": 0, "over_length": 0, "action_too_long": 0}
  for tok, status in _tokenize_all(examples, tokenizer, max_len, policy):
    counts[status] += 1
    if tok is not None:
      out.append(tok)
  report = TokenizeReport(total=len(examples), kept=len(out), truncated=counts["truncated"],
                          dropped_over_length=counts["over_length"],
                          dropped_action_too_long=counts["action_too_long"], max_len=max_len, policy=policy)
  return out, report
