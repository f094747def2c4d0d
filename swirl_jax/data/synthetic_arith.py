"""Synthetic arithmetic word problems whose answers need a set number of calculator operations.

Each problem is a short templated story about one person's running quantity (items, or money in
dollars and cents). Every sentence after the first applies one or two binary operations (+, -, *, /) to
it, so a problem with N operations needs N calculator calls. Numbers are chosen so that every result is
a whole number (items) or whole cents (money): answers are integers or clean decimals, written like
GSM8K's ("47", "5.75").

``Question.metadata["ops"]`` records the chain: for op k, its operands ``a`` and ``b`` (decimal strings),
``op``, ``result``, and ``a_from`` / ``b_from``: the index of the earlier op whose result the operand is,
or None when the operand is a number stated in the text. A test can recompute the chain on its own.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Callable

from swirl_jax.data import synthetic_common
from swirl_jax.data.synthetic_common import format_number
from swirl_jax.types import Question

DATASET = "synthetic_arith"


@dataclasses.dataclass(frozen=True)
class ArithConfig:
  """Difficulty knobs for the arithmetic family.

  Attributes:
    num_questions: how many problems a split holds.
    min_ops / max_ops: each problem needs between these many calculator operations (inclusive).
    money_fraction: share of problems about money (cent amounts, decimal answers).
    max_value: bound on every intermediate result, to keep numbers grade-school sized.
  """

  num_questions: int = 1000
  min_ops: int = 2
  max_ops: int = 6
  money_fraction: float = 0.3
  max_value: int = 5000

  def __post_init__(self):
    if not 1 <= self.min_ops <= self.max_ops <= 10:
      raise ValueError(f"need 1 <= min_ops <= max_ops <= 10, got {self.min_ops}..{self.max_ops}")
    if self.num_questions < 0:
      raise ValueError(f"num_questions must be >= 0, got {self.num_questions}")
    if not 0.0 <= self.money_fraction <= 1.0:
      raise ValueError(f"money_fraction must be in [0, 1], got {self.money_fraction}")
    if self.max_value < 200:
      raise ValueError(f"max_value must be >= 200, got {self.max_value}")


# (name, subject, object, possessive) pronouns.
_PEOPLE = (
    ("Maya", "she", "her", "her"), ("Omar", "he", "him", "his"), ("Lena", "she", "her", "her"),
    ("Tariq", "he", "him", "his"), ("Sofia", "she", "her", "her"), ("Kenji", "he", "him", "his"),
    ("Amara", "she", "her", "her"), ("Diego", "he", "him", "his"), ("Priya", "she", "her", "her"),
    ("Jonas", "he", "him", "his"), ("Chloe", "she", "her", "her"), ("Mateo", "he", "him", "his"),
    ("Ines", "she", "her", "her"), ("Ravi", "he", "him", "his"), ("Nadia", "she", "her", "her"),
    ("Felix", "he", "him", "his"),
)
# (items, container, containers)
_GOODS = (
    ("marbles", "bag", "bags"), ("stickers", "sheet", "sheets"), ("apples", "crate", "crates"),
    ("pencils", "box", "boxes"), ("cookies", "tray", "trays"), ("eggs", "carton", "cartons"),
    ("beads", "jar", "jars"), ("postcards", "album", "albums"), ("seashells", "bucket", "buckets"),
)
_WARES = ("notebooks", "sandwiches", "concert tickets", "potted plants", "bracelets", "comic books")
_JOBS = ("walking dogs", "washing cars", "tutoring", "selling lemonade", "mowing lawns")
_BUYS = ("lunch", "a new book", "a bus pass", "art supplies", "a birthday gift")
_FRIENDS = ("a classmate", "a neighbour", "{poss} cousin", "{poss} little brother", "a friend")


class _Story:
  """A problem under construction: its sentences, its running quantity, and the op chain so far."""

  def __init__(self, rng, money: bool, max_value: int):
    self.rng = rng
    self.money = money
    self.max_value = max_value
    self.name, self.sub, self.obj, self.poss = rng.choice(_PEOPLE)
    self.items, self.container, self.containers = rng.choice(_GOODS)
    self.sentences: list[str] = []
    self.ops: list[dict] = []
    self.value = Fraction(0)
    self.value_from: int | None = None  # Which op produced the running value (None: stated in the text).

  def num(self, x: Fraction) -> str:
    return f"${float(x):,.2f}" if self.money else f"{x}"

  def cents(self, lo: int, hi: int, step: int = 5) -> Fraction:
    return Fraction(self.rng.randrange(lo * 100, hi * 100 + 1, step), 100)

  def apply(self, a: Fraction, op: str, b: Fraction, a_from: int | None, b_from: int | None) -> Fraction:
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
    if result is None or result < 0 or result > self.max_value:
      raise _Retry
    if self.money and (result * 100).denominator != 1:
      raise _Retry  # Not whole cents.
    if not self.money and result.denominator != 1:
      raise _Retry
    self.ops.append({
        "a": format_number(a), "op": op, "b": format_number(b), "result": format_number(result),
        "a_from": a_from, "b_from": b_from, "expression": f"{format_number(a)} {op} {format_number(b)}",
    })
    return result

  def step_on_value(self, op: str, b: Fraction) -> None:
    self.value = self.apply(self.value, op, b, self.value_from, None)
    self.value_from = len(self.ops) - 1

  def step_with_group(self, op: str, count: int, each: Fraction) -> None:
    group = self.apply(Fraction(count), "*", each, None, None)
    self.value = self.apply(self.value, op, group, self.value_from, len(self.ops) - 1)
    self.value_from = len(self.ops) - 1

  def say(self, template: str, **kw) -> None:
    friend = self.rng.choice(_FRIENDS).format(poss=self.poss)
    text = template.format(name=self.name, sub=self.sub, obj=self.obj, poss=self.poss, items=self.items,
                           container=self.container, containers=self.containers, friend=friend, **kw)
    self.sentences.append(text[0].upper() + text[1:])


class _Retry(Exception):
  """The random choices broke a constraint (negative, too large, inexact): draw again."""


# --- Steps. Each returns its cost in operations and mutates the story; _Retry when it does not fit. ----


def _start_literal(s: _Story) -> None:
  if s.money:
    s.value = s.cents(20, 120)
    s.say("{name} has {x} in {poss} wallet.", x=s.num(s.value))
  else:
    s.value = Fraction(s.rng.randint(12, 90))
    s.say("{name} has {x} {items}.", x=s.num(s.value))
  s.value_from = None


def _start_groups(s: _Story) -> None:
  if s.money:
    rate, hours = s.cents(8, 25, step=25), s.rng.randint(2, 8)
    s.value = s.apply(Fraction(hours), "*", rate, None, None)
    s.say("{name} earns {rate} per hour and works {hours} hours this week.", rate=s.num(rate), hours=hours)
  else:
    count, each = s.rng.randint(2, 9), s.rng.randint(3, 12)
    s.value = s.apply(Fraction(count), "*", Fraction(each), None, None)
    s.say("{name} has {count} {containers} of {items} with {each} {items} in each {container}.",
          count=count, each=each)
  s.value_from = len(s.ops) - 1


def _add(s: _Story) -> None:
  if s.money:
    x = s.cents(3, 40)
    s.step_on_value("+", x)
    s.say(s.rng.choice(("{sub} earns another {x} {job}.", "{friend} pays {obj} {x} for {job}.")),
          x=s.num(x), job=s.rng.choice(_JOBS))
  else:
    x = Fraction(s.rng.randint(3, 40))
    s.step_on_value("+", x)
    s.say(s.rng.choice(("{sub} finds {x} more {items}.", "{friend} gives {obj} {x} {items}.",
                        "{sub} buys {x} more {items} at the market.")), x=s.num(x))


def _sub(s: _Story) -> None:
  if s.value < 4:
    raise _Retry
  if s.money:
    x = s.cents(1, max(1, int(s.value * 3 // 4)))
    s.step_on_value("-", x)
    s.say("{sub} spends {x} on {thing}.", x=s.num(x), thing=s.rng.choice(_BUYS))
  else:
    x = Fraction(s.rng.randint(2, int(min(40, s.value - 1))))
    s.step_on_value("-", x)
    s.say(s.rng.choice(("{sub} gives {x} {items} to {friend}.", "{sub} loses {x} {items} on the way home.",
                        "{sub} uses {x} {items} for a school project.")), x=s.num(x))


def _mul(s: _Story) -> None:
  n = s.rng.randint(2, 4)
  s.step_on_value("*", Fraction(n))
  if s.money:
    s.say("By the end of the year {poss} savings are {n} times as large.", n=n)
  else:
    s.say("By the end of the month {poss} collection of {items} is {n} times as large.", n=n)


def _div(s: _Story) -> None:
  options = [n for n in range(2, 7) if s.value / n >= 2
             and ((s.value * 100 / n).denominator == 1 if s.money else (s.value / n).denominator == 1)]
  if not options:
    raise _Retry
  n = s.rng.choice(options)
  s.step_on_value("/", Fraction(n))
  if s.money:
    s.say("{sub} splits the money equally among {n} people, {obj}self included, and keeps one share.", n=n)
  else:
    s.say("{sub} sorts the {items} into {n} equal piles and keeps only one pile.", n=n)


def _add_groups(s: _Story) -> None:
  count = s.rng.randint(2, 6)
  if s.money:
    each = s.cents(1, 12, step=25)
    s.step_with_group("+", count, each)
    s.say("{sub} sells {count} {wares} for {each} each.", count=count, wares=s.rng.choice(_WARES),
          each=s.num(each))
  else:
    each = Fraction(s.rng.randint(2, 12))
    s.step_with_group("+", count, each)
    s.say("{sub} then gets {count} more {containers}, each holding {each} {items}.", count=count,
          each=s.num(each))


def _sub_groups(s: _Story) -> None:
  count = s.rng.randint(2, 5)
  if s.money:
    each = s.cents(1, 15, step=25)
    s.step_with_group("-", count, each)
    s.say("{sub} buys {count} {wares} that cost {each} each.", count=count, wares=s.rng.choice(_WARES),
          each=s.num(each))
  else:
    each = Fraction(s.rng.randint(2, 10))
    s.step_with_group("-", count, each)
    s.say("{sub} fills {count} gift bags with {each} {items} each and gives the bags away.", count=count,
          each=s.num(each))


# (step, cost in operations, weight)
_MIDDLE: tuple[tuple[Callable[[_Story], None], int, float], ...] = (
    (_add, 1, 3.0), (_sub, 1, 3.0), (_mul, 1, 1.0), (_div, 1, 1.0), (_add_groups, 2, 1.5),
    (_sub_groups, 2, 1.5),
)

_SCALE = (_mul, _div)


def _problem(rng, config: ArithConfig, num_ops: int) -> _Story:
  """One problem needing exactly ``num_ops`` operations (retries until the random draws fit)."""
  for _ in range(1000):
    s = _Story(rng, money=rng.random() < config.money_fraction, max_value=config.max_value)
    try:
      if rng.random() < 0.5:
        _start_groups(s)
      else:
        _start_literal(s)
      last = None
      while len(s.ops) < num_ops:
        left = num_ops - len(s.ops)
        # No step twice in a row, and no "x3" right before "/3": keep every sentence informative.
        steps = [(fn, w) for fn, cost, w in _MIDDLE
                 if cost <= left and fn is not last and not (fn in _SCALE and last in _SCALE)]
        for _ in range(20):
          fn = rng.choices([f for f, _ in steps], weights=[w for _, w in steps])[0]
          saved = (len(s.ops), len(s.sentences), s.value, s.value_from)
          try:
            fn(s)
            last = fn
            break
          except _Retry:  # Undo a half-applied two-op step, then draw another step.
            del s.ops[saved[0]:], s.sentences[saved[1]:]
            s.value, s.value_from = saved[2], saved[3]
        else:
          raise _Retry
      if len(s.ops) != num_ops or s.value <= 0:
        raise _Retry
      return s
    except _Retry:
      continue
  raise RuntimeError(f"could not build a {num_ops}-operation problem; raise max_value ({config.max_value})")


def _question_text(s: _Story) -> str:
  if s.money:
    ask = f"How much money, in dollars, does {s.name} have now?"
  else:
    ask = f"How many {s.items} does {s.name} have now?"
  return " ".join(s.sentences + [ask])


def generate(config: ArithConfig = ArithConfig(), seed: int = 0, split: str = "train") -> list[Question]:
  """The problems of one split, the same for the same (config, seed, split).

  The operation count of each problem is drawn uniformly from [min_ops, max_ops].
  """
  synthetic_common.check_split(DATASET, split)
  rng = synthetic_common.make_rng(DATASET, seed, split)
  out: list[Question] = []
  seen: set[str] = set()
  attempts = 0
  while len(out) < config.num_questions:
    attempts += 1
    if attempts > 100 * config.num_questions + 1000:
      raise RuntimeError(f"only {len(out)} distinct {split} problems found; widen the difficulty range")
    num_ops = rng.randint(config.min_ops, config.max_ops)
    s = _problem(rng, config, num_ops)
    text = _question_text(s)
    if text in seen or synthetic_common.split_of(text) != split:
      continue
    seen.add(text)
    out.append(Question(
        id=f"{DATASET}-{seed}-{split}-{len(out):05d}",
        dataset=DATASET,
        text=text,
        answer=format_number(s.value),
        metadata={"seed": seed, "split": split, "theme": "money" if s.money else "count",
                  "num_ops": len(s.ops), "ops": s.ops},
    ))
  return out
