"""The record types that travel between stages, each defined once.

Every arrow of the data flow (questions -> trajectories -> labelled trajectories -> step examples) is a
JSON Lines file of one of these records. Records are frozen dataclasses; ``to_json`` / ``from_json``
round-trip them through plain dicts so a person can open the files, and ``from_json`` names the missing
or mistyped field when a record is malformed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Mapping, Sequence, TypeVar

T = TypeVar("T")

ToolName = Literal["search", "calculator"]
ActionKind = Literal["tool_call", "answer", "malformed"]
Label = Literal["GOOD", "BAD"]


class RecordError(ValueError):
  """A record in a file does not have the fields or types its type requires."""


def _require(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
  if key not in d:
    raise RecordError(f"{where}: missing field {key!r}")
  value = d[key]
  if not isinstance(value, kind):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise RecordError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}: {value!r:.80}")
  return value


def _optional(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
  """``d[key]`` checked like ``_require`` when present and not null, else ``default``."""
  return default if d.get(key) is None else _require(d, key, kind, where)


def _count(d: Mapping[str, Any], key: str, where: str) -> int:
  value = _optional(d, key, int, where, 0)
  if isinstance(value, bool):
    raise RecordError(f"{where}: field {key!r} must be int, got bool: {value!r}")
  return value


def _strings(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
  """A list of strings (a bare string would be read as its characters)."""
  values = _optional(d, key, list, where, [])
  for i, v in enumerate(values):
    if not isinstance(v, str):
      raise RecordError(f"{where}: field {key!r}[{i}] must be str, got {type(v).__name__}: {v!r:.80}")
  return tuple(values)


def _label(d: Mapping[str, Any], key: str, where: str) -> "Label | None":
  value = _optional(d, key, str, where)
  if value not in (None, "GOOD", "BAD"):
    raise RecordError(f"{where}: field {key!r} must be GOOD, BAD or null, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class Paragraph:
  """One retrievable paragraph of a search corpus."""

  title: str
  text: str

  def to_json(self) -> dict[str, Any]:
    return {"title": self.title, "text": self.text}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "paragraph") -> "Paragraph":
    return cls(title=_require(d, "title", str, where), text=_require(d, "text", str, where))


@dataclasses.dataclass(frozen=True)
class Question:
  """A question with its gold answer.

  Attributes:
    id: unique within its dataset.
    dataset: e.g. "gsm8k", "hotpot_qa", "synthetic_arith".
    text: the question as shown to the model.
    answer: the canonical gold answer (for GSM8K the number after ####).
    aliases: other accepted answers (MuSiQue aliases; may be empty).
    context: optional paragraphs that come with the question (HotPotQA distractor setting).
    metadata: free-form extras kept for analysis (HotPotQA level/type, number of hops, ...).
  """

  id: str
  dataset: str
  text: str
  answer: str
  aliases: tuple[str, ...] = ()
  context: tuple[Paragraph, ...] = ()
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {
        "id": self.id,
        "dataset": self.dataset,
        "text": self.text,
        "answer": self.answer,
        "aliases": list(self.aliases),
        "context": [p.to_json() for p in self.context],
        "metadata": dict(self.metadata),
    }

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "question") -> "Question":
    return cls(
        id=_require(d, "id", str, where),
        dataset=_require(d, "dataset", str, where),
        text=_require(d, "text", str, where),
        answer=_require(d, "answer", str, where),
        aliases=_strings(d, "aliases", where),
        context=tuple(Paragraph.from_json(p, f"{where}.context[{i}]")
                      for i, p in enumerate(_optional(d, "context", list, where, []))),
        metadata=dict(_optional(d, "metadata", dict, where, {})),
    )


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """A parsed tool call: which tool and its input text (the text between the tags)."""

  tool: ToolName
  input: str

  def to_json(self) -> dict[str, Any]:
    return {"tool": self.tool, "input": self.input}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "tool_call") -> "ToolCall":
    return cls(tool=_require(d, "tool", str, where), input=_require(d, "input", str, where))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge's label for a step (process) or a final answer (outcome).

  Attributes:
    label: GOOD or BAD.
    score: P(GOOD) in [0, 1] when the judge gives one (1.0 / 0.0 for hard labels).
    explanation: the judge's reasoning, kept verbatim.
    judge: identity of the judge (backend, model, prompt version).
  """

  label: Label
  score: float
  explanation: str
  judge: str

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "verdict") -> "Verdict":
    label = _require(d, "label", str, where)
    if label not in ("GOOD", "BAD"):
      raise RecordError(f"{where}: field 'label' must be GOOD or BAD, got {label!r}")
    return cls(
        label=label,
        score=float(_require(d, "score", (int, float), where)),
        explanation=_require(d, "explanation", str, where),
        judge=_require(d, "judge", str, where),
    )


