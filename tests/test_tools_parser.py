"""Tests for swirl_jax.tools.parser: the one parser of model turns."""

from __future__ import annotations

import dataclasses
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from swirl_jax import types
from swirl_jax.tools import parser
from swirl_jax.tools.parser import STOP_STRINGS, format_observation, parse_action, truncate_after_action

BOTH = frozenset({"search", "calculator"})
MATH = frozenset({"calculator"})

# (model turn, allowed tools, expected error code); every row is malformed.
MALFORMED_TABLE = [
    ("I am not sure what to do.", BOTH, "no_tag"),
    ("", BOTH, "no_tag"),
    ("The answer is 42 <end_of_turn>", BOTH, "no_tag"),  # chat control tokens are not tool tags
    # Two tags opened before the first closing tag. (Two COMPLETE calls are not malformed: the turn
    # ends at the first closing tag; see test_two_complete_calls_take_the_first.)
    ("<math_exp>2 + 2 <math_exp>3 + 3</math_exp>", BOTH, "multiple_tags"),
    ("<search_query>a <search_query>b</search_query>", BOTH, "multiple_tags"),
    ("<math_exp>2 + 2 <answer>4</answer>", BOTH, "call_and_answer"),
    ("<answer>4 <search_query>four</search_query>", BOTH, "call_and_answer"),
    ("<answer><math_exp>2+2</math_exp></answer>", BOTH, "call_and_answer"),
    ("Let me compute <math_exp>48 / 2", BOTH, "unclosed_tag"),
    ("<math_exp>48 / 2</math_ex", BOTH, "unclosed_tag"),  # generation cut mid closing tag
    ("<answer>Paris", BOTH, "unclosed_tag"),
    ("<math_exp>   </math_exp>", BOTH, "empty_call"),
    ("<search_query></search_query>", BOTH, "empty_call"),
    ("<answer>\n</answer>", BOTH, "empty_answer"),
    ("<answer>\u200b</answer>", BOTH, "empty_answer"),  # a zero-width space: str.strip keeps it
    ("<search_query> \u2060\ufeff </search_query>", BOTH, "empty_call"),
    ("<python>print(1)</python>", BOTH, "unknown_tag"),
    ("<tool>calculator: 2+2</tool>", BOTH, "unknown_tag"),
    ('<tool_call name="search">x</tool_call>', BOTH, "unknown_tag"),
    ("<ANSWER>4</ANSWER>", BOTH, "unknown_tag"),  # tags are case-sensitive
    ("<answer >4</answer >", BOTH, "unknown_tag"),  # a known tag with a space is not the tag (was no_tag)
    ('<math_exp type="x">2+2</math_exp >', BOTH, "unknown_tag"),
    ("<search_query>Paris</search_query>", MATH, "tool_not_allowed"),
    ("<math_exp>1+1</math_exp>", frozenset({"search"}), "tool_not_allowed"),
    ("<math_exp>1+1</math_exp>", frozenset(), "tool_not_allowed"),
    ("So the result is 4.</answer>", BOTH, "unopened_tag"),
    ("<math_exp>2 + 2</answer>", BOTH, "mismatched_tags"),
]


@pytest.mark.parametrize("text,allowed,code", MALFORMED_TABLE)
def test_malformed_table(text, allowed, code):
  a = parse_action(text, allowed)
  assert a.kind == "malformed"
  assert a.error_code == code, a.error
  assert a.call is None and a.answer is None
  assert code in parser.ERROR_CODES
  # "code: human message", the message non-empty.
  assert a.error.startswith(code + ": ") and len(a.error) > len(code) + 3


def test_error_messages_read_well():
  assert parse_action("nothing", BOTH).error == "no_tag: no <search_query>, <math_exp> or <answer> tag found"
  assert parse_action("nothing", MATH).error == "no_tag: no <math_exp> or <answer> tag found"
  assert parse_action("nothing", frozenset()).error == "no_tag: no <answer> tag found"
  assert (parse_action("<math_exp>1 <answer>1</answer>", BOTH).error
          == "call_and_answer: either call the tool or answer, not both")
  assert "<python>" in parse_action("<python>1</python>", BOTH).error


@pytest.mark.parametrize("text,kind,call,answer", [
    ("<search_query>Who founded Rome?</search_query>", "tool_call", ("search", "Who founded Rome?"), None),
    ("Thinking... I need 48/2.\n<math_exp> 48 / 2 </math_exp>", "tool_call", ("calculator", "48 / 2"), None),
    ("<answer>\n  Romulus \n</answer>", "answer", None, "Romulus"),
    ("<think>plan</think> then <answer>7</answer>", "answer", None, "7"),  # unknown tags in thoughts: fine
    ("compare a < b and c > d: <math_exp>3 < 4</math_exp>", "tool_call", ("calculator", "3 < 4"), None),
])
def test_well_formed(text, kind, call, answer):
  a = parse_action(text, BOTH)
  assert a.kind == kind and a.error is None and not a.trailing_text
  assert a.answer == answer
  assert a.call == (None if call is None else types.ToolCall(tool=call[0], input=call[1]))


def test_text_after_the_answer_is_truncated_not_an_error():
  text = "<answer>Paris</answer> is the capital. <answer>Lyon</answer>"
  a = parse_action(text, BOTH)
  assert a.kind == "answer" and a.answer == "Paris" and a.trailing_text
  assert truncate_after_action(text) == "<answer>Paris</answer>"
  t = parse_action(truncate_after_action(text), BOTH)
  assert t == parser.ParsedAction(kind="answer", answer="Paris", trailing_text=False)
  # Trailing whitespace alone is not flagged.
  assert not parse_action("<answer>Paris</answer>\n  ", BOTH).trailing_text


