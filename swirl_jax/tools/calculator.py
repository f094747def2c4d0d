"""An arithmetic calculator for ``<math_exp>`` calls: strict validation, then numexpr in float64.

Accepted syntax (anything else is refused with an error observation, never evaluated):

* numbers: ``12``, ``3.5``, ``.5``, ``5.``, scientific ``1e3`` / ``2.5E-4``, and commas as thousands
  separators in strict groups of three (``1,000``, ``12,345.67``; ``1,00`` and ``2,5`` are refused,
  since a comma has no other meaning here and guessing a decimal comma would be wrong half the time);
* binary operators ``+ - * / // % **`` and ``^`` as a synonym for ``**`` (in arithmetic written by a
  model ``2^3`` means a power; Python's XOR makes no sense on floats), plus the Unicode signs ``×``
  (times), ``÷`` (divide) and ``−`` (minus sign);
* unary ``-`` and ``+``, and parentheses.

No names (``sqrt``, ``__import__``), attributes, strings, commas between arguments or other
characters are accepted. Precedence and associativity are Python's: ``-2**2 == -4``,
``2**3**2 == 512``, ``2**-1 == 0.5``; ``%`` and ``//`` follow Python's float semantics (the result of
``%`` takes the sign of the divisor).

Evaluation. A hand-written tokenizer and shunting-yard parser (iterative, so nesting cannot exhaust
the Python stack) validate the whole expression first. A bounded walk over the parsed expression in
float64 then refuses, before anything is handed to numexpr, exponents larger than
``max_abs_exponent`` in magnitude, division (``/``, ``//``, ``%``) by zero, a negative base with a
fractional exponent (not a real number) and any intermediate overflow. Only then does numexpr
evaluate a normalised copy of the expression that contains nothing but float literals, operators and
parentheses (it never sees a name, an attribute or the caller's variables). Every step is float64
arithmetic on at most ``max_chars`` characters, so a call takes microseconds whatever the input.

The result is written as a Python float, as in the paper: ``48 / 2 -> 24.0`` (``str(float(x))``;
``-0.0`` is written ``0.0``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Callable, ClassVar

import numexpr

from swirl_jax.tools.base import ToolResult

_SYNTAX_HELP = "use numbers, + - * / // % ** ^ and parentheses"

# Tokens, tried in order at each position. Thousands groups must be followed by neither a digit nor
# another comma, so "1,0000" is not read as "1,000" then "0".
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d*)?")
_NUMBER_RE = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPERATOR_RE = re.compile(r"\*\*|//|[-+*/%^()×÷−]")
_NAME_RE = re.compile(r"[^\W\d]\w*")
_SPACE_RE = re.compile(r"\s+")

_CANONICAL_OP = {"^": "**", "×": "*", "÷": "/", "−": "-"}

_BINARY: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
# Binding power of binary and prefix operators (Python's order); "**" is right-associative and
# binds tighter than a prefix sign on its left (-2**2 == -(2**2)).
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "u-": 3, "u+": 3, "**": 4}
_RIGHT_ASSOC = frozenset({"**", "u-", "u+"})


class CalculatorError(ValueError):
  """An expression the calculator refuses; ``code`` is a stable snake_case reason."""

  def __init__(self, code: str, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


@dataclasses.dataclass(frozen=True)
class _Num:
  value: float


@dataclasses.dataclass(frozen=True)
class _Op:
  symbol: str  # a key of _PRECEDENCE, or "(" / ")" while tokenizing


def _tokenize(expression: str) -> list[_Num | _Op]:
  tokens: list[_Num | _Op] = []
  pos = 0
  n = len(expression)
  while pos < n:
    if m := _SPACE_RE.match(expression, pos):
      pos = m.end()
      continue
    if m := _THOUSANDS_RE.match(expression, pos) or _NUMBER_RE.match(expression, pos):
      value = float(m.group(0).replace(",", ""))
      if not math.isfinite(value):
        raise CalculatorError("overflow", f"the number {m.group(0)[:20]} is too large")
      tokens.append(_Num(value))
    elif m := _OPERATOR_RE.match(expression, pos):
      tokens.append(_Op(_CANONICAL_OP.get(m.group(0), m.group(0))))
    elif m := _NAME_RE.match(expression, pos):
      raise CalculatorError(
          "names_not_allowed", f"names such as {m.group(0)[:20]!r} are not allowed; {_SYNTAX_HELP}")
    elif expression[pos] == ",":
      raise CalculatorError(
          "syntax", f"a comma is only allowed as a thousands separator (1,000); {_SYNTAX_HELP}")
    else:
      raise CalculatorError(
          "unsupported_character", f"the character {expression[pos]!r} is not allowed; {_SYNTAX_HELP}")
    pos = m.end()
  return tokens


def _to_rpn(tokens: list[_Num | _Op], max_depth: int) -> list[_Num | _Op]:
  """Shunting-yard: validates the token order and returns the expression in postfix order."""
  out: list[_Num | _Op] = []
  stack: list[str] = []
  expect_operand = True  # at the start, after an operator and after "("
  depth = 0
  for tok in tokens:
    if isinstance(tok, _Num):
      if not expect_operand:
        raise CalculatorError("syntax", f"missing an operator before {tok.value:g}")
      out.append(tok)
      expect_operand = False
      continue
    sym = tok.symbol
    if sym == "(":
      if not expect_operand:
        raise CalculatorError("syntax", "missing an operator before '('")
      depth += 1
      if depth > max_depth:
        raise CalculatorError("too_deep", f"parentheses are nested more than {max_depth} deep")
      stack.append(sym)
    elif sym == ")":
      if expect_operand:
        raise CalculatorError("syntax", "missing a number before ')'")
      while stack and stack[-1] != "(":
        out.append(_Op(stack.pop()))
      if not stack:
        raise CalculatorError("syntax", "unbalanced parentheses: ')' without '('")
      stack.pop()
      depth -= 1
    elif expect_operand:
      if sym not in ("+", "-"):
        raise CalculatorError("syntax", f"missing a number before {sym!r}")
      stack.append("u" + sym)  # prefix sign: nothing to pop, it applies to what follows
    else:
      prec = _PRECEDENCE[sym]
      while stack and stack[-1] != "(" and (
          _PRECEDENCE[stack[-1]] > prec or (_PRECEDENCE[stack[-1]] == prec and sym not in _RIGHT_ASSOC)):
        out.append(_Op(stack.pop()))
      stack.append(sym)
      expect_operand = True
  if expect_operand:
    raise CalculatorError("syntax", "the expression is incomplete (a number is missing at the end)")
  while stack:
    sym = stack.pop()
    if sym == "(":
      raise CalculatorError("syntax", "unbalanced parentheses: '(' without ')'")
    out.append(_Op(sym))
  return out


def _fmt(x: float) -> str:
  return str(0.0 if x == 0 else float(x))


def _check(rpn: list[_Num | _Op], max_abs_exponent: float) -> float:
  """Evaluates the postfix expression in float64, refusing what numexpr must not be asked to do."""
  stack: list[float] = []
  for tok in rpn:
    if isinstance(tok, _Num):
      stack.append(tok.value)
      continue
    sym = tok.symbol
    if sym in ("u-", "u+"):
      stack.append(-stack.pop() if sym == "u-" else stack.pop())
      continue
    b = stack.pop()
    a = stack.pop()
    if sym in ("/", "//", "%") and b == 0:
      raise CalculatorError("division_by_zero", "division by zero")
    if sym == "**":
      if abs(b) > max_abs_exponent:
        raise CalculatorError(
            "exponent_too_large", f"the exponent {b:g} is larger than {max_abs_exponent:g} in magnitude")
      if a == 0 and b < 0:
        raise CalculatorError("division_by_zero", "division by zero (zero to a negative power)")
      if a < 0 and not b.is_integer():
        raise CalculatorError("not_real", "a negative number to a fractional power is not a real number")
    try:
      r = _BINARY[sym](a, b)
    except OverflowError:
      raise CalculatorError("overflow", "the result is too large") from None
    if not math.isfinite(r):
      raise CalculatorError("overflow", "the result is too large")
    stack.append(r)
  return stack[0]


@dataclasses.dataclass(frozen=True)
class Calculator:
  """The ``calculator`` tool (``<math_exp>``): arithmetic only, float64, bounded time.

  Attributes:
    max_chars: longer expressions are refused (before any parsing).
    max_abs_exponent: a power whose exponent exceeds this in magnitude is refused before evaluation.
    max_depth: the deepest parenthesis nesting accepted (numexpr compiles through Python's parser,
      which refuses ~200 levels).
  """

  max_chars: int = 200
  max_abs_exponent: float = 1000.0
  max_depth: int = 50

  name: ClassVar[str] = "calculator"

  def evaluate(self, expression: str) -> float:
    """Returns the value of ``expression``; raises CalculatorError when it is refused."""
    if len(expression) > self.max_chars:
      raise CalculatorError("too_long", f"the expression is longer than {self.max_chars} characters")
    tokens = _tokenize(expression)
    if not tokens:
      raise CalculatorError("empty", "the expression is empty")
    rpn = _to_rpn(tokens, self.max_depth)
    _check(rpn, self.max_abs_exponent)
    # numexpr sees only float literals, operators and parentheses, in the user's own order.
    text = " ".join(repr(t.value) if isinstance(t, _Num) else t.symbol for t in tokens)
    try:
      result = numexpr.evaluate(text, local_dict={}, global_dict={})
    except ZeroDivisionError:
      raise CalculatorError("division_by_zero", "division by zero") from None
    except OverflowError:
      raise CalculatorError("overflow", "the result is too large") from None
    except Exception as e:  # pylint: disable=broad-except
      raise CalculatorError("evaluation_failed", f"could not evaluate ({type(e).__name__})") from None
    if result.dtype.kind != "f" or result.shape != ():
      raise CalculatorError("not_real", "the result is not a real number")
    value = float(result)
    if not math.isfinite(value):
      raise CalculatorError("overflow", "the result is too large")
    return value

  def __call__(self, expression: str) -> ToolResult:  # pylint: disable=arguments-renamed
    """The observation for ``expression``: ``"24.0"``, or ``"error: division by zero"``."""
    try:
      return ToolResult(output=_fmt(self.evaluate(expression)))
    except CalculatorError as e:
      return ToolResult.failure(e.code, e.message)
