"""The deterministic rule judge (backend "rule"): SWiRL's labels approximated by checks, no model.

Process checks, in order; the first that fails makes the step BAD and its explanation names it:

* ``malformed``: the turn is not a well-formed call or answer (Step.kind == "malformed").
* calculator call: the expression must evaluate (``tools.Calculator``); division by zero, names,
  unbalanced parentheses, ... are BAD.
* search call: the query must have words after normalisation, and must not repeat an earlier query
  of the same trajectory. Queries are compared as bags of normalised words, because BM25 ignores word
  order: "Jeunet born" repeats "born Jeunet".
* answer: it must be supported by an earlier observation: a number equal to a calculator result or to
  a number in a search result, or text that occurs (as whole normalised words) in a search result.
  Yes/no answers (comparison questions) never occur literally in evidence; they count as supported
  once some search has returned evidence.

Outcome: the final answer matches the key or one of its aliases after normalisation, numbers compared
numerically ("10", "10.00", "$10", "10 dollars" are equal; ``answers.exact_match``). No final answer is
BAD.

Scores are hard: 1.0 for GOOD, 0.0 for BAD.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from swirl_jax import prompts as task_prompts
from swirl_jax.judges import answers
from swirl_jax.judges.base import Judge, StepContext, no_answer_verdict
from swirl_jax.tools.calculator import Calculator, CalculatorError
from swirl_jax.types import Step, Trajectory, Verdict

RULE_VERSION = "rule/v1"


def _query_words(query: str) -> tuple[str, ...]:
  return tuple(sorted(answers.normalize_words(query).split()))


def _calculator_result(step: Step, calculator: Calculator) -> float | None:
  """The value a successful calculator step returned: from its observation ("EXPR -> 24.0") as the
  model saw it, else by evaluating the expression again."""
  if step.call is None or step.call.tool != "calculator" or step.error is not None:
    return None
  if step.observation is not None:
    _, sep, result = step.observation.rpartition(" -> ")
    if sep:
      try:
        return float(result)
      except ValueError:  # "error: ..." or a rewritten observation
        return None
  try:
    return calculator.evaluate(step.call.input)
  except CalculatorError:
    return None


def _search_result(step: Step) -> str | None:
  """The retrieved text of a successful search step (what follows "QUERY -> ")."""
  if step.call is None or step.call.tool != "search" or step.error is not None or step.observation is None:
    return None
  prefix = f"{step.call.input} -> "
  obs = step.observation
  result = obs[len(prefix):] if obs.startswith(prefix) else obs
  return None if result.startswith("error:") else result


@dataclasses.dataclass(frozen=True)
class RuleJudge(Judge):
  """The rule judge.

  Attributes:
    calculator: evaluates calculator inputs (the same tool the rollout uses).
    task: the task of every trajectory, or None to infer it per trajectory (unused by the checks,
      which read each step's own tool; kept for the Judge interface).
  """

  calculator: Calculator = Calculator()
  task: task_prompts.Task | None = None
  identity: str = RULE_VERSION

  def _verdict(self, ok: bool, why: str) -> Verdict:
    return Verdict("GOOD" if ok else "BAD", 1.0 if ok else 0.0, why, self.identity)

  def judge_step(self, previous: Sequence[Step], step: Step) -> Verdict:
    """The process verdict of ``step`` after ``previous``."""
    if step.kind == "malformed":
      return self._verdict(False, f"malformed: {step.error or 'not a well-formed call or answer'}")
    if step.kind == "tool_call":
      call = step.call
      if call is None:
        return self._verdict(False, "malformed: a tool_call step without a parsed call")
      if call.tool == "calculator":
        try:
          value = self.calculator.evaluate(call.input)
        except CalculatorError as e:
          return self._verdict(False, f"calculator input does not evaluate: {e.code}: {e.message}")
        return self._verdict(True, f"calculator input evaluates to {answers.format_number(value)}")
      words = _query_words(call.input)
      if not words:
        return self._verdict(False, "empty search query: no words after normalisation")
      for j, prev in enumerate(previous):
        if prev.call is not None and prev.call.tool == "search" and _query_words(prev.call.input) == words:
          return self._verdict(False, f"search query repeats the query of step {j}")
      return self._verdict(True, "search query is new and not empty")
    return self._judge_answer(previous, step.answer or "")

  def _judge_answer(self, previous: Sequence[Step], answer: str) -> Verdict:
    if not answers.normalize_answer(answer):
      return self._verdict(False, "answer is empty after normalisation")
    number = answers.parse_number(answer)
    evidence = []
    for j, prev in enumerate(previous):
      value = _calculator_result(prev, self.calculator)
      if value is not None and number is not None and answers.numbers_equal(number, value):
        return self._verdict(True, f"answer equals the calculator result of step {j}")
      text = _search_result(prev)
      if text is not None:
        evidence.append((j, text))
        if answers.contains_answer(text, answer):
          return self._verdict(True, f"answer occurs in the search result of step {j}")
    if evidence and answers.normalize_text(answer) in answers.YES_NO:
      return self._verdict(True, "yes/no answer after retrieving evidence (not checkable by matching)")
    if not evidence and not any(_calculator_result(p, self.calculator) is not None for p in previous):
      return self._verdict(False, "answer not supported: no earlier tool result to support it")
    return self._verdict(False, "answer not supported: it matches no calculator result or search result")

  def judge_contexts(self, contexts: Sequence[StepContext]) -> list[Verdict]:
    return [self.judge_step(c.previous, c.action) for c in contexts]

  def judge_outcome_of(self, trajectory: Trajectory) -> Verdict:
    if trajectory.final_answer is None:
      return no_answer_verdict(self.identity)
    q = trajectory.question
    for gold in (q.answer, *q.aliases):
      if answers.exact_match(trajectory.final_answer, gold):
        which = "the answer key" if gold == q.answer else "an alias of the key"
        return self._verdict(True, f"final answer matches {which} {gold!r}")
    return self._verdict(False, f"final answer {trajectory.final_answer!r} matches neither the key "
                                f"{q.answer!r} nor its {len(q.aliases)} aliases")

  def judge_outcomes(self, trajectories: Sequence[Trajectory]) -> list[Verdict]:
    return [self.judge_outcome_of(t) for t in trajectories]
