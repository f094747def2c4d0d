"""The judge interface, and the prompt-based judge that runs over any completion backend.

A judge gives every step a *process* verdict (step k judged in the context of steps < k) and every
trajectory an *outcome* verdict (the final answer against the key). Two kinds of judge implement
``Judge``:

* ``RuleJudge`` (rule.py): deterministic checks, no model.
* ``PromptJudge`` (here): renders the judge prompts (prompts.py), sends them to a ``JudgeBackend``
  and parses "VERDICT: GOOD/BAD" from the replies, with a content-addressed cache (cache.py) and an
  optional majority vote over ``n_votes`` samples.

A backend is anything that turns a list of chat requests into completion texts, optionally with
P(GOOD): the OpenAI-compatible HTTP client (openai_backend.py), an in-process JAX model, or a test
fake. That is the whole contract, so a new backend needs no change here.

The unit of process judging is a ``StepContext`` (task, the question's task prompt, the earlier steps,
the step to judge). It is built from a recorded trajectory (stage 1) or from a decomposed state and a
freshly sampled action (stage 2, ``context_from_state``), so both stages ask the judge the same thing;
that includes the step budget: a turn past it is malformed in both (``over_budget_step``, which the
rollout uses to record it).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import threading
from typing import Callable, Protocol, Sequence, runtime_checkable

from swirl_jax import prompts as task_prompts
from swirl_jax.judges import prompts as judge_prompts
from swirl_jax.judges.cache import CachedCompletion, JudgeCache, cache_key
from swirl_jax.tools.parser import parse_action
from swirl_jax.types import Label, Message, Step, Trajectory, Verdict

log = logging.getLogger(__name__)

_TOOLS_FOR_TASK = {"math": frozenset({"calculator"}), "search": frozenset({"search"})}


# ---------------------------------------------------------------------------------------------------
# What is judged.


@dataclasses.dataclass(frozen=True)
class StepContext:
  """One step to judge in its context.

  Attributes:
    task: "math" (calculator) or "search".
    prompt: the question's task prompt as the model saw it, without demonstrations.
    previous: the earlier steps of the trajectory, with their observations.
    action: the step to judge (its text, and the parsed call or answer).
  """

  task: task_prompts.Task
  prompt: str
  previous: tuple[Step, ...]
  action: Step


def step_from_text(text: str, task: task_prompts.Task) -> Step:
  """A Step for a model turn that was sampled but not executed (stage 2): parsed, no observation."""
  parsed = parse_action(text, _TOOLS_FOR_TASK[task])
  return Step(text=text, kind=parsed.kind, call=parsed.call, answer=parsed.answer, error=parsed.error)


def over_budget_step(step: Step, tool_calls: int, budget: int | None) -> Step | None:
  """The step recorded for a turn past the step budget, or None when the turn is within it.

  The prompt allows ``budget`` tool calls, and every earlier turn of a trajectory counts as one (an
  answer ends it; malformed turns count). A further turn that is not an answer is not run: it becomes a
  malformed step that keeps its parsed call and the parser's error, else gets an "over_budget" error.
  The rollout records turns with this and ``context_from_state`` judges sampled turns with it, so both
  stages give the judge the same step.

  Args:
    step: the parsed turn (its tool not run).
    tool_calls: non-answer turns before this one.
    budget: the tool calls allowed; None when unknown (never over budget).
  """
  if budget is None or step.kind == "answer" or tool_calls < budget:
    return None
  error = step.error or (f"over_budget: the tool was already called {tool_calls} times, "
                         f"the most the prompt allows")
  return dataclasses.replace(step, kind="malformed", answer=None, observation=None, error=error)


def step_contexts(trajectory: Trajectory, task: task_prompts.Task) -> list[StepContext]:
  """The context of every step of a trajectory: step k sees the prompt (with the step budget the rollout
  recorded, as the model saw it) and steps < k."""
  prompt = task_prompts.user_prompt(task, trajectory.question.text, trajectory.provenance.get("budget"))
  return [StepContext(task, prompt, trajectory.steps[:k], step) for k, step in enumerate(trajectory.steps)]


def context_from_state(task: task_prompts.Task, state: Sequence[Message], step_index: int,
                       action: str, budget: int | None = None) -> StepContext:
  """The context of a sampled ``action`` in a decomposed state (StepExample.state and .step_index).

  Demonstrations are dropped; earlier model turns are re-parsed and paired with the user turn that
  follows each as its observation. When the earlier turns already number ``budget`` (StepExample.budget;
  None = unknown), a tool call is over budget and judged as the malformed step the rollout records.
  """
  from swirl_jax.pipeline.decompose import split_state  # pipeline depends on judges, not back

  _, prompt, history = split_state(state, step_index)
  previous: list[Step] = []
  for m in history:
    if m.role == "model":
      previous.append(step_from_text(m.content, task))
    elif previous:
      previous[-1] = dataclasses.replace(previous[-1], observation=m.content)
  step = step_from_text(action, task)
  step = over_budget_step(step, len(previous), budget) or step
  return StepContext(task, prompt.content, tuple(previous), step)


# ---------------------------------------------------------------------------------------------------
# The interface.


class Judge(abc.ABC):
  """Labels steps (process) and final answers (outcome).

  Attributes:
    identity: written into every Verdict.judge (backend, model, prompt version).
    task: the task of every trajectory judged, or None to infer it per trajectory
      (``judge_prompts.infer_task``: provenance["task"], else the tool called, else the dataset).
  """

  identity: str
  task: task_prompts.Task | None = None

  def task_of(self, trajectory: Trajectory) -> task_prompts.Task:
    return self.task or judge_prompts.infer_task(trajectory)

  @abc.abstractmethod
  def judge_contexts(self, contexts: Sequence[StepContext]) -> list[Verdict]:
    """Process verdicts, one per context, in order."""

  @abc.abstractmethod
  def judge_outcomes(self, trajectories: Sequence[Trajectory]) -> list[Verdict]:
    """Outcome verdicts, one per trajectory, in order."""

  def judge_steps(self, trajectory: Trajectory) -> list[Verdict]:
    """A process verdict for every step; step k is judged with the context of steps < k."""
    return self.judge_contexts(step_contexts(trajectory, self.task_of(trajectory)))

  def judge_outcome(self, trajectory: Trajectory) -> Verdict:
    """The outcome verdict of the trajectory's final answer."""
    return self.judge_outcomes([trajectory])[0]

  def label(self, trajectories: Sequence[Trajectory], process: bool = True,
            outcome: bool = True) -> list[Trajectory]:
    """New trajectories with Step.verdict (when ``process``) and Trajectory.outcome (when ``outcome``).

    All steps of all trajectories go to ``judge_contexts`` in one call, so a backend can batch them.
    Labels that are not asked for are left as they were.
    """
    trajectories = list(trajectories)
    contexts: list[StepContext] = []
    if process:
      for t in trajectories:
        contexts.extend(step_contexts(t, self.task_of(t)))
    verdicts = self.judge_contexts(contexts) if contexts else []
    outcomes = self.judge_outcomes(trajectories) if outcome and trajectories else []
    out, pos = [], 0
    for i, t in enumerate(trajectories):
      steps = t.steps
      if process:
        steps = tuple(dataclasses.replace(s, verdict=v) for s, v in zip(t.steps, verdicts[pos : pos + len(steps)]))
        pos += len(steps)
      out.append(dataclasses.replace(t, steps=steps, outcome=outcomes[i] if outcome else t.outcome))
    return out


