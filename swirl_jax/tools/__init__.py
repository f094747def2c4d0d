"""Tools of the host-side rollout loop: the tag parser, the calculator and BM25 search.

``make_tool("calculator")`` / ``make_tool("search", paths=[...])`` build a tool by its ToolCall name;
``TOOLS`` is the (read-only) registry behind it.
"""

from __future__ import annotations

import types as _pytypes
from typing import Any, Callable, Mapping

from swirl_jax.tools.base import Tool, ToolResult
from swirl_jax.tools.calculator import Calculator, CalculatorError
from swirl_jax.tools.parser import (
    ALL_TOOLS,
    ANSWER_TAG,
    ERROR_CODES,
    KNOWN_TAGS,
    MATH_TAG,
    SEARCH_TAG,
    STOP_STRINGS,
    TAG_FOR_TOOL,
    TOOL_FOR_TAG,
    ParsedAction,
    close_tag,
    format_observation,
    open_tag,
    parse_action,
    truncate_after_action,
)
from swirl_jax.tools.search import (
    BM25Search,
    SearchConfig,
    cut_to_words,
    index_path,
    load_corpus,
    make_search,
    parse_corpus,
    tokenize,
)

# ToolCall.tool name -> factory(**kwargs) -> Tool. Read-only: no global mutable state.
TOOLS: Mapping[str, Callable[..., Tool]] = _pytypes.MappingProxyType({
    "calculator": Calculator,
    "search": make_search,
})


def make_tool(name: str, **kwargs: Any) -> Tool:
  """Builds the tool called ``name`` ("calculator" or "search") with its settings as kwargs.

  ``make_tool("search", paths=[...], top_k=1)`` or ``make_tool("search", paragraphs=[...])``;
  ``make_tool("calculator", max_chars=200)``.
  """
  if name not in TOOLS:
    raise ValueError(f"unknown tool {name!r}; known tools: {sorted(TOOLS)}")
  return TOOLS[name](**kwargs)


__all__ = [
    "ALL_TOOLS", "ANSWER_TAG", "BM25Search", "Calculator", "CalculatorError", "ERROR_CODES", "KNOWN_TAGS",
    "MATH_TAG", "ParsedAction", "SEARCH_TAG", "STOP_STRINGS", "SearchConfig", "TAG_FOR_TOOL", "TOOLS",
    "TOOL_FOR_TAG", "Tool", "ToolResult", "close_tag", "cut_to_words", "format_observation", "index_path",
    "load_corpus", "make_search", "make_tool", "open_tag", "parse_action", "parse_corpus", "tokenize",
    "truncate_after_action",
]
