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
* Prepared data is never rebuilt silently: ``prepare`` records the manual files used and refuses a
  changed file, or adding a split when that would lose a prepared one (see its docstring).

Every builder yields one normalised example per question (see ``question_to_example``), produced by the
same parsers as the plain-file loader, so both paths give identical ``Question`` records.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import tensorflow_datasets as tfds
from etils import epath
# The download cache layout (file name per URL, .INFO record) is TFDS's own; reuse its functions.
from tensorflow_datasets.core.download import checksums as tfds_checksums
from tensorflow_datasets.core.download import resource as tfds_resource

from swirl_jax import atomic_io
from swirl_jax.data import catalog
from swirl_jax.data import formats
from swirl_jax.types import Paragraph, Question

ARRAY_RECORD = "array_record"
# Written next to TFDS's dataset_info.json: the manual files each split was prepared from.
SOURCES_FILE = "swirl_manual_sources.json"

log = logging.getLogger(__name__)


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
  ``<download_dir>/gsm8k/<TFDS file name for its URL>`` (without a byte order mark, lines ending in LF),
  and given the ``.INFO`` record TFDS writes after a download. TFDS then skips the download ("File cached") and reads these files.

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
    # as our parser reads it: TFDS's builder refuses a byte order mark, and reads CR-only lines as one
    data = src.read_bytes()
    dst.write_bytes(re.sub(rb"\r\n?", b"\n", data[3:] if data.startswith(codecs.BOM_UTF8) else data))
    info = tfds_resource.get_info_path(epath.Path(dst))
    if info.exists():
      info.unlink()  # A stale record with another checksum would be refused.
    tfds_resource.write_info_file(url=url, path=epath.Path(dst), dataset_name="gsm8k",
                                  original_fname=src.name, url_info=tfds_checksums.compute_url_info(dst))
    out[split] = dst
  return out


# --- Preparing and reading --------------------------------------------------------------------------------


class SplitNotPreparedError(FileNotFoundError):
  """The requested split has no prepared data and no source file, or adding it would lose prepared splits."""


class StalePreparedDataError(ValueError):
  """A manual file differs from the one its split was prepared from (prepared data is never silently redone)."""


def make_builder(name: str, config: str | None, data_dir: str | None) -> tfds.core.DatasetBuilder:
  cls = BUILDERS[name]
  kwargs: dict[str, Any] = {"data_dir": data_dir, "file_format": ARRAY_RECORD}
  if config is not None:
    kwargs["config"] = config
  return cls(**kwargs)


def prepare(name: str, config: str | None, split: str, data_dir: str | None,
            manual_dir: str | None) -> tfds.core.DatasetBuilder:
  """A builder with ``split`` prepared to array_record in ``data_dir`` (prepared now if needed).

  Prepared data is reused as is; it is never rebuilt silently from other files:
  * The manual files used are recorded (name, size, sha256) in ``SOURCES_FILE`` in the builder's data
    dir. When ``manual_dir`` is given and the requested split's file there now differs from the recorded
    one (an edited file, or another manual directory), ``StalePreparedDataError`` says to delete the
    prepared folder to rebuild. A file gone from the manual directory is fine: the prepared data is used.
  * A dataset first prepared from a manual directory that lacked some split's file is prepared again,
    all splits together (from the download cache, no download), once that file is there; this is refused
    when a split already prepared has lost its file from the manual directory (or its file changed), as
    preparing again would delete or alter it. GSM8K always prepares all four splits at once, so it is
    never prepared again; its recorded files are the four manual files seeded into the download cache.

  Raises:
    FileNotFoundError: ``manual_dir`` is given but does not exist or is empty (TFDS would download the
      release instead).
    SplitNotPreparedError: the split's file is neither in the manual directory nor downloadable, or
      adding it would lose already prepared splits.
    StalePreparedDataError: a manual file differs from the one its prepared split was built from.
  """
  builder = make_builder(name, config, data_dir)
  entry = catalog.DATASETS[name]
  if builder.is_prepared() and split in builder.info.splits:
    if manual_dir is not None:
      _check_unchanged(builder, entry, config, [split], manual_dir)
    return builder
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  sources = _manual_sources(entry, config, manual_dir)
  if manual_dir is not None and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
    # (TFDS takes a missing or empty manual directory for none given, and downloads the release)
    state = ("does not exist" if not os.path.exists(manual_dir) else
             "is not a directory" if not os.path.isdir(manual_dir) else "is empty")
    raise FileNotFoundError(f"{entry.name}{'/' + config if config else ''}: the manual directory {manual_dir} "
                            f"{state}; nothing was prepared or downloaded (without a manual directory the "
                            f"official release is downloaded). {manual_instructions(entry)}")
  if builder.is_prepared():
    # Prepared earlier without this split: redo it only if the file has arrived since.
    if split not in sources:
      raise SplitNotPreparedError(_not_prepared(builder, entry, config, split, manual_dir))
    # Preparing again rebuilds every split from what the manual directory holds now.
    prepared = sorted(builder.info.splits)
    lost = [s for s in prepared if s not in sources]
    if lost:
      missing = [" or ".join(entry.files(config, s)) for s in lost]
      raise SplitNotPreparedError(
          f"{entry.name}{'/' + config if config else ''}: adding split {split!r} means preparing "
          f"{builder.data_dir} again, all splits together, from the manual directory {manual_dir}; it no "
          f"longer holds the file of the prepared split(s) {lost} ({', '.join(missing)}), so they would be "
          f"lost. Put those files back in {manual_dir}, or prepare {split!r} in another data_dir.")
    _check_unchanged(builder, entry, config, prepared, manual_dir)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  # Recorded before reading: a file changed during preparation then shows as changed on the next load.
  records = {s: _file_record(p, manual_dir) for s, p in sources.items()} if manual_dir is not None else {}
  download_dir = None
  if name == "gsm8k" and manual_dir is not None:
    download_dir = builder.data_dir_root / "downloads"
    seed_gsm8k_download_cache(download_dir, manual_dir)
  builder.download_and_prepare(
      download_dir=download_dir,
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode))
  builder = make_builder(name, config, data_dir)  # Re-read the metadata just written.
  _write_sources(builder, {s: r for s, r in records.items() if s in builder.info.splits})
  if split not in builder.info.splits:
    raise SplitNotPreparedError(_not_prepared(builder, entry, config, split, manual_dir))
  return builder