def test_call_then_rambling_uses_the_first_action():
  a = parse_action("<math_exp>48/2</math_exp>\nuser: 48/2 -> 24.0\n<answer>24</answer>", BOTH)
  assert a.kind == "tool_call" and a.call.input == "48/2" and a.trailing_text


def test_zero_width_characters_around_an_answer_are_not_part_of_it():
  """str.strip keeps U+200B: "<answer>\u200bParis</answer>" answered "\u200bParis", which matched no key."""
  for text in ("<answer>\u200bParis</answer>", "<answer> Paris\ufeff </answer>", "<answer>\u2060 Paris</answer>"):
    a = parse_action(text, BOTH)
    assert a.kind == "answer" and a.answer == "Paris", text
  assert parse_action("<answer>Pa\u200bris</answer>", BOTH).answer == "Pa\u200bris"  # inside: kept as written
  call = parse_action("<math_exp>\u200b2 + 2\u200b</math_exp>", BOTH).call
  assert call.input == "2 + 2"


def test_two_complete_calls_take_the_first():
  a = parse_action("<math_exp>2 + 2</math_exp><math_exp>3 + 3</math_exp>", BOTH)
  assert a.kind == "tool_call" and a.call.input == "2 + 2" and a.trailing_text
  a = parse_action("<search_query>a</search_query> and <answer>b</answer>", BOTH)
  assert a.kind == "tool_call" and a.call.input == "a" and a.trailing_text


def test_truncate_after_action():
  assert truncate_after_action("no tags") == "no tags"
  assert truncate_after_action("a</math_exp>b</answer>c") == "a</math_exp>"
  assert truncate_after_action("x <answer>1</answer> y") == "x <answer>1</answer>"
  assert truncate_after_action("<math_exp>1</math_ex") == "<math_exp>1</math_ex"


def test_constants():
  assert STOP_STRINGS == ("</search_query>", "</math_exp>", "</answer>")
  assert parser.TOOL_FOR_TAG == {"search_query": "search", "math_exp": "calculator"}
  assert parser.TAG_FOR_TOOL["calculator"] == "math_exp"
  assert set(parser.TOOL_FOR_TAG.values()) == parser.ALL_TOOLS


def test_format_observation():
  assert format_observation("48 / 2", "24.0") == "48 / 2 -> 24.0"


# --- properties -------------------------------------------------------------------------------------

# Content that holds no '<' cannot contain a tag; trimming its ends is the only change the parser makes.
_plain = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=60)


# every whitespace and format (Cf: U+200B, U+00AD, U+FEFF, ...) character: what the parser trims off the ends
_INVISIBLE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace() or unicodedata.category(chr(c)) == "Cf")


def _trimmed(text):
  return text.strip(_INVISIBLE)


_tags = st.sampled_from([("search_query", "search"), ("math_exp", "calculator"), ("answer", None)])


@settings(max_examples=300, deadline=None)
@given(prefix=_plain, content=_plain, suffix=st.text(max_size=60), tag=_tags)
def test_wrapped_content_is_recovered_exactly(prefix, content, suffix, tag):
  name, tool = tag
  text = f"{prefix}<{name}>{content}</{name}>{suffix}"
  a = parse_action(text, BOTH)
  if not _trimmed(content):
    assert a.kind == "malformed" and a.error_code in ("empty_call", "empty_answer")
  elif tool is None:
    assert a.kind == "answer" and a.answer == _trimmed(content)
  else:
    assert a.kind == "tool_call" and a.call == types.ToolCall(tool=tool, input=_trimmed(content))
  assert a.trailing_text == bool(suffix.strip())
  # Same result, apart from the trailing flag, on the truncated turn.
  assert parse_action(truncate_after_action(text), BOTH) == dataclasses.replace(a, trailing_text=False)


# Arbitrary text, with tag fragments mixed in so that the interesting branches are reached.
_fragments = st.sampled_from(
    ["<answer>", "</answer>", "<math_exp>", "</math_exp>", "<search_query>", "</search_query>", "<python>",
     "</tool>", "<", ">", "/", " ", "\n", "2+2", "Paris"])
_noisy = st.lists(st.one_of(_fragments, st.text(max_size=8)), max_size=12).map("".join)
_allowed = st.sets(st.sampled_from(["search", "calculator"])).map(frozenset)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(), _noisy), allowed=_allowed)
def test_never_raises_and_is_consistent(text, allowed):
  a = parse_action(text, allowed)
  assert a == parse_action(text, allowed)  # deterministic
  assert a.kind in ("tool_call", "answer", "malformed")
  if a.kind == "malformed":
    assert a.error_code in parser.ERROR_CODES and a.call is None and a.answer is None
  elif a.kind == "tool_call":
    assert a.error is None and a.call.tool in allowed and a.call.input == a.call.input.strip() != ""
  else:
    assert a.error is None and a.answer == a.answer.strip() != ""
  # The truncated turn parses the same way; truncation is idempotent.
  cut = truncate_after_action(text)
  assert truncate_after_action(cut) == cut and text.startswith(cut)
  assert parse_action(cut, allowed) == dataclasses.replace(a, trailing_text=False)


def test_a_known_tag_with_a_space_is_told_how_to_write_it():
  assert parse_action("<answer >4</answer >").error == (
      "unknown_tag: <answer > is not the tag: write it exactly as <answer>...</answer>")
