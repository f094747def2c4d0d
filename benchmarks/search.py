"""BM25 search throughput on the real corpora: swirl_jax's BM25Search vs. rank_bm25 used directly.

Usage: python benchmarks/search.py [--data_dir /work/shared/data] [--index_dir DIR] [--min_seconds 2]

Corpora (when present under --data_dir): hotpotqa/hotpotqa_train_corpus.json ({title: [sentences]}),
musique/musique_train_corpus.json and wiki_corpus/2wikimultihopqa_corpus.json ([{title, text}]),
searched as one collection. Queries are the real questions of hotpotqa/hotpotqa_train.json and
musique/musique_train.json. The index goes to --index_dir (a fresh temporary folder by default), never
beside the corpora. The peer is rank_bm25's BM25Okapi over the same tokens, queried with get_top_n
(the obvious way to use the library); both give the top-1 paragraph. Prints one JSON object; when no
corpus is found it prints {"skipped": reason} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import rank_bm25

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from swirl_jax.tools.search import BM25Search, index_path, tokenize  # pylint: disable=g-import-not-at-top

CORPORA = ("hotpotqa/hotpotqa_train_corpus.json", "musique/musique_train_corpus.json",
           "wiki_corpus/2wikimultihopqa_corpus.json")
QUESTIONS = ("hotpotqa/hotpotqa_train.json", "musique/musique_train.json")


def _questions(data_dir: str) -> list[str]:
  out = []
  for rel in QUESTIONS:
    path = os.path.join(data_dir, rel)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out.extend(r["question"] for r in json.load(f))
  return out


def _rate(fn, queries: list[str], min_seconds: float) -> float:
  """Queries per second over whole passes of ``queries``, repeated for at least ``min_seconds``."""
  done, start = 0, time.perf_counter()
  while True:
    for q in queries:
      fn(q)
    done += len(queries)
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return done / elapsed


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data_dir", default="/work/shared/data")
  ap.add_argument("--index_dir", default=None, help="where to write the index (default: a temp folder)")
  ap.add_argument("--min_seconds", type=float, default=2.0, help="timing window of each measurement")
  args = ap.parse_args()

  paths = [os.path.join(args.data_dir, rel) for rel in CORPORA]
  paths = [p for p in paths if os.path.exists(p)]
  queries = _questions(args.data_dir)
  if not paths or not queries:
    print(json.dumps({"skipped": f"no corpus or questions under {args.data_dir}"}))
    return

  with tempfile.TemporaryDirectory() as tmp:
    index_dir = args.index_dir or tmp
    for p in paths:  # a cold build, even when --index_dir already holds one
      if os.path.exists(index_path(p, index_dir)):
        os.remove(index_path(p, index_dir))

    start = time.perf_counter()
    built = BM25Search.from_files(paths, index_dir=index_dir)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    search = BM25Search.from_files(paths, index_dir=index_dir)
    load_s = time.perf_counter() - start
    assert all(search.index_loaded) and not any(built.index_loaded)
    index_bytes = sum(os.path.getsize(index_path(p, index_dir)) for p in paths)

    # The peer: rank_bm25 on the same tokens (tokenizing the corpus counts towards its build time).
    start = time.perf_counter()
    peer = rank_bm25.BM25Okapi([tokenize(f"{p.title} {p.text}") for p in search.paragraphs])
    peer_build_s = time.perf_counter() - start
    ids = list(range(len(search)))

    def ours(q: str):
      return search.search(q, k=1)

    def theirs(q: str):
      return peer.get_top_n(tokenize(q), ids, n=1)

    for q in queries[:10]:  # warm-up
      ours(q)
      search(q)
    ours_qps = _rate(ours, queries, args.min_seconds)
    tool_qps = _rate(search, queries, args.min_seconds)  # with formatting and the word budget
    peer_qps = _rate(theirs, queries, args.min_seconds)

    # Same top-1 score (ties may pick different paragraphs), and the same paragraph.
    same_score = same_doc = 0
    for q in queries:
      scores = search.scores(q)
      hits = ours(q)
      (peer_id,) = theirs(q)
      if hits:
        same_score += bool(np.isclose(hits[0][0], scores[peer_id], rtol=1e-9))
        same_doc += hits[0][1] is search.paragraphs[peer_id]

  print(json.dumps({
      "benchmark": "bm25_search",
      "corpus_files": [os.path.relpath(p, args.data_dir) for p in paths],
      "corpus_paragraphs": len(search),
      "vocabulary": len(search._vocab),  # pylint: disable=protected-access
      "queries": len(queries),
      "index_build_s": round(build_s, 3),
      "index_load_s": round(load_s, 3),
      "index_bytes": index_bytes,
      "swirl_search_qps": round(ours_qps, 1),
      "swirl_tool_call_qps": round(tool_qps, 1),
      "peer": f"rank_bm25 {getattr(rank_bm25, '__version__', '0.2.2')} BM25Okapi.get_top_n(n=1)",
      "peer_build_s": round(peer_build_s, 3),
      "peer_qps": round(peer_qps, 1),
      "ratio_swirl_over_peer": round(ours_qps / peer_qps, 1),
      "top1_same_score": same_score / len(queries),
      "top1_same_paragraph": same_doc / len(queries),
      "python": platform.python_version(),
      "numpy": np.__version__,
  }, indent=2))


if __name__ == "__main__":
  main()