def _not_prepared(builder, entry: catalog.DatasetEntry, config: str | None, split: str,
                  manual_dir: str | None) -> str:
  return (f"{entry.name}{'/' + config if config else ''}: split {split!r} is not prepared in "
          f"{builder.data_dir} (prepared splits: {sorted(builder.info.splits)}); put "
          f"{' or '.join(entry.files(config, split))} in the manual directory ({manual_dir}) to add it")


# --- Which manual files a prepared dataset came from -------------------------------------------------------


def _manual_sources(entry: catalog.DatasetEntry, config: str | None, manual_dir: str | None) -> dict[str, Path]:
  """split -> the manual file it is prepared from, found as the builders find it.

  When the manual directory holds none of the split files but the release archive, every split maps to
  the archive (``_QuestionBuilder._manual_paths`` then extracts it).
  """
  if manual_dir is None or not Path(manual_dir).is_dir():
    return {}
  files = entry.split_files[config]
  found = {s: catalog.find_file(manual_dir, names) for s, names in files.items()}
  if not any(found.values()) and entry.archive:
    archive = catalog.find_file(manual_dir, (entry.archive[0],))
    if archive is not None:
      return {s: archive for s in files}
  return {s: p for s, p in found.items() if p is not None}


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _file_record(path: Path, manual_dir: str) -> dict[str, Any]:
  st = path.stat()
  return {"file": path.relative_to(manual_dir).as_posix(), "path": str(path.resolve()), "size": st.st_size,
          "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _sources_path(builder: tfds.core.DatasetBuilder) -> Path:
  return Path(os.fspath(builder.data_dir)) / SOURCES_FILE


def _write_sources(builder: tfds.core.DatasetBuilder, records: Mapping[str, Mapping[str, Any]]) -> None:
  with atomic_io.atomic_open(_sources_path(builder)) as f:
    json.dump({"splits": dict(records)}, f, indent=1, sort_keys=True)


def _read_sources(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, Any]]:
  """split -> the recorded manual file; empty for data prepared by download or before files were recorded."""
  path = _sources_path(builder)
  if not path.exists():
    return {}
  try:
    return dict(json.loads(path.read_text(encoding="utf-8"))["splits"])
  except (ValueError, KeyError, TypeError) as e:
    log.warning("%s: unreadable record of manual files (%s); prepared data is not checked against them",
                path, e)
    return {}


def _check_unchanged(builder: tfds.core.DatasetBuilder, entry: catalog.DatasetEntry, config: str | None,
                     splits: list[str], manual_dir: str) -> None:
  """Raises StalePreparedDataError when a split's manual file now differs from the one it was prepared from.

  Size and mtime are compared first, so an unchanged file is not hashed on every load; a file whose
  content matches after all (touched, or copied elsewhere) passes.
  """
  records = _read_sources(builder)
  current = _manual_sources(entry, config, manual_dir)
  refreshed = False
  for split in splits:
    rec, path = records.get(split), current.get(split)
    if rec is None or path is None:  # Downloaded, or the file has since left the manual dir: keep it.
      continue
    st = path.stat()
    same_path = str(path.resolve()) == rec.get("path")
    if same_path and st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns"):
      continue
    digest = _sha256(path)
    if digest != rec.get("sha256"):
      raise StalePreparedDataError(
          f"{entry.name}{'/' + config if config else ''}: split {split!r} in {builder.data_dir} was prepared "
          f"from {rec.get('path')} (sha256 {str(rec.get('sha256'))[:12]}), but the manual file {path} now "
          f"differs (sha256 {digest[:12]}). Prepared data is not rebuilt silently: to prepare from the "
          f"current files, delete {builder.data_dir} and load again; to use the prepared data as is, load "
          "without manual_dir.")
    if same_path:  # Touched but unchanged: remember the new mtime so it is not hashed again.
      records[split] = dict(rec, size=st.st_size, mtime_ns=st.st_mtime_ns)
      refreshed = True
  if refreshed:
    _write_sources(builder, records)


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
