"""The single parser for model turns: tag constants, stop strings, truncation and action parsing.

Every component that reads or writes the tool-call format (the sampler's stop strings, the rollout loop,
the judges' prompts, evaluation) imports it from here, so the format cannot drift between them.

The format (DESIGN.md): in each turn the model may think aloud, then emits exactly one of

  <search_query>QUERY</search_query>   -> ToolCall(tool="search", input=QUERY)
  <math_exp>EXPRESSION</math_exp>      -> ToolCall(tool="calculator", input=EXPRESSION)
  <answer>ANSWER</answer>              -> final answer

Tags are matched exactly (case-sensitive, no spaces or attributes inside the angle brackets).
Whitespace around the content inside a tag is stripped.

The truncation rule. Generation stops at the first occurrence of any closing tag (``STOP_STRINGS``);
the sampler and ``truncate_after_action`` apply the same rule: a turn ends right after the first
complete closing tag of a known tag, wherever it occurs, and anything after it is not part of the turn.
(Base models keep rambling after the closing tag; DESIGN.md.) ``parse_action`` applies the rule itself,
so it gives the same result on a truncated turn and on the untruncated text; on untruncated text it
only sets ``trailing_text=True`` when non-whitespace text followed the cut. Text after the answer is
therefore never an error.

Malformed turns, checked in this order on the truncated text (the reason code is the part of
``ParsedAction.error`` before the colon):

  When the turn ends with a closing tag </T>:
    call_and_answer   an answer tag and a tool tag were both opened ("either call the tool or answer,
                      not both")
    multiple_tags     two or more tool tags (or two answer tags) were opened
    unopened_tag      </T> with no opening tag before it
    mismatched_tags   the one opening tag is not <T>
    empty_call        a tool tag with nothing but whitespace (or zero-width characters) inside
    empty_answer      an answer tag with nothing but whitespace (or zero-width characters) inside
    tool_not_allowed  a well-formed call of a tool that this task does not offer
  When it does not (no closing tag anywhere):
    unclosed_tag      a known tag was opened but never closed (also a closing tag cut off at the end)
    unknown_tag       no known tag, but a tag-like ``<name>`` / ``</name>`` (e.g. <python>, <tool>, or a
                      known tag with a space or attributes, <answer >); chat control tokens such as
                      <end_of_turn> do not count
    no_tag            none of the above
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from swirl_jax import types

SEARCH_TAG = "search_query"
MATH_TAG = "math_exp"
ANSWER_TAG = "answer"

# Tag name -> ToolCall.tool, and back.
TOOL_FOR_TAG: dict[str, types.ToolName] = {SEARCH_TAG: "search", MATH_TAG: "calculator"}
TAG_FOR_TOOL: dict[str, str] = {tool: tag for tag, tool in TOOL_FOR_TAG.items()}
KNOWN_TAGS: tuple[str, ...] = (SEARCH_TAG, MATH_TAG, ANSWER_TAG)
ALL_TOOLS: frozenset[str] = frozenset(TOOL_FOR_TAG.values())


def open_tag(tag: str) -> str:
  return f"<{tag}>"


def close_tag(tag: str) -> str:
  return f"</{tag}>"


# The sampler stops generation when any of these appears; a turn ends right after the first one.
STOP_STRINGS: tuple[str, ...] = tuple(close_tag(t) for t in KNOWN_TAGS)

ERROR_CODES: tuple[str, ...] = (
    "call_and_answer",
    "multiple_tags",
    "unopened_tag",
    "mismatched_tags",
    "empty_call",
    "empty_answer",
    "tool_not_allowed",
    "unclosed_tag",
    "unknown_tag",
    "no_tag",
)

_KNOWN = "|".join(KNOWN_TAGS)
_STOP_RE = re.compile(f"</({_KNOWN})>")
_OPEN_RE = re.compile(f"<({_KNOWN})>")
# Something that looks like a tag: <name>, </name> or <name attr=...>, name an identifier.
_TAGLIKE_RE = re.compile(r"</?([A-Za-z_][\w\-]*)(?:\s[^<>]*)?>")
# Chat-template control tokens a decoder may leave in the text: not attempts at a tool call.
_CONTROL_TAGS = frozenset({"start_of_turn", "end_of_turn", "bos", "eos", "pad"})


@dataclasses.dataclass(frozen=True)
class ParsedAction:
  """The host's reading of one model turn.

  Attributes:
    kind: "tool_call", "answer" or "malformed".
    call: the tool call when kind == "tool_call".
    answer: the final answer (stripped) when kind == "answer".
    error: ``"<code>: <message>"`` when kind == "malformed", else None; the message is written to be
      shown to the model.
    trailing_text: non-whitespace text followed the first closing tag and was ignored.
  """

  kind: types.ActionKind
  call: types.ToolCall | None = None
  answer: str | None = None
  error: str | None = None
  trailing_text: bool = False

  @property
  def error_code(self) -> str | None:
    return None if self.error is None else self.error.split(":", 1)[0]


def truncate_after_action(text: str) -> str:
  """Cuts ``text`` right after the first complete closing tag of a known tag (a stop string).

  Returns ``text`` unchanged when it holds no stop string. This is exactly where the sampler stops.
  """
  m = _STOP_RE.search(text)
  return text if m is None else text[: m.end()]


def format_observation(call_input: str, result: str) -> str:
  """The user turn that reports a tool result: ``QUERY -> RESULT`` (e.g. ``48 / 2 -> 24.0``)."""
  return f"{call_input} -> {result}"


def _tag_list(allowed_tools: frozenset[str]) -> str:
  """"<search_query>, <math_exp> or <answer>" for the tags this task accepts, in a fixed order."""
  tags = [open_tag(t) for t in (SEARCH_TAG, MATH_TAG) if TOOL_FOR_TAG[t] in allowed_tools]
  tags.append(open_tag(ANSWER_TAG))
  return ", ".join(tags[:-1]) + " or " + tags[-1] if len(tags) > 1 else tags[0]


def _malformed(code: str, message: str, trailing: bool) -> ParsedAction:
  return ParsedAction(kind="malformed", error=f"{code}: {message}", trailing_text=trailing)


def parse_action(text: str, allowed_tools: frozenset[str] = ALL_TOOLS) -> ParsedAction:
  """Parses one model turn. Never raises; deterministic for every input string.

  Args:
    text: the model's turn, truncated at a stop string or not (same result either way, apart from
      ``trailing_text``).
    allowed_tools: the ToolCall.tool names this task offers ("search", "calculator"); an answer is
      always allowed.

  Returns:
    The parsed action; see the module docstring for the malformed cases and their order.
  """
  turn = truncate_after_action(text)
  trailing = bool(text[len(turn):].strip())
  opens = _OPEN_RE.findall(turn)
  stop = _STOP_RE.search(turn)

  if stop is None:
    if opens:
      return _malformed(
          "unclosed_tag", f"{open_tag(opens[0])} is not closed with {close_tag(opens[0])}", trailing)
    for m in _TAGLIKE_RE.finditer(turn):  # (a known tag here has a space or attributes: exact ones matched above)
      if m.group(1) in KNOWN_TAGS:  # written with a space or attributes
        return _malformed("unknown_tag", f"{m.group(0)[:40]} is not the tag: write it exactly as "
                          f"{open_tag(m.group(1))}...{close_tag(m.group(1))}", trailing)
      if m.group(1) not in _CONTROL_TAGS:
        return _malformed(
            "unknown_tag",
            f"{m.group(0)[:40]} is not a known tag; use {_tag_list(allowed_tools)}",
            trailing)
    return _malformed("no_tag", f"no {_tag_list(allowed_tools)} tag found", trailing)

  tag = stop.group(1)
  if len(opens) > 1:
    if ANSWER_TAG in opens and any(t != ANSWER_TAG for t in opens):
      return _malformed("call_and_answer", "either call the tool or answer, not both", trailing)
    return _malformed(
        "multiple_tags", f"{len(opens)} tags opened; emit exactly one {_tag_list(allowed_tools)}",
        trailing)
  if not opens:
    return _malformed("unopened_tag", f"{close_tag(tag)} without an opening {open_tag(tag)}", trailing)
  if opens[0] != tag:
    return _malformed(
        "mismatched_tags", f"{open_tag(opens[0])} is closed with {close_tag(tag)}", trailing)

  start = turn.rindex(open_tag(tag)) + len(open_tag(tag))
  content = _trim(turn[start : stop.start()])
  if tag == ANSWER_TAG:
    if not content:
      return _malformed("empty_answer", f"{open_tag(tag)}{close_tag(tag)} is empty", trailing)
    return ParsedAction(kind="answer", answer=content, trailing_text=trailing)
  if not content:
    return _malformed("empty_call", f"{open_tag(tag)}{close_tag(tag)} is empty", trailing)
  tool = TOOL_FOR_TAG[tag]
  if tool not in allowed_tools:
    return _malformed(
        "tool_not_allowed",
        f"{open_tag(tag)} is not available for this task; use {_tag_list(allowed_tools)}", trailing)
  return ParsedAction(kind="tool_call", call=types.ToolCall(tool=tool, input=content), trailing_text=trailing)


def _trim(text: str) -> str:
  """``text`` without whitespace or format characters (U+200B, U+FEFF, ...: str.strip keeps them) at its ends,
  so "<answer>\u200bParis</answer>" answers "Paris"."""
  invisible = lambda ch: ch.isspace() or unicodedata.category(ch) == "Cf"
  start, end = 0, len(text)
  while start < end and invisible(text[start]):
    start += 1
  while end > start and invisible(text[end - 1]):
    end -= 1
  return text[start:end]
