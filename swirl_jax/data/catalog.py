"""What each real dataset is: its configs, splits, official file names and download locations.

One table serves the TFDS builders (which file feeds which split, where to download it), the manual
directory (the file names to put there), the plain-file loader, and the error messages that list what
exists. Split "dev" is accepted everywhere as another name for "validation".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping
# Datasets the project generates; they need no files.
SYNTHETIC = ("synthetic_arith", "synthetic_multihop")
SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """A real dataset.

  Attributes:
    name: the registry and TFDS name.
    split_files: config -> split -> accepted file names (first is the official one); config None when
      the dataset has no configs.
    urls: official file name -> download URL. Files without one must be put in the manual directory.
    archive: a download that holds the files (MuSiQue ships one zip), or None.
    homepage: where the dataset is described.
  """

  name: str
  split_files: Mapping[str | None, Mapping[str, tuple[str, ...]]]
  urls: Mapping[str, str]
  archive: tuple[str, str] | None = None  # (archive file name, URL)
  homepage: str = ""

  @property
  def configs(self) -> tuple[str | None, ...]:
    return tuple(self.split_files)

  @property
  def default_config(self) -> str | None:
    return self.configs[0]

  def splits(self, config: str | None) -> tuple[str, ...]:
    return tuple(self.split_files[config])

  def files(self, config: str | None, split: str) -> tuple[str, ...]:
    return self.split_files[config][split]


_HOTPOT = "http://curtis.ml.cmu.edu/datasets/hotpot/"
_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/"
_BEERQA = "https://nlp.stanford.edu/projects/beerqa/"

DATASETS: Mapping[str, DatasetEntry] = {
    "gsm8k": DatasetEntry(
        name="gsm8k",
        # TFDS's own builder: it downloads all four files and prepares all four splits at once.
        split_files={None: {s: (f"{s}.jsonl",) for s in ("train", "test", "train_socratic", "test_socratic")}},
        urls={f"{s}.jsonl": f"{_GSM8K}{s}.jsonl" for s in ("train", "test", "train_socratic", "test_socratic")},
        homepage="https://github.com/openai/grade-school-math",
    ),
    "hotpot_qa": DatasetEntry(
        name="hotpot_qa",
        # The test files have no answers, so they are not splits here.
        split_files={
            "distractor": {"train": ("hotpot_train_v1.1.json",), "validation": ("hotpot_dev_distractor_v1.json",)},
            "fullwiki": {"train": ("hotpot_train_v1.1.json",), "validation": ("hotpot_dev_fullwiki_v1.json",)},
        },
        urls={f: _HOTPOT + f for f in ("hotpot_train_v1.1.json", "hotpot_dev_distractor_v1.json",
                                       "hotpot_dev_fullwiki_v1.json")},
        homepage="https://hotpotqa.github.io/",
    ),
    "musique": DatasetEntry(
        name="musique",
        # The answerable subset (MuSiQue-Ans); its test file has no answers.
        split_files={"answerable": {"train": ("musique_ans_v1.0_train.jsonl",),
                                    "validation": ("musique_ans_v1.0_dev.jsonl",)}},
        urls={},
        # The official release: one zip on Google Drive, linked from github.com/StonyBrookNLP/musique.
        archive=("musique_v1.0.zip",
                 "https://drive.google.com/uc?export=download&id=1tGdADlNjWFaHLeZZGShh2IRcpO6Lv24h"),
        homepage="https://github.com/StonyBrookNLP/musique",
    ),
    "beerqa": DatasetEntry(
        name="beerqa",
        # The test file holds questions only.
        split_files={None: {"train": ("beerqa_train_v1.0.json",), "validation": ("beerqa_dev_v1.0.json",)}},
        urls={f: _BEERQA + f for f in ("beerqa_train_v1.0.json", "beerqa_dev_v1.0.json")},
        homepage="https://nlp.stanford.edu/projects/beerqa/",
    ),
    "cofca": DatasetEntry(
        name="cofca",
        # An evaluation benchmark (Wu et al. 2024, arXiv:2402.11924) with no download URL known to this
        # project: put the file in the manual directory under one of these names.
        split_files={None: {"test": ("cofca_test.json", "cofca_test.jsonl", "cofca.json", "cofca.jsonl")}},
        urls={},
        homepage="https://arxiv.org/abs/2402.11924",
    ),
}


def all_names() -> tuple[str, ...]:
  return tuple(DATASETS) + SYNTHETIC


def find_file(directory: str | Path, names: tuple[str, ...]) -> Path | None:
  """The first of ``names`` in ``directory``, or below it (an unpacked release keeps its folders)."""
  directory = Path(directory)
  for name in names:
    if (directory / name).is_file():
      return directory / name
  for name in names:
    for path in sorted(directory.rglob(name)):
      if path.is_file():
        return path
  return None
