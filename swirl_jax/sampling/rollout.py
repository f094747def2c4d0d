"""SWiRL's inference loop: multi-step tool-augmented rollouts over a batch that refills as rows finish.

Each row of the sampler holds one trajectory. The model writes a turn; the one shared parser
(tools.parser) extracts a tool call, an answer, or a malformed turn; the host runs the tool and appends
``QUERY -> RESULT`` as a user turn to that row's KV cache (no re-encoding of the conversation), and the
model writes its next turn. A trajectory ends with an answer, when its tool budget is spent, or when its
context is full; its row is refilled with the next (question, sample) at once, so the batch stays full.

Malformed turns (no tag, two tags, unclosed tag, empty call, unknown tag, a tool the task does not allow)
are recorded as such, answered with an error message as the next user turn, and count against the
budget; they never stop the batch.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from flax import nnx

from swirl_jax import chat, prompts
from swirl_jax.distributed import to_host
from swirl_jax.judges.base import over_budget_step
from swirl_jax.sampling.decode import Sampler
from swirl_jax.sampling.generate import write_rows
from swirl_jax.sampling.turns import cut_turn
from swirl_jax.tokenizer import Tokenizer
from swirl_jax.tools.base import Tool
from swirl_jax.tools.parser import format_observation, parse_action
from swirl_jax.types import Question, Step, ToolCall, Trajectory

TASK_TOOLS = {"math": frozenset({"calculator"}), "search": frozenset({"search"})}
# The end reason of a trajectory never run: its prompt does not fit the cache. Fixed, so that reasons can be
# counted; the lengths are in provenance["end_detail"].
PROMPT_TOO_LONG = "prompt too long"


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Settings of the tool loop.

  Attributes:
    task: "math" (calculator) or "search" (BM25 search).
    samples_per_question: trajectories per question (the paper: 5).
    max_tool_calls: tool calls (non-answer turns, malformed ones included) allowed per trajectory, as the
      prompt states; a turn beyond them is recorded as malformed ("over_budget", its tool not run) and
      ends the trajectory. None = the task's default (10 math, 5 search); 0 = answer without tools.
    num_demos: worked demonstrations before the question (a base model needs one to follow the tags).
    seed: base seed; trajectory (question, k) samples with a seed derived from (seed, question id, k),
      so its tokens do not depend on its row or on which rows share the batch. Across sampler batch sizes
      they agree in float32 (every run so far) but not always in bfloat16, whose matmuls round differently
      at another batch width (a few tokens in a hundred rows); generate records the batch size in each
      trajectory's provenance.
    refill: refill a finished row at once (True) or wait until the whole batch has finished (False,
      the static-batch baseline of benchmarks/rollout.py).
  """

  task: prompts.Task = "math"
  samples_per_question: int = 1
  max_tool_calls: int | None = None
  num_demos: int = 1
  seed: int = 0
  refill: bool = True

  def __post_init__(self):
    if self.max_tool_calls is not None and self.max_tool_calls < 0:
      raise ValueError(f"rollout.max_tool_calls must be >= 0 (or None for the task default), got {self.max_tool_calls}")
    if self.samples_per_question < 1:
      raise ValueError(f"rollout.samples_per_question must be >= 1, got {self.samples_per_question}")

  @property
  def budget(self) -> int:
    return self.max_tool_calls if self.max_tool_calls is not None else prompts.step_budget(self.task)


def trajectory_seed(seed: int, question_id: str, sample_index: int) -> int:
  return zlib.crc32(f"{seed}/{question_id}/{sample_index}".encode()) & 0x7FFFFFFF


@dataclasses.dataclass
class _Row:
  """Host-side state of one busy row."""

  question: Question
  sample_index: int
  steps: list[Step]
  turn_tokens: list[int]
  turn_start_len: int
  turn_start_time: float
  tool_calls: int = 0


