"""Readers for the official file formats of GSM8K, HotPotQA, MuSiQue, BeerQA and CofCA.

Each ``parse_*`` function turns one official record into a ``types.Question``. The same functions serve
the TFDS builders (``tfds_builders.py``) and the plain-file loader (``registry.py``), so a question read
either way is the same record with the same id.

Every error is a ``types.RecordError`` whose message starts with where the record is: ``file:line``
for JSON Lines, ``file[index]`` for a JSON list, ``file['data'][index]`` for BeerQA's wrapper object;
then the field, e.g. ``hotpot_dev_distractor_v1.json[3]: field 'context'[2] must be [title, [sentences]]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from swirl_jax.types import Paragraph, Question, RecordError, parse_object

# The number after "####" in a GSM8K solution, once commas are removed.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

log = logging.getLogger(__name__)


def describe(value: Any) -> str:
  """A short, safe rendering of a bad value for an error message."""
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
  """Returns ``d[key]``, raising a RecordError naming ``where`` and the field when missing or mistyped."""
  if key not in d:
    raise RecordError(f"{where}: missing field {key!r}")
  value = d[key]
  # bool is an int in Python; a bool where a number is wanted is a data error.
  if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
    names = " or ".join(k.__name__ for k in _as_tuple(kind))
    raise RecordError(
        f"{where}: field {key!r} must be {names}, got {type(value).__name__}: {describe(value)}")
  return value


def optional_field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
                   default: Any = None) -> Any:
  """Like ``field`` but returns ``default`` when the key is absent or null."""
  if d.get(key) is None:
    return default
  return field(d, key, kind, where)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
  return kind if isinstance(kind, tuple) else (kind,)


def string_list(d: Mapping[str, Any], key: str, where: str, default: Sequence[str] | None = None) -> list[str]:
  """A list of strings field; each bad element is reported with its index."""
  if default is not None and d.get(key) is None:
    return list(default)
  values = field(d, key, list, where)
  for i, v in enumerate(values):
    if not isinstance(v, str):
      raise RecordError(f"{where}: field {key!r}[{i}] must be str, got {type(v).__name__}: {describe(v)}")
  return values


def join_sentences(sentences: Sequence[str]) -> str:
  """Joins sentence lists as HotPotQA does (its sentences carry their leading space).

  Sources that strip the spaces get one inserted, so words never run together.
  """
  out = ""
  for s in sentences:
    if out and s and not out[-1].isspace() and not s[0].isspace():
      out += " "
    out += s
  return out


# ---------------------------------------------------------------------------------------------------------
# Reading files.


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ``(where, record)`` for every record of a JSON or JSON Lines file.

  Accepted layouts: JSON Lines (one object per line; blank lines skipped), a JSON list of objects, or a
  JSON object holding the list under ``"data"`` (BeerQA's ``{version, split, data}``). ``.jsonl`` files
  are streamed line by line; others are parsed whole and fall back to JSON Lines when the text holds
  several top-level values and its first line is one complete value (JSON Lines saved as ``.json``).
  Otherwise a syntax error is reported where the whole-file parse found it, e.g. a stray ``]`` that ends
  a list early.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file")
  if path.suffix == ".jsonl" and _first_char(path) != "[":  # A JSON list named .jsonl is read whole.
    yield from _read_jsonl(path)
    return
  text = read_text(path)
  if not text.strip():
    return
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    if e.msg == "Extra data" and first_line_is_json(text):  # JSON Lines saved under another extension.
      yield from _read_jsonl(path)
      return
    raise RecordError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
  if isinstance(data, list):
    prefix, items = f"{path}", data
  elif isinstance(data, dict) and isinstance(data.get("data"), list):
    prefix, items = f"{path}['data']", data["data"]
  elif isinstance(data, dict):
    yield f"{path}:1", data  # A single record (a one-line JSON Lines file parses this way too).
    return
  else:
    raise RecordError(f"{path}: expected a JSON list, JSON Lines or an object with a 'data' list, "
                      f"got {type(data).__name__}")
  for i, record in enumerate(items):
    where = f"{prefix}[{i}]"
    if not isinstance(record, dict):
      raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}: {describe(record)}")
    yield where, record


def read_text(path: Path) -> str:
  """A file's text (a UTF-8 byte order mark, as Windows editors write, is dropped); bytes that are not UTF-8
  are a RecordError naming the file, line and byte."""
  data = path.read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise RecordError(f"{path}:{line}: not UTF-8 text (byte {e.start} of the file)") from None


def _first_char(path: Path) -> str:
  with open(path, encoding="utf-8-sig", errors="replace") as f:  # (a bad byte is reported by the reader)
    while chunk := f.read(4096):
      if stripped := chunk.lstrip():
        return stripped[0]
  return ""


LINE_END = re.compile(r"\r\n|\r|\n")  # the line ends of JSON Lines (text mode's; not U+2028 and friends)


def first_line_is_json(text: str) -> bool:
  """Whether the first non-blank line of ``text`` is a complete JSON value on its own, as in JSON Lines.

  A JSON list or object spread over lines (its first line "[" or "{") is not, so "Extra data" in it is a
  syntax error to report where it is, not a reason to re-read the file line by line.
  """
  first = re.search(r"\S", text)  # not text.lstrip(): that copies a file of hundreds of MB
  start = first.start() if first else 0
  end = LINE_END.search(text, start)  # as the JSON Lines readers split lines (not at U+2028)
  try:
    json.loads(text[start:] if end is None else text[start:end.start()])
  except json.JSONDecodeError:
    return False
  return True


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
  """Records of a JSON Lines file, read as bytes (so a bad byte is named by its line). Lines end at LF,
  CRLF or a bare CR (old Mac files), as text mode reads them, and not at U+2028 and friends, which JSON
  strings may hold raw; a JSON string cannot hold a raw CR or LF."""
  lineno = 0
  with open(path, "rb") as f:
    for raw in f:
      try:
        text = raw.decode("utf-8-sig" if lineno == 0 else "utf-8")
      except UnicodeDecodeError as e:
        raise RecordError(f"{path}:{lineno + 1}: not UTF-8 text (byte {e.start} of the line)") from None
      text = text[:-1] if text.endswith("\n") else text
      text = text[:-1] if text.endswith("\r") else text
      for line in text.split("\r"):
        lineno += 1
        if line.strip():
          where = f"{path}:{lineno}"
          yield where, parse_object(line, where)


def read_questions(path: str | Path, parse: Callable[[Mapping[str, Any], str], Question | None]) -> list[Question]:
  """Parses every record of a file with ``parse``; records it returns None for are skipped.

  Skipped records are counted in a warning naming the file (``parse.left_out`` says what they are, e.g.
  "unanswerable"), so a file of the wrong variant is noticed.

  Raises:
    RecordError: a malformed record, two records with the same id (both places are named), a file with
      no records (empty, whitespace only or an empty list), or one whose records are all skipped.
  """
  out: list[Question] = []
  seen: dict[str, str] = {}
  records = 0
  for where, record in read_records(path):
    records += 1
    q = parse(record, where)
    if q is None:
      continue
    if q.id in seen:
      raise RecordError(f"{where}: duplicate question id {q.id!r} (first seen at {seen[q.id]})")
    seen[q.id] = where
    out.append(q)
  # An empty file would otherwise train or evaluate on nothing without a word.
  if not records:
    raise RecordError(f"{path}: no records (the file is empty, whitespace only or an empty list)")
  left_out = records - len(out)
  what = getattr(parse, "left_out", "by the parser")
  if left_out:
    log.warning("kept %d, left out %d %s from %s", len(out), left_out, what, path)
  if not out:
    raise RecordError(f"{path}: no questions: all {records} records were left out ({what})")
  return out


# ---------------------------------------------------------------------------------------------------------
# GSM8K: {question, answer}; the answer is a worked solution ending in "#### N".


def gsm8k_final_answer(solution: str, where: str) -> str:
  """The number after "####" with thousands separators removed ("#### 1,000" -> "1000")."""
  if "####" not in solution:
    raise RecordError(f"{where}: field 'answer' has no '#### <number>' final answer: {describe(solution)}")
  number = solution.rsplit("####", 1)[1].strip().replace(",", "")
  if not _NUMBER.fullmatch(number):
    raise RecordError(f"{where}: field 'answer' must end in '#### <number>', got '#### {number}'")
  return number


def gsm8k_id(split: str, question: str, solution: str) -> str:
  """GSM8K has no ids: hash the record, so a file and TFDS's (reordered) copy give the same ids."""
  digest = hashlib.sha1(f"{question}\0{solution}".encode("utf-8")).hexdigest()[:12]
  return f"gsm8k-{split}-{digest}"


