"""Stage-1 file stages: label (resumable appends), filter and decompose (atomic rewrites)."""

from __future__ import annotations

import json
import os

import pytest

from swirl_jax import prompts as task_prompts
from swirl_jax import types as record_types
from swirl_jax.judges import RuleJudge
from swirl_jax.pipeline.stages import decompose_stage, filter_stage, label
from swirl_jax.types import Question, Step, StepExample, ToolCall, Trajectory, dumps, read_jsonl, write_jsonl

PROV = {"task": "math", "num_demos": 1, "budget": 10}


def calc(expr: str, result: str) -> Step:
  return Step(text=f"<math_exp>{expr}</math_exp>", kind="tool_call", call=ToolCall("calculator", expr),
              observation=f"{expr} -> {result}")


def answer(a: str) -> Step:
  return Step(text=f"<answer>{a}</answer>", kind="answer", answer=a)


def question(qid: str, gold: str = "107") -> Question:
  return Question(id=qid, dataset="gsm8k", text="15 rows of 8 trees; 13 die. How many are left?", answer=gold)


def trajectories() -> list[Trajectory]:
  good = Trajectory(question("good"), 0, (calc("15 * 8", "120.0"), calc("120 - 13", "107.0"), answer("107")),
                    final_answer="107", provenance=PROV)
  # A malformed first step (BAD process), right answer in the end.
  sloppy = Trajectory(question("sloppy"), 0, (Step(text="hmm", kind="malformed", error="no_tag: no tag",
                                                   observation="error: no tag"),
                                              calc("15 * 8 - 13", "107.0"), answer("107")),
                      final_answer="107", provenance=PROV)
  # Every step fine, wrong answer (the key says 106).
  wrong = Trajectory(question("wrong", gold="106"), 0, (calc("15 * 8 - 13", "107.0"), answer("107")),
                     final_answer="107", provenance=PROV)
  # Ran out of budget: no answer.
  unanswered = Trajectory(question("unanswered"), 1, (calc("15 * 8", "120.0"),), provenance=PROV)
  return [good, sloppy, wrong, unanswered]


@pytest.fixture
def traj_file(tmp_path):
  path = tmp_path / "trajectories.jsonl"
  write_jsonl(str(path), trajectories())
  return str(path)


def lines(path) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def test_label_with_rule_judge(traj_file, tmp_path):
  out = str(tmp_path / "labelled.jsonl")
  seen = []
  summary = label(traj_file, out, RuleJudge(), chunk_size=3, on_trajectory=seen.append)
  assert summary["labelled_now"] == summary["total_labelled"] == summary["input"] == 4
  assert summary["already_labelled"] == 0 and summary["judge"] == RuleJudge().identity
  got = {t.question.id: t for t in read_jsonl(Trajectory, out)}
  assert [t.question.id for t in seen] == ["good", "sloppy", "wrong", "unanswered"]
  assert [s.verdict.label for s in got["good"].steps] == ["GOOD", "GOOD", "GOOD"]
  assert got["good"].outcome.label == "GOOD"
  assert [s.verdict.label for s in got["sloppy"].steps] == ["BAD", "GOOD", "GOOD"]
  assert got["sloppy"].outcome.label == "GOOD"
  assert got["wrong"].outcome.label == "BAD" and all(s.verdict.label == "GOOD" for s in got["wrong"].steps)
  assert got["unanswered"].outcome.label == "BAD" and "no final answer" in got["unanswered"].outcome.explanation
  assert summary["steps_judged"] == 9 and summary["steps_good"] == 8 and summary["outcomes_good"] == 2

  # A rerun judges nothing; a torn last line (a crash mid-write) is cut and its trajectory relabelled.
  assert label(traj_file, out, RuleJudge())["labelled_now"] == 0
  kept = lines(out)[:2]
  with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(kept) + "\n" + lines(traj_file)[2][:40])
  summary = label(traj_file, out, RuleJudge())
  assert summary["already_labelled"] == 2 and summary["labelled_now"] == 2 and summary["total_labelled"] == 4
  assert lines(out)[:2] == kept
  keys = [t.key for t in read_jsonl(Trajectory, out)]
  assert len(keys) == len(set(keys)) == 4

  # Labels of another judge are not mixed in silently.
  other = RuleJudge(identity="rule/other")
  with pytest.raises(ValueError, match="already holds labels of judge"):
    label(traj_file, out, other)


