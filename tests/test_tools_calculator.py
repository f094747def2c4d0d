"""Tests for swirl_jax.tools.calculator: values against independent arithmetic, refusals, format."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
import math
import operator
import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from swirl_jax.tools import Calculator, CalculatorError, Tool, ToolResult, format_observation
from swirl_jax.tools import calculator as calculator_module

CALC = Calculator()


def test_paper_format():
  r = CALC("48 / 2")
  assert r == ToolResult(output="24.0", error=None)
  assert format_observation("48 / 2", r.output) == "48 / 2 -> 24.0"


@pytest.mark.parametrize("expr,expected", [
    ("48 / 2", "24.0"),
    ("7", "7.0"),
    ("2 ** 0.5", repr(2 ** 0.5)),
    ("0.1 + 0.2", repr(0.1 + 0.2)),  # the float as Python writes it, as in the paper
    ("1e20", "1e+20"),
    ("-0 * 5", "0.0"),  # no negative zero
    ("-2**2", "-4.0"),  # Python precedence
    ("2**3**2", "512.0"),  # right-associative
    ("2**-1", "0.5"),
    ("2^10", "1024.0"),  # ^ is a power
    ("2 ^ 3 ^ 2", "512.0"),
    ("-7 % 3", "2.0"),  # Python's modulo: sign of the divisor
    ("7 % -3", "-2.0"),
    ("-7 // 2", "-4.0"),
    ("1,000 * 3", "3000.0"),  # thousands separators
    ("12,345.5 + 0.5", "12346.0"),
    ("1,234,567 - 1", "1234566.0"),
    ("12 × 3 ÷ 4 − 1", "8.0"),
    (" ( 1 + 2 ) * - ( 3 ) ", "-9.0"),
    ("--2", "2.0"),
    ("+5", "5.0"),
    (".5 + 5.", "5.5"),
    ("2.5E-1 * 4", "1.0"),
    ("(-8) ** 2", "64.0"),
    ("(-8) ** -1", "-0.125"),
    ("0 ** 0", "1.0"),
])
def test_values(expr, expected):
  r = CALC(expr)
  assert r.error is None, r.error
  assert r.output == expected


@pytest.mark.parametrize("expr,code", [
    ("__import__('os')", "names_not_allowed"),
    ("__import__('os').system('ls')", "names_not_allowed"),
    ("sum([1, 2])", "names_not_allowed"),
    ("sqrt(4)", "names_not_allowed"),
    ("x + 1", "names_not_allowed"),
    ("lambda: 1", "names_not_allowed"),
    ("1 if 1 else 2", "names_not_allowed"),
    ("(1).real", "unsupported_character"),
    ("().__class__", "unsupported_character"),
    ("'abc'", "unsupported_character"),
    ('"1" * 3', "unsupported_character"),
    ("[1, 2]", "unsupported_character"),
    ("{1}", "unsupported_character"),
    ("1; 2", "unsupported_character"),
    ("a = 1", "names_not_allowed"),
    ("2 & 3", "unsupported_character"),
    ("2 | 3", "unsupported_character"),
    ("~2", "unsupported_character"),
    ("2 << 3", "unsupported_character"),
    ("1 < 2", "unsupported_character"),
    ("$5 + 3", "unsupported_character"),
    ("1,00 + 1", "syntax"),
    ("2,5", "syntax"),
    ("10**10**10", "exponent_too_large"),
    ("9**999999", "exponent_too_large"),
    ("2 ** (10 * 1000)", "exponent_too_large"),
    ("1.0001 ** -100000", "exponent_too_large"),
    ("9" * 201, "too_long"),
    ("1 + " * 100 + "1", "too_long"),
    ("1/0", "division_by_zero"),
    ("1 / (2 - 2)", "division_by_zero"),
    ("5 % 0", "division_by_zero"),
    ("5 // 0.0", "division_by_zero"),
    ("0 ** -1", "division_by_zero"),
    ("1e308 * 10", "overflow"),
    ("2 ** 1000 * 2 ** 1000", "overflow"),
    ("10 ** 400", "overflow"),
    ("1e999", "overflow"),
    ("99999 ** 999", "overflow"),
    ("(-8) ** (1/3)", "not_real"),
    ("(-1) ** 0.5", "not_real"),
    ("", "empty"),
    ("   ", "empty"),
    ("2 +", "syntax"),
    ("* 2", "syntax"),
    ("2 3", "syntax"),
    ("2 (3)", "syntax"),
    ("(1 + 2", "syntax"),
    ("1 + 2)", "syntax"),
    (")(", "syntax"),
    ("()", "syntax"),
    ("2 ** * 3", "syntax"),
    ("(" * 60 + "1" + ")" * 60, "too_deep"),
])
def test_refusals_are_quick_error_observations(expr, code):
  start = time.perf_counter()
  r = CALC(expr)
  assert time.perf_counter() - start < 2.0  # a safety net: refusals must not compute anything big
  assert r.error_code == code, (expr, r)
  assert r.output.startswith("error: ") and r.error.startswith(code + ": ")
  with pytest.raises(CalculatorError) as e:
    CALC.evaluate(expr)
  assert e.value.code == code


def test_error_observation_text():
  assert CALC("1/0").output == "error: division by zero"
  assert CALC("1 + " * 100 + "1").output == "error: the expression is longer than 200 characters"
  assert "1e+10" in CALC("10**10**10").output


def test_numexpr_sees_only_numbers_and_operators(monkeypatch):
  seen = []
  real = calculator_module.numexpr.evaluate

  def spy(text, *args, **kwargs):
    seen.append(text)
    assert kwargs.get("local_dict") == {} and kwargs.get("global_dict") == {}
    return real(text, *args, **kwargs)

  monkeypatch.setattr(calculator_module.numexpr, "evaluate", spy)
  for expr in ["48 / 2", "1,000 × 3 ^ 2", "-(2.5e3) % 7", "__import__('os')", "(1).real", "sum([1])", "1/0"]:
    CALC(expr)
  assert seen  # the valid ones got through
  for text in seen:
    assert re.fullmatch(r"[0-9.e+\-*/%() ]+", text), text
    assert not re.search(r"[a-df-z_]", text)


def test_config():
  c = Calculator(max_chars=5, max_abs_exponent=2)
  assert c("1+2+3").error is None
  assert c("1+2+3+4").error_code == "too_long"
  assert c("2**3").error_code == "exponent_too_large"
  assert c("2**2").output == "4.0"
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.max_chars = 10  # type: ignore[misc]
  assert isinstance(c, Tool) and c.name == "calculator"


# --- property: random expression trees vs Python's own arithmetic ------------------------------------

_BIN = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
        "//": operator.floordiv, "%": operator.mod}


# A leaf: (exact value, the int or float written in the expression).
_LEAF = st.one_of(
    st.integers(-10**6, 10**6).map(lambda n: (Fraction(n), n)),
    st.decimals(min_value=0, max_value=1000, places=3, allow_nan=False).map(lambda d: (Fraction(d), float(d))),
)


def _render_number(value: int | float, commas: bool) -> str:
  if isinstance(value, int):
    text = f"{abs(value):,}" if commas else str(abs(value))
    return f"(-{text})" if value < 0 else text
  return repr(value)


@st.composite
def _tree(draw, ops, depth=0):
  """(text, exact Fraction or None when not exact, float value computed by Python, scale)."""
  if depth >= 3 or draw(st.booleans()) and depth > 0:
    exact, value = draw(_LEAF)
    text = _render_number(value, commas=draw(st.booleans()))
    return text, exact, float(value), abs(float(value))
  if draw(st.integers(0, 9)) == 0:  # a small integer power
    lt, le, lf, ls = draw(_tree(ops, depth + 1))
    n = draw(st.integers(0, 3))
    sym = draw(st.sampled_from(["**", "^"]))
    fv = lf ** float(n)
    return f"({lt}) {sym} {n}", None if le is None else le ** n, fv, max(ls ** n, abs(fv), 1.0)
  op = draw(st.sampled_from(ops))
  lt, le, lf, ls = draw(_tree(ops, depth + 1))
  rt, re_, rf, rs = draw(_tree(ops, depth + 1))
  if rf == 0 and op in ("/", "//", "%"):
    raise ZeroDivisionError  # filtered below
  fv = _BIN[op](lf, rf)
  exact = None if le is None or re_ is None or op in ("//", "%") else _BIN[op](le, re_)
  sym = {"*": draw(st.sampled_from(["*", "×"]))}.get(op, op)
  return f"({lt} {sym} {rt})", exact, fv, max(ls, rs, abs(fv), 1.0)


def _draw_tree(data, ops):
  try:
    return data.draw(_tree(ops))
  except ZeroDivisionError:
    return None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_matches_exact_arithmetic(data):
  t = _draw_tree(data, ["+", "-", "*", "/"])
  if t is None:
    return
  text, exact, value, scale = t
  r = Calculator(max_chars=10_000).evaluate(text)
  # Python's float arithmetic, operation by operation, gives the same float.
  assert math.isclose(r, value, rel_tol=1e-12, abs_tol=1e-12), (text, r, value)
  # Exact rational arithmetic agrees up to float rounding of the largest intermediate value.
  assert abs(Fraction(r) - exact) <= Fraction(1e-9) * Fraction(scale), (text, r, float(exact))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_floor_division_and_modulo_match_python(data):
  t = _draw_tree(data, ["+", "-", "*", "//", "%"])
  if t is None:
    return
  text, _, value, _ = t
  r = Calculator(max_chars=10_000).evaluate(text)
  assert math.isclose(r, value, rel_tol=1e-12, abs_tol=1e-12), (text, r, value)


# Flat expressions without parentheses check precedence and associativity against Python's parser.
_flat_ops = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])


@st.composite
def _flat(draw):
  """(text for the calculator, the same with float literals for Python's eval)."""
  n = draw(st.integers(1, 6))
  parts, py_parts = [], []
  used_pow = False
  for i in range(n):
    if i:
      op = draw(_flat_ops)
      if op == "**" and used_pow:  # one power at most: no towers
        op = "*"
      used_pow |= op == "**"
      parts.append(op)
      py_parts.append(op)
    sign = draw(st.sampled_from(["", "-", "+", "- -"]))
    number = draw(st.integers(0, 99))
    parts.append(f"{sign}{number}")
    py_parts.append(f"{sign}{number}.0")  # float arithmetic, like the calculator
  return " ".join(parts), " ".join(py_parts)


@settings(max_examples=400, deadline=None)
@given(texts=_flat())
def test_precedence_matches_python(texts):
  text, py_text = texts
  try:
    # Our own generated string of digits and operators only.
    expected = eval(py_text, {"__builtins__": {}}, {})  # pylint: disable=eval-used
  except ZeroDivisionError:
    assert CALC(text).error_code == "division_by_zero", text
    return
  r = CALC(text)
  if isinstance(expected, complex):
    assert r.error_code == "not_real", text
    return
  assert r.error is None, (text, r)
  assert float(r.output) == expected, (text, r, expected)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_never_raises_on_arbitrary_text(text):
  start = time.perf_counter()
  r = CALC(text)
  assert time.perf_counter() - start < 2.0
  assert (r.error is None) != r.output.startswith("error: ")