def parse_gsm8k(record: Mapping[str, Any], where: str, split: str) -> Question:
  question = field(record, "question", str, where)
  solution = field(record, "answer", str, where)
  answer = gsm8k_final_answer(solution, where)
  rationale = solution.rsplit("####", 1)[0].strip()
  return Question(
      id=gsm8k_id(split, question, solution),
      dataset="gsm8k",
      text=question,
      answer=answer,
      metadata={
          "split": split,
          "solution": rationale,
          # GSM8K marks each calculator step as <<expr=value>>: a rough count of the operations needed.
          "num_calculations": rationale.count("<<"),
      },
  )


# ---------------------------------------------------------------------------------------------------------
# HotPotQA: {_id, question, answer, supporting_facts, context: [[title, [sentences]]], type, level}.


def hotpot_context(record: Mapping[str, Any], where: str) -> tuple[Paragraph, ...]:
  items = field(record, "context", list, where)
  out = []
  for i, item in enumerate(items):
    ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
          and all(isinstance(s, str) for s in item[1]))
    if not ok:
      raise RecordError(f"{where}: field 'context'[{i}] must be [title, [sentences]], got {describe(item)}")
    out.append(Paragraph(title=item[0], text=join_sentences(item[1])))
  return tuple(out)


def parse_hotpot(record: Mapping[str, Any], where: str, setting: str) -> Question:
  qid = field(record, "_id", str, where)
  facts = optional_field(record, "supporting_facts", list, where, default=[])
  for i, fact in enumerate(facts):
    if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str) and isinstance(fact[1], int)):
      raise RecordError(
          f"{where}: field 'supporting_facts'[{i}] must be [title, sentence_id], got {describe(fact)}")
  return Question(
      id=qid,
      dataset="hotpot_qa",
      text=field(record, "question", str, where),
      answer=field(record, "answer", str, where),
      context=hotpot_context(record, where),
      metadata={
          "setting": setting,
          "level": optional_field(record, "level", str, where),
          "type": optional_field(record, "type", str, where),
          "supporting_facts": [list(f) for f in facts],
          "supporting_titles": sorted({f[0] for f in facts}),
      },
  )