def over_budget(step: Step) -> bool:
  """Whether ``step`` is a well-formed call that ``over_budget_step`` refused (the prompt's budget was spent)."""
  return step.error is not None and step.error.startswith("over_budget:")


def over_budget_verdict(judge: str, step: Step) -> Verdict:
  """The process label of a call past the step budget: BAD, no judge call."""
  return Verdict("BAD", 0.0, f"not run: {step.error}", judge)


def no_answer_verdict(judge: str) -> Verdict:
  """The outcome of a trajectory that never answered (its step budget ran out): BAD, no judge call."""
  return Verdict("BAD", 0.0, "no final answer: the trajectory ended without an <answer>", judge)


# ---------------------------------------------------------------------------------------------------
# Backends.


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
  """One chat request to a judge model.

  Attributes:
    messages: the chat (our prompts are one user message; "model" maps to "assistant" over HTTP).
    vote: which of the n_votes samples this is; a backend may use it as a sampling seed.
  """

  messages: tuple[Message, ...]
  vote: int = 0

  @property
  def text(self) -> str:
    """The exact request content, canonical JSON: what the cache key hashes."""
    return json.dumps([m.to_json() for m in self.messages], ensure_ascii=False, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Completion:
  """A backend's reply: the text and, when the backend can score it, P(GOOD) in [0, 1]."""

  text: str
  p_good: float | None = None


OnDone = Callable[[int, Completion], None]


@runtime_checkable
class JudgeBackend(Protocol):
  """Turns chat requests into completions.

  Attributes:
    identity: who answers, e.g. "openai/<model>@<base_url>" or "jax/<checkpoint>"; no credentials.
    settings: the sampling settings that change completions (temperature, max tokens, ...); part of
      the cache key but not of the verdict's judge identity.
  """

  identity: str
  settings: str

  def complete(self, requests: Sequence[JudgeRequest], on_done: OnDone | None = None) -> list[Completion]:
    """One completion per request, in order. ``on_done(i, completion)`` may be called (from any
    thread) as soon as request i is finished, so finished work is cached even if a later one fails."""
    ...


def verdict_from_completions(completions: Sequence[CachedCompletion | Completion], judge: str) -> Verdict:
  """One verdict from the completions of the n votes on one request.

  Per vote: the label parsed from the text (else from p_good >= 0.5 when the backend gave one; else BAD,
  marked UNPARSEABLE) and a score (p_good when given, else 1.0 for GOOD and 0.0 for BAD). Over votes:
  the label is the strict majority (a tie is BAD: filters keep only steps most votes call GOOD), the
  score is the mean score (the fraction of GOOD votes for hard labels), and the explanation keeps
  every vote's text.
  """
  labels: list[Label] = []
  scores: list[float] = []
  texts: list[str] = []
  for c in completions:
    label = judge_prompts.parse_verdict(c.text)
    text = c.text.strip()
    if label is None and c.p_good is not None:
      label = "GOOD" if c.p_good >= 0.5 else "BAD"
    if label is None:
      label, text = "BAD", f"UNPARSEABLE VERDICT (counted as BAD): {text}"
    labels.append(label)
    scores.append(float(c.p_good) if c.p_good is not None else (1.0 if label == "GOOD" else 0.0))
    texts.append(text)
  n = len(labels)
  n_good = labels.count("GOOD")
  final: Label = "GOOD" if 2 * n_good > n else "BAD"
  if n == 1:
    return Verdict(final, scores[0], texts[0], judge)
  explanation = "\n\n".join(f"[vote {i + 1}/{n}: {l}] {t}" for i, (l, t) in enumerate(zip(labels, texts)))
  return Verdict(final, sum(scores) / n, explanation, judge)


def _usable(c: Completion) -> bool:
  return c.p_good is not None or judge_prompts.parse_verdict(c.text) is not None


class PromptJudge(Judge):
  """A judge that asks a model: the judge prompts over a ``JudgeBackend``, cached, with voting."""

  def __init__(self, backend: JudgeBackend, cache: JudgeCache | None = None, n_votes: int = 1,
               task: task_prompts.Task | None = None):
    """Args:
      backend: where requests go.
      cache: completions already paid for; default an in-memory cache for this judge's lifetime.
      n_votes: samples per request; the verdict is their majority (use an odd number and a
        temperature > 0, or every vote is the same).
      task: the task of every trajectory, or None to infer it per trajectory.
    """
    if n_votes < 1:
      raise ValueError(f"n_votes must be >= 1, got {n_votes}")
    self.backend = backend
    self.cache = cache if cache is not None else JudgeCache()
    self.n_votes = n_votes
    self.task = task
    votes = f"|votes={n_votes}" if n_votes > 1 else ""
    self.identity = f"{backend.identity}|{judge_prompts.PROMPT_VERSION}{votes}"

  def __repr__(self) -> str:
    return f"PromptJudge(identity={self.identity!r})"

  def _requests(self, prompt: str) -> list[JudgeRequest]:
    return [JudgeRequest((Message("user", prompt),), vote=v) for v in range(self.n_votes)]

  def complete(self, requests: Sequence[JudgeRequest]) -> list[CachedCompletion]:
    """Completions for ``requests``: cached ones from the cache, the rest from the backend (each
    distinct request once), stored as they arrive. Unparseable replies are not stored, so a rerun
    asks again."""
    keys = [cache_key(self.backend.identity, self.backend.settings, judge_prompts.PROMPT_VERSION, r.text, r.vote)
            for r in requests]
    results: list[CachedCompletion | None] = [None] * len(requests)
    first: dict[str, int] = {}
    todo: list[int] = []
    for i, k in enumerate(keys):
      if k in first:
        continue
      first[k] = i
      hit = self.cache.get(k)
      if hit is None:
        todo.append(i)
      else:
        results[i] = hit
    if todo:
      lock = threading.Lock()
      stored: set[int] = set()

      def store(j: int, c: Completion) -> None:
        i = todo[j]
        with lock:
          if i in stored:
            return
          stored.add(i)
        entry = CachedCompletion(text=c.text, p_good=None if c.p_good is None else float(c.p_good))
        results[i] = entry
        if _usable(c):
          self.cache.put(keys[i], entry, judge=self.backend.identity,
                         prompt_version=judge_prompts.PROMPT_VERSION, vote=requests[i].vote)
        else:
          log.warning("Judge %s gave no parseable verdict: %.200r", self.identity, c.text)

      out = self.backend.complete([requests[i] for i in todo], on_done=store)
      if len(out) != len(todo):
        raise RuntimeError(f"backend {self.backend.identity} returned {len(out)} completions "
                           f"for {len(todo)} requests")
      for j, c in enumerate(out):
        store(j, c)
    return [results[i] if results[i] is not None else results[first[k]] for i, k in enumerate(keys)]

  def _judge_prompts(self, prompts: Sequence[str]) -> list[Verdict]:
    requests = [r for p in prompts for r in self._requests(p)]
    completions = self.complete(requests)
    n = self.n_votes
    return [verdict_from_completions(completions[i * n : (i + 1) * n], self.identity) for i in range(len(prompts))]

  def judge_contexts(self, contexts: Sequence[StepContext]) -> list[Verdict]:
    # A call past the budget reads like any other call (the judge would have to count the turns): the
    # host's finding decides it, as the rule judge's does.
    asked = [i for i, c in enumerate(contexts) if not over_budget(c.action)]
    verdicts = self._judge_prompts([judge_prompts.process_prompt(contexts[i].task, contexts[i].prompt,
                                                                 contexts[i].previous, contexts[i].action.text)
                                    for i in asked])
    out = [over_budget_verdict(self.identity, c.action) for c in contexts]
    for i, v in zip(asked, verdicts):
      out[i] = v
    return out

  def judge_outcomes(self, trajectories: Sequence[Trajectory]) -> list[Verdict]:
    answered = [i for i, t in enumerate(trajectories) if t.final_answer is not None]
    verdicts = self._judge_prompts([
        judge_prompts.outcome_prompt(t.question.text, t.question.answer, t.question.aliases, t.final_answer)
        for t in (trajectories[i] for i in answered)])
    out = [no_answer_verdict(self.identity)] * len(trajectories)
    for i, v in zip(answered, verdicts):
      out[i] = v
    return out