def _opt(value: Any, fn) -> Any:
  return None if value is None else fn(value)


@dataclasses.dataclass(frozen=True)
class Step:
  """One model turn of a trajectory and what the host did with it.

  Attributes:
    text: the model's raw text for this turn.
    kind: "tool_call", "answer", or "malformed" (the parser's reason is in ``error``).
    call: the parsed tool call when kind == "tool_call".
    answer: the parsed final answer when kind == "answer".
    observation: the tool result as appended to the conversation (``QUERY -> RESULT``), or the error
      message shown to the model for a malformed turn.
    error: why the turn was malformed or the tool failed (None when fine).
    prompt_tokens / new_tokens: token counts of the context before the turn and of the turn as the
      context holds it (the text's encoding; the sampled tokens can be more or fewer when the model split
      a word otherwise, or merged a closing tag with what followed).
    seconds: wall time spent generating this turn and running its tool.
    verdict: the process label once judged.
  """

  text: str
  kind: ActionKind
  call: ToolCall | None = None
  answer: str | None = None
  observation: str | None = None
  error: str | None = None
  prompt_tokens: int = 0
  new_tokens: int = 0
  seconds: float = 0.0
  verdict: Verdict | None = None

  def to_json(self) -> dict[str, Any]:
    return {
        "text": self.text,
        "kind": self.kind,
        "call": _opt(self.call, ToolCall.to_json),
        "answer": self.answer,
        "observation": self.observation,
        "error": self.error,
        "prompt_tokens": self.prompt_tokens,
        "new_tokens": self.new_tokens,
        "seconds": self.seconds,
        "verdict": _opt(self.verdict, Verdict.to_json),
    }

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "step") -> "Step":
    kind = _require(d, "kind", str, where)
    if kind not in ("tool_call", "answer", "malformed"):
      raise RecordError(f"{where}: field 'kind' must be tool_call, answer or malformed, got {kind!r}")
    return cls(
        text=_require(d, "text", str, where),
        kind=kind,
        call=_opt(_optional(d, "call", dict, where), lambda c: ToolCall.from_json(c, f"{where}.call")),
        answer=_optional(d, "answer", str, where),
        observation=_optional(d, "observation", str, where),
        error=_optional(d, "error", str, where),
        prompt_tokens=_count(d, "prompt_tokens", where),
        new_tokens=_count(d, "new_tokens", where),
        seconds=float(_optional(d, "seconds", (int, float), where, 0.0)),
        verdict=_opt(_optional(d, "verdict", dict, where), lambda v: Verdict.from_json(v, f"{where}.verdict")),
    )


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A multi-step attempt at one question.

  Attributes:
    question: the question attempted.
    sample_index: which of the K samples for this question (0..K-1); (question.id, sample_index) is the key.
    steps: the model turns in order.
    final_answer: the parsed answer of the last step, or None when the step budget ran out.
    outcome: the judge's verdict on the final answer once judged.
    provenance: how it was made (model, checkpoint, sampling settings, seed, prompt version).
  """

  question: Question
  sample_index: int
  steps: tuple[Step, ...]
  final_answer: str | None = None
  outcome: Verdict | None = None
  provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def key(self) -> tuple[str, int]:
    return (self.question.id, self.sample_index)

  def to_json(self) -> dict[str, Any]:
    return {
        "question": self.question.to_json(),
        "sample_index": self.sample_index,
        "steps": [s.to_json() for s in self.steps],
        "final_answer": self.final_answer,
        "outcome": _opt(self.outcome, Verdict.to_json),
        "provenance": dict(self.provenance),
    }

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "trajectory") -> "Trajectory":
    steps = _require(d, "steps", list, where)
    return cls(
        question=Question.from_json(_require(d, "question", dict, where), f"{where}.question"),
        sample_index=_require(d, "sample_index", int, where),
        steps=tuple(Step.from_json(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)),
        final_answer=_optional(d, "final_answer", str, where),
        outcome=_opt(_optional(d, "outcome", dict, where), lambda v: Verdict.from_json(v, f"{where}.outcome")),
        provenance=dict(_optional(d, "provenance", dict, where, {})),
    )

  @staticmethod
  def key_of(d: Any, where: str = "trajectory") -> tuple[str, int]:
    """``key`` of a trajectory record as read from JSON, without building the Trajectory (the resume
    bookkeeping of big files); a record without one is a RecordError naming ``where`` and the field."""
    if not isinstance(d, dict):
      raise RecordError(f"{where}: not a trajectory record (a JSON {type(d).__name__})")
    if isinstance(d.get("question"), dict):
      qid, index = d["question"].get("id"), d.get("sample_index")
      if isinstance(qid, str) and isinstance(index, int):
        return qid, index
    Trajectory.from_json(d, where)  # raises, naming the bad field
    raise RecordError(f"{where}: not a trajectory record")


@dataclasses.dataclass(frozen=True)
class Message:
  """One chat message. role is "user" or "model" (Gemma's turn names)."""

  role: Literal["user", "model"]
  content: str

  def to_json(self) -> dict[str, Any]:
    return {"role": self.role, "content": self.content}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "message") -> "Message":
    role = _require(d, "role", str, where)
    if role not in ("user", "model"):
      raise RecordError(f"{where}: field 'role' must be user or model, got {role!r}")
    return cls(role=role, content=_require(d, "content", str, where))