def test_filter_stage_writes_kept_and_report(traj_file, tmp_path):
  labelled = str(tmp_path / "labelled.jsonl")
  label(traj_file, labelled, RuleJudge())
  kept, report = str(tmp_path / "kept.jsonl"), str(tmp_path / "filter_report.json")
  s = filter_stage(labelled, kept, report, "process")
  assert (s["total"], s["passed"], s["kept"]) == (4, 3, 3)
  # kept in the canonical (question id, sample) order, whatever order they were generated in
  assert [t.question.id for t in read_jsonl(Trajectory, kept)] == ["good", "unanswered", "wrong"]
  rep = json.load(open(report, encoding="utf-8"))
  assert rep["strategy"] == "process" and [d["question_id"] for d in rep["dropped"]] == ["sloppy"]

  s = filter_stage(labelled, kept, report, "process_and_outcome")
  assert [t.question.id for t in read_jsonl(Trajectory, kept)] == ["good"]
  # "auto": the count every filter meets (process_and_outcome passes 1), so filters compare at one size.
  s = filter_stage(labelled, kept, report, "outcome", equalize="auto", seed=1)
  assert s["equalize"] == 1 and s["kept"] == 1
  with pytest.raises(ValueError, match="unknown filter"):
    filter_stage(labelled, kept, report, "vibes")


def test_non_append_stages_are_atomic(traj_file, tmp_path, monkeypatch):
  labelled = str(tmp_path / "labelled.jsonl")
  label(traj_file, labelled, RuleJudge())
  kept, report = str(tmp_path / "kept.jsonl"), str(tmp_path / "report.json")
  filter_stage(labelled, kept, report, "none")
  examples = str(tmp_path / "step_examples.jsonl")
  decompose_stage(kept, examples)
  before = {p: open(p, "rb").read() for p in (kept, examples)}

  calls = {"n": 0}
  real = record_types.dumps

  def crash_on_second(record):  # a crash in the middle of writing the outputs
    calls["n"] += 1
    if calls["n"] == 2:
      raise RuntimeError("simulated crash")
    return real(record)

  monkeypatch.setattr(record_types, "dumps", crash_on_second)
  with pytest.raises(RuntimeError, match="simulated crash"):
    filter_stage(labelled, kept, report, "process")
  calls["n"] = 0
  with pytest.raises(RuntimeError, match="simulated crash"):
    decompose_stage(kept, examples)
  for p, data in before.items():
    assert open(p, "rb").read() == data  # the previous outputs, whole
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no temp files left behind


def test_decompose_stage(traj_file, tmp_path):
  labelled = str(tmp_path / "labelled.jsonl")
  label(traj_file, labelled, RuleJudge())
  out = str(tmp_path / "step_examples.jsonl")
  s = decompose_stage(labelled, out)
  assert (s["trajectories"], s["examples"]) == (4, 9)
  assert s["process_labels"] == {"GOOD": 8, "BAD": 1} and s["by_task"] == {"math": 9}
  exs = read_jsonl(StepExample, out)
  first = [e for e in exs if e.question_id == "good"]
  assert [e.step_index for e in first] == [0, 1, 2]
  assert first[2].action == "<answer>107</answer>" and first[2].process_label == "GOOD"
  # The state is what the model saw: one demonstration (provenance num_demos=1), then the question.
  want = task_prompts.initial_messages("math", question("good").text, task_prompts.DEFAULT_DEMOS["math"][:1], 10)
  assert list(first[0].state) == want
  assert first[1].state[-1].content == "15 * 8 -> 120.0"

  # Explicit arguments override provenance; without either, the error names the setting.
  decompose_stage(labelled, out, num_demos=0)
  assert read_jsonl(StepExample, out)[0].state == tuple(want[-1:])
  bare = str(tmp_path / "bare.jsonl")
  with open(bare, "w", encoding="utf-8") as f:
    f.write(dumps(Trajectory(question("x"), 0, (answer("1"),), final_answer="1")) + "\n")
  with pytest.raises(ValueError, match="num_demos"):
    decompose_stage(bare, out)
  assert decompose_stage(bare, out, task="math", num_demos=0)["examples"] == 1
  # Defaults (the run's settings, as mode=filter passes them) only fill in what provenance lacks.
  decompose_stage(labelled, out, defaults=dict(task="math", num_demos=0, budget=6))
  assert list(read_jsonl(StepExample, out)[0].state) == want  # provenance: 1 demo, budget 10
  decompose_stage(bare, out, defaults=dict(task="math", num_demos=0, budget=6))
  state = read_jsonl(StepExample, out)[0].state
  assert state == tuple(task_prompts.initial_messages("math", question("x").text, [], 6))


