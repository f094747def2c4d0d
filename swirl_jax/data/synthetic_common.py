"""Seeding and split assignment shared by the synthetic task families.

Every random choice goes through a ``random.Random`` built here from (family, seed, purpose): no global
RNG, and the same seed gives the same data on any machine and Python version (``random.Random`` with an
int seed is stable across CPython releases; numpy's Generator streams are not promised to be).
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction
from decimal import Decimal

SPLITS = ("train", "validation", "test")
# Out of 10 hash buckets: 8 train, 1 validation, 1 test. A question's split follows from its text alone,
# so splits never share a question whatever their sizes.
_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}


def make_rng(*parts: object) -> random.Random:
  """A private RNG whose seed is a stable hash of ``parts`` (Python's hash() is salted per process)."""
  digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
  return random.Random(int.from_bytes(digest[:8], "big"))


def split_of(key: str) -> str:
  """The split a generated item belongs to, from a stable hash of its key."""
  bucket = hashlib.sha256(key.encode("utf-8")).digest()[0] % 10
  return next(name for name, r in _BUCKETS.items() if bucket in r)


def check_split(family: str, split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r} of {family}; splits: {', '.join(SPLITS)}")


def format_number(x: Fraction) -> str:
  """GSM8K-style answer text: "47", "5.75", "-3"; exact for any x whose denominator is 2^a 5^b."""
  if x.denominator == 1:
    return str(x.numerator)
  d = (Decimal(x.numerator) / Decimal(x.denominator)).normalize()
  return format(d, "f")
