"""BM25 search over paragraphs for ``<search_query>`` calls, with an index saved beside each corpus.

Scoring is exactly rank_bm25's ``BM25Okapi`` (k1=1.5, b=0.75, idf floor epsilon * mean idf for terms
in more than half the paragraphs; a query word counts once per occurrence), which the tests check
score for score. It is computed from an inverted index instead of rank_bm25's per-document Python
loop: each (term, paragraph) weight is precomputed once, and a query sums the posting lists of its
words with one ``np.bincount``, so a query costs O(postings of its words + corpus size) in numpy
rather than O(query words x corpus size) in Python (benchmarks/search.py has the measured ratio).

Corpora are JSON or JSON Lines files in one of three shapes, read by ``data.corpus.parse_paragraphs``:

* a JSON list ``[{"title": ..., "text": ...}, ...]`` (MuSiQue, 2WikiMultihopQA corpora);
* JSON Lines, one ``{"title": ..., "text": ...}`` per line (``.jsonl`` / ``.jl`` / ``.ndjson``, or a
  ``.json`` file holding several top-level objects);
* a JSON object ``{title: [sentence, ...]}`` (HotPotQA): the sentences are joined as they are (HotPotQA
  sentences after the first carry their own leading space), with a space inserted where neither side
  has one. A plain string value is also accepted as the text.

A malformed record raises ``types.RecordError`` naming the file, the index or line, and the field.

The index. Indexed text is ``title + " " + text``, tokenized by lowercasing, taking ``\\w+`` runs and
dropping a small built-in list of English stop words (no downloads). For each corpus file the
tokenized corpus (vocabulary, per-paragraph term ids and counts, lengths) is saved as a ``.npz``
(no pickle) beside the corpus, ``<corpus>.bm25.npz``, or in ``SearchConfig.index_dir``. It records
the SHA-256 of the corpus bytes, a fingerprint of the tokenizer settings and a format version, and is
rebuilt whenever one of them does not match (an edited corpus, a changed stop-word list). Loading
skips tokenization, the slow part; the BM25 statistics (which depend on all files together) are
recomputed from the saved counts in a few vectorised numpy operations. An index that cannot be
written (a read-only directory) is logged and kept in memory only.

The budget. The observation is the top ``top_k`` paragraphs, each written ``Title: text`` and joined
by newlines, cut to ``max_words`` words in total. The budget approximates model tokens by
whitespace-separated words (model tokenizers differ, and an English word is one token or a few); a
cut observation ends with `` ...``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from swirl_jax import types
from swirl_jax.atomic_io import atomic_open
from swirl_jax.data.corpus import parse_paragraphs as parse_corpus  # the one parser of corpus files
from swirl_jax.data.corpus import read_paragraphs
from swirl_jax.tools.base import ToolResult

# A small English stop-word list (NLTK's, lowercased; single letters left by \w+ splitting of
# contractions such as "'s" included).
STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are aren as at be because been before being below
between both but by can couldn d did didn do does doesn doing don down during each few for from further
had hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it
its itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or
other our ours ourselves out over own re s same shan she should shouldn so some such t than that the
their theirs them themselves then there these they this those through to too under until up ve very was
wasn we were weren what when where which while who whom why will with won wouldn y you your yours
yourself yourselves
""".split())
TOKEN_PATTERN = r"\w+"
INDEX_FORMAT = 2  # 2: HotPotQA-style sentences joined with a space where neither side has one
INDEX_SUFFIX = ".bm25.npz"

_TOKEN_RE = re.compile(TOKEN_PATTERN)
_WORD_RE = re.compile(r"\S+")

log = logging.getLogger(__name__)


def tokenize(text: str) -> list[str]:
  """Lowercase ``\\w+`` words minus stop words; used for paragraphs and queries alike."""
  return [t for t in _TOKEN_RE.findall(text.lower()) if t not in STOP_WORDS]


def tokenizer_fingerprint() -> str:
  """A hash of every tokenizer setting; a saved index is reused only when it matches."""
  settings = {"pattern": TOKEN_PATTERN, "lowercase": True, "stop_words": sorted(STOP_WORDS),
              "fields": "title + ' ' + text"}
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Corpus files.


def load_corpus(path: str) -> list[types.Paragraph]:
  """Reads the paragraphs of one corpus file (``parse_corpus`` of its bytes)."""
  return read_paragraphs(path)


# ---------------------------------------------------------------------------------------------------
# The tokenized corpus of one file: what is saved beside it.