@pytest.mark.parametrize("path,value,message", [
    (("question", "aliases"), "Paris", "field 'aliases' must be list, got str"),  # not ('P', 'a', ...)
    (("question", "aliases"), ["Paris", 3], "field 'aliases'[1] must be str"),
    (("question", "metadata"), [1, 2], "field 'metadata' must be dict"),
    (("steps", 1, "prompt_tokens"), "n/a", "steps[1]: field 'prompt_tokens' must be int"),
    (("steps", 2, "answer"), 107, "steps[2]: field 'answer' must be str"),
    (("final_answer",), 107, "field 'final_answer' must be str"),
])
def test_mistyped_trajectory_fields_name_file_line_and_field(tmp_path, path, value, message):
  """A wrong type is refused where it is read, naming file:line and the field, instead of being accepted
  (a bare-string alias read as its letters: the answer "P" judged correct) or failing later without a
  location (a numeric answer crashed the judge)."""
  records = [t.to_json() for t in trajectories()]
  target = records[1]
  for key in path[:-1]:
    target = target[key]
  target[path[-1]] = value
  f = tmp_path / "t.jsonl"
  f.write_text("\n" + "".join(json.dumps(r) + "\n" for r in records))  # a blank first line: line 3 is records[1]
  with pytest.raises(record_types.RecordError, match=f"{f}:3.*{message}".replace("[", r"\[").replace("]", r"\]")):
    decompose_stage(str(f), str(tmp_path / "out.jsonl"))
  assert not (tmp_path / "out.jsonl").exists()


def test_step_example_labels_must_be_good_bad_or_null():
  ex = StepExample("q", 0, 0, (), "<answer>1</answer>", "GOOD", None).to_json()
  assert StepExample.from_json(ex).process_label == "GOOD"
  with pytest.raises(record_types.RecordError, match="process_label' must be GOOD, BAD or null, got 'good'"):
    StepExample.from_json({**ex, "process_label": "good"})


def test_label_resumes_a_record_torn_inside_a_utf8_character(tmp_path):
  """Records are written with ensure_ascii=False: a kill can cut the last one inside "é" (2 bytes)."""
  qs = [Question(id=f"q{i}", dataset="hotpot_qa", text="Who directed Amélie?", answer="Jean-Pierre Jeunet")
        for i in range(3)]
  trajs = [Trajectory(q, 0, (answer("Jean-Pierre Jeunet"),), final_answer="Jean-Pierre Jeunet",
                      provenance={"task": "search"}) for q in qs]
  traj_file, out = str(tmp_path / "t.jsonl"), str(tmp_path / "labelled.jsonl")
  write_jsonl(traj_file, trajs)
  label(traj_file, out, RuleJudge())
  with open(out, "rb") as f:
    raw = f.read()
  first_two = raw[: raw.index(b"\n", raw.index(b"\n") + 1) + 1]
  cut = len(first_two) + raw[len(first_two):].index("é".encode()) + 1  # after the first byte of "é"
  with open(out, "wb") as f:
    f.write(raw[:cut])
  with pytest.raises(UnicodeDecodeError):
    raw[len(first_two):cut].decode("utf-8")  # the torn line is not text at all

  # the filter reads the two whole records; the label stage relabels the third
  s = filter_stage(out, str(tmp_path / "kept.jsonl"), str(tmp_path / "report.json"), "none")
  assert (s["total"], s["kept"]) == (2, 2)
  summary = label(traj_file, out, RuleJudge())
  assert (summary["already_labelled"], summary["labelled_now"], summary["total_labelled"]) == (2, 1, 3)
  with open(out, "rb") as f:
    assert f.read() == raw  # the torn tail cut off and the same record written again
  assert [t.question.id for t in read_jsonl(Trajectory, out)] == ["q0", "q1", "q2"]


def test_jsonl_reader_names_a_bad_middle_line_and_splits_lines_as_text_mode(tmp_path):
  from swirl_jax.pipeline.jsonl import numbered_records
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"a": 1}\n{"b": "\xc3"}\n{"c": 3}\n')  # a lone lead byte in line 2, not at the end
  with pytest.raises(ValueError, match=r"x\.jsonl:2: not UTF-8"):
    list(numbered_records(str(path)))
  # LF, CRLF and a bare CR end lines; a BOM is skipped; a whole last record without its newline is read
  path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"b": "\xc3\xa9"}\r{"c": 3}\n\n{"d": 4}')
  assert list(numbered_records(str(path))) == [(1, {"a": 1}), (2, {"b": "é"}), (3, {"c": 3}), (5, {"d": 4})]
  path.write_bytes(b'{"a": 1}\r{"b": "\xc3')  # torn inside a character after a CR-ended line
  assert list(numbered_records(str(path))) == [(1, {"a": 1})]
