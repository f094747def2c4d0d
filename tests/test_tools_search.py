"""Tests for swirl_jax.tools.search on small corpora the tests write in each supported format."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from swirl_jax import types
from swirl_jax.tools import BM25Search, SearchConfig, Tool, make_tool
from swirl_jax.tools import search as search_module
from swirl_jax.tools.search import cut_to_words, index_path, tokenize

PARAGRAPHS = [
    types.Paragraph("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    types.Paragraph("Colosseum",
                    "The Colosseum is an oval amphitheatre in the centre of the city of Rome, Italy."),
    types.Paragraph("Great Wall of China", "The Great Wall of China is a series of fortifications across "
                    "the historical northern borders of ancient Chinese states."),
    types.Paragraph("Mount Fuji", "Mount Fuji is the highest mountain in Japan, about 100 kilometres "
                    "south-west of Tokyo."),
    types.Paragraph("Louvre", "The Louvre is the world's most-visited art museum, a landmark of Paris."),
]
# The HotPotQA shape: sentences after the first carry their own leading space.
HOTPOT = {p.title: [s if i == 0 else " " + s for i, s in enumerate(p.text.split(". "))] for p in PARAGRAPHS}


def _write(tmp_path, fmt: str, paragraphs=PARAGRAPHS) -> str:
  if fmt == "json_list":
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([p.to_json() for p in paragraphs]))
  elif fmt == "jsonl":
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in paragraphs))
  elif fmt == "hotpot":
    path = tmp_path / "hotpot_corpus.json"
    path.write_text(json.dumps(HOTPOT))
  else:
    raise ValueError(fmt)
  return str(path)


@pytest.mark.parametrize("fmt", ["json_list", "jsonl", "hotpot"])
def test_right_paragraph_first_in_each_format(tmp_path, fmt):
  s = BM25Search.from_files(_write(tmp_path, fmt))
  assert len(s) == len(PARAGRAPHS)
  assert s.search("Which Italian city has the Colosseum?")[0][1].title == "Colosseum"
  assert s.search("highest mountain of Japan")[0][1].title == "Mount Fuji"
  r = s("Great Wall fortifications")
  assert r.error is None and r.output.startswith("Great Wall of China: The Great Wall of China is")


def test_hotpot_sentences_joined_without_separator(tmp_path):
  s = BM25Search.from_files(_write(tmp_path, "hotpot"))
  by_title = {p.title: p.text for p in s.paragraphs}
  assert by_title == {t: "".join(sents) for t, sents in HOTPOT.items()}
  assert by_title["Mount Fuji"] == PARAGRAPHS[3].text


def test_jsonl_under_a_json_name(tmp_path):
  path = tmp_path / "corpus.json"
  path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in PARAGRAPHS))
  assert BM25Search.from_files(str(path)).paragraphs == tuple(PARAGRAPHS)


def test_line_separator_characters_inside_jsonl_records(tmp_path):
  """U+2028, U+2029 and U+0085 may stand raw in JSON strings (json.dumps with ensure_ascii=False writes
  them so); only "\n" separates records, also in a .json file holding several objects."""
  paras = [types.Paragraph("Paris", "Capital\u2028of France."), types.Paragraph("Berlin", "Capital\u0085of Germany."),
           types.Paragraph("Rome", "Capital\u2029of Italy.")]
  for name in ("corpus.jsonl", "corpus.json"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(p.to_json(), ensure_ascii=False) + "\r\n" for p in paras), encoding="utf-8")
    assert search_module.load_corpus(str(path)) == paras


def test_a_json_file_of_one_record_is_one_paragraph(tmp_path):
  """A lone {title, text} object (extra fields allowed) is a record, not a HotPotQA map of titles."""
  path = tmp_path / "one.json"
  path.write_text(json.dumps({"title": "Eiffel Tower", "text": "The Eiffel Tower is in Paris.", "id": 7}))
  assert search_module.load_corpus(str(path)) == [types.Paragraph("Eiffel Tower", "The Eiffel Tower is in Paris.")]


def test_k_and_top_k(tmp_path):
  s = BM25Search.from_files(_write(tmp_path, "json_list"), top_k=2)
  hits = s.search("Paris art museum", k=3)
  assert [p.title for _, p in hits][:2] == ["Louvre", "Eiffel Tower"]
  assert len(hits) == 2  # only two paragraphs hold a query word
  scores = [sc for sc, _ in s.search("the city of Paris in France or Italy", k=5)]
  assert scores == sorted(scores, reverse=True) and len(scores) == 3
  out = s("Paris art museum").output
  assert out.split("\n")[0].startswith("Louvre: ") and out.split("\n")[1].startswith("Eiffel Tower: ")
  assert len(s.search("Paris", k=1)) == 1


def test_budget_cut(tmp_path):
  s = BM25Search.from_files(_write(tmp_path, "json_list"), max_words=6)
  out = s("Colosseum").output
  assert out == "Colosseum: The Colosseum is an oval ..."
  full = BM25Search.from_files(_write(tmp_path, "json_list"), max_words=1000)("Colosseum").output
  assert full == "Colosseum: " + PARAGRAPHS[1].text
  assert cut_to_words("a  b\nc d", 3) == "a  b\nc ..."
  assert cut_to_words("a b c", 3) == "a b c"


def test_index_saved_beside_corpus_and_reused(tmp_path, monkeypatch):
  path = _write(tmp_path, "json_list")
  first = BM25Search.from_files(path)
  ipath = path + ".bm25.npz"
  assert index_path(path) == ipath and os.path.exists(ipath)
  assert first.index_loaded == (False,)
  mtime = os.stat(ipath).st_mtime_ns

  def no_rebuild(_):
    raise AssertionError("the index was rebuilt")

  monkeypatch.setattr(search_module, "_count_terms", no_rebuild)
  second = BM25Search.from_files(path)
  assert second.index_loaded == (True,)
  assert os.stat(ipath).st_mtime_ns == mtime
  q = "Roman amphitheatre in Rome"
  np.testing.assert_array_equal(second.scores(q), first.scores(q))


def test_modified_corpus_invalidates_index(tmp_path):
  path = _write(tmp_path, "json_list")
  BM25Search.from_files(path)
  changed = PARAGRAPHS[:-1] + [types.Paragraph("Louvre", "The Louvre holds the Mona Lisa.")]
  _write(tmp_path, "json_list", changed)
  s = BM25Search.from_files(path)
  assert s.index_loaded == (False,)
  assert s.search("Mona Lisa")[0][1].text == "The Louvre holds the Mona Lisa."
  assert BM25Search.from_files(path).index_loaded == (True,)  # the rewritten index is reused


def test_changed_tokenizer_invalidates_index(tmp_path, monkeypatch):
  path = _write(tmp_path, "json_list")
  BM25Search.from_files(path)
  monkeypatch.setattr(search_module, "STOP_WORDS", search_module.STOP_WORDS | {"paris"})
  s = BM25Search.from_files(path)
  assert s.index_loaded == (False,)
  assert s("Paris").error_code == "empty_query"


def test_corrupt_index_is_rebuilt(tmp_path):
  path = _write(tmp_path, "json_list")
  BM25Search.from_files(path)
  with open(path + ".bm25.npz", "wb") as f:
    f.write(b"not an npz file")
  s = BM25Search.from_files(path)
  assert s.index_loaded == (False,) and s.search("Colosseum")[0][1].title == "Colosseum"
  assert BM25Search.from_files(path).index_loaded == (True,)


def test_index_dir_and_no_save(tmp_path):
  corpus_dir = tmp_path / "corpus"
  corpus_dir.mkdir()
  path = _write(corpus_dir, "json_list")
  index_dir = tmp_path / "indexes"
  BM25Search.from_files(path, index_dir=str(index_dir))
  assert not os.path.exists(path + ".bm25.npz")
  assert len(os.listdir(index_dir)) == 1 and index_path(path, str(index_dir)).startswith(str(index_dir))
  assert BM25Search.from_files(path, index_dir=str(index_dir)).index_loaded == (True,)
  other = tmp_path / "other"
  other.mkdir()
  path2 = _write(other, "json_list")
  BM25Search.from_files(path2, save_index=False)
  assert not os.path.exists(path2 + ".bm25.npz")


def test_unwritable_index_location_still_works(tmp_path, caplog):
  path = _write(tmp_path, "json_list")
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  # A folder below a regular file cannot be created, even by root.
  s = BM25Search.from_files(path, index_dir=str(blocker / "indexes"))
  assert s.search("Colosseum")[0][1].title == "Colosseum"
  assert "Could not save the search index" in caplog.text


def test_several_files_are_one_collection(tmp_path):
  a = tmp_path / "a"
  b = tmp_path / "b"
  a.mkdir()
  b.mkdir()
  pa = _write(a, "json_list", PARAGRAPHS[:2])
  pb = _write(b, "jsonl", PARAGRAPHS[2:])
  s = BM25Search.from_files([pa, pb])
  assert s.paragraphs == tuple(PARAGRAPHS) and s.index_loaded == (False, False)
  ref = BM25Search.from_paragraphs(PARAGRAPHS)
  for q in ["Paris tower", "Great Wall", "Colosseum Rome"]:
    np.testing.assert_allclose(s.scores(q), ref.scores(q), rtol=1e-12)
  assert BM25Search.from_files([pa, pb]).index_loaded == (True, True)


def test_empty_and_stop_word_queries(tmp_path):
  s = BM25Search.from_paragraphs(PARAGRAPHS)
  for q in ["", "   ", "the of and", "Who is it?", "!!!"]:
    r = s(q)
    assert r.error_code == "empty_query" and r.output == "error: the query has no searchable words"
    assert s.search(q) == []
  r = s("zyzzyva quux")
  assert r.error_code == "no_results" and r.output == "error: no paragraph matches the query"


@pytest.mark.parametrize("content,fragments", [
    ('[{"title": "A", "text": "x"}, {"title": "B"}]', ["corpus.json[1]", "'text'"]),
    ('[{"title": "A", "text": 3}]', ["corpus.json[0]", "'text'", "str"]),
    ('[{"title": "A", "text": "x"}, "just a string"]', ["corpus.json[1]", "'title'"]),
    ('{"A": ["one.", " two."], "B": ["ok", 7]}', ["corpus.json['B'][1]", "sentence"]),
    ('{"A": 5}', ["corpus.json['A']", "sentences"]),
    ('[{"title": "A", "text": "x"}', ["corpus.json", "not valid JSON"]),
    # a list closed early by a stray "]": reported where it is, not re-read as JSON Lines (line 1 column 1)
    ('[\n{"title": "A", "text": "x"}],\n{"title": "B", "text": "y"}\n]\n', ["corpus.json", "line 2 column 29: Extra data"]),
    ("42", ["corpus.json", "got int"]),
    ("[]", ["corpus.json", "no paragraphs"]),
])
def test_malformed_json_names_file_index_and_field(tmp_path, content, fragments):
  path = tmp_path / "corpus.json"
  path.write_text(content)
  with pytest.raises(types.RecordError) as e:
    BM25Search.from_files(str(path))
  for fragment in fragments:
    assert fragment in str(e.value), str(e.value)


def test_malformed_jsonl_names_file_line_and_field(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"title": "A", "text": "x"}\n\n{"text": "y"}\n')
  with pytest.raises(types.RecordError, match=r"corpus\.jsonl:3: missing field 'title'"):
    BM25Search.from_files(str(path))
  path.write_text('{"title": "A", "text": "x"}\n{oops\n')
  with pytest.raises(types.RecordError, match=r"corpus\.jsonl:2: not valid JSON"):
    BM25Search.from_files(str(path))


def test_scores_match_rank_bm25():
  rng = random.Random(0)
  words = [f"w{i}" for i in range(300)]
  paragraphs = [types.Paragraph(f"T{i}", " ".join(rng.choices(words, k=rng.randint(0, 60))))
                for i in range(400)]
  ours = BM25Search.from_paragraphs(paragraphs)
  peer = BM25Okapi([tokenize(f"{p.title} {p.text}") for p in paragraphs])
  for _ in range(30):
    q = " ".join(rng.choices(words + ["unknown"], k=rng.randint(1, 8)))  # repeats included
    np.testing.assert_allclose(ours.scores(q), peer.get_scores(tokenize(q)), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(ours.scores("T7 w1"), peer.get_scores(["t7", "w1"]), rtol=1e-9)
  # Small corpora, where common words get the epsilon-floored idf.
  ours = BM25Search.from_paragraphs(PARAGRAPHS)
  peer = BM25Okapi([tokenize(f"{p.title} {p.text}") for p in PARAGRAPHS])
  for q in ["Paris", "the tower of Paris", "Paris Paris France city"]:
    np.testing.assert_allclose(ours.scores(q), peer.get_scores(tokenize(q)), rtol=1e-9)


def test_ties_break_by_corpus_order():
  twins = [types.Paragraph("A", "same words here"), types.Paragraph("B", "other text"),
           types.Paragraph("A", "same words here")]
  s = BM25Search.from_paragraphs(twins)
  hits = s.search("same words", k=2)
  assert hits[0][0] == hits[1][0] and [p for _, p in hits] == [twins[0], twins[2]]
  assert s.paragraphs.index(hits[0][1]) == 0


def test_tokenize():
  assert tokenize("The Eiffel Tower's height: 330 m!") == ["eiffel", "tower", "height", "330"]
  assert tokenize("Pokémon Émile") == ["pokémon", "émile"]


def test_make_tool_and_protocol(tmp_path):
  path = _write(tmp_path, "json_list")
  s = make_tool("search", paths=[path], top_k=2)
  assert isinstance(s, BM25Search) and isinstance(s, Tool) and s.name == "search"
  assert s.config == SearchConfig(paths=(path,), top_k=2)
  assert make_tool("search", paragraphs=PARAGRAPHS)("Colosseum").output.startswith("Colosseum:")
  assert make_tool("calculator")("48 / 2").output == "24.0"
  with pytest.raises(ValueError):
    make_tool("python")
  with pytest.raises(ValueError):
    make_tool("search")
  with pytest.raises(ValueError):
    SearchConfig(top_k=0)


def test_the_search_demonstration_shows_what_the_tool_returns():
  """The demonstration's observations are what BM25Search writes for its queries (Title: text), so a
  model follows the format it will see."""
  from swirl_jax import prompts
  from swirl_jax.tools.parser import format_observation

  demo = prompts.DEFAULT_DEMOS["search"][0]
  paragraphs = [types.Paragraph("Amélie", "Amélie is a 2001 French romantic comedy film directed by "
                                "Jean-Pierre Jeunet."),
                types.Paragraph("Jean-Pierre Jeunet", "Jean-Pierre Jeunet (born 3 September 1953) is a French "
                                "film director, born in Roanne, France."),
                types.Paragraph("Paris", "Paris is the capital of France.")]
  search = BM25Search.from_paragraphs(paragraphs, top_k=1)
  for observation in demo.observations:
    query = observation.split(" -> ", 1)[0]
    assert format_observation(query, search(query).output) == observation