@dataclasses.dataclass(frozen=True)
class _TermCounts:
  """Paragraph i has the terms vocab[term_ids[doc_ptr[i]:doc_ptr[i+1]]] with counts tfs[...]."""

  vocab: list[str]
  doc_ptr: np.ndarray  # int64 [num_docs + 1]
  term_ids: np.ndarray  # int32 [num_postings]
  tfs: np.ndarray  # int32 [num_postings]
  doc_len: np.ndarray  # int32 [num_docs], tokens after stop-word removal

  @property
  def num_docs(self) -> int:
    return len(self.doc_len)


def _count_terms(paragraphs: Iterable[types.Paragraph]) -> _TermCounts:
  vocab: dict[str, int] = {}
  term_ids: list[int] = []
  tfs: list[int] = []
  doc_ptr = [0]
  doc_len = []
  for p in paragraphs:
    tokens = tokenize(f"{p.title} {p.text}")
    for term, count in collections.Counter(tokens).items():
      term_ids.append(vocab.setdefault(term, len(vocab)))
      tfs.append(count)
    doc_ptr.append(len(term_ids))
    doc_len.append(len(tokens))
  return _TermCounts(
      vocab=list(vocab),
      doc_ptr=np.asarray(doc_ptr, np.int64),
      term_ids=np.asarray(term_ids, np.int32),
      tfs=np.asarray(tfs, np.int32),
      doc_len=np.asarray(doc_len, np.int32),
  )


def _bytes_array(s: str) -> np.ndarray:
  return np.frombuffer(s.encode("utf-8"), np.uint8)


def _save_counts(path: str, counts: _TermCounts, meta: dict[str, Any]) -> None:
  """Writes the index atomically (temp file + rename), so readers never see half a file."""
  with atomic_open(path, "wb") as f:
    np.savez(
        f,
        meta=_bytes_array(json.dumps(meta, sort_keys=True)),
        vocab=_bytes_array("\n".join(counts.vocab)),  # \w+ tokens never hold a newline
        doc_ptr=counts.doc_ptr,
        term_ids=counts.term_ids,
        tfs=counts.tfs,
        doc_len=counts.doc_len,
    )


def _load_counts(path: str, meta: dict[str, Any]) -> _TermCounts | None:
  """The saved counts when the file exists, is readable and was made from the same corpus/settings."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      if json.loads(z["meta"].tobytes().decode("utf-8")) != meta:
        return None
      vocab = z["vocab"].tobytes().decode("utf-8")
      counts = _TermCounts(
          vocab=vocab.split("\n") if vocab else [],
          doc_ptr=z["doc_ptr"],
          term_ids=z["term_ids"],
          tfs=z["tfs"],
          doc_len=z["doc_len"],
      )
  except Exception as e:  # pylint: disable=broad-except
    log.warning("Ignoring unreadable search index %s (%s); rebuilding it.", path, e)
    return None
  n = len(counts.term_ids)
  consistent = (counts.num_docs == meta["num_docs"] and len(counts.doc_ptr) == counts.num_docs + 1
                and counts.doc_ptr[-1] == n == len(counts.tfs)
                and (n == 0 or 0 <= counts.term_ids.min() <= counts.term_ids.max() < len(counts.vocab)))
  return counts if consistent else None


def index_path(corpus_path: str, index_dir: str | None = None) -> str:
  """Where the index of ``corpus_path`` is saved: beside it, or in ``index_dir``.

  In ``index_dir`` the name carries a hash of the corpus's absolute path, so corpora with the same
  file name in different folders do not overwrite each other's index.
  """
  if index_dir is None:
    return corpus_path + INDEX_SUFFIX
  tag = hashlib.sha256(os.path.abspath(corpus_path).encode()).hexdigest()[:12]
  return os.path.join(index_dir, f"{os.path.basename(corpus_path)}.{tag}{INDEX_SUFFIX}")


# ---------------------------------------------------------------------------------------------------
# The tool.


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Static settings of the search tool.

  Attributes:
    paths: corpus files (JSON or JSON Lines; see the module docstring), searched as one collection.
    top_k: paragraphs in each observation.
    max_words: budget of an observation in whitespace-separated words (an approximation of tokens).
    index_dir: where to save indexes; None saves each beside its corpus file.
    save_index: write the index after building it (loading a matching one happens either way).
    k1, b, epsilon: BM25Okapi parameters (rank_bm25's defaults).
  """

  paths: tuple[str, ...] = ()
  top_k: int = 1
  max_words: int = 200
  index_dir: str | None = None
  save_index: bool = True
  k1: float = 1.5
  b: float = 0.75
  epsilon: float = 0.25

  def __post_init__(self):
    if isinstance(self.paths, str):
      object.__setattr__(self, "paths", (self.paths,))
    else:
      object.__setattr__(self, "paths", tuple(self.paths))
    if self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if self.max_words < 1:
      raise ValueError(f"max_words must be >= 1, got {self.max_words}")


