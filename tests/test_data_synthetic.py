"""Synthetic tasks: deterministic from a seed, gold answers checked by independent computation, and every
multi-hop question answerable from its corpus by following the hops.

The checks here deliberately share no code with the generators: arithmetic is recomputed from the
recorded chain with Fractions, and hops are followed by reading paragraph text with regular expressions.
"""

from __future__ import annotations

import re
from fractions import Fraction

import hypothesis
import hypothesis.strategies as st
import pytest

from swirl_jax.data import ArithConfig, DatasetSpec, MultihopConfig, build_corpus, load_questions
from swirl_jax.data import synthetic_arith, synthetic_multihop
from swirl_jax.types import Question

_NUM = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers_in(text: str) -> set[Fraction]:
  return {Fraction(m.replace(",", "")) for m in _NUM.findall(text)}


def check_arith(q: Question, config: ArithConfig) -> None:
  """Recomputes the recorded chain and checks it against the text and the gold answer."""
  ops = q.metadata["ops"]
  assert config.min_ops <= len(ops) == q.metadata["num_ops"] <= config.max_ops
  stated = _numbers_in(q.text)
  results: list[Fraction] = []
  for k, op in enumerate(ops):
    operands = []
    for side in ("a", "b"):
      value, source = Fraction(op[side]), op[f"{side}_from"]
      if source is None:
        assert value in stated, f"{q.id}: operand {value} of op {k} is not stated in: {q.text}"
      else:
        assert 0 <= source < k and results[source] == value, f"{q.id}: op {k} {side} does not chain"
      operands.append(value)
    a, b = operands
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op["op"]]
    assert result == Fraction(op["result"]) and result >= 0
    results.append(result)
  # Every op feeds the answer: each result but the last is used by a later op.
  used = {op[f"{s}_from"] for op in ops for s in ("a", "b")} - {None}
  assert used == set(range(len(ops) - 1))
  assert Fraction(q.answer) == results[-1]
  assert re.fullmatch(r"\d+(\.\d{1,2})?", q.answer), q.answer  # GSM8K-like: integer or cents.
  if q.metadata["theme"] == "count":
    assert results[-1].denominator == 1


# Sentence shapes of the world's paragraphs, written out independently of the generator.
_HOP_PATTERNS = {
    "works_for": r"{x} works for ([^.]+)\.",
    "born_in": r"{x} is an? [^.]+? who was born in ([^.]+?) in \d{{4}}\.",
    "birth_year": r"{x} is an? [^.]+? who was born in [^.]+? in (\d{{4}})\.",
    "mentor": r"{x} was mentored by ([^.]+)\.",
    "headquarters": r"{x} is an? [^.]+? headquartered in ([^.]+)\.",
    "founder": r"{x} was founded by ([^.]+?) in \d{{4}}\.",
    "founding_year": r"{x} was founded by [^.]+? in (\d{{4}})\.",
    "country": r"{x} is a city in ([^.]+)\.",
    "mayor": r"The mayor of {x} is ([^.]+)\.",
    "capital": r"{x} is a country whose capital is ([^.]+)\.",
}


def follow_hops(q: Question, corpus: dict[str, str]) -> str:
  """Answers ``q`` by reading the corpus: the paragraph of each entity on the chain gives the next one."""
  chain, relations = q.metadata["chain"], q.metadata["relations"]
  assert chain[0] in q.text and len(relations) == q.metadata["hops"] == len(chain) - 1
  current = chain[0]
  for hop, relation in enumerate(relations):
    paragraph = corpus[current]  # Titled by the entity's name: a search for it finds it.
    matches = re.findall(_HOP_PATTERNS[relation].format(x=re.escape(current)), paragraph)
    assert len(matches) == 1, f"{q.id} hop {hop}: {relation} of {current} not stated once in {paragraph!r}"
    current = matches[0]
    assert current == chain[hop + 1]
  return current


def test_arith_same_seed_same_problems_and_other_seed_differs():
  config = ArithConfig(num_questions=40)
  a = synthetic_arith.generate(config, seed=7, split="train")
  assert a == synthetic_arith.generate(config, seed=7, split="train")
  assert [q.text for q in a] != [q.text for q in synthetic_arith.generate(config, seed=8, split="train")]
  # A smaller set is a prefix of a larger one.
  assert synthetic_arith.generate(ArithConfig(num_questions=10), seed=7, split="train") == a[:10]


def test_arith_answers_agree_with_independent_recomputation():
  config = ArithConfig(num_questions=300, min_ops=2, max_ops=6)
  qs = synthetic_arith.generate(config, seed=0, split="train")
  for q in qs:
    check_arith(q, config)
  assert {q.metadata["num_ops"] for q in qs} == {2, 3, 4, 5, 6}
  assert {q.metadata["theme"] for q in qs} == {"count", "money"}
  assert any("." in q.answer for q in qs)  # Clean decimals occur.
  assert len({q.id for q in qs}) == len({q.text for q in qs}) == len(qs)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(seed=st.integers(0, 10**6), lo=st.integers(1, 6), extra=st.integers(0, 4),
                  money=st.sampled_from([0.0, 0.5, 1.0]))
