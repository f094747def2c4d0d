"""Search corpora: the union of a split's paragraphs, or paragraph files, written for the search tool.

The search tool reads a JSON list ``[{title, text}]``, JSON Lines ``{title, text}``, or an object
``{title: [sentences]}``; ``read_paragraphs`` accepts the same three and ``write_corpus`` writes the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from swirl_jax.atomic_io import atomic_open
from swirl_jax.data import formats
from swirl_jax.types import Paragraph, Question, RecordError


def union_paragraphs(groups: Iterable[Iterable[Paragraph]]) -> list[Paragraph]:
  """Concatenates paragraph groups, keeping the first copy of each (title, text) pair, in order.

  The same Wikipedia paragraph comes with many questions; it must be one document in the index, or
  BM25 returns duplicates. Paragraphs sharing a title but not a text are kept apart (MuSiQue has them).
  """
  seen: set[tuple[str, str]] = set()
  out = []
  for group in groups:
    for p in group:
      key = (p.title, p.text)
      if key not in seen:
        seen.add(key)
        out.append(p)
  return out


def corpus_from_questions(questions: Sequence[Question]) -> list[Paragraph]:
  """The union of the context paragraphs of ``questions`` (how the paper built its search corpora)."""
  return union_paragraphs(q.context for q in questions)


def read_paragraphs(path: str | Path) -> list[Paragraph]:
  """Reads a paragraph file: ``[{title, text}]``, JSON Lines ``{title, text}``, or ``{title: [sentences]}``.

  Raises:
    RecordError: naming the file, the index / line / title, and the field of a malformed entry.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file")
  if path.suffix != ".jsonl":
    text = path.read_text(encoding="utf-8")
    try:
      data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
      if e.msg != "Extra data":
        raise RecordError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
      data = None  # JSON Lines under a .json name: read below.
    # {title: [sentences]}, unless it is the one record of a one-line JSON Lines file.
    if isinstance(data, dict) and not ("title" in data and "text" in data):
      return [_titled_entry(path, title, value) for title, value in data.items()]
  return [Paragraph.from_json(record, where) for where, record in formats.read_records(path)]


def _titled_entry(path: Path, title: str, value: object) -> Paragraph:
  where = f"{path}[{title!r}]"
  if isinstance(value, str):
    return Paragraph(title=title, text=value)
  if isinstance(value, list) and all(isinstance(s, str) for s in value):
    return Paragraph(title=title, text=formats.join_sentences(value))
  raise RecordError(f"{where}: value must be a list of sentences or a text, got {formats.describe(value)}")


def write_corpus(path: str | Path, paragraphs: Sequence[Paragraph]) -> None:
  """Writes ``[{title, text}]`` JSON atomically (temp file + rename), so a reader never sees half a file."""
  with atomic_open(path) as f:
    json.dump([p.to_json() for p in paragraphs], f, ensure_ascii=False, indent=0)
    f.write("\n")
