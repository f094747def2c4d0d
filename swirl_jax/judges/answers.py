"""Answer normalisation and matching: what "the same answer" means for the rule judge and the metrics.

Two layers:

* ``normalize_text``: the official SQuAD / HotPotQA normalisation (lowercase, delete punctuation, drop
  the articles a/an/the, collapse whitespace): "U.S." = "US", "Don't Look Back" = "Dont Look Back".
  ``normalize_words`` replaces punctuation with a space instead, for finding an answer inside free text
  ("jean-pierre" in an observation matches "Jean Pierre") and comparing search queries.
* ``parse_number``: an answer that is one number, optionally with a currency sign, thousands commas, a
  sign, an exponent, a simple fraction, a percent sign or one trailing unit word ("10", "10.00", "$10",
  "10 dollars", "1,000", "-3", "5e-05", "3/4", "50%"). A comma is a thousands separator only before a
  group of three digits: "1,5" is not a number (and not 15). Such answers are compared by value, so
  GSM8K-style keys match however the model writes the number. The tolerance only absorbs floating-point
  noise (0.30000000000000004 = 0.3); 1000001 is not 1000000. The unit word is any single alphabetic word
  (a fixed unit list would miss "18 eggs"), except magnitudes ("150 million" is not 150), ordinal
  suffixes ("12th") and a plural "s" ("1990s" is a decade, not 1990: as in the official scripts, "1990s"
  against "1990" has EM 0 and F1 0). Singular and plural are the same unit ("6.8 inch" = "6.8 inches",
  "1 foot" = "1 feet"); different unit words are different answers ("5 May" is not "5 June"). Two or more
  trailing words are text, so "2014 FIFA World Cup" stays a text answer.

``numbers_equal(prediction, gold)`` is directional: a unit word on the gold must be on the prediction
too ("21" does not answer "21 Savage", "5" does not answer "5 June"), but the prediction may add one the
gold lacks ("18 eggs" answers the GSM8K key "18"). A currency sign counts as its currency's unit ("$10"
answers "10 dollars").

``exact_match`` is equal numbers or equal normalised text; ``token_f1`` is 1 for equal numbers, else the
official token F1. Both accept one gold answer or several (key and aliases) and take the best. For text
answers they are the official SQuAD / HotPotQA EM and F1. They deviate from the official scripts only
where digits are involved, since deleting punctuation glues digits together ("1.5" -> "15", "-5" -> "5"):

* when the prediction and a gold answer are both numbers, their values decide: "10.00" = "10", "3/4" =
  "0.75", "10 dollars" = "$10", a prediction may add one unit word to a bare-number key ("18 eggs" = "18")
  (the official scripts give these EM 0 and F1 below 1), and "1.5" != "15", "-5" != "5", "1.000" != "1000"
  (the official scripts give these EM 1). Unequal numbers share no token but their unit word.
* otherwise the text is normalised without gluing digits: punctuation between two digits and a minus sign
  before a digit are kept (a thousands comma before three digits is dropped), so "1,5" is not "15",
  "version 1.5" is not "version 15", and "1,000 red apples" is "1000 red apples".

One deviation involves no digits: the official scripts delete only ASCII punctuation (Python's
``string.punctuation``), while here the typographic quotes, dashes and ellipsis ‘’“”–—… are deleted too,
since models write them where the keys have ASCII ones or none: “Thriller” = "Thriller" = Thriller and
"Jean–Pierre" = "JeanPierre" (the official scripts give “Thriller” against Thriller EM 0 and F1 0).
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Iterable, NamedTuple, Sequence

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation) | frozenset("‘’“”–—…")
_CURRENCY = "$€£¥₹"
# A number as written in an answer: strict thousands groups or plain digits, optional decimals, optional
# exponent (the calculator prints floats with Python's str: 5e-05, 1e+16).
_NUM = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_ANSWER_RE = re.compile(
    rf"""^\s*
    (?P<sign1>[-+−])?\s*
    (?P<currency>[{_CURRENCY}]|usd\b|us\$)?\s*
    (?P<sign2>[-+−])?\s*
    (?P<num>{_NUM})
    (?:\s*/\s*(?P<den>{_NUM}))?
    \s*(?P<unit>%|percent\b|[^\W\d_]+)?   # one unit word (dollars, eggs, cm) or a percent sign
    \s*[.!]?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)