class Rollout:
  """Runs trajectories for questions with a Sampler, a tokenizer and tools."""

  def __init__(self, sampler: Sampler, params: nnx.State, tokenizer: Tokenizer, tools: Mapping[str, Tool],
               config: RolloutConfig, provenance: Mapping | None = None):
    allowed = TASK_TOOLS[config.task]
    missing = sorted(allowed - set(tools))
    if missing:
      raise ValueError(f"rollout task {config.task!r} needs tools {missing}; got {sorted(tools)}")
    self.sampler, self.params, self.tok, self.tools, self.cfg = sampler, params, tokenizer, tools, config
    self.allowed = allowed
    self.provenance = dict(provenance or {})
    self.demos = prompts.DEFAULT_DEMOS[config.task][:config.num_demos]
    self._end_ids = {tokenizer.eos_id, tokenizer.end_of_turn_id}

  def prompt_tokens(self, question: Question) -> list[int]:
    msgs = prompts.initial_messages(self.cfg.task, question.text, self.demos, self.cfg.budget)
    return chat.encode_state(self.tok, msgs, ())  # (later pieces: _end_turn, as encode_state joins them)

  def run(self, questions: Iterable[Question],
          on_trajectory: Callable[[Trajectory], None] | None = None) -> Iterator[Trajectory]:
    """Yields each finished Trajectory (in completion order) for every (question, sample)."""
    return self.run_jobs(((q, k) for q in questions for k in range(self.cfg.samples_per_question)),
                         on_trajectory)

  def run_jobs(self, jobs: Iterable[tuple[Question, int]],
               on_trajectory: Callable[[Trajectory], None] | None = None) -> Iterator[Trajectory]:
    """Yields the finished Trajectory of each (question, sample index) job, in completion order."""
    jobs = iter(jobs)
    s = self.sampler
    params = s.prepare(self.params)  # once per run, not per decode call
    state = s.init_state(params, np.zeros(s.batch, np.uint32))
    rows: dict[int, _Row] = {}
    chunks, set_len, seeds = {}, {}, {}
    unfit: list[Trajectory] = []  # questions whose prompt does not fit the cache

    def fill(free: Sequence[int]) -> None:
      free = list(free)
      while free:
        job = next(jobs, None)
        if job is None:
          return
        q, k = job
        toks = self.prompt_tokens(q)
        if len(toks) + s.sampling.max_new_tokens > s.cache_len:
          # recorded (no steps, no answer) rather than raised: one long question must not stop the batch,
          # nor every resumed run that reaches it again
          unfit.append(self._finish(_Row(q, k, [], [], len(toks), time.perf_counter()), None, PROMPT_TOO_LONG,
                                    f"{len(toks)} tokens + sampling.max_new_tokens="
                                    f"{s.sampling.max_new_tokens} > cache_len={s.cache_len}"))
          continue
        r = free.pop(0)
        rows[r] = _Row(q, k, [], [], len(toks), time.perf_counter())
        chunks[r], set_len[r], seeds[r] = toks, 0, trajectory_seed(self.cfg.seed, q.id, k)

    def report_unfit() -> Iterator[Trajectory]:
      while unfit:
        traj = unfit.pop(0)
        if on_trajectory:
          on_trajectory(traj)
        yield traj

    fill(range(s.batch))
    yield from report_unfit()
    while rows:
      state = write_rows(s, params, state, chunks, set_len, seeds)
      started_at = time.perf_counter()
      for r in chunks:
        rows[r].turn_start_time = started_at
      chunks, set_len, seeds = {}, {}, {}
      pending = to_host(state.pending)
      active = to_host(state.active)
      for r, row in rows.items():
        if not row.turn_tokens:
          row.turn_tokens.append(int(pending[r]))
      while active.any() and not (~active[list(rows)]).any():
        state, out = s.decode(params, state)
        out, active = to_host(out), to_host(state.active)
        for r, row in rows.items():
          row.turn_tokens.extend(int(t) for t in out[r] if t >= 0)
      lengths = to_host(state.cache.lengths)
      finished = []
      for r in sorted(rows):
        if active[r]:
          continue
        traj = self._end_turn(r, rows[r], int(lengths[r]), chunks, set_len)
        if traj is not None:
          finished.append(r)
          del rows[r]
          if on_trajectory:
            on_trajectory(traj)
          yield traj
      if self.cfg.refill or not rows:
        fill([r for r in range(s.batch) if r not in rows])
        yield from report_unfit()

  def _end_turn(self, r: int, row: _Row, length: int, chunks: dict, set_len: dict) -> Trajectory | None:
    """Records the row's finished turn; queues its tool result, or returns the finished trajectory."""
    s = self.sampler
    ids = row.turn_tokens
    in_cache = len(ids) - 1  # the last sampled token is pending, not yet in the cache
    text, keep = cut_turn(self.tok, ids, self._end_ids)
    if keep < in_cache:
      set_len[r] = length - (in_cache - keep)
      length = set_len[r]
    carry = ids[in_cache:keep]  # the pending token when it is part of the kept text
    canonical = self.tok.encode(text, add_bos=False)
    if canonical != ids[:keep]:
      # The model wrote its text as tokens that encoding the text does not give back (another split of a
      # word, or a closing tag merged with what followed). Every later reader of the conversation
      # (decompose's states, stage-2 RL, a model judge) encodes the text, so the cache is rewritten with
      # that encoding: the next turns see what training sees. At most max_new_tokens are rolled back.
      set_len[r] = length = row.turn_start_len
      carry = canonical
    parsed = parse_action(text, self.allowed)
    seconds = time.perf_counter() - row.turn_start_time
    # (new_tokens: the turn as the context holds it, so the next turn's prompt_tokens add up)
    base = dict(text=text, prompt_tokens=row.turn_start_len, new_tokens=len(canonical), seconds=seconds)
    row.turn_tokens = []
    if parsed.kind == "answer":
      row.steps.append(Step(kind="answer", answer=parsed.answer, **base))
      return self._finish(row, parsed.answer)
    # the prompt allowed `budget` calls: a further one is not run (its result would reach no model turn);
    # the rule is shared with stage 2's judge contexts
    over = over_budget_step(Step(kind=parsed.kind, call=parsed.call, error=parsed.error, **base),
                            row.tool_calls, self.cfg.budget)
    if over is not None:
      row.steps.append(over)
      return self._finish(row, None, "step budget exhausted")
    if parsed.kind == "tool_call":
      call: ToolCall = parsed.call
      t0 = time.perf_counter()
      result = self.tools[call.tool](call.input)
      observation = format_observation(call.input, result.output)
      base["seconds"] += time.perf_counter() - t0
      row.steps.append(Step(kind="tool_call", call=call, observation=observation, error=result.error, **base))
    else:
      observation = f"error: {parsed.error.split(': ', 1)[-1]}"
      row.steps.append(Step(kind="malformed", observation=observation, error=parsed.error, **base))
    row.tool_calls += 1
    cont = carry + chat.encode_continuation(self.tok, observation)
    if length + len(cont) + s.sampling.max_new_tokens > s.cache_len:
      return self._finish(row, None, "context full")
    chunks[r] = cont
    row.turn_start_len = length + len(cont)
    return None

  def _finish(self, row: _Row, answer: str | None, reason: str | None = None,
              detail: str | None = None) -> Trajectory:
    prov = dict(self.provenance, task=self.cfg.task, budget=self.cfg.budget, num_demos=self.cfg.num_demos,
                seed=trajectory_seed(self.cfg.seed, row.question.id, row.sample_index),
                sampling=dataclasses.asdict(self.sampler.sampling))
    if reason:
      prov["end_reason"] = reason
    if detail:
      prov["end_detail"] = detail
    return Trajectory(question=row.question, sample_index=row.sample_index, steps=tuple(row.steps),
                      final_answer=answer, provenance=prov)
