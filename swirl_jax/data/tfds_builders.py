"""TFDS builders for HotPotQA, MuSiQue, BeerQA and CofCA, and offline preparation of TFDS's gsm8k.

Importing this module registers the builders ``hotpot_qa`` (configs ``distractor``, ``fullwiki``),
``musique`` (config ``answerable``), ``beerqa`` and ``cofca`` with TFDS. All prepare to array_record and
are read with ``as_data_source``; TensorFlow is not needed.

Offline preparation:
* Our builders look in the manual directory (``DownloadConfig(manual_dir=...)``) first. When it holds
  any of the official files (at its top or in sub-folders), they prepare the splits whose files are
  there and download nothing; with no manual files they download the official release.
* TFDS's own ``gsm8k`` builder only downloads. ``prepare_gsm8k`` makes it work offline by placing the
  four official files from a manual directory in TFDS's download cache exactly as a finished download
  leaves them (the file under its URL-derived name plus the ``.INFO`` record), so the unmodified builder
  finds them cached and prepares from them.

Every builder yields one normalised example per question (see ``question_to_example``), produced by the
same parsers as the plain-file loader, so both paths give identical ``Question`` records.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import tensorflow_datasets as tfds
from etils import epath
# The download cache layout (file name per URL, .INFO record) is TFDS's own; reuse its functions.
from tensorflow_datasets.core.download import checksums as tfds_checksums
from tensorflow_datasets.core.download import resource as tfds_resource

from swirl_jax.data import catalog
from swirl_jax.data import formats
from swirl_jax.types import Paragraph, Question

ARRAY_RECORD = "array_record"


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "question": tfds.features.Text(),
      "answer": tfds.features.Text(),
      "aliases": tfds.features.Sequence(tfds.features.Text()),
      "context": tfds.features.Sequence({"title": tfds.features.Text(), "text": tfds.features.Text()}),
      # Dataset-specific extras (level, type, hops, decomposition, ...) as JSON: one schema for all.
      "metadata": tfds.features.Text(),
  })


def question_to_example(q: Question) -> dict[str, Any]:
  return {
      "id": q.id,
      "question": q.text,
      "answer": q.answer,
      "aliases": list(q.aliases),
      "context": [{"title": p.title, "text": p.text} for p in q.context],
      "metadata": json.dumps(dict(q.metadata), ensure_ascii=False, sort_keys=True),
  }


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_to_question(example: Mapping[str, Any], dataset: str) -> Question:
  """Inverts ``question_to_example`` on what ``as_data_source`` returns (bytes and numpy arrays)."""
  context = example["context"]
  return Question(
      id=_text(example["id"]),
      dataset=dataset,
      text=_text(example["question"]),
      answer=_text(example["answer"]),
      aliases=tuple(_text(a) for a in example["aliases"]),
      context=tuple(Paragraph(_text(t), _text(x)) for t, x in zip(context["title"], context["text"])),
      metadata=json.loads(_text(example["metadata"])),
  )


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The manual directory when it exists and is non-empty, else None (then we download)."""
  try:
    return dl_manager.manual_dir
  except AssertionError:  # TFDS's way of saying "no manual dir / empty".
    return None


def manual_instructions(entry: catalog.DatasetEntry) -> str:
  """What to put in the manual directory for ``entry`` (shown by TFDS and in our errors)."""
  lines = [f"Put the official {entry.name} files in the manual directory (sub-folders are searched):"]
  for config, splits in entry.split_files.items():
    for split, names in splits.items():
      label = f"{config}/{split}" if config else split
      lines.append(f"  {label}: {' or '.join(names)}")
  if entry.archive:
    lines.append(f"or the release archive {entry.archive[0]} ({entry.archive[1]}).")
  return "\n".join(lines)


def _unzip(archive: Path, out_dir: Path) -> Path:
  """Extracts a zip with Python's zipfile (TFDS's extractor needs TensorFlow)."""
  out_dir.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(archive) as z:
    z.extractall(out_dir)  # zipfile drops absolute and ".." parts of member names.
  return out_dir