def test_arith_any_difficulty_is_exact(seed, lo, extra, money):
  config = ArithConfig(num_questions=8, min_ops=lo, max_ops=min(10, lo + extra), money_fraction=money)
  for q in synthetic_arith.generate(config, seed=seed, split="validation"):
    check_arith(q, config)


def test_arith_splits_are_disjoint():
  config = ArithConfig(num_questions=60)
  texts = {s: {q.text for q in synthetic_arith.generate(config, seed=1, split=s)}
           for s in ("train", "validation", "test")}
  assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
  assert not texts["validation"] & texts["test"]


def test_multihop_same_seed_same_world_and_questions():
  config = MultihopConfig(num_questions=30, num_people=60, num_organisations=15, num_cities=12, num_countries=4)
  assert synthetic_multihop.build_world(config, 3) == synthetic_multihop.build_world(config, 3)
  a = synthetic_multihop.generate(config, seed=3, split="test")
  assert a == synthetic_multihop.generate(config, seed=3, split="test")
  assert [q.text for q in a] != [q.text for q in synthetic_multihop.generate(config, seed=4, split="test")]
  assert synthetic_multihop.generate(
      MultihopConfig(num_questions=5, num_people=60, num_organisations=15, num_cities=12, num_countries=4),
      seed=3, split="test") == a[:5]


def test_every_multihop_question_is_answerable_from_its_corpus():
  config = MultihopConfig(num_questions=200, min_hops=2, max_hops=5, num_distractors=6)
  spec = DatasetSpec("synthetic_multihop", split="train", seed=11, multihop=config)
  qs = load_questions(spec)
  paragraphs = build_corpus(spec)
  corpus = {p.title: p.text for p in paragraphs}
  assert len(corpus) == len(paragraphs) == 240 + 60 + 40 + 10  # One paragraph per entity, unique titles.
  for q in qs:
    assert follow_hops(q, corpus) == q.answer
    assert q.answer not in q.text  # The answer must be found, not read off the question.
    titles = [p.title for p in q.context]
    assert set(q.metadata["supporting_titles"]) <= set(titles)  # Gold paragraphs are in the context...
    assert len(titles) == len(set(titles)) == q.metadata["hops"] + config.num_distractors  # ...with distractors.
    assert all(corpus[p.title] == p.text for p in q.context)
  assert {q.metadata["hops"] for q in qs} == {2, 3, 4, 5}
  assert len({q.text for q in qs}) == len(qs)


def test_multihop_splits_share_the_world_but_no_question():
  config = MultihopConfig(num_questions=40)
  by_split = {s: load_questions(DatasetSpec("synthetic_multihop", split=s, seed=2, multihop=config))
              for s in ("train", "validation", "test")}
  keys = {s: {(q.metadata["chain"][0], tuple(q.metadata["relations"])) for q in qs} for s, qs in by_split.items()}
  assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
  assert not keys["validation"] & keys["test"]
  assert build_corpus(DatasetSpec("synthetic_multihop", split="test", seed=2, multihop=config)) == build_corpus(
      DatasetSpec("synthetic_multihop", split="train", seed=2, multihop=config))


def test_world_names_are_invented_and_unique():
  world = synthetic_multihop.build_world(MultihopConfig(), 0)
  names = [e.name for e in world.entities]
  assert len({n.lower() for n in names}) == len(names)
  # Generated from syllables: letters and spaces only, so they read as names but mean nothing.
  assert all(re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", n) for n in names)


@pytest.mark.parametrize("kwargs", [dict(min_ops=0), dict(min_ops=4, max_ops=3), dict(max_ops=11),
                                    dict(money_fraction=1.5)])
def test_arith_config_is_validated(kwargs):
  with pytest.raises(ValueError):
    ArithConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(min_hops=3, max_hops=2), dict(num_cities=5, num_countries=6),
                                    dict(num_distractors=-1)])
def test_multihop_config_is_validated(kwargs):
  with pytest.raises(ValueError):
    MultihopConfig(**kwargs)


def test_registry_passes_seed_and_difficulty():
  qs = load_questions(DatasetSpec("synthetic_arith", split="test", seed=5, limit=7,
                                  arith=ArithConfig(num_questions=20, min_ops=3, max_ops=3)))
  assert len(qs) == 7 and {q.metadata["num_ops"] for q in qs} == {3}
  assert all(q.id.startswith("synthetic_arith-5-test-") and q.dataset == "synthetic_arith" for q in qs)