@dataclasses.dataclass(frozen=True)
class StepExample:
  """One state-action pair cut from a kept trajectory.

  Attributes:
    question_id / sample_index / step_index: where it came from.
    state: every message before action k (prompt, earlier actions, tool results).
    action: the recorded k-th model turn.
    process_label / outcome_label: the labels of the source step and trajectory, when judged.
    budget: the tool calls the prompt in ``state`` allows (the rollout's step budget); a sampled tool call
      at a state that already holds that many turns is over budget. None: unknown (files made before
      the field existed).
  """

  question_id: str
  sample_index: int
  step_index: int
  state: tuple[Message, ...]
  action: str
  process_label: Label | None = None
  outcome_label: Label | None = None
  budget: int | None = None

  def to_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {
        "question_id": self.question_id,
        "sample_index": self.sample_index,
        "step_index": self.step_index,
        "state": [m.to_json() for m in self.state],
        "action": self.action,
        "process_label": self.process_label,
        "outcome_label": self.outcome_label,
    }
    if self.budget is not None:  # absent when unknown: an old example keeps its JSON (and its digest)
      out["budget"] = self.budget
    return out

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str = "step_example") -> "StepExample":
    state = _require(d, "state", list, where)
    return cls(
        question_id=_require(d, "question_id", str, where),
        sample_index=_require(d, "sample_index", int, where),
        step_index=_require(d, "step_index", int, where),
        state=tuple(Message.from_json(m, f"{where}.state[{i}]") for i, m in enumerate(state)),
        action=_require(d, "action", str, where),
        process_label=_label(d, "process_label", where),
        outcome_label=_label(d, "outcome_label", where),
        budget=None if d.get("budget") is None else _count(d, "budget", where),
    )


def dumps(record: Any) -> str:
  """One JSON Lines line (no trailing newline) for a record."""
  return json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True)


def parse_object(line: str, where: str) -> dict[str, Any]:
  """One JSON object from a line of text; errors name ``where`` (file:line)."""
  try:
    d = json.loads(line)
  except json.JSONDecodeError as e:
    raise RecordError(f"{where}: not valid JSON (column {e.colno}: {e.msg})") from None
  if not isinstance(d, dict):
    raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
  return d


def loads(cls: type[T], line: str, where: str) -> T:
  """Parses one JSON Lines line into ``cls``; errors name ``where`` (file:line)."""
  return cls.from_json(parse_object(line, where), where)  # type: ignore[attr-defined]


def read_jsonl(cls: type[T], path: str) -> list[T]:
  """Reads every record of a JSON Lines file; blank lines are skipped."""
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        out.append(loads(cls, line, f"{path}:{lineno}"))
  return out


def write_jsonl(path: str, records: Sequence[Any]) -> None:
  """Writes records to a new JSON Lines file atomically (temp file + rename)."""
  from swirl_jax.atomic_io import atomic_open

  with atomic_open(path) as f:
    for r in records:
      f.write(dumps(r) + "\n")