# ---------------------------------------------------------------------------------------------------------
# MuSiQue: {id, paragraphs: [{idx, title, paragraph_text, is_supporting}], question, question_decomposition,
# answer, answer_aliases, answerable}.


def parse_musique(record: Mapping[str, Any], where: str) -> Question:
  qid = field(record, "id", str, where)
  paragraphs, supporting = [], []
  for i, p in enumerate(field(record, "paragraphs", list, where)):
    pw = f"{where}.paragraphs[{i}]"
    if not isinstance(p, dict):
      raise RecordError(f"{pw}: expected a JSON object, got {type(p).__name__}")
    paragraphs.append(Paragraph(title=field(p, "title", str, pw), text=field(p, "paragraph_text", str, pw)))
    if optional_field(p, "is_supporting", bool, pw, default=False):
      supporting.append(optional_field(p, "idx", int, pw, default=i))
  decomposition = []
  for i, step in enumerate(optional_field(record, "question_decomposition", list, where, default=[])):
    sw = f"{where}.question_decomposition[{i}]"
    if not isinstance(step, dict):
      raise RecordError(f"{sw}: expected a JSON object, got {type(step).__name__}")
    decomposition.append({
        "question": field(step, "question", str, sw),
        "answer": field(step, "answer", str, sw),
        "paragraph_support_idx": optional_field(step, "paragraph_support_idx", int, sw),
    })
  answer = field(record, "answer", str, where)
  aliases = [a for a in string_list(record, "answer_aliases", where, default=[]) if a != answer]
  return Question(
      id=qid,
      dataset="musique",
      text=field(record, "question", str, where),
      answer=answer,
      aliases=tuple(dict.fromkeys(aliases)),
      context=tuple(paragraphs),
      metadata={
          "answerable": optional_field(record, "answerable", bool, where, default=True),
          # Ids start with the composition shape ("2hop__", "3hop1__", ...); the decomposition is exact.
          "hops": len(decomposition) or _hops_from_id(qid),
          "decomposition": decomposition,
          "supporting_idx": supporting,
      },
  )


def _hops_from_id(qid: str) -> int | None:
  m = re.match(r"(\d)hop", qid)
  return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------------------
# BeerQA: {version, split, data: [{id, src, question, context: [[title, text]], answers: [...]}]}.


def parse_beerqa(record: Mapping[str, Any], where: str) -> Question:
  qid = field(record, "id", str, where)
  answers = string_list(record, "answers", where)
  if not answers:
    raise RecordError(f"{where}: field 'answers' is empty")
  context = []
  for i, item in enumerate(optional_field(record, "context", list, where, default=[])):
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (str, list))):
      raise RecordError(f"{where}: field 'context'[{i}] must be [title, text], got {describe(item)}")
    text = item[1] if isinstance(item[1], str) else join_sentences(item[1])
    context.append(Paragraph(title=item[0], text=text))
  return Question(
      id=qid,
      dataset="beerqa",
      text=field(record, "question", str, where),
      answer=answers[0],
      aliases=tuple(dict.fromkeys(a for a in answers[1:] if a != answers[0])),
      context=tuple(context),
      metadata={"src": optional_field(record, "src", str, where)},
  )


