"""Official-format parsing, the plain-file loader, bad-input messages, registry errors and corpora."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from swirl_jax.data import DatasetSpec, UnknownDatasetError, UnknownSplitError, build_corpus, load_questions
from swirl_jax.data import corpus, registry
from swirl_jax.types import Paragraph, Question, RecordError

HOTPOT = [
    {"_id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
     "answer": "yes", "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
     "context": [["Scott Derrickson", ["Scott Derrickson (born July 16, 1966) is an American director.",
                                       " He lives in Los Angeles."]],
                 ["Ed Wood", ["Edward Davis Wood Jr. was an American filmmaker."]]],
     "type": "comparison", "level": "hard"},
    {"_id": "5a8c7595554299585d9e36b6", "question": "Which city hosts the Ed Wood film festival?",
     "answer": "Portland", "supporting_facts": [["Ed Wood", 0]],
     "context": [["Ed Wood", ["Edward Davis Wood Jr. was an American filmmaker."]]],
     "type": "bridge", "level": "easy"},
]


def write_json(path: Path, data) -> Path:
  path.write_text(json.dumps(data), encoding="utf-8")
  return path


def write_jsonl(path: Path, records) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


# --- Parsers -------------------------------------------------------------------------------------------------


def test_gsm8k_answer_is_the_number_after_hashes_without_commas(tmp_path):
  path = write_jsonl(tmp_path / "train.jsonl", [
      {"question": "How many?", "answer": "3 * 400 = <<3*400=1200>>1200\n#### 1,200"},
      {"question": "How much?", "answer": "It is -2.5\n#### -2.5"},
  ])
  qs = load_questions(DatasetSpec("gsm8k", source="file", path=str(path)))
  assert [q.answer for q in qs] == ["1200", "-2.5"]
  assert qs[0].metadata["solution"] == "3 * 400 = <<3*400=1200>>1200"
  assert qs[0].metadata["num_calculations"] == 1
  assert qs[0].id.startswith("gsm8k-train-") and qs[0].id != qs[1].id
  # Ids hash the record, so they do not depend on the order of the file.
  reordered = write_jsonl(tmp_path / "r.jsonl", [json.loads(l) for l in path.read_text().splitlines()][::-1])
  assert {q.id for q in load_questions(DatasetSpec("gsm8k", source="file", path=str(reordered)))} == {
      q.id for q in qs}


def test_hotpot_record_to_question(tmp_path):
  path = write_json(tmp_path / "hotpot_dev_distractor_v1.json", HOTPOT)
  q = load_questions(DatasetSpec("hotpot_qa", split="dev", source="file", path=str(path)))[0]
  assert q == Question(
      id="5a8b57f25542995d1e6f1371", dataset="hotpot_qa", text=HOTPOT[0]["question"], answer="yes",
      context=(Paragraph("Scott Derrickson", "Scott Derrickson (born July 16, 1966) is an American director. "
                                             "He lives in Los Angeles."),
               Paragraph("Ed Wood", "Edward Davis Wood Jr. was an American filmmaker.")),
      metadata={"setting": "distractor", "level": "hard", "type": "comparison",
                "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
                "supporting_titles": ["Ed Wood", "Scott Derrickson"]})


def test_drop_easy_limit_and_shuffle(tmp_path):
  path = write_json(tmp_path / "h.json", HOTPOT)
  everything = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path)))
  assert [q.metadata["level"] for q in everything] == ["hard", "easy"]
  kept = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path), drop_easy=True))
  assert [q.metadata["level"] for q in kept] == ["hard"]
  assert len(load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path), limit=1))) == 1
  a = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path), shuffle_seed=3))
  b = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path), shuffle_seed=3))
  assert a == b and {q.id for q in a} == {h["_id"] for h in HOTPOT}


def test_musique_aliases_hops_and_json_list_variant(tmp_path, caplog):
  record = {
      "id": "2hop__1_2", "question": "Who founded the publisher of X?", "answer": "G. Stanley Hall",
      "answer_aliases": ["Stanley Hall", "G. Stanley Hall"], "answerable": True,
      "paragraphs": [{"idx": 0, "title": "A", "paragraph_text": "A text.", "is_supporting": False},
                     {"idx": 1, "title": "B", "paragraph_text": "B text.", "is_supporting": True}],
      "question_decomposition": [
          {"id": 1, "question": "Who published X?", "answer": "APA", "paragraph_support_idx": 1},
          {"id": 2, "question": "Who founded #1?", "answer": "G. Stanley Hall", "paragraph_support_idx": 0}],
  }
  unanswerable = dict(record, id="2hop__3_4", answerable=False)
  jsonl = write_jsonl(tmp_path / "musique_ans_v1.0_dev.jsonl", [record, unanswerable])
  as_list = write_json(tmp_path / "musique_train.json", [record, unanswerable])  # HippoRAG's variant.
  for path, split in ((jsonl, "validation"), (as_list, "train")):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swirl_jax.data.formats"):
      qs = load_questions(DatasetSpec("musique", split=split, source="file", path=str(path)))
    assert [q.id for q in qs] == ["2hop__1_2"]  # The unanswerable record is left out, and counted.
    assert f"kept 1, left out 1 unanswerable from {path}" in caplog.text
    q = qs[0]
    assert q.aliases == ("Stanley Hall",)
    assert q.context == (Paragraph("A", "A text."), Paragraph("B", "B text."))
    assert q.metadata["hops"] == 2 and q.metadata["supporting_idx"] == [1]
    assert q.metadata["decomposition"][1]["question"] == "Who founded #1?"


def test_beerqa_wrapper_and_cofca_shapes(tmp_path):
  beer = write_json(tmp_path / "beerqa_dev_v1.0.json", {"version": "1.0", "split": "dev", "data": [
      {"id": "b1", "src": "squad", "question": "Q?", "context": [["T", "Some text."]],
       "answers": ["a", "A", "a"]}]})
  q = load_questions(DatasetSpec("beerqa", split="dev", source="file", path=str(beer)))[0]
  assert (q.id, q.answer, q.aliases, q.context, q.metadata) == (
      "b1", "a", ("A",), (Paragraph("T", "Some text."),), {"src": "squad"})
  write_json(tmp_path / "cofca_test.json", [
      {"id": "c1", "question": "Q1?", "answer": "x", "context": [["T1", ["S1.", " S2."]]],
       "sub_questions": [{"question": "s?", "answer": "y"}, {"question": "t?", "answer": "x"}]},
      {"_id": "c2", "question": "Q2?", "answers": ["z", "Z"],
       "paragraphs": [{"title": "T2", "paragraph_text": "P."}]},
      {"question": "Q3?", "answer": ["w"], "context": "One passage."},
  ])
  qs = load_questions(DatasetSpec("cofca", split="test", source="file", path=str(tmp_path)))
  assert [q.id for q in qs[:2]] == ["c1", "c2"] and qs[2].id.startswith("cofca-")
  assert qs[0].context == (Paragraph("T1", "S1. S2."),) and qs[0].metadata["hops"] == 2
  assert qs[1].aliases == ("Z",) and qs[1].context == (Paragraph("T2", "P."),)
  assert qs[2].context[0].text == "One passage."


# --- Bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,filename,content,expected", [
    ("gsm8k", "train.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n',
     [r"train\.jsonl:2", "missing field 'answer'"]),
    ("gsm8k", "train.jsonl", '{"question": "q", "answer": "no final answer"}\n',
     [r"train\.jsonl:1", "field 'answer'", "####"]),
    ("gsm8k", "train.jsonl", '{"question": "q", "answer": "#### 1"}\n\n{"question": "q", \n',
     [r"train\.jsonl:3", "not valid JSON"]),
    ("hotpot_qa", "h.json", json.dumps([HOTPOT[0], dict(HOTPOT[1], answer=7)]),
     [r"h\.json\[1\]", "field 'answer' must be str, got int"]),
    ("hotpot_qa", "h.json", json.dumps([dict(HOTPOT[0], context=[["T", "not a list"]])]),
     [r"h\.json\[0\]", r"field 'context'\[0\] must be \[title, \[sentences\]\]"]),
    ("musique", "m.jsonl", json.dumps({"id": "x", "question": "q", "answer": "a", "paragraphs": [{"title": "t"}]}),
     [r"m\.jsonl:1\.paragraphs\[0\]", "missing field 'paragraph_text'"]),
    ("beerqa", "b.json", json.dumps({"data": [{"id": "b", "question": "q", "answers": []}]}),
     [r"b\.json\['data'\]\[0\]", "field 'answers' is empty"]),
    ("cofca", "c.json", json.dumps([{"id": "c", "question": "q"}]), [r"c\.json\[0\]", "'answer'"]),
    ("hotpot_qa", "dup.json", json.dumps([HOTPOT[0], HOTPOT[0]]),
     [r"dup\.json\[1\]", "duplicate question id", r"dup\.json\[0\]"]),
    # An empty file would give zero questions; it names the file instead.
    ("gsm8k", "train.jsonl", "", [r"train\.jsonl: no records"]),
    ("gsm8k", "train.jsonl", "\n \n", [r"train\.jsonl: no records"]),
    ("hotpot_qa", "empty.json", "[]", [r"empty\.json: no records"]),
    ("beerqa", "b.json", json.dumps({"data": []}), [r"b\.json: no records"]),
    ("musique", "m.jsonl", json.dumps({"id": "2hop__1", "question": "q", "answer": "a", "paragraphs": [],
                                       "answerable": False}) + "\n",
     [r"m\.jsonl: no questions: all 1 records were left out \(unanswerable\)"]),
])
def test_malformed_record_names_file_position_and_field(tmp_path, name, filename, content, expected):
  path = tmp_path / filename
  path.write_text(content, encoding="utf-8")
  split = "test" if name == "cofca" else "train"
  with pytest.raises(RecordError) as e:
    load_questions(DatasetSpec(name, split=split, source="file", path=str(path)))
  for pattern in expected:
    assert re.search(pattern, str(e.value)), (pattern, str(e.value))


def test_json_syntax_error_is_reported_where_it_is_not_as_json_lines(tmp_path):
  """A stray "]" ends a JSON list after its first record: the error is at that line, not line 1 column 1."""
  first, second = json.dumps(HOTPOT[0]), json.dumps(HOTPOT[1])
  path = tmp_path / "h.json"
  path.write_text(f"[\n{first}],\n{second}\n]\n", encoding="utf-8")
  where = rf"h\.json: not valid JSON \(line 2 column {len(first) + 2}: Extra data\)"  # just after the "]"
  with pytest.raises(RecordError, match=where):
    load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path)))
  # A corpus file is read by the same reader.
  with pytest.raises(RecordError, match=r"line 2 column \d+: Extra data"):
    corpus.read_paragraphs(path)


@pytest.mark.parametrize("blank", ["", "\n\n"])
def test_json_lines_saved_as_json_still_load(tmp_path, blank):
  path = tmp_path / "h.json"
  path.write_text(blank + "".join(json.dumps(r) + "\n" for r in HOTPOT), encoding="utf-8")
  questions = load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path)))
  assert [q.id for q in questions] == [r["_id"] for r in HOTPOT]
  # A bad later line is named by its line number, as in a .jsonl file.
  path.write_text(json.dumps(HOTPOT[0]) + '\n{"_id": "x", "question": "q"\n', encoding="utf-8")
  with pytest.raises(RecordError, match=r"h\.json:2: not valid JSON"):
    load_questions(DatasetSpec("hotpot_qa", source="file", path=str(path)))


def test_unknown_dataset_split_and_config_list_what_exists(tmp_path):
  with pytest.raises(UnknownDatasetError, match="datasets: gsm8k, hotpot_qa, musique, beerqa, cofca, "
                                                "synthetic_arith, synthetic_multihop"):
    load_questions(DatasetSpec("hotpotqa"))
  with pytest.raises(UnknownSplitError, match="splits: train, validation"):
    load_questions(DatasetSpec("hotpot_qa", split="test"))
  with pytest.raises(UnknownSplitError, match="splits: test"):
    load_questions(DatasetSpec("cofca", split="train"))
  with pytest.raises(UnknownSplitError, match="splits: train, validation, test"):
    load_questions(DatasetSpec("synthetic_arith", split="dev2"))
  with pytest.raises(UnknownDatasetError, match="configs: distractor, fullwiki"):
    load_questions(DatasetSpec("hotpot_qa/open"))
  with pytest.raises(FileNotFoundError, match="hotpot_dev_fullwiki_v1.json"):
    load_questions(DatasetSpec("hotpot_qa/fullwiki", split="dev", source="file", path=str(tmp_path)))
  resolved = registry.resolve(DatasetSpec("hotpot_qa/fullwiki", split="dev"))
  assert resolved == ("hotpot_qa", "fullwiki", "validation")


# --- Corpora ---------------------------------------------------------------------------------------------


def test_read_paragraph_files_in_all_three_layouts(tmp_path):
  expected = [Paragraph("A", "First. Second."), Paragraph("B", "Only.")]
  as_list = write_json(tmp_path / "list.json", [{"title": "A", "text": "First. Second."},
                                                {"title": "B", "text": "Only."}])
  as_lines = write_jsonl(tmp_path / "lines.jsonl", [p.to_json() for p in expected])
  as_map = write_json(tmp_path / "map.json", {"A": ["First.", " Second."], "B": ["Only."]})
  for path in (as_list, as_lines, as_map):
    assert corpus.read_paragraphs(path) == expected
  bad = write_json(tmp_path / "bad.json", [{"title": "A", "text": "x"}, {"title": "B"}])
  with pytest.raises(RecordError, match=r"bad\.json\[1\]: missing field 'text'"):
    corpus.read_paragraphs(bad)
  bad_map = write_json(tmp_path / "bad_map.json", {"A": ["x"], "B": 3})
  with pytest.raises(RecordError, match=r"bad_map\.json\['B'\]"):
    corpus.read_paragraphs(bad_map)


def test_build_corpus_is_the_deduplicated_union_and_writes_json(tmp_path):
  path = write_json(tmp_path / "h.json", HOTPOT)
  extra = write_json(tmp_path / "extra.json", {"Ed Wood": ["Edward Davis Wood Jr. was an American filmmaker."],
                                               "New": ["A new paragraph."]})
  out = tmp_path / "out" / "corpus.json"
  spec = DatasetSpec("hotpot_qa", source="file", path=str(path), limit=1, drop_easy=True)
  paragraphs = build_corpus(spec, paragraph_files=[extra], out_path=out)
  # The whole split is used (limit ignored); "Ed Wood" appears in both questions and the file, once here.
  assert [p.title for p in paragraphs] == ["Scott Derrickson", "Ed Wood", "New"]
  assert json.loads(out.read_text()) == [p.to_json() for p in paragraphs]
  assert corpus.read_paragraphs(out) == paragraphs
  assert build_corpus(spec, whole_split=False) == list(load_questions(spec)[0].context)
  assert build_corpus(DatasetSpec("synthetic_arith")) == []


def test_list_datasets_and_describe_spec():
  listed = registry.list_datasets()
  assert listed["hotpot_qa"] == {"distractor": ("train", "validation"), "fullwiki": ("train", "validation")}
  assert listed["gsm8k"] == {None: ("train", "test", "train_socratic", "test_socratic")}
  assert listed["synthetic_multihop"] == {None: ("train", "validation", "test")}
  described = registry.describe_spec(DatasetSpec("musique", split="dev", limit=5))
  assert (described["name"], described["config"], described["split"], described["limit"]) == (
      "musique", "answerable", "validation", 5)
  assert described["arith"]["max_ops"] == 6  # Nested configs become plain data for run manifests.


def test_one_reader_of_corpus_files_joins_hotpotqa_sentences_the_same_way(tmp_path):
  """The search tool and build_corpus read {title: [sentences]} with two parsers: one joined sentences as
  they are ("release.Shabana"), the other with a space where neither side has one. Now one parser."""
  from swirl_jax.tools.search import BM25Search, load_corpus

  path = write_json(tmp_path / "map.json", {"Arth": ["It was her first release.", "Shabana Azmi starred."],
                                            "Beta": ["One.", " Two."]})
  expected = [Paragraph("Arth", "It was her first release. Shabana Azmi starred."), Paragraph("Beta", "One. Two.")]
  assert load_corpus(str(path)) == expected
  assert corpus.read_paragraphs(path) == expected
  assert build_corpus(DatasetSpec("synthetic_arith"), paragraph_files=[path]) == expected
  assert BM25Search.from_files(str(path)).search("release", k=1)[0][1] == expected[0]


@pytest.mark.parametrize("name", ["bad.json", "bad.jsonl"])
def test_files_that_are_not_utf8_are_named_with_their_line(tmp_path, name):
  """A Latin-1 file raised a bare UnicodeDecodeError from the codec, naming neither file nor line."""
  path = tmp_path / name
  good = json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"})
  path.write_bytes((good + "\n" + good.replace("What", "Qu\u00e9") + "\n").encode("latin-1"))
  spec = DatasetSpec("gsm8k", source="file", path=str(path))
  with pytest.raises(RecordError, match=rf"{re.escape(name)}:2: not UTF-8 text \(byte \d+ of the "):
    load_questions(spec)
  path.write_bytes(b"\xef\xbb\xbf" + (good + "\n").encode())  # a byte order mark (Windows editors) is fine
  assert [q.answer for q in load_questions(spec)] == ["4"]
  paragraphs = tmp_path / name.replace("bad", "corpus")
  paragraphs.write_bytes(json.dumps([{"title": "Caf\u00e9", "text": "x"}], ensure_ascii=False).encode("latin-1"))
  with pytest.raises(RecordError, match=r"corpus\.jsonl?: not UTF-8 text \(byte 15\)"):
    corpus.read_paragraphs(paragraphs)


@pytest.mark.parametrize("text", ["", "[]", "\n\n", "{}"])
def test_a_paragraph_file_without_paragraphs_is_refused(tmp_path, text):
  """build_corpus(paragraph_files=[an empty file]) added nothing without a word."""
  for name in ("p.json", "p.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecordError, match=rf"{re.escape(name)}(: the corpus has no paragraphs|:1: missing field)"):
      build_corpus(DatasetSpec("synthetic_arith"), paragraph_files=[path])


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_json_lines_with_any_line_end_load(tmp_path, end):
  """Reading bytes (to name a bad byte's line) split lines at LF only: a file with bare-CR line ends (old
  Mac), which text mode read, became one bad line. U+2028 inside a string still does not end a line."""
  records = [{"question": "What is 2 + 2?\u2028", "answer": "#### 4"}, {"question": "And 3 + 3?", "answer": "#### 6"}]
  text = end.join(json.dumps(r, ensure_ascii=False) for r in records) + end
  for name in ("q.jsonl", "q.json"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    assert [q.answer for q in load_questions(DatasetSpec("gsm8k", source="file", path=str(path)))] == ["4", "6"]
  path.write_bytes((json.dumps(records[0]) + end + end + '{"question": "x",' + end).encode())
  with pytest.raises(RecordError, match=r"q\.json:3: not valid JSON"):  # (the blank line counts)
    load_questions(DatasetSpec("gsm8k", source="file", path=str(path)))
  for name in ("p.jsonl", "p.json"):
    paragraphs = tmp_path / name
    paragraphs.write_bytes(end.join(json.dumps({"title": t, "text": "x\u2028y"}) for t in "AB").encode())
    assert [p.title for p in corpus.read_paragraphs(paragraphs)] == ["A", "B"]
