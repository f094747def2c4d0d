"""Each TFDS builder prepares from small official-format files in a manual directory, to array_record,
and yields the expected Question records through ``as_data_source``. No network is touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from swirl_jax.data import DatasetSpec, load_questions  # noqa: E402
from swirl_jax.data import tfds_builders  # noqa: E402
from swirl_jax.types import Paragraph, Question, RecordError  # noqa: E402


def write_json(path: Path, data) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data), encoding="utf-8")
  return path


def write_jsonl(path: Path, records) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def hotpot(qid: str, level: str, answer: str = "yes") -> dict:
  return {"_id": qid, "question": f"Question {qid}?", "answer": answer,
          "supporting_facts": [["Alpha", 0], ["Beta", 1]],
          "context": [["Alpha", ["Alpha is first.", " It has two sentences."]], ["Beta", ["Beta.", " Beta two."]]],
          "type": "bridge", "level": level}


def tfds_spec(name: str, split: str, manual: Path, data: Path, **kw) -> DatasetSpec:
  return DatasetSpec(name, split=split, source="tfds", manual_dir=str(manual), data_dir=str(data), **kw)


def array_records(data: Path, name: str) -> list[str]:
  return sorted(p.name for p in data.joinpath(name).rglob("*.array_record-*"))


def test_builders_are_registered_with_tfds():
  for name in ("hotpot_qa", "musique", "beerqa", "cofca", "gsm8k"):
    assert tfds.builder_cls(name) is tfds_builders.BUILDERS[name]
  assert tfds_builders.BUILDERS["gsm8k"] is tfds.text.Gsm8k  # TFDS's own, unmodified.


def test_hotpot_qa_distractor_and_fullwiki(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  write_json(manual / "hotpot_train_v1.1.json", [hotpot("t1", "easy"), hotpot("t2", "hard")])
  write_json(manual / "hotpot_dev_distractor_v1.json", [hotpot("d1", "hard", answer="no")])
  write_json(manual / "hotpot_dev_fullwiki_v1.json", [hotpot("f1", "medium", answer="Paris")])

  train = load_questions(tfds_spec("hotpot_qa", "train", manual, data))
  assert [q.id for q in train] == ["t1", "t2"]
  assert train[0] == Question(
      id="t1", dataset="hotpot_qa", text="Question t1?", answer="yes",
      context=(Paragraph("Alpha", "Alpha is first. It has two sentences."), Paragraph("Beta", "Beta. Beta two.")),
      metadata={"setting": "distractor", "level": "easy", "type": "bridge",
                "supporting_facts": [["Alpha", 0], ["Beta", 1]], "supporting_titles": ["Alpha", "Beta"]})
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data, drop_easy=True))] == ["t2"]
  dev = load_questions(tfds_spec("hotpot_qa", "dev", manual, data))
  assert [(q.id, q.answer) for q in dev] == [("d1", "no")]
  full = load_questions(tfds_spec("hotpot_qa/fullwiki", "validation", manual, data))
  assert [(q.id, q.answer, q.metadata["setting"], q.metadata["level"]) for q in full] == [
      ("f1", "Paris", "fullwiki", "medium")]
  # The same records as the plain-file loader gives, and prepared as array_record.
  assert dev == load_questions(DatasetSpec("hotpot_qa", split="dev", source="file", path=str(manual)))
  assert array_records(data, "hotpot_qa") == [
      "hotpot_qa-train.array_record-00000-of-00001", "hotpot_qa-train.array_record-00000-of-00001",
      "hotpot_qa-validation.array_record-00000-of-00001", "hotpot_qa-validation.array_record-00000-of-00001"]


MUSIQUE = {
    "id": "2hop__10_20", "question": "Where was the author of Book born?", "answer": "Lyon",
    "answer_aliases": ["Lyons"], "answerable": True,
    "paragraphs": [{"idx": 0, "title": "Book", "paragraph_text": "Book was written by Ann.",
                    "is_supporting": True},
                   {"idx": 1, "title": "Ann", "paragraph_text": "Ann was born in Lyon.", "is_supporting": True},
                   {"idx": 2, "title": "Other", "paragraph_text": "Unrelated.", "is_supporting": False}],
    "question_decomposition": [
        {"id": 10, "question": "Who wrote Book?", "answer": "Ann", "paragraph_support_idx": 0},
        {"id": 20, "question": "Where was #1 born?", "answer": "Lyon", "paragraph_support_idx": 1}],
}


def test_musique_answerable(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  unanswerable = dict(MUSIQUE, id="3hop1__1_2_3", answerable=False)
  write_jsonl(manual / "musique_ans_v1.0_train.jsonl", [MUSIQUE, unanswerable])
  write_jsonl(manual / "musique_ans_v1.0_dev.jsonl", [dict(MUSIQUE, id="2hop__30_40")])
  train = load_questions(tfds_spec("musique", "train", manual, data))
  assert train == [Question(
      id="2hop__10_20", dataset="musique", text="Where was the author of Book born?", answer="Lyon",
      aliases=("Lyons",),
      context=(Paragraph("Book", "Book was written by Ann."), Paragraph("Ann", "Ann was born in Lyon."),
               Paragraph("Other", "Unrelated.")),
      metadata={"answerable": True, "hops": 2, "supporting_idx": [0, 1], "decomposition": [
          {"question": "Who wrote Book?", "answer": "Ann", "paragraph_support_idx": 0},
          {"question": "Where was #1 born?", "answer": "Lyon", "paragraph_support_idx": 1}]})]
  assert [q.id for q in load_questions(tfds_spec("musique", "validation", manual, data))] == ["2hop__30_40"]


def test_musique_from_the_release_zip(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  manual.mkdir()
  with zipfile.ZipFile(manual / "musique_v1.0.zip", "w") as z:  # The official archive's layout.
    z.writestr("musique_v1.0/data/musique_ans_v1.0_dev.jsonl", json.dumps(MUSIQUE) + "\n")
  assert [q.id for q in load_questions(tfds_spec("musique", "dev", manual, data))] == ["2hop__10_20"]


def test_beerqa(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  records = [
      {"id": "b-1", "src": "hotpotqa", "question": "Which is older?", "answers": ["Alpha"],
       "context": [["Alpha", "Alpha was founded in 1900."], ["Beta", "Beta was founded in 1950."]]},
      {"id": "b-2", "src": "beerqa", "question": "Three hops?", "answers": ["x", "X"], "context": []},
  ]
  write_json(manual / "beerqa_train_v1.0.json", {"version": "1.0", "split": "train", "data": records})
  write_json(manual / "beerqa_dev_v1.0.json", {"version": "1.0", "split": "dev", "data": records[:1]})
  qs = load_questions(tfds_spec("beerqa", "train", manual, data))
  assert qs == [
      Question(id="b-1", dataset="beerqa", text="Which is older?", answer="Alpha",
               context=(Paragraph("Alpha", "Alpha was founded in 1900."),
                        Paragraph("Beta", "Beta was founded in 1950.")),
               metadata={"src": "hotpotqa"}),
      Question(id="b-2", dataset="beerqa", text="Three hops?", answer="x", aliases=("X",),
               metadata={"src": "beerqa"}),
  ]
  assert [q.id for q in load_questions(tfds_spec("beerqa", "validation", manual, data))] == ["b-1"]


def test_cofca(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  write_json(manual / "cofca_test.json", [
      {"id": "cf-1", "question": "Who leads the city where Veltra Labs is based?", "answer": "Ona Rell",
       "context": [{"title": "Veltra Labs", "text": "Veltra Labs is based in Quenby."},
                   {"title": "Quenby", "text": "Quenby is led by Ona Rell."}],
       "sub_questions": [{"question": "Where is Veltra Labs based?", "answer": "Quenby"},
                         {"question": "Who leads Quenby?", "answer": "Ona Rell"}]}])
  (q,) = load_questions(tfds_spec("cofca", "test", manual, data))
  assert (q.id, q.answer, [p.title for p in q.context], q.metadata["hops"]) == (
      "cf-1", "Ona Rell", ["Veltra Labs", "Quenby"], 2)


def test_cofca_without_manual_files_says_what_to_provide(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)no official download location.*cofca_test.json"):
    load_questions(DatasetSpec("cofca", split="test", data_dir=str(tmp_path / "data")))


def gsm8k_line(i: int) -> dict:
  return {"question": f"Problem {i}: what is {i} * 1000?",
          "answer": f"{i} * 1000 = <<{i}*1000={i}000>>{i},000\n#### {i},000"}


def test_tfds_own_gsm8k_prepares_offline_from_a_manual_dir(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  for k, name in enumerate(("train", "test", "train_socratic", "test_socratic")):
    write_jsonl(manual / f"{name}.jsonl", [gsm8k_line(10 * k + 1), gsm8k_line(10 * k + 2)])
  qs = load_questions(tfds_spec("gsm8k", "test", manual, data))
  # TFDS orders examples by its own key hash; compare as sets.
  assert sorted((q.text, q.answer) for q in qs) == [
      ("Problem 11: what is 11 * 1000?", "11000"), ("Problem 12: what is 12 * 1000?", "12000")]
  assert sorted(qs, key=lambda q: q.id) == sorted(
      load_questions(DatasetSpec("gsm8k", split="test", source="file", path=str(manual))), key=lambda q: q.id)
  # It really is TFDS's builder with its own features, prepared as array_record from the seeded cache.
  builder = tfds_builders.make_builder("gsm8k", None, str(data))
  assert builder.is_prepared()
  assert set(builder.info.features) == {"question", "answer", "annotation", "short_answer"}
  assert sorted(builder.info.splits) == ["test", "test_socratic", "train", "train_socratic"]
  assert len(array_records(data, "gsm8k")) == 4
  cached = sorted(p.name.endswith(".INFO") for p in (data / "downloads" / "gsm8k").iterdir())
  assert cached == [False] * 4 + [True] * 4  # Four files, each with its .INFO record.
  # Prepared once: later reads need no manual dir.
  assert len(load_questions(DatasetSpec("gsm8k", split="train", data_dir=str(data)))) == 2


def test_gsm8k_manual_files_with_a_byte_order_mark_or_cr_lines_prepare(tmp_path):
  """A BOM (Windows editors) loaded with source='file' but TFDS's gsm8k builder failed on it (JSONDecodeError:
  Unexpected UTF-8 BOM); the cached copies are written as our parser reads the files."""
  manual, data = tmp_path / "manual", tmp_path / "data"
  for k, name in enumerate(("train", "test", "train_socratic", "test_socratic")):
    lines = [json.dumps(gsm8k_line(10 * k + 1)), json.dumps(gsm8k_line(10 * k + 2))]
    manual.mkdir(exist_ok=True)
    (manual / f"{name}.jsonl").write_bytes(b"\xef\xbb\xbf" + ("\r".join(lines) + "\r").encode())
  qs = load_questions(tfds_spec("gsm8k", "train", manual, data))
  assert sorted(q.answer for q in qs) == ["1000", "2000"]
  assert sorted(qs, key=lambda q: q.id) == sorted(
      load_questions(DatasetSpec("gsm8k", split="train", source="file", path=str(manual))), key=lambda q: q.id)


def test_gsm8k_needs_all_four_files(tmp_path):
  manual = tmp_path / "manual"
  write_jsonl(manual / "train.jsonl", [gsm8k_line(1)])
  with pytest.raises(FileNotFoundError, match=r"lacks \['test.jsonl', 'train_socratic.jsonl', "
                                              r"'test_socratic.jsonl'\].*source='file'"):
    load_questions(tfds_spec("gsm8k", "train", manual, tmp_path / "data"))


def test_partial_manual_dir_prepares_what_is_there_and_adds_splits_later(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  write_json(manual / "hotpot_dev_distractor_v1.json", [hotpot("d1", "hard")])
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "validation", manual, data))] == ["d1"]
  with pytest.raises(tfds_builders.SplitNotPreparedError,
                     match=r"split 'train' is not prepared.*prepared splits: \['validation'\].*"
                           r"hotpot_train_v1.1.json"):
    load_questions(tfds_spec("hotpot_qa", "train", manual, data))
  write_json(manual / "hotpot_train_v1.1.json", [hotpot("t1", "hard")])  # The file arrives: prepared again.
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1"]
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "validation", manual, data))] == ["d1"]


def test_manual_dir_without_expected_files(tmp_path):
  manual = tmp_path / "manual"
  write_json(manual / "something_else.json", [])
  with pytest.raises(FileNotFoundError, match=r"(?s)holds none of the expected files.*something_else.json.*"
                                              r"beerqa_train_v1.0.json"):
    load_questions(tfds_spec("beerqa", "train", manual, tmp_path / "data"))


@pytest.mark.parametrize("state", ["does not exist", "is empty", "is not a directory"])
def test_a_missing_or_empty_manual_dir_is_refused_not_downloaded(tmp_path, monkeypatch, state):
  """TFDS takes a missing or empty manual directory for none given: a mistyped data.manual_dir downloaded
  the official release (minutes of retries offline; the whole release, silently, online)."""
  def no_download(*args, **kwargs):
    raise AssertionError("downloaded")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_download)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_download)
  manual = tmp_path / "manual"
  if state == "is empty":
    manual.mkdir()
  elif state == "is not a directory":
    manual.write_text("x")
  with pytest.raises(FileNotFoundError, match=rf"(?s)hotpot_qa/distractor: the manual directory .*manual {state}; "
                                              r"nothing was prepared or downloaded.*hotpot_train_v1.1.json"):
    load_questions(tfds_spec("hotpot_qa", "train", manual, tmp_path / "data"))
  assert not (tmp_path / "data").exists() or not array_records(tmp_path / "data", "hotpot_qa")


def test_malformed_record_through_tfds_names_file_line_and_field(tmp_path):
  manual = tmp_path / "manual"
  bad = dict(MUSIQUE, id="2hop__5_6")
  del bad["question"]
  write_jsonl(manual / "musique_ans_v1.0_train.jsonl", [MUSIQUE, bad])
  with pytest.raises(RecordError, match=r"musique_ans_v1\.0_train\.jsonl:2: missing field 'question'"):
    load_questions(tfds_spec("musique", "train", manual, tmp_path / "data"))
  gsm = tmp_path / "gsm"
  for name in ("train", "test", "train_socratic", "test_socratic"):
    write_jsonl(gsm / f"{name}.jsonl", [gsm8k_line(1)])
  (gsm / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no number"}) + "\n")
  with pytest.raises(RecordError, match=r"test\.jsonl:1: field 'answer'"):
    load_questions(tfds_spec("gsm8k", "train", gsm, tmp_path / "data2"))


def test_adding_a_split_refuses_to_lose_a_prepared_split_whose_file_is_gone(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  train_file = write_json(manual / "hotpot_train_v1.1.json", [hotpot("t1", "hard")])
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1"]
  train_file.unlink()  # E.g. to free space once prepared.
  write_json(manual / "hotpot_dev_distractor_v1.json", [hotpot("d1", "hard")])
  with pytest.raises(tfds_builders.SplitNotPreparedError,
                     match=r"(?s)adding split 'validation'.*hotpot_qa/distractor/1\.0\.0.*"
                           r"prepared split\(s\) \['train'\] \(hotpot_train_v1\.1\.json\).*would be lost"):
    load_questions(tfds_spec("hotpot_qa", "validation", manual, data))
  # Nothing was deleted: train still loads, with or without the manual dir.
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1"]
  assert [q.id for q in load_questions(DatasetSpec("hotpot_qa", split="train", data_dir=str(data)))] == ["t1"]


def test_changed_manual_file_after_preparation_is_an_error_naming_file_and_folder(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  path = write_json(manual / "hotpot_train_v1.1.json", [hotpot("t1", "hard"), hotpot("t2", "hard")])
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1", "t2"]
  prepared = data / "hotpot_qa" / "distractor" / "1.0.0"
  recorded = json.loads((prepared / tfds_builders.SOURCES_FILE).read_text())["splits"]["train"]
  assert recorded["file"] == "hotpot_train_v1.1.json" and recorded["size"] == path.stat().st_size
  write_json(path, [hotpot("t1", "hard", answer="CORRECTED"), hotpot("t2", "hard"), hotpot("t3", "hard")])
  with pytest.raises(tfds_builders.StalePreparedDataError,
                     match=rf"(?s)split 'train' in {re.escape(str(prepared))}.*"
                           rf"{re.escape(str(path))} now differs.*delete {re.escape(str(prepared))}"):
    load_questions(tfds_spec("hotpot_qa", "train", manual, data))
  # Another manual dir with other contents is refused the same way.
  other = tmp_path / "other"
  write_json(other / "hotpot_train_v1.1.json", [hotpot("x1", "hard")])
  with pytest.raises(tfds_builders.StalePreparedDataError, match=r"other/hotpot_train_v1\.1\.json now differs"):
    load_questions(tfds_spec("hotpot_qa", "train", other, data))
  # Without a manual dir the prepared data is used as is; deleting the folder rebuilds from the new file.
  assert [q.answer for q in load_questions(DatasetSpec("hotpot_qa", split="train", data_dir=str(data)))] == [
      "yes", "yes"]
  shutil.rmtree(prepared)
  assert [(q.id, q.answer) for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == [
      ("t1", "CORRECTED"), ("t2", "yes"), ("t3", "yes")]


def test_unchanged_touched_copied_or_removed_manual_file_is_fine(tmp_path, monkeypatch):
  manual, data = tmp_path / "manual", tmp_path / "data"
  path = write_json(manual / "hotpot_train_v1.1.json", [hotpot("t1", "hard")])
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1"]
  hashed = []
  real_sha256 = tfds_builders._sha256
  monkeypatch.setattr(tfds_builders, "_sha256", lambda p: hashed.append(p) or real_sha256(p))
  load_questions(tfds_spec("hotpot_qa", "train", manual, data))
  assert hashed == []  # Same size and mtime: not hashed again.
  os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
  load_questions(tfds_spec("hotpot_qa", "train", manual, data))  # Touched: hashed once, equal, recorded.
  load_questions(tfds_spec("hotpot_qa", "train", manual, data))
  assert hashed == [path]
  copy = tmp_path / "copy"
  copy.mkdir()
  shutil.copyfile(path, copy / path.name)  # Same content elsewhere.
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", copy, data))] == ["t1"]
  path.unlink()  # Gone from the manual dir: the prepared data stays usable.
  write_json(manual / "hotpot_dev_distractor_v1.json", [hotpot("d1", "hard")])
  assert [q.id for q in load_questions(tfds_spec("hotpot_qa", "train", manual, data))] == ["t1"]


def test_gsm8k_records_its_manual_files_and_refuses_changed_ones(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  for k, name in enumerate(("train", "test", "train_socratic", "test_socratic")):
    write_jsonl(manual / f"{name}.jsonl", [gsm8k_line(10 * k + 1)])
  assert len(load_questions(tfds_spec("gsm8k", "test", manual, data))) == 1
  write_jsonl(manual / "test.jsonl", [gsm8k_line(11), gsm8k_line(12)])
  with pytest.raises(tfds_builders.StalePreparedDataError, match=r"split 'test'.*test\.jsonl now differs"):
    load_questions(tfds_spec("gsm8k", "test", manual, data))
  assert len(load_questions(tfds_spec("gsm8k", "train", manual, data))) == 1  # train.jsonl is unchanged.


def test_empty_manual_file_through_tfds_names_the_file(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "beerqa_train_v1.0.json").write_text("\n")
  with pytest.raises(RecordError, match=r"beerqa_train_v1\.0\.json: no records"):
    load_questions(tfds_spec("beerqa", "train", manual, tmp_path / "data"))
  write_jsonl(manual / "musique_ans_v1.0_train.jsonl", [dict(MUSIQUE, answerable=False)])
  with pytest.raises(RecordError, match=r"musique_ans_v1\.0_train\.jsonl: no questions: all 1 records were "
                                        r"left out \(unanswerable\)"):
    load_questions(tfds_spec("musique", "train", manual, tmp_path / "data"))