# ---------------------------------------------------------------------------------------------------------
# CofCA. Its release format could not be confirmed from here (see README of this package), so the parser
# accepts the shapes of the datasets CofCA rewrote (HotPotQA, 2WikiMultihopQA, MuSiQue) and documents them:
#   id | _id | qid                      question id (else a hash of the question)
#   question                            the multi-hop question
#   answer (str or [str, ...]) | answers ([str, ...])
#   context: [[title, [sentences]]] | [[title, text]] | [{title, text|paragraph_text}] | "one passage"
#     or paragraphs: [{title, paragraph_text|text}]
#   sub_questions | sub_qas | question_decomposition | decomposition: [{question, answer}]   (optional)
#   type | hop | hops | level                                                             (optional)


def _cofca_paragraph(item: Any, where: str, i: int, qid: str) -> Paragraph:
  if isinstance(item, dict):
    pw = f"{where}.context[{i}]"
    text = item.get("text", item.get("paragraph_text"))
    if isinstance(text, list):
      text = join_sentences([str(s) for s in text])
    if not isinstance(text, str):
      raise RecordError(f"{pw}: missing field 'text' (or 'paragraph_text')")
    return Paragraph(title=field(item, "title", str, pw), text=text)
  if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
    if isinstance(item[1], str):
      return Paragraph(title=item[0], text=item[1])
    if isinstance(item[1], list) and all(isinstance(s, str) for s in item[1]):
      return Paragraph(title=item[0], text=join_sentences(item[1]))
  if isinstance(item, str):
    return Paragraph(title=f"{qid} passage {i}", text=item)
  raise RecordError(f"{where}: field 'context'[{i}] must be [title, text], [title, [sentences]] or "
                    f"{{title, text}}, got {describe(item)}")


def parse_cofca(record: Mapping[str, Any], where: str) -> Question:
  question = field(record, "question", str, where)
  qid = next((record[k] for k in ("id", "_id", "qid") if isinstance(record.get(k), (str, int))), None)
  if qid is None:
    qid = "cofca-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]
  qid = str(qid)
  if "answer" in record:
    raw = field(record, "answer", (str, list), where)
    answers = [raw] if isinstance(raw, str) else string_list(record, "answer", where)
  elif "answers" in record:
    answers = string_list(record, "answers", where)
  else:
    raise RecordError(f"{where}: missing field 'answer' (or 'answers')")
  if not answers:
    raise RecordError(f"{where}: field 'answer' is empty")
  key = "context" if "context" in record else "paragraphs" if "paragraphs" in record else None
  raw_context = record.get(key) if key else []
  if isinstance(raw_context, str):
    raw_context = [raw_context]
  if not isinstance(raw_context, list):
    raise RecordError(f"{where}: field {key!r} must be list or str, got {type(raw_context).__name__}")
  context = tuple(_cofca_paragraph(item, where, i, qid) for i, item in enumerate(raw_context))
  steps = next((record[k] for k in ("sub_questions", "sub_qas", "question_decomposition", "decomposition")
                if isinstance(record.get(k), list)), [])
  decomposition = []
  for i, step in enumerate(steps):
    if isinstance(step, dict) and isinstance(step.get("question"), str):
      decomposition.append({"question": step["question"], "answer": str(step.get("answer", ""))})
    elif isinstance(step, list) and len(step) == 2 and all(isinstance(s, str) for s in step):
      decomposition.append({"question": step[0], "answer": step[1]})
    else:
      raise RecordError(f"{where}: sub-question {i} must be {{question, answer}} or [question, answer], "
                        f"got {describe(step)}")
  hops = record.get("hops", record.get("hop"))
  return Question(
      id=qid,
      dataset="cofca",
      text=question,
      answer=answers[0],
      aliases=tuple(dict.fromkeys(a for a in answers[1:] if a != answers[0])),
      context=context,
      metadata={
          "hops": hops if isinstance(hops, int) else (len(decomposition) or None),
          "decomposition": decomposition,
          "type": record.get("type") if isinstance(record.get("type"), str) else None,
      },
  )


# ---------------------------------------------------------------------------------------------------------


def record_parser(dataset: str, config: str | None = None,
                  split: str = "train") -> Callable[[Mapping[str, Any], str], Question | None]:
  """The parser for one dataset's records; it returns None for records the dataset leaves out.

  MuSiQue's "answerable" config leaves out unanswerable records (they only occur in MuSiQue-Full files).
  """
  if dataset == "gsm8k":
    return lambda record, where: parse_gsm8k(record, where, split)
  if dataset == "hotpot_qa":
    return lambda record, where: parse_hotpot(record, where, config or "distractor")
  if dataset == "musique":

    def parse(record: Mapping[str, Any], where: str) -> Question | None:
      q = parse_musique(record, where)
      return q if q.metadata["answerable"] else None

    parse.left_out = "unanswerable"  # type: ignore[attr-defined]  # Named in read_questions' count.
    return parse
  if dataset == "beerqa":
    return parse_beerqa
  if dataset == "cofca":
    return parse_cofca
  raise ValueError(f"no record parser for dataset {dataset!r}")
