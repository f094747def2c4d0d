"""The loaders on the real dataset files in ../shared/data (or $SWIRL_JAX_SHARED_DATA); skipped without them.

Those files are small HippoRAG copies in the official formats (HotPotQA and MuSiQue as JSON lists) plus
the full GSM8K train file; they are never copied into the project.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from swirl_jax.data import DatasetSpec, build_corpus, load_questions
from swirl_jax.data import corpus

SHARED = Path(os.environ.get("SWIRL_JAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def real(relative: str) -> Path:
  path = SHARED / relative
  if not path.is_file():
    pytest.skip(f"real data file {path} not present")
  return path


def link(manual: Path, name: str, target: Path) -> None:
  """Puts a real file into a manual directory under its official name, without copying it."""
  manual.mkdir(parents=True, exist_ok=True)
  (manual / name).symlink_to(target)


def test_gsm8k_train_file():
  qs = load_questions(DatasetSpec("gsm8k", source="file", path=str(real("gsm8k/train.jsonl"))))
  assert len(qs) == 7473 and len({q.id for q in qs}) == 7473
  assert (qs[0].answer, qs[1].answer) == ("72", "10")  # Natalia's clips; Weng's babysitting.
  assert all(re.fullmatch(r"-?\d+(\.\d+)?", q.answer) for q in qs)


def test_gsm8k_real_train_through_tfds(tmp_path):
  """TFDS's gsm8k builder, prepared offline from the real train file (the other three are tiny stand-ins)."""
  train = real("gsm8k/train.jsonl")
  manual = tmp_path / "manual"
  link(manual, "train.jsonl", train)
  head = "".join(train.read_text(encoding="utf-8").splitlines(keepends=True)[:2])
  for name in ("test", "train_socratic", "test_socratic"):
    (manual / f"{name}.jsonl").write_text(head, encoding="utf-8")
  qs = load_questions(DatasetSpec("gsm8k", source="tfds", manual_dir=str(manual), data_dir=str(tmp_path / "data")))
  from_file = load_questions(DatasetSpec("gsm8k", source="file", path=str(train)))
  assert sorted(qs, key=lambda q: q.id) == sorted(from_file, key=lambda q: q.id)


def test_hotpotqa_train_file_and_tfds(tmp_path):
  path = real("hotpotqa/hotpotqa_train.json")
  qs = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path)))
  assert len(qs) == 100 and all(2 <= len(q.context) <= 10 for q in qs)
  assert all(set(q.metadata["supporting_titles"]) <= {p.title for p in q.context} for q in qs)
  levels = [q.metadata["level"] for q in qs]
  kept = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path), drop_easy=True))
  assert len(kept) == 100 - levels.count("easy") and levels.count("easy") > 0
  assert {q.metadata["type"] for q in qs} == {"bridge", "comparison"}
  link(tmp_path / "manual", "hotpot_train_v1.1.json", path)
  via_tfds = load_questions(DatasetSpec("hotpot_qa", source="tfds", manual_dir=str(tmp_path / "manual"),
                                        data_dir=str(tmp_path / "data")))
  assert via_tfds == qs


def test_hotpotqa_split_corpus_is_the_published_corpus():
  """The union of the split's paragraphs is exactly HippoRAG's corpus file for these questions."""
  ours = build_corpus(DatasetSpec("hotpot_qa", source="file", path=str(real("hotpotqa/hotpotqa_train.json"))))
  theirs = corpus.read_paragraphs(real("hotpotqa/hotpotqa_train_corpus.json"))
  assert len(ours) == len(theirs) == 994 and set(ours) == set(theirs)


def test_musique_train_file_and_tfds(tmp_path):
  path = real("musique/musique_train.json")
  qs = load_questions(DatasetSpec("musique", source="file", path=str(path)))
  assert len(qs) == 100 and all(q.metadata["answerable"] for q in qs)
  assert {q.metadata["hops"] for q in qs} == {2, 3, 4}
  assert all(q.metadata["hops"] == int(q.id[0]) for q in qs)
  assert any(q.aliases for q in qs)
  link(tmp_path / "manual", "musique_ans_v1.0_train.jsonl", path)  # A JSON list under the official name.
  via_tfds = load_questions(DatasetSpec("musique", source="tfds", manual_dir=str(tmp_path / "manual"),
                                        data_dir=str(tmp_path / "data")))
  assert via_tfds == qs
  ours = build_corpus(DatasetSpec("musique", source="file", path=str(path)))
  theirs = corpus.read_paragraphs(real("musique/musique_train_corpus.json"))
  assert len(ours) == len(theirs) == 1890 and set(ours) == set(theirs)


def test_all_real_corpora_combine(tmp_path):
  files = [real("hotpotqa/hotpotqa_train_corpus.json"), real("musique/musique_train_corpus.json"),
           real("wiki_corpus/2wikimultihopqa_corpus.json")]
  out = tmp_path / "corpus.json"
  paragraphs = build_corpus(paragraph_files=files, out_path=out)
  assert 9000 <= len(paragraphs) <= 994 + 1890 + 6119
  assert corpus.read_paragraphs(out) == paragraphs
