"""The one entry point for questions and search corpora: ``load_questions`` and ``build_corpus``.

    spec = DatasetSpec("hotpot_qa", split="train", manual_dir="/data/hotpot", drop_easy=True, limit=10_000)
    questions = load_questions(spec)
    build_corpus(spec, out_path="runs/hotpot/corpus.json")   # for the search tool

Real datasets come through TFDS (``source="tfds"``: prepared once to array_record, read with
``as_data_source``) or straight from a JSON / JSON Lines file in the official format (``source="file"``).
The synthetic families are generated from ``seed`` and need no files. TFDS is imported only when used.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Literal, Mapping, Sequence

from swirl_jax.data import catalog
from swirl_jax.data import corpus as corpus_lib
from swirl_jax.data import formats
from swirl_jax.data import synthetic_arith
from swirl_jax.data import synthetic_common
from swirl_jax.data import synthetic_multihop
from swirl_jax.types import Paragraph, Question, RecordError

Source = Literal["tfds", "file"]


class UnknownDatasetError(ValueError):
  """The dataset or config name is not one we know; the message lists those that exist."""


class UnknownSplitError(ValueError):
  """The split is not one the dataset has; the message lists those that exist."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Which questions to load, from where, and how many.

  Attributes:
    name: one of ``dataset_names()``; "hotpot_qa/fullwiki" names a config as well.
    split: a split the dataset has (``list_datasets()``); "dev" means "validation".
    config: hotpot_qa "distractor" (default) or "fullwiki"; musique "answerable". None: the default.
    source: "tfds" (prepare to array_record, read with ``as_data_source``) or "file" (parse ``path``).
      Ignored by the synthetic datasets.
    path: for source="file", a JSON / JSON Lines file in the dataset's official format, or a directory
      holding the split's official file.
    manual_dir: for source="tfds", a directory holding the official files, for offline preparation.
    data_dir: the TFDS data directory (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
    drop_easy: drop HotPotQA questions of level "easy", as the paper did.
    shuffle_seed: when set, shuffle the questions with this seed before ``limit`` (a fixed sample).
    limit: keep at most this many questions.
    seed: the seed of the synthetic generators (the world and the questions).
    arith / multihop: difficulty and size of the synthetic families.
  """

  name: str
  split: str = "train"
  config: str | None = None
  source: Source = "tfds"
  path: str | None = None
  manual_dir: str | None = None
  data_dir: str | None = None
  drop_easy: bool = False
  shuffle_seed: int | None = None
  limit: int | None = None
  seed: int = 0
  arith: synthetic_arith.ArithConfig = dataclasses.field(default_factory=synthetic_arith.ArithConfig)
  multihop: synthetic_multihop.MultihopConfig = dataclasses.field(
      default_factory=synthetic_multihop.MultihopConfig)

  def __post_init__(self):
    if self.source not in ("tfds", "file"):
      raise ValueError(f"source must be 'tfds' or 'file', got {self.source!r}")
    if self.limit is not None and self.limit < 0:
      raise ValueError(f"limit must be >= 0, got {self.limit}")


def dataset_names() -> tuple[str, ...]:
  return catalog.all_names()


def list_datasets() -> dict[str, dict[str | None, tuple[str, ...]]]:
  """name -> config -> splits, for every dataset (synthetic ones have the config None)."""
  out: dict[str, dict[str | None, tuple[str, ...]]] = {
      name: {config: entry.splits(config) for config in entry.configs} for name, entry in catalog.DATASETS.items()}
  for name in catalog.SYNTHETIC:
    out[name] = {None: synthetic_common.SPLITS}
  return out


def resolve(spec: DatasetSpec) -> tuple[str, str | None, str]:
  """(name, config, split) with defaults filled in and aliases applied.

  Raises:
    UnknownDatasetError / UnknownSplitError: listing what exists.
  """
  name, _, config_in_name = spec.name.partition("/")
  known = list_datasets()
  if name not in known:
    raise UnknownDatasetError(f"unknown dataset {spec.name!r}; datasets: {', '.join(known)}")
  if config_in_name and spec.config and config_in_name != spec.config:
    raise UnknownDatasetError(f"{spec.name!r} names config {config_in_name!r} but spec.config is {spec.config!r}")
  config = config_in_name or spec.config
  configs = known[name]
  if config is None:
    config = next(iter(configs))
  if config not in configs:
    names = ", ".join(str(c) for c in configs) if any(configs) else "none"
    raise UnknownDatasetError(f"dataset {name!r} has no config {config!r}; configs: {names}")
  split = catalog.SPLIT_ALIASES.get(spec.split, spec.split)
  if split not in configs[config]:
    label = f"{name}/{config}" if config else name
    raise UnknownSplitError(f"dataset {label!r} has no split {spec.split!r}; splits: {', '.join(configs[config])}")
  return name, config, split


def load_questions(spec: DatasetSpec) -> list[Question]:
  """The questions ``spec`` names, filtered (drop_easy), shuffled (shuffle_seed) and cut (limit).

  Raises:
    UnknownDatasetError / UnknownSplitError: listing what exists.
    RecordError: a malformed record (naming file, line or index, and field) or a duplicate id.
    FileNotFoundError: no source file for the split.
  """
  name, config, split = resolve(spec)
  if name == "synthetic_arith":
    questions = synthetic_arith.generate(spec.arith, seed=spec.seed, split=split)
  elif name == "synthetic_multihop":
    questions = synthetic_multihop.generate(spec.multihop, seed=spec.seed, split=split)
  elif spec.source == "file":
    questions = formats.read_questions(_source_file(spec, name, config, split),
                                       formats.record_parser(name, config, split))
  else:
    from swirl_jax.data import tfds_builders  # TFDS costs a second to import: only when used.

    questions = tfds_builders.load(name, config, split, spec.data_dir, spec.manual_dir)
  if spec.drop_easy:
    questions = [q for q in questions if q.metadata.get("level") != "easy"]
  if spec.shuffle_seed is not None:
    questions = list(questions)
    random.Random(spec.shuffle_seed).shuffle(questions)
  if spec.limit is not None:
    questions = questions[:spec.limit]
  _check_unique(questions, spec)
  return questions


def source_file(spec: DatasetSpec) -> Path | None:
  """The file ``load_questions(spec)`` reads (source='file'); None for TFDS and the synthetic datasets."""
  name, config, split = resolve(spec)
  if name.startswith("synthetic_") or spec.source != "file":
    return None
  return _source_file(spec, name, config, split)


def _source_file(spec: DatasetSpec, name: str, config: str | None, split: str) -> Path:
  if spec.path is None:
    raise FileNotFoundError(f"{name}: source='file' needs a path (--config.data.path / DatasetSpec.path: a file, "
                            f"or a directory holding "
                            f"{' or '.join(catalog.DATASETS[name].files(config, split))})")
  path = Path(spec.path)
  if path.is_dir():
    names = catalog.DATASETS[name].files(config, split)
    found = catalog.find_file(path, names)
    if found is None:
      raise FileNotFoundError(f"{name}: {path} holds no {' or '.join(names)} for split {split!r}")
    return found
  if not path.exists():
    raise FileNotFoundError(f"{name}: {path}: no such file")
  return path


def _check_unique(questions: Sequence[Question], spec: DatasetSpec) -> None:
  seen: set[str] = set()
  for q in questions:
    if q.id in seen:
      raise RecordError(f"{spec.name}/{spec.split}: duplicate question id {q.id!r}")
    seen.add(q.id)


def build_corpus(spec: DatasetSpec | None = None, *, questions: Sequence[Question] = (),
                 paragraph_files: Sequence[str | Path] = (), out_path: str | Path | None = None,
                 whole_split: bool = True) -> list[Paragraph]:
  """A search corpus: the union of a split's paragraphs, given questions' paragraphs, and paragraph files.

  Args:
    spec: a dataset split; its questions' context paragraphs are taken (for synthetic_multihop, the whole
      generated world). Datasets without paragraphs (GSM8K, synthetic_arith) add none.
    questions: more questions whose context paragraphs are added.
    paragraph_files: files of ``[{title, text}]``, JSON Lines ``{title, text}`` or ``{title: [sentences]}``.
    out_path: when set, the corpus is also written there as a JSON list ``[{title, text}]``.
    whole_split: take every question of the split (the paper's union over the split), ignoring
      ``limit``, ``drop_easy`` and ``shuffle_seed``; False takes only the questions ``spec`` selects.

  Returns:
    The paragraphs, each (title, text) once, in first-seen order.
  """
  groups: list[Sequence[Paragraph]] = []
  if spec is not None:
    name, _, _ = resolve(spec)
    if name == "synthetic_multihop":
      groups.append(synthetic_multihop.world_corpus(spec.multihop, spec.seed))
    else:
      selected = dataclasses.replace(spec, limit=None, drop_easy=False, shuffle_seed=None) if whole_split else spec
      groups.append(corpus_lib.corpus_from_questions(load_questions(selected)))
  groups.append(corpus_lib.corpus_from_questions(questions))
  groups.extend(corpus_lib.read_paragraphs(f) for f in paragraph_files)
  paragraphs = corpus_lib.union_paragraphs(groups)
  if out_path is not None:
    corpus_lib.write_corpus(out_path, paragraphs)
  return paragraphs


def describe_spec(spec: DatasetSpec) -> Mapping[str, object]:
  """The resolved spec as plain data, for run manifests."""
  name, config, split = resolve(spec)
  return {**dataclasses.asdict(spec), "name": name, "config": config, "split": split}