def cut_to_words(text: str, max_words: int) -> str:
  """``text`` up to the end of its ``max_words``-th whitespace-separated word, plus " ..." if cut."""
  last = None
  for i, m in enumerate(_WORD_RE.finditer(text)):
    if i == max_words:
      return text[: last.end()] + " ..."
    last = m
  return text


class BM25Search:
  """The ``search`` tool: top-k BM25 paragraphs for a query, as ``Title: text``.

  Build it with ``from_files`` / ``from_config`` (corpus files, saved index) or ``from_paragraphs``
  (in memory). Immutable after construction and safe to share between threads.

  Attributes:
    paragraphs: the collection, in file order.
    config: the settings it was built with.
    index_loaded: per corpus file, True when its saved index was reused rather than rebuilt.
  """

  name: ClassVar[str] = "search"

  def __init__(self, paragraphs: Sequence[types.Paragraph], counts: Sequence[_TermCounts],
               config: SearchConfig, index_loaded: tuple[bool, ...] = ()):
    """Assembles the BM25 index from per-file term counts; prefer the ``from_*`` constructors."""
    self.paragraphs: tuple[types.Paragraph, ...] = tuple(paragraphs)
    self.config = config
    self.index_loaded = index_loaded
    num_docs = sum(c.num_docs for c in counts)
    if not self.paragraphs:
      raise ValueError("the search corpus has no paragraphs")
    if num_docs != len(self.paragraphs):
      raise ValueError(f"{num_docs} indexed paragraphs for {len(self.paragraphs)} paragraphs")

    # Merge the per-file vocabularies into one, remapping each file's term ids.
    self._vocab: dict[str, int] = {}
    terms, docs, tfs, doc_len = [], [], [], []
    offset = 0
    for c in counts:
      remap = np.fromiter((self._vocab.setdefault(t, len(self._vocab)) for t in c.vocab),
                          np.int64, len(c.vocab))
      terms.append(remap[c.term_ids])
      docs.append(np.repeat(np.arange(offset, offset + c.num_docs, dtype=np.int64), np.diff(c.doc_ptr)))
      tfs.append(c.tfs)
      doc_len.append(c.doc_len)
      offset += c.num_docs
    term = np.concatenate(terms)
    doc = np.concatenate(docs)
    tf = np.concatenate(tfs).astype(np.float64)
    dl = np.concatenate(doc_len).astype(np.float64)

    # BM25Okapi, as rank_bm25 computes it.
    k1, b = config.k1, config.b
    df = np.bincount(term, minlength=len(self._vocab))
    idf = np.log(num_docs - df + 0.5) - np.log(df + 0.5)
    mean_idf = idf.mean() if len(idf) else 0.0
    idf = np.where(idf < 0, config.epsilon * mean_idf, idf)
    avgdl = dl.mean() or 1.0  # a corpus without a single word: every length is 0
    weight = idf[term] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl[doc] / avgdl))

    # Term-major postings: term t's paragraphs are _post_docs[_post_ptr[t]:_post_ptr[t + 1]].
    order = np.argsort(term, kind="stable")
    self._post_docs = doc[order].astype(np.int32)
    self._post_weights = weight[order]
    self._post_ptr = np.zeros(len(self._vocab) + 1, np.int64)
    np.cumsum(df, out=self._post_ptr[1:])
    self._num_docs = num_docs

  # -- constructors --

  @classmethod
  def from_config(cls, config: SearchConfig) -> "BM25Search":
    """Loads ``config.paths``, reusing each file's saved index when it matches, else building it."""
    if not config.paths:
      raise ValueError("SearchConfig.paths is empty: give at least one corpus file")
    paragraphs: list[types.Paragraph] = []
    counts: list[_TermCounts] = []
    loaded: list[bool] = []
    fingerprint = tokenizer_fingerprint()
    for path in config.paths:
      with open(path, "rb") as f:
        data = f.read()
      file_paragraphs = parse_corpus(path, data)
      meta = {"format": INDEX_FORMAT, "corpus_sha256": hashlib.sha256(data).hexdigest(),
              "tokenizer": fingerprint, "num_docs": len(file_paragraphs)}
      ipath = index_path(path, config.index_dir)
      c = _load_counts(ipath, meta)
      loaded.append(c is not None)
      if c is None:
        c = _count_terms(file_paragraphs)
        if config.save_index:
          try:
            _save_counts(ipath, c, meta)
          except OSError as e:
            log.warning("Could not save the search index %s (%s); keeping it in memory.", ipath, e)
      paragraphs.extend(file_paragraphs)
      counts.append(c)
    return cls(paragraphs, counts, config, tuple(loaded))

  @classmethod
  def from_files(cls, paths: str | Sequence[str], **options: Any) -> "BM25Search":
    """``from_config(SearchConfig(paths=paths, **options))``."""
    return cls.from_config(SearchConfig(paths=paths, **options))

  @classmethod
  def from_paragraphs(cls, paragraphs: Sequence[types.Paragraph], **options: Any) -> "BM25Search":
    """An in-memory index over ``paragraphs`` (nothing is saved); options are SearchConfig fields."""
    config = SearchConfig(**options)
    return cls(paragraphs, [_count_terms(paragraphs)], config, (False,))

  # -- queries --

  def __len__(self) -> int:
    return self._num_docs

  def scores(self, query: str) -> np.ndarray:
    """BM25Okapi scores of every paragraph for ``query`` (float64 [num_paragraphs])."""
    return self._score(tokenize(query))[0]

  def _score(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores of all paragraphs, ids of paragraphs holding at least one query word)."""
    spans = [(self._post_ptr[t], self._post_ptr[t + 1])
             for t in (self._vocab.get(w) for w in tokens) if t is not None]
    if not spans:
      return np.zeros(self._num_docs), np.zeros(0, np.int64)
    if len(spans) == 1:
      (s, e), = spans
      docs, weights = self._post_docs[s:e], self._post_weights[s:e]
      hit = docs  # one posting list: already unique and sorted
    else:
      docs = np.concatenate([self._post_docs[s:e] for s, e in spans])
      weights = np.concatenate([self._post_weights[s:e] for s, e in spans])
      # flatnonzero(bincount) is the sorted set np.unique gives, without sorting the postings
      hit = np.flatnonzero(np.bincount(docs, minlength=self._num_docs))
    return np.bincount(docs, weights=weights, minlength=self._num_docs), hit

  def search(self, query: str, k: int | None = None) -> list[tuple[float, types.Paragraph]]:
    """The best ``k`` (default ``config.top_k``) paragraphs holding a query word, best first.

    Ties are broken by corpus order, so results are deterministic. Fewer than ``k`` come back when
    fewer paragraphs hold a query word; none when the query has no indexed word.
    """
    return self._top(tokenize(query), self.config.top_k if k is None else k)

  def _top(self, tokens: list[str], k: int) -> list[tuple[float, types.Paragraph]]:
    scores, hit = self._score(tokens)
    if not len(hit) or k < 1:
      return []
    hit_scores = scores[hit]
    if len(hit) > k:
      kth = np.partition(hit_scores, len(hit) - k)[len(hit) - k]  # the k-th largest score
      keep = hit_scores >= kth
      hit, hit_scores = hit[keep], hit_scores[keep]
    best = np.lexsort((hit, -hit_scores))[:k]
    return [(float(hit_scores[i]), self.paragraphs[hit[i]]) for i in best]

  def __call__(self, query: str) -> ToolResult:  # pylint: disable=arguments-renamed
    """The observation for ``query``: the top paragraphs as ``Title: text``, within the word budget."""
    tokens = tokenize(query)
    if not tokens:
      return ToolResult.failure("empty_query", "the query has no searchable words")
    hits = self._top(tokens, self.config.top_k)
    if not hits:
      return ToolResult.failure("no_results", "no paragraph matches the query")
    text = "\n".join(f"{p.title}: {p.text}" for _, p in hits)
    return ToolResult(output=cut_to_words(text, self.config.max_words))


def make_search(paths: str | Sequence[str] = (), paragraphs: Sequence[types.Paragraph] | None = None,
                **options: Any) -> BM25Search:
  """Builds the search tool from corpus files or from in-memory paragraphs (exactly one of them)."""
  if (paragraphs is None) == (not paths):
    raise ValueError("give exactly one of paths= or paragraphs=")
  if paragraphs is not None:
    return BM25Search.from_paragraphs(paragraphs, **options)
  return BM25Search.from_files(paths, **options)

