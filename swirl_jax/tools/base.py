"""The tool contract: a named callable from the call's input text to a ToolResult.

A tool never raises on bad input from the model: every failure the model could cause (a malformed
expression, an empty query, ...) comes back as a ToolResult whose ``output`` is a short observation the
model can read and act on ("error: division by zero") and whose ``error`` is a stable reason code plus
message for logs and analysis ("division_by_zero: division by zero"). Exceptions are reserved for host
bugs and broken configuration (a missing corpus file).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class ToolResult:
  """What a tool returns for one call.

  Attributes:
    output: the text shown to the model after ``QUERY -> `` (the result, or ``error: ...``).
    error: None on success; otherwise ``"<code>: <message>"`` with a stable snake_case code.
  """

  output: str
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None

  @property
  def error_code(self) -> str | None:
    """The stable part of ``error`` (before the first colon), e.g. "division_by_zero"."""
    return None if self.error is None else self.error.split(":", 1)[0]

  @classmethod
  def failure(cls, code: str, message: str) -> "ToolResult":
    """A failed call: the model sees ``error: message``; logs keep ``code: message``."""
    return cls(output=f"error: {message}", error=f"{code}: {message}")


@runtime_checkable
class Tool(Protocol):
  """A tool the rollout loop can call. ``name`` is the ToolCall.tool value it serves."""

  name: str

  def __call__(self, input: str) -> ToolResult:  # pylint: disable=redefined-builtin
    ...