class _QuestionBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose examples are the Questions of one of ``catalog.DATASETS``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: questions in the swirl_jax Question schema."}
  ENTRY: catalog.DatasetEntry
  CITATION = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=f"{self.ENTRY.name} questions as swirl_jax Question records.",
        features=_features(),
        homepage=self.ENTRY.homepage,
        citation=self.CITATION,
        # Keep the official file order: a `limit` then takes the same questions from TFDS and from files.
        disable_shuffling=True,
    )

  @property
  def _config_name(self) -> str | None:
    return self.builder_config.name if self.builder_config else None

  def _split_files(self) -> Mapping[str, tuple[str, ...]]:
    return self.ENTRY.split_files[self._config_name]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._split_files()
    manual = _manual_dir(dl_manager)
    if manual is not None:
      paths = self._manual_paths(dl_manager, Path(manual), files)
    else:
      paths = self._download(dl_manager, files)
    return {split: self._generate_examples(path, split) for split, path in paths.items()}

  def _manual_paths(self, dl_manager, manual: Path, files: Mapping[str, tuple[str, ...]]) -> dict[str, Path]:
    found = {split: catalog.find_file(manual, names) for split, names in files.items()}
    if not any(found.values()) and self.ENTRY.archive:
      archive = catalog.find_file(manual, (self.ENTRY.archive[0],))
      if archive is not None:
        extracted = _unzip(archive, Path(dl_manager.download_dir) / "extracted" / archive.stem)
        found = {split: catalog.find_file(extracted, names) for split, names in files.items()}
    found = {split: path for split, path in found.items() if path is not None}
    if not found:
      present = sorted(p.name for p in manual.iterdir())
      raise FileNotFoundError(f"{self.name}: the manual directory {manual} holds none of the expected files "
                              f"(it holds {present}).\n{manual_instructions(self.ENTRY)}")
    return found

  def _download(self, dl_manager, files: Mapping[str, tuple[str, ...]]) -> dict[str, Path]:
    if self.ENTRY.archive:
      archive = Path(dl_manager.download(self.ENTRY.archive[1]))
      root = _unzip(archive, Path(dl_manager.download_dir) / "extracted" / Path(self.ENTRY.archive[0]).stem)
      paths = {split: catalog.find_file(root, names) for split, names in files.items()}
      missing = [files[s][0] for s, p in paths.items() if p is None]
      if missing:
        raise FileNotFoundError(f"{self.name}: the downloaded archive lacks {missing}")
      return paths
    urls = {split: self.ENTRY.urls.get(names[0]) for split, names in files.items()}
    if not all(urls.values()):
      raise FileNotFoundError(f"{self.name} has no official download location known to swirl_jax.\n"
                              f"{manual_instructions(self.ENTRY)}")
    return {split: Path(p) for split, p in dl_manager.download(urls).items()}

  def _generate_examples(self, path: Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    # Ids are checked for duplicates (TFDS keys must be unique) with both places named.
    for q in formats.read_questions(path, formats.record_parser(self.ENTRY.name, self._config_name, split)):
      yield q.id, question_to_example(q)


class HotpotQa(_QuestionBuilder):
  """HotPotQA (Yang et al. 2018): distractor and fullwiki settings; train and validation (dev)."""

  ENTRY = catalog.DATASETS["hotpot_qa"]
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="distractor", description="Gold paragraphs plus 8 distractors."),
      tfds.core.BuilderConfig(name="fullwiki", description="Paragraphs retrieved from all of Wikipedia."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(catalog.DATASETS["hotpot_qa"])
  CITATION = "@inproceedings{yang2018hotpotqa, title={HotpotQA}, booktitle={EMNLP}, year={2018}}"


class Musique(_QuestionBuilder):
  """MuSiQue-Ans (Trivedi et al. 2022): answerable 2-4 hop questions; train and validation (dev)."""

  ENTRY = catalog.DATASETS["musique"]
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="answerable", description="MuSiQue-Ans v1.0.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(catalog.DATASETS["musique"])
  CITATION = "@article{trivedi2022musique, title={MuSiQue}, journal={TACL}, year={2022}}"


class Beerqa(_QuestionBuilder):
  """BeerQA (Qi et al. 2021): open-domain questions of 1-3+ hops; train and validation (dev)."""

  ENTRY = catalog.DATASETS["beerqa"]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(catalog.DATASETS["beerqa"])
  CITATION = "@inproceedings{qi2021answering, title={Answering Open-Domain Questions of Varying " \
             "Reasoning Steps from Text}, booktitle={EMNLP}, year={2021}}"


class Cofca(_QuestionBuilder):
  """CofCA (Wu et al. 2024): counterfactual multi-hop questions; one test split, manual files only."""

  ENTRY = catalog.DATASETS["cofca"]
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_instructions(catalog.DATASETS["cofca"])
  CITATION = "@article{wu2024cofca, title={CofCA: A Step-Wise Counterfactual Multi-hop QA benchmark}, " \
             "journal={arXiv:2402.11924}, year={2024}}"


BUILDERS: Mapping[str, type[tfds.core.DatasetBuilder]] = {
    "gsm8k": tfds.text.Gsm8k,  # TFDS's own.
    "hotpot_qa": HotpotQa,
    "musique": Musique,
    "beerqa": Beerqa,
    "cofca": Cofca,
}


# --- GSM8K: TFDS's builder, prepared offline from a manual directory ------------------------------------


def _gsm8k_urls() -> Mapping[str, str]:
  """split -> the URL TFDS's gsm8k builder will request (read from it, so a TFDS change is followed)."""
  module = __import__(tfds.text.Gsm8k.__module__, fromlist=["_URLS"])
  entry = catalog.DATASETS["gsm8k"]
  default = {split: entry.urls[names[0]] for split, names in entry.split_files[None].items()}
  return dict(getattr(module, "_URLS", default))


def seed_gsm8k_download_cache(download_dir: str | Path, manual_dir: str | Path) -> dict[str, Path]:
  """Places the official GSM8K files of ``manual_dir`` in TFDS's download cache for the gsm8k builder.

  Each file is validated with our parser first (errors name file, line and field), copied to
  ``<download_dir>/gsm8k/<TFDS file name for its URL>``, and given the ``.INFO`` record TFDS writes
  after a download. TFDS then skips the download ("File cached") and reads these files.

  Returns:
    split -> the cached file.
  Raises:
    FileNotFoundError: some of the four files (TFDS's builder prepares all four splits) are missing.
  """
  entry = catalog.DATASETS["gsm8k"]
  urls = _gsm8k_urls()
  found = {split: catalog.find_file(manual_dir, entry.files(None, split)) for split in urls}
  missing = [entry.files(None, s)[0] for s, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(
        f"gsm8k: TFDS's gsm8k builder prepares all of {sorted(urls)} at once, but the manual directory "
        f"{manual_dir} lacks {missing}. Add them (github.com/openai/grade-school-math, "
        "grade_school_math/data/), or load the file you have with source='file'.")
  cache = Path(download_dir) / "gsm8k"
  cache.mkdir(parents=True, exist_ok=True)
  out = {}
  for split, src in found.items():
    formats.read_questions(src, formats.record_parser("gsm8k", None, split))
    url = urls[split]
    dst = cache / tfds_resource.get_dl_fname(url)
    shutil.copyfile(src, dst)
    info = tfds_resource.get_info_path(epath.Path(dst))
    if info.exists():
      info.unlink()  # A stale record with another checksum would be refused.
    tfds_resource.write_info_file(url=url, path=epath.Path(dst), dataset_name="gsm8k",
                                  original_fname=src.name, url_info=tfds_checksums.compute_url_info(dst))
    out[split] = dst
  return out


# --- Preparing and reading --------------------------------------------------------------------------------


class SplitNotPreparedError(FileNotFoundError):
  """The requested split has no prepared data and no source file."""


def make_builder(name: str, config: str | None, data_dir: str | None) -> tfds.core.DatasetBuilder:
  cls = BUILDERS[name]
  kwargs: dict[str, Any] = {"data_dir": data_dir, "file_format": ARRAY_RECORD}
  if config is not None:
    kwargs["config"] = config
  return cls(**kwargs)


def prepare(name: str, config: str | None, split: str, data_dir: str | None,
            manual_dir: str | None) -> tfds.core.DatasetBuilder:
  """A builder with ``split`` prepared to array_record in ``data_dir`` (prepared now if needed).

  A dataset first prepared from a manual directory that lacked some split's file is prepared again
  (from the download cache, no download) once that file is there.

  Raises:
    SplitNotPreparedError: the split's file is neither in the manual directory nor downloadable.
  """
  builder = make_builder(name, config, data_dir)
  if builder.is_prepared() and split in builder.info.splits:
    return builder
  entry = catalog.DATASETS[name]
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    # Prepared earlier without this split: redo it only if the file has arrived since.
    if manual_dir is None or catalog.find_file(manual_dir, entry.files(config, split)) is None:
      raise SplitNotPreparedError(_not_prepared(builder, entry, config, split, manual_dir))
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  download_dir = None
  if name == "gsm8k" and manual_dir is not None:
    download_dir = builder.data_dir_root / "downloads"
    seed_gsm8k_download_cache(download_dir, manual_dir)
  builder.download_and_prepare(
      download_dir=download_dir,
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode))
  builder = make_builder(name, config, data_dir)  # Re-read the metadata just written.
  if split not in builder.info.splits:
    raise SplitNotPreparedError(_not_prepared(builder, entry, config, split, manual_dir))
  return builder


def _not_prepared(builder, entry: catalog.DatasetEntry, config: str | None, split: str,
                  manual_dir: str | None) -> str:
  return (f"{entry.name}{'/' + config if config else ''}: split {split!r} is not prepared in "
          f"{builder.data_dir} (prepared splits: {sorted(builder.info.splits)}); put "
          f"{' or '.join(entry.files(config, split))} in the manual directory ({manual_dir}) to add it")


def load(name: str, config: str | None, split: str, data_dir: str | None,
         manual_dir: str | None) -> list[Question]:
  """The questions of one split, read with ``as_data_source`` from array_record files."""
  builder = prepare(name, config, split, data_dir, manual_dir)
  source = builder.as_data_source(split=split)
  where = f"tfds:{builder.info.full_name}/{split}"
  if name == "gsm8k":
    parse = formats.record_parser("gsm8k", None, split)
    to_question: Callable[[Mapping[str, Any], int], Question | None] = lambda ex, i: parse(
        {"question": _text(ex["question"]), "answer": _text(ex["answer"])}, f"{where}[{i}]")
  else:
    to_question = lambda ex, i: example_to_question(ex, name)
  out = []
  for i in range(len(source)):
    q = to_question(source[i], i)
    if q is not None:
      out.append(q)
  return out
