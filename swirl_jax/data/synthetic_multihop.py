"""Synthetic multi-hop questions over a generated fictional world, with its search corpus.

The world holds invented people, organisations, cities and countries whose names are built from random
syllables, so no pretrained model knows any fact about them: a question can only be answered by
searching the world's paragraphs. Each entity has one paragraph (its title is the entity's name) stating
its own facts in fixed sentence shapes:

  person        "{P} is a {job} who was born in {city} in {year}."  "{P} works for {org}."
                "{P} was mentored by {person}."  (most people)
  organisation  "{O} is a {kind} headquartered in {city}."  "{O} was founded by {person} in {year}."
  city          "{C} is a city in {country}."  "The mayor of {C} is {person}."
  country       "{N} is a country whose capital is {city}."

plus a flavour sentence or two with no entity in it. A question composes 2..max_hops of these
functional relations from a start entity, e.g. three hops: "In which city was the founder of the
organisation that employs Zorvin Kalet born?". Following the hops means reading the paragraph of each
entity on the chain in turn; ``Question.metadata`` records the chain (``chain``: entity names, the last
being the answer; ``relations``: one per hop) so a test can check every hop against the corpus.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

from swirl_jax.data import synthetic_common
from swirl_jax.types import Paragraph, Question

DATASET = "synthetic_multihop"


@dataclasses.dataclass(frozen=True)
class MultihopConfig:
  """Difficulty and size knobs for the multi-hop family.

  Attributes:
    num_questions: how many questions a split holds.
    min_hops / max_hops: each question chains between these many relations (inclusive).
    num_distractors: paragraphs beside the gold ones in each question's context, drawn from entities
      of the same kinds as the gold ones (the search corpus is always the whole world).
    num_people / num_organisations / num_cities / num_countries: world size; a bigger world means a
      bigger corpus and more confusable paragraphs for the search tool.
  """

  num_questions: int = 1000
  min_hops: int = 2
  max_hops: int = 4
  num_distractors: int = 8
  num_people: int = 240
  num_organisations: int = 60
  num_cities: int = 40
  num_countries: int = 10

  def __post_init__(self):
    if not 1 <= self.min_hops <= self.max_hops <= 8:
      raise ValueError(f"need 1 <= min_hops <= max_hops <= 8, got {self.min_hops}..{self.max_hops}")
    if self.num_questions < 0 or self.num_distractors < 0:
      raise ValueError("num_questions and num_distractors must be >= 0")
    if not 1 <= self.num_countries <= self.num_cities <= self.num_people:
      raise ValueError("need 1 <= num_countries <= num_cities <= num_people (each city has its own mayor)")
    if self.num_organisations < 1 or self.num_people < 12:
      raise ValueError("need num_organisations >= 1 and num_people >= 12")

  @property
  def world_key(self) -> tuple[int, int, int, int]:
    return (self.num_people, self.num_organisations, self.num_cities, self.num_countries)


@dataclasses.dataclass(frozen=True)
class Relation:
  """A functional relation: one value per subject. ``obj`` is None for attributes (years)."""

  subject: str
  obj: str | None
  noun_phrase: str | None  # "{x}" -> the object as a noun phrase, for inner hops.
  question: str  # "{x}" -> the question asking for the object, for the last hop.


RELATIONS: Mapping[str, Relation] = {
    "works_for": Relation("person", "organisation", "the organisation that employs {x}",
                          "Which organisation employs {x}?"),
    "born_in": Relation("person", "city", "the birthplace of {x}", "In which city was {x} born?"),
    "mentor": Relation("person", "person", "the mentor of {x}", "Who mentored {x}?"),
    "birth_year": Relation("person", None, None, "In which year was {x} born?"),
    "headquarters": Relation("organisation", "city", "the city where {x} is headquartered",
                             "In which city is {x} headquartered?"),
    "founder": Relation("organisation", "person", "the founder of {x}", "Who founded {x}?"),
    "founding_year": Relation("organisation", None, None, "In which year was {x} founded?"),
    "country": Relation("city", "country", "the country containing {x}",
                        "Which country contains {x}?"),
    "mayor": Relation("city", "person", "the mayor of {x}", "Who is the mayor of {x}?"),
    "capital": Relation("country", "city", "the capital of {x}", "What is the capital of {x}?"),
}


@dataclasses.dataclass(frozen=True)
class Entity:
  """One entity of the world: its facts (relation -> entity name or year) and its paragraph."""

  name: str
  kind: str
  facts: Mapping[str, str]
  paragraph: str


@dataclasses.dataclass(frozen=True)
class World:
  entities: tuple[Entity, ...]

  @functools.cached_property
  def by_name(self) -> Mapping[str, Entity]:
    return {e.name: e for e in self.entities}

  def paragraphs(self) -> list[Paragraph]:
    """The search corpus: one paragraph per entity, titled by its name."""
    return [Paragraph(title=e.name, text=e.paragraph) for e in self.entities]


# --- Names from syllables -----------------------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
           "th", "tr", "v", "z", "sk", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ia", "y")
_CODAS = ("", "n", "r", "l", "s", "th", "m", "x", "v", "nd", "sk", "t")

_ORG_KINDS = (("Institute", "research institute"), ("Dynamics", "engineering firm"),
              ("Collective", "design collective"), ("Foundation", "charitable foundation"),
              ("Works", "shipbuilding company"), ("Laboratories", "biotechnology company"),
              ("Guild", "craft guild"), ("Press", "publishing house"),
              ("Observatory", "astronomical observatory"), ("Trading Company", "trading company"))
_CITY_SUFFIXES = ("", "", "ford", "holm", "mere", "vale", "port", "stead", "wick")
_COUNTRY_SUFFIXES = ("ia", "land", "mark", "ora", "istan", "eth")
_JOBS = ("architect", "botanist", "cartographer", "chemist", "composer", "economist", "engineer",
         "glassblower", "historian", "illustrator", "journalist", "linguist", "mathematician", "painter",
         "pharmacist", "poet", "sculptor", "surgeon", "translator", "violinist")
_HOBBIES = ("beekeeping", "chess", "rowing", "birdwatching", "pottery", "fencing", "astronomy",
            "rock climbing", "origami", "sailing")
_TOPICS = ("tidal energy", "rare mosses", "glass lenses", "clockwork", "desert irrigation",
           "paper making", "salt marshes", "weather balloons", "ancient scripts", "bridge design")
_GOODS = ("amber", "wool", "copper", "saffron", "timber", "porcelain", "figs", "silk", "salt", "tin")


def _word(rng, syllables: int) -> str:
  """A pronounceable invented word: open syllables and one closing consonant ("Zorvin", "Kalet")."""
  body = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
  return (body + rng.choice(_CODAS)).capitalize()


def _unique(rng, make, taken: set[str]) -> str:
  for _ in range(10_000):
    name = make()
    if name.lower() not in taken:
      taken.add(name.lower())
      return name
  raise RuntimeError("ran out of distinct names; the world is too large")


def _article(noun: str) -> str:
  return ("an " if noun[0] in "aeiou" else "a ") + noun


def build_world(config: MultihopConfig = MultihopConfig(), seed: int = 0) -> World:
  """The fictional world for (world size, seed); the same on every call and machine."""
  rng = synthetic_common.make_rng(DATASET, "world", seed, config.world_key)
  taken: set[str] = set()
  people = [_unique(rng, lambda: f"{_word(rng, rng.randint(1, 2))} {_word(rng, rng.randint(2, 3))}", taken)
            for _ in range(config.num_people)]
  orgs, org_kinds = [], []
  for _ in range(config.num_organisations):
    suffix, kind = rng.choice(_ORG_KINDS)
    orgs.append(_unique(rng, lambda: f"{_word(rng, rng.randint(2, 3))} {suffix}", taken))
    org_kinds.append(kind)
  cities = [_unique(rng, lambda: _word(rng, 2) + rng.choice(_CITY_SUFFIXES), taken)
            for _ in range(config.num_cities)]
  countries = [_unique(rng, lambda: _word(rng, rng.randint(1, 2)) + rng.choice(_COUNTRY_SUFFIXES), taken)
               for _ in range(config.num_countries)]

  # Every country gets at least one city; its capital is one of its own cities.
  city_country = [countries[i] if i < len(countries) else rng.choice(countries) for i in range(len(cities))]
  capitals = {n: rng.choice([c for c, cn in zip(cities, city_country) if cn == n]) for n in countries}
  mayors = rng.sample(people, len(cities))
  # Mentors come from earlier (older) people, so mentorship never loops.
  birth_years = sorted(rng.randint(1925, 2000) for _ in people)
  entities = []
  for i, p in enumerate(people):
    facts = {"works_for": rng.choice(orgs), "born_in": rng.choice(cities), "birth_year": str(birth_years[i])}
    if i >= 10 and rng.random() < 0.8:
      facts["mentor"] = people[rng.randrange(0, i)]
    text = (f"{p} is {_article(rng.choice(_JOBS))} who was born in {facts['born_in']} in {facts['birth_year']}. "
            f"{p} works for {facts['works_for']}.")
    if "mentor" in facts:
      text += f" {p} was mentored by {facts['mentor']}."
    text += f" Outside work, {p} enjoys {rng.choice(_HOBBIES)}."
    entities.append(Entity(p, "person", facts, text))
  for o, kind in zip(orgs, org_kinds):
    facts = {"headquarters": rng.choice(cities), "founder": rng.choice(people),
             "founding_year": str(rng.randint(1850, 2015))}
    text = (f"{o} is {_article(kind)} headquartered in {facts['headquarters']}. "
            f"{o} was founded by {facts['founder']} in {facts['founding_year']}. "
            f"{o} is best known for its work on {rng.choice(_TOPICS)}.")
    entities.append(Entity(o, "organisation", facts, text))
  for c, n, mayor in zip(cities, city_country, mayors):
    facts = {"country": n, "mayor": mayor}
    text = (f"{c} is a city in {n}. The mayor of {c} is {mayor}. "
            f"{c} has about {rng.randint(8, 900) * 1000:,} inhabitants.")
    entities.append(Entity(c, "city", facts, text))
  for n in countries:
    facts = {"capital": capitals[n]}
    text = (f"{n} is a country whose capital is {capitals[n]}. "
            f"{n} is known for its {rng.choice(_GOODS)} and {rng.choice(_GOODS)}.")
    entities.append(Entity(n, "country", facts, text))
  return World(tuple(entities))


def world_corpus(config: MultihopConfig = MultihopConfig(), seed: int = 0) -> list[Paragraph]:
  """The search corpus of the world the questions of (config, seed) are about."""
  return build_world(config, seed).paragraphs()


# --- Questions -------------------------------------------------------------------------------------------


def _walk(rng, world: World, hops: int) -> tuple[list[str], list[str]] | None:
  """A random chain of ``hops`` relations through distinct entities; None at a dead end or a loop."""
  start = rng.choice(world.entities)
  chain, relations = [start.name], []
  for hop in range(hops):
    entity = world.by_name[chain[-1]]
    last = hop == hops - 1
    options = [r for r in entity.facts if last or RELATIONS[r].obj is not None]
    if not options:
      return None
    r = rng.choice(options)
    value = entity.facts[r]
    if value in chain:
      return None
    chain.append(value)
    relations.append(r)
  return chain, relations


def question_text(start: str, relations: list[str]) -> str:
  """Composes the relations into one question, innermost hop first."""
  phrase = start
  for r in relations[:-1]:
    phrase = RELATIONS[r].noun_phrase.format(x=phrase)
  return RELATIONS[relations[-1]].question.format(x=phrase)


def generate(config: MultihopConfig = MultihopConfig(), seed: int = 0, split: str = "train") -> list[Question]:
  """The questions of one split over ``build_world(config, seed)``; same inputs, same questions.

  Splits share the world (and so the corpus) but never a question: a chain's split follows from a hash
  of (start entity, relations).
  """
  synthetic_common.check_split(DATASET, split)
  world = build_world(config, seed)
  # num_questions stays out of the seed: a smaller set is a prefix of a larger one.
  rng = synthetic_common.make_rng(DATASET, "questions", seed, split, config.world_key, config.min_hops,
                                  config.max_hops, config.num_distractors)
  out: list[Question] = []
  seen: set[str] = set()
  attempts = 0
  while len(out) < config.num_questions:
    attempts += 1
    if attempts > 200 * config.num_questions + 1000:
      raise RuntimeError(f"only {len(out)} distinct {split} chains found; grow the world or widen the hops")
    hops = rng.randint(config.min_hops, config.max_hops)
    walk = _walk(rng, world, hops)
    if walk is None:
      continue
    chain, relations = walk
    key = f"{chain[0]}|{'/'.join(relations)}"
    if key in seen or synthetic_common.split_of(key) != split:
      continue
    seen.add(key)
    gold = [world.by_name[name] for name in chain[:-1]]
    kinds = {e.kind for e in gold}
    others = [e for e in world.entities if e.name not in chain]
    same_kind = [e for e in others if e.kind in kinds]
    rng.shuffle(same_kind)
    distractors = same_kind[:config.num_distractors]
    if len(distractors) < config.num_distractors:
      rest = [e for e in others if e.kind not in kinds]
      distractors += rng.sample(rest, min(len(rest), config.num_distractors - len(distractors)))
    context = [Paragraph(e.name, e.paragraph) for e in gold + distractors]
    rng.shuffle(context)
    last = RELATIONS[relations[-1]]
    out.append(Question(
        id=f"{DATASET}-{seed}-{split}-{len(out):05d}",
        dataset=DATASET,
        text=question_text(chain[0], relations),
        answer=chain[-1],
        context=tuple(context),
        metadata={"seed": seed, "split": split, "hops": hops, "relations": relations, "chain": chain,
                  "supporting_titles": chain[:-1], "answer_kind": last.obj or "year"},
    ))
  return out