# An amount of money inside free text: "$1,200", "US$ 5", "1,200 USD", "5 EUR".
_AMOUNT_IN_TEXT_RE = re.compile(
    rf"(?P<sign>[{_CURRENCY}]|\bus\$|\busd\b)\s*(?P<num>{_NUM})|(?P<num2>{_NUM})\s*(?P<code>usd|eur|gbp|inr)\b",
    re.IGNORECASE)
# Numbers inside free text (observations): thousands groups, decimals and a leading sign.
_NUMBER_IN_TEXT_RE = re.compile(rf"(?<![\w.])[-−]?(?:{_NUM})(?![\d])")
YES_NO = frozenset({"yes", "no"})
# Answers that HotPotQA's official F1 scores 0 unless the other side is the same answer, not by shared
# tokens ("noanswer x" against "noanswer" is 0, not 0.67).
_F1_EXACT_ONLY = YES_NO | {"noanswer"}


# Words after a number that change what it means: magnitudes, ordinal suffixes and the plural "s" of a
# decade ("1990s", "80s") are not units.
_NOT_UNITS = frozenset({"hundred", "thousand", "million", "billion", "trillion", "k", "m", "bn",
                        "st", "nd", "rd", "th", "s"})


def normalize_text(text: str) -> str:
  """The official SQuAD normalisation: lowercase, punctuation deleted, no articles, single spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
  text = _ARTICLES_RE.sub(" ", text)
  return " ".join(text.split())


# Punctuation that ``_normalize_keeping_numbers`` keeps: between two digits ("1.5", "1,5", "3/4") and a
# minus sign before a digit ("-5").
_KEPT_PUNCT_RE = re.compile(r"(?<=\d)[^\w\s](?=\d)|(?<![\w.,])-(?=\.?\d)")
# Every dash is a hyphen there, so "1990–91" (a key's en dash) is "1990-91" (a model's hyphen).
_DASHES = str.maketrans({c: "-" for c in "−‐‑‒–—"})
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _normalize_keeping_numbers(text: str) -> str:
  """``normalize_text`` that never glues digits together: punctuation inside a number and a minus sign
  before one stay ("1.5", "1,5", "-5" are not "15", "15", "5"); a thousands comma goes ("1,000" -> "1000")."""
  text = _THOUSANDS_COMMA_RE.sub("", text.lower().translate(_DASHES))
  kept = {m.start() for m in _KEPT_PUNCT_RE.finditer(text)}
  text = "".join(ch for i, ch in enumerate(text) if i in kept or ch not in _PUNCT)
  text = _ARTICLES_RE.sub(" ", text)
  return " ".join(text.split())


def normalize_words(text: str) -> str:
  """``normalize_text`` with punctuation replaced by a space, for matching words inside free text:
  "jean-pierre" stays two words that match "jean pierre", and no two words are glued together."""
  text = "".join(" " if ch in _PUNCT else ch for ch in text.lower())
  text = _ARTICLES_RE.sub(" ", text)
  return " ".join(text.split())


def _to_float(num: str) -> float:
  return float(num.replace(",", ""))


def parse_number(text: str) -> float | None:
  """The value of an answer that is a single number (see the module docstring), else None."""
  parsed = _parse_number(text)
  return None if parsed is None else parsed[0]


# Irregular plurals of words that can follow a number; regular ones are handled by ``_singulars``.
_IRREGULAR_PLURALS = {
    "feet": "foot", "teeth": "tooth", "people": "person", "men": "man", "women": "woman",
    "children": "child", "mice": "mouse", "geese": "goose", "knives": "knife", "lives": "life",
    "leaves": "leaf", "halves": "half", "loaves": "loaf", "calves": "calf", "wolves": "wolf",
    "shelves": "shelf",
}
# The unit a currency sign stands for, as words a gold answer may use ("10 dollars", "10 USD").
_CURRENCY_UNITS = {sign: frozenset(words) for signs, words in (
    (("$", "us$", "usd"), ("dollar", "usd")), (("€", "eur"), ("euro", "eur")), (("£", "gbp"), ("pound", "gbp")),
    (("¥",), ("yen", "yuan")), (("₹", "inr"), ("rupee", "inr"))) for sign in signs}


def _singulars(word: str) -> frozenset[str]:
  """The forms ``word`` may be the plural of (itself included): two unit words are the same unit when
  these sets intersect ("inches" and "inch" share "inch", "feet" and "foot" share "foot").

  Guessing every candidate ("boxes" -> box, boxe; "cities" -> city) is simpler than English plural rules
  and only matters for words that follow the same number. Stems are kept at two letters or more, so
  "ms" (milliseconds) is not "m".
  """
  out = {word}
  if word.endswith("s") and len(word) > 2:
    out.add(word[:-1])
  if word.endswith("es") and len(word) > 3:
    out.add(word[:-2])
  if word.endswith("ies") and len(word) > 4:
    out.add(word[:-3] + "y")
  if word in _IRREGULAR_PLURALS:
    out.add(_IRREGULAR_PLURALS[word])
  return frozenset(out)


def _unit(m: re.Match) -> str | None:
  """The unit word of a matched numeric answer, lowercase (None: no unit, or a percent sign)."""
  unit = (m.group("unit") or "").lower()
  return None if unit in ("", "%", "percent") else unit


class _Number(NamedTuple):
  value: float
  unit: str | None  # the unit word, lowercase ("eggs"); None without one
  currency: str | None  # the currency sign or code, lowercase ("$", "usd"); None without one


def _parse_number(text: str) -> _Number | None:
  m = _NUMBER_ANSWER_RE.match(text)
  if m is None or (m.group("unit") or "").lower() in _NOT_UNITS:
    return None
  value = _to_float(m.group("num"))
  if m.group("den") is not None:
    den = _to_float(m.group("den"))
    if den == 0:
      return None
    value /= den
  negative = (m.group("sign1") in ("-", "−")) != (m.group("sign2") in ("-", "−"))
  value = -value if negative else value
  currency = (m.group("currency") or "").lower() or None
  return _Number(value, _unit(m), currency) if math.isfinite(value) else None


def format_number(value: float) -> str:
  """Canonical text of a number: integers without a decimal point, others with up to 12 digits."""
  if value == int(value) and abs(value) < 1e15:
    return str(int(value))
  return f"{value:.12g}"


def numbers_equal(prediction: float | str, gold: float | str, rel_tol: float = 1e-9,
                  abs_tol: float = 1e-9) -> bool:
  """Whether a predicted number (or numeric answer, parsed with ``parse_number``) equals a gold one.

  The order matters for unit words (see the module docstring): a unit word on ``gold`` must be on
  ``prediction`` too, as the same word or its singular/plural ("21" is not "21 Savage", "5 May" is not
  "5 June", "$10" is "10 dollars"), while a unit word on ``prediction`` only is allowed ("18 eggs" is
  "18"). Floats have no unit. Whole numbers compare exactly (1000001 is not 1000000); otherwise the
  tolerance absorbs floating-point noise only (``format_number`` keeps 12 significant digits, and a
  calculator's 0.1 + 0.2 is 0.30000000000000004).
  Non-numeric strings are never equal to anything here.
  """
  p = _parse_number(prediction) if isinstance(prediction, str) else _Number(float(prediction), None, None)
  g = _parse_number(gold) if isinstance(gold, str) else _Number(float(gold), None, None)
  if p is None or g is None:
    return False
  if g.unit is not None:
    said = _CURRENCY_UNITS.get(p.currency, frozenset())
    if p.unit is not None:
      said |= _singulars(p.unit)
    if not said & _singulars(g.unit):
      return False
  if g.currency is not None:  # "$10" is answered by "10", "$10" or "10 dollars", not "10 euros" or "£10"
    money = _CURRENCY_UNITS[g.currency]
    if p.currency is not None and _CURRENCY_UNITS[p.currency] != money:
      return False
    if p.unit is not None and not _singulars(p.unit) & money:
      return False
  if p.value.is_integer() and g.value.is_integer():  # whole numbers exactly: 10**12 + 1 is not 10**12
    return p.value == g.value
  return math.isclose(p.value, g.value, rel_tol=rel_tol, abs_tol=abs_tol)


def normalize_answer(text: str) -> str:
  """A numeric answer in canonical form ("$10.00" -> "10"), else the SQuAD-normalised text."""
  value = parse_number(text)
  return format_number(value) if value is not None else normalize_text(text)


def _golds(gold: str | Iterable[str]) -> list[str]:
  return [gold] if isinstance(gold, str) else [g for g in gold if g is not None]


def exact_match(prediction: str, gold: str | Iterable[str]) -> bool:
  """Whether the prediction equals any gold answer: by value when both are numbers, else as normalised
  text that keeps digits apart (see the module docstring)."""
  pred_is_number = _parse_number(prediction) is not None
  pred = _normalize_keeping_numbers(prediction)
  for g in _golds(gold):
    if pred_is_number and _parse_number(g) is not None:
      if numbers_equal(prediction, g):  # two numbers: only their values decide ("1.5" is not "15")
        return True
    elif pred and pred == _normalize_keeping_numbers(g):
      return True
  return False


def _f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision = same / len(pred_tokens)
  recall = same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _number_tokens(number: _Number) -> list[str]:
  return [format_number(number.value)] + ([number.unit] if number.unit is not None else [])


def token_f1(prediction: str, gold: str | Iterable[str]) -> float:
  """SQuAD/HotPotQA token F1 of the prediction against the best gold answer.

  As in HotPotQA's official script, yes/no/noanswer answers score 0 unless they match exactly; equal numbers score
  1 ("$10" against "10.00"), and two unequal numbers are their value and unit word ("1984 Olympics"
  against "1988 Olympics": 0.5; "1.5" against "15": 0). In text, numbers are words like any other, with
  their digits kept apart (see the module docstring).
  """
  pred_number = _parse_number(prediction)
  pred = _normalize_keeping_numbers(prediction)
  best = 0.0
  for g in _golds(gold):
    if numbers_equal(prediction, g):
      return 1.0
    gold_number = _parse_number(g)
    if pred_number is not None and gold_number is not None:  # values, not digits glued by normalising
      best = max(best, _f1(_number_tokens(pred_number), _number_tokens(gold_number)))
      continue
    gold_norm = _normalize_keeping_numbers(g)
    if (pred in _F1_EXACT_ONLY or gold_norm in _F1_EXACT_ONLY) and pred != gold_norm:
      continue
    best = max(best, _f1(pred.split(), gold_norm.split()))
  return best


def numbers_in_text(text: str) -> list[float]:
  """Every number written in ``text`` ("born 3 September 1953", "1,000.5 people", "-4")."""
  out = []
  for m in _NUMBER_IN_TEXT_RE.finditer(text):
    s = m.group(0).replace("−", "-")
    try:
      out.append(_to_float(s))
    except ValueError:  # a lone "." cannot match, but be safe
      continue
  return out


def contains_answer(text: str, answer: str) -> bool:
  """Whether ``answer`` occurs in ``text``: as whole normalised words, or numerically for a number. A
  number with a unit word also needs that word (or its singular/plural) in the text: "21 Savage" is not
  supported by "aged 21", as ``numbers_equal`` does not let "21" answer "21 Savage"."""
  words = f" {normalize_words(text)} "
  parsed = _parse_number(answer)
  if parsed is not None:
    forms = _singulars(parsed.unit) if parsed.unit is not None else None
    if forms is not None and not any(_singulars(w) & forms for w in set(words.split())):
      # the unit word is not in the text: an amount in its currency is ("$10" supports "10 dollars")
      return any(_CURRENCY_UNITS[(m["sign"] or m["code"]).lower()] & forms
                 and numbers_equal(parsed.value, _to_float(m["num"] or m["num2"]))
                 for m in _AMOUNT_IN_TEXT_RE.finditer(text)) or _contains_words(words, answer)
    return any(numbers_equal(parsed.value, x) for x in numbers_in_text(text))
  return _contains_words(words, answer)


def _contains_words(padded_text_words: str, answer: str) -> bool:
  needle = normalize_words(answer)
  return bool(needle) and f" {needle} " in padded_text_words
