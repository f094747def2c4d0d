"""Search corpora: the union of a split's paragraphs, or paragraph files, written for the search tool.

Corpus files are a JSON list ``[{title, text}]``, JSON Lines ``{title, text}``, or an object
``{title: [sentences]}``; ``parse_paragraphs`` reads all three (for the search tool too) and
``write_corpus`` writes the first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from swirl_jax.atomic_io import atomic_open
from swirl_jax.data import formats
from swirl_jax.types import Paragraph, Question, RecordError, parse_object


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


_JSONL_SUFFIXES = (".jsonl", ".jl", ".ndjson")


def parse_paragraphs(path: str | Path, data: bytes) -> list[Paragraph]:
  """The paragraphs of a corpus file's bytes (the one parser of corpus files: the search tool's and
  ``build_corpus``'s). ``path`` names the file in errors and picks JSON Lines by its suffix.

  Shapes: a JSON list ``[{title, text}]`` (MuSiQue, 2WikiMultihopQA; under any name), JSON Lines
  ``{title, text}`` (``.jsonl`` / ``.jl`` / ``.ndjson``, or a ``.json`` file of several top-level objects;
  lines end at LF, CRLF or CR, not at U+2028 and friends, which may stand raw in JSON strings), or an object
  ``{title: [sentence, ...]}`` (HotPotQA; sentences joined by ``formats.join_sentences``, a plain string
  taken as the text). A lone ``{title, text}`` object is one paragraph.

  Raises:
    RecordError: naming the file and the index / line / title and field of a malformed entry; bytes that
      are not UTF-8; a file without paragraphs.
  """
  path = str(path)
  try:
    text = data.decode("utf-8-sig")  # (a byte order mark, as Windows editors write, is dropped)
  except UnicodeDecodeError as e:
    raise RecordError(f"{path}: not UTF-8 text (byte {e.start})") from None
  obj = None
  first = re.search(r"\S", text)  # (not text.lstrip(): a copy of the whole text)
  if not path.endswith(_JSONL_SUFFIXES) or (first and first.group() == "["):  # (a JSON list named .jsonl)
    try:
      obj = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
      if e.msg != "Extra data" or not formats.first_line_is_json(text):  # a list with a stray "]" is no JSON Lines
        raise RecordError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
  if obj is None:
    paragraphs = _parse_jsonl(path, text)
  elif isinstance(obj, list):
    paragraphs = [_paragraph(d, f"{path}[{i}]") for i, d in enumerate(obj)]
  elif isinstance(obj, dict) and isinstance(obj.get("title"), str) and isinstance(obj.get("text"), str):
    paragraphs = [_paragraph(obj, path)]  # one {title, text} record, not a map of titles "title", "text"
  elif isinstance(obj, dict):
    paragraphs = [_titled_entry(path, title, value) for title, value in obj.items()]
  else:
    raise RecordError(f"{path}: expected a list of {{title, text}} objects or an object {{title: [sentence, ...]}}, "
                      f"got {type(obj).__name__}")
  if not paragraphs:
    raise RecordError(f"{path}: the corpus has no paragraphs")
  return paragraphs


def read_paragraphs(path: str | Path) -> list[Paragraph]:
  """``parse_paragraphs`` of a file."""
  if not Path(path).exists():
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, "rb") as f:
    return parse_paragraphs(path, f.read())


def _paragraph(d: object, where: str) -> Paragraph:
  if not isinstance(d, dict):
    raise RecordError(f"{where}: expected an object with fields 'title' and 'text', got {type(d).__name__}: "
                      f"{formats.describe(d)}")
  return Paragraph.from_json(d, where)


def _parse_jsonl(path: str, text: str) -> list[Paragraph]:
  out = []
  for lineno, line in enumerate(formats.LINE_END.split(text), 1):  # not splitlines(): see parse_paragraphs
    if line.strip():
      where = f"{path}:{lineno}"
      out.append(Paragraph.from_json(parse_object(line, where), where))
  return out


def _titled_entry(path: str, title: str, value: object) -> Paragraph:
  where = f"{path}[{title!r}]"
  if isinstance(value, str):
    return Paragraph(title=title, text=value)
  if not isinstance(value, list):
    raise RecordError(f"{where}: value must be a list of sentences or a text, got {type(value).__name__}: "
                      f"{formats.describe(value)}")
  for i, s in enumerate(value):
    if not isinstance(s, str):
      raise RecordError(f"{where}[{i}]: sentence must be str, got {type(s).__name__}: {formats.describe(s)}")
  return Paragraph(title=title, text=formats.join_sentences(value))


def write_corpus(path: str | Path, paragraphs: Sequence[Paragraph]) -> None:
  """Writes ``[{title, text}]`` JSON atomically (temp file + rename), so a reader never sees half a file."""
  with atomic_open(path) as f:
    json.dump([p.to_json() for p in paragraphs], f, ensure_ascii=False, indent=0)
    f.write("\n")
