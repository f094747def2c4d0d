"""Tests for swirl_jax.judges: verdict parsing, answer matching, the rule judge, the prompt judge, the cache."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from swirl_jax import prompts as task_prompts
from swirl_jax.judges import answers
from swirl_jax.judges import prompts as judge_prompts
from swirl_jax.judges.base import (
    Completion,
    JudgeBackend,
    JudgeRequest,
    PromptJudge,
    context_from_state,
    over_budget_step,
    step_contexts,
    verdict_from_completions,
)
from swirl_jax.judges.cache import CachedCompletion, JudgeCache, cache_key
from swirl_jax.judges.rule import RuleJudge
from swirl_jax.pipeline.decompose import decompose
from swirl_jax.tools.parser import format_observation, parse_action
from swirl_jax.types import Question, Step, Trajectory

# ---------------------------------------------------------------------------------------------------
# Helpers: trajectories as the rollout would record them.


def step(text: str, observation: str | None = None, error: str | None = None) -> Step:
  a = parse_action(text)
  return Step(text=text, kind=a.kind, call=a.call, answer=a.answer, error=a.error if a.error else error,
              observation=observation)


def call(text: str, result: str, error: str | None = None) -> Step:
  s = step(text, error=error)
  return dataclasses.replace(s, observation=format_observation(s.call.input, result))


def traj(steps, answer="107", aliases=(), dataset="gsm8k", qid="q1", sample=0, text="How many trees?"):
  final = steps[-1].answer if steps and steps[-1].kind == "answer" else None
  return Trajectory(question=Question(id=qid, dataset=dataset, text=text, answer=answer, aliases=tuple(aliases)),
                    sample_index=sample, steps=tuple(steps), final_answer=final)


MATH_TRAJ = traj([
    call("First I count all trees. <math_exp>15 * 8</math_exp>", "120.0"),
    call("Remove the dead ones. <math_exp>120 - 13</math_exp>", "107.0"),
    step("<answer>$107</answer>"),
])

SEARCH_Q = dict(answer="France", aliases=("French Republic",), dataset="hotpot_qa",
                text="In which country was the director of Amélie born?")
SEARCH_TRAJ = traj([
    call("<search_query>Amélie film director</search_query>",
         "Amélie: a 2001 film directed by Jean-Pierre Jeunet."),
    call("<search_query>Jean-Pierre Jeunet born</search_query>",
         "Jean-Pierre Jeunet: born 3 September 1953 in Roanne, France."),
    step("<answer>France</answer>"),
], **SEARCH_Q)


# ---------------------------------------------------------------------------------------------------
# parse_verdict.

VERDICT_TABLE = [
    # a negation counts in the few words before the label only, a qualifier right after it only: these were
    # read as no decision (then counted BAD) by the first version of the negation rule
    ("Verdict: there are no errors and the step is good.", "GOOD"),
    ("Verdict: the query doesn't repeat step 1 and is GOOD.", "GOOD"),
    ("Verdict: the step does not repeat earlier searches, so it is good.", "GOOD"),
    ("VERDICT: GOOD because it uses the calculator, although it could be simpler", "GOOD"),
    ("VERDICT: Good question, but the query repeats step 1", None),
    # a corrected verdict at the end decides, with a qualifier before it or punctuation after it
    ("Verdict: GOOD\n\nOn reflection, it does not hold.\nFinal verdict: BAD, the answer contradicts it.", "BAD"),
    ("Preliminary verdict: GOOD\nThe paragraph names another year.\nFinal verdict: BAD (it does not follow).",
     "BAD"),
    ("1. Verdict: GOOD\n2. Verdict: BAD (revised)", "BAD"),
    ("VERDICT: GOOD\n\nWait, I misread the observation. Final verdict is BAD.", "BAD"),
    ("VERDICT: GOOD\nCorrection - my verdict is BAD.", "BAD"),
    ("The query is useful.\nVERDICT: GOOD", "GOOD"),
    ("The answer is unsupported.\nVERDICT: BAD", "BAD"),
    ("verdict: good", "GOOD"),
    ("**Verdict:** **Bad**", "BAD"),
    ("VERDICT:\nGOOD", "GOOD"),
    ("Verdict - the step is GOOD.", "GOOD"),
    # The last usable VERDICT wins (a judge that restates the format first, then decides).
    ('I must end with "VERDICT: GOOD" or "VERDICT: BAD".\nIt repeats a query.\nVERDICT: BAD', "BAD"),
    ("VERDICT: BAD\n\nOn reflection, VERDICT: GOOD", "GOOD"),
    ("A later verdict without a label does not hide an earlier one. VERDICT: GOOD. Final verdict", "GOOD"),
    ("GOOD", None),  # no VERDICT
    ("The step is good.", None),
    ("VERDICT: UNSURE", None),
    ("VERDICT: not good", None),  # negated: unusable rather than guessed
    # ... even when an earlier "verdict" is followed by a label
    ("I have to reach a verdict. Good idea to search, but it repeats step 1.\nVERDICT: NOT GOOD", None),
    ("My verdict was good at first.\nVERDICT: not bad", None),
    ("", None),
    ("VERDICT: goodness", None),  # whole words only
    # The verdict line decides: later prose that uses the word "verdict" does not.
    ("The query repeats step 0.\nVERDICT: BAD\n(My verdict would be GOOD if the query were new.)", "BAD"),
    ("Unsupported.\nVERDICT: BAD\n\nNote: I reached this verdict because no good evidence was found.", "BAD"),
    ("VERDICT: BAD. A good verdict needs evidence.", "BAD"),
    ("The step is fine.\nVERDICT: GOOD\nThis verdict is not bad at all.", "GOOD"),
    ("VERDICT: BAD\nThe verdict: good ideas aside, it repeats a query.", "BAD"),
    ("It repeats a query.\nFinal verdict: **BAD**", "BAD"),  # a verdict statement that ends its line
    ("VERDICT: GOOD\nOn reflection it repeats step 1.\nVERDICT: NOT GOOD", None),
    # A base model copying out the instruction (the generate-mode sampler stopped inside it), or naming
    # both options: no decision (these parsed as GOOD).
    ('Then end your reply with a line that is exactly "VERDICT: GOOD', None),
    ('... a line that is exactly "VERDICT: GOOD" or "VERDICT: BAD".', None),
    ("VERDICT: GOOD or BAD", None),
    ("VERDICT: GOOD/BAD", None),
    ("VERDICT: **GOOD** | **BAD**", None),
    ("Final verdict: GOOD/BAD -> BAD", None),
    ("VERDICT: GOOD or BAD\nThe expression is wrong.", None),
    ("VERDICT: GOOD or VERDICT: BAD", None),
    ("VERDICT: neither GOOD nor BAD", None),
    ("VERDICT: hardly GOOD", None),
    ('... a line that is exactly "VERDICT: GOOD" or "VERDICT: BAD', None),  # stopped at the second
    # quotes on a verdict's own line, a closed quote after a lead-in, or a quotation before the verdict:
    # still decided
    ('The query helps.\nTherefore, the last line is "VERDICT: GOOD".', "GOOD"),
    ('It follows from the result.\nSo my reply ends with: "VERDICT: GOOD"', "GOOD"),
    ('Unsupported.\nConclusion: "VERDICT: BAD"', "BAD"),
    ("The answer matches.\nVERDICT: GOOD\nOr BAD, if aliases were not allowed; they are.", "GOOD"),
    ('The query helps.\n"VERDICT: GOOD"', "GOOD"),
    ('VERDICT: "BAD"', "BAD"),
    ('The hint said "VERDICT: GOOD or BAD" applies.\nVERDICT: BAD', "BAD"),
    ("Good or bad, the query repeats step 1.\nVERDICT: BAD", "BAD"),
    # A label negated, hedged or contradicted in its sentence is no decision (these parsed as GOOD) ...
    ("Verdict: not a good step", None),
    ("Verdict: this is no good", None),
    ("Verdict: It doesn't look good", None),
    ("Verdict: far from good", None),
    ("Verdict: wouldn't call it good", None),
    ("Verdict: the query is unlikely to be good", None),
    ("VERDICT: Can’t say it's good", None),
    ("Verdict: good ideas aside, this step is BAD.", None),
    ("VERDICT: Good question, but it is not helpful", None),
    ("Verdict: it is good if the data is right", None),
    # ... unless a label concludes the sentence
    ("Verdict: the step would be good if it used 3*4, but it is wrong, so BAD", "BAD"),
    ("VERDICT: Good question, but the query repeats step 1, so BAD", "BAD"),
    ("Verdict: the search is not helpful, BAD", "BAD"),
    # an explanation after the label, or a sentence before it, is no qualification
    ("VERDICT: GOOD because it does not repeat a query", "GOOD"),
    ("Verdict: the query does not repeat step 1. It is good.", "GOOD"),
    ("VERDICT: GOOD (but borderline)", "GOOD"),
    ("Verdict: The expression 3.5 * 4 is good.", "GOOD"),
    ("Final verdict: BAD because it is not supported", "BAD"),
    ("VERDICT: GOOD\nWait, it repeats.\nFinal verdict: BAD because it repeats step 1", "BAD"),
]


@pytest.mark.parametrize("text,label", VERDICT_TABLE)
def test_parse_verdict_table(text, label):
  assert judge_prompts.parse_verdict(text) == label


def test_prompts_ask_for_the_verdict_line_and_show_the_context():
  task = "search"
  ctx = step_contexts(SEARCH_TRAJ, task)
  p = judge_prompts.process_prompt(task, ctx[1].prompt, ctx[1].previous, ctx[1].action.text)
  assert 'VERDICT: GOOD" or "VERDICT: BAD"' in p
  assert "search engine" in p and "whether or not it is actually true" in p
  assert "Amélie film director ->" in p  # the earlier step and its result
  assert p.index("[ASSISTANT]") < p.index("[TOOL RESULT]") < p.index("LAST MESSAGE (the one to judge)")
  assert "Jean-Pierre Jeunet born</search_query>" in p.split("LAST MESSAGE (the one to judge)")[1]
  assert "Roanne" not in p  # the judged step's own result is not shown
  m = judge_prompts.process_prompt("math", "Problem: x", (), "<math_exp>1+1</math_exp>")
  assert "calculator" in m and "supported by the calculations" in m
  o = judge_prompts.outcome_prompt("Q?", "10", ("ten",), "$10.00")
  assert '"10", "10.00", "$10" and "10 dollars"' in o and "- ten" in o and "$10.00" in o
  assert judge_prompts.PROMPT_VERSION


def test_infer_task():
  assert judge_prompts.infer_task(MATH_TRAJ) == "math"
  assert judge_prompts.infer_task(SEARCH_TRAJ) == "search"
  only_answer = traj([step("<answer>1</answer>")], dataset="synthetic_arith")
  assert judge_prompts.infer_task(only_answer) == "math"
  assert judge_prompts.infer_task(dataclasses.replace(only_answer, provenance={"task": "search"})) == "search"


# ---------------------------------------------------------------------------------------------------
# Answers.


@pytest.mark.parametrize("a,b,equal", [
    ("10", "10.00", True), ("$10", "10", True), ("10 dollars", "$10.00", True), ("1,000", "1000", True),
    ("-3", "−3", True), ("3/4", "0.75", True), ("50%", "50", True), ("10.", "10", True),
    ("10", "11", False), ("ten", "10", False), ("1,00", "100", False), ("1/0", "0", False),
    ("18 eggs", "18", True), ("10 dollar", "10 dollars", True),
    ("5 June", "5 May", False), ("150 billion", "150 million", False), ("150 million", "150", False),
    ("12th", "12", False),
])
def test_numbers_equal(a, b, equal):
  assert answers.numbers_equal(a, b) is equal


def _official_squad(prediction: str, gold: str) -> tuple[bool, float]:
  """EM and F1 as the official SQuAD v1.1 / HotPotQA evaluation scripts compute them."""
  import collections
  import re
  import string

  def norm(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

  p, g = norm(prediction).split(), norm(gold).split()
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  f1 = 0.0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))
  return norm(prediction) == norm(gold), f1


@pytest.mark.parametrize("pred,gold", [
    ("US", "U.S."), ("Dont Look Back", "Don't Look Back"), ("5 June", "5 May"), ("1984 Olympics", "1988 Olympics"),
    ("14 July 1789", "14 July"), ("the Eiffel Tower", "Eiffel Tower!"), ("150 billion", "150 million"),
    ("12th", "12th century"), ("Jean-Pierre Jeunet", "Jeunet"),
])
def test_text_answers_score_as_the_official_squad_script(pred, gold):
  """EM / F1 of text answers are the published metrics (HotPotQA, MuSiQue, 2Wiki numbers compare)."""
  em, f1 = _official_squad(pred, gold)
  assert answers.exact_match(pred, gold) == em
  assert answers.token_f1(pred, gold) == pytest.approx(f1)


def test_normalize_and_match():
  assert answers.normalize_answer("$10.00") == "10"
  assert answers.normalize_answer("The Eiffel Tower!") == "eiffel tower"
  assert answers.normalize_answer("2014 FIFA World Cup") == "2014 fifa world cup"  # text, not a number
  assert answers.exact_match("the French Republic", ["France", "French Republic"])
  assert not answers.exact_match("Germany", ["France", "French Republic"])
  assert not answers.exact_match("the", "a")  # empty after normalisation never matches
  assert answers.token_f1("Jean-Pierre Jeunet", "Jeunet") == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
  assert answers.token_f1("$10", "10.00") == 1.0
  assert answers.token_f1("yes it is", "yes") == 0.0  # yes/no must match exactly (HotPotQA)
  assert answers.token_f1("Paris", ["London", "paris"]) == 1.0
  assert answers.numbers_in_text("born 3 September 1953, 1,000.5 people, -4") == [3, 1953, 1000.5, -4]
  assert answers.contains_answer("born in Roanne, France.", "france")
  assert not answers.contains_answer("born in Franceville", "France")  # whole words only
  assert answers.contains_answer("it cost 1,200 dollars", "$1200")


# ---------------------------------------------------------------------------------------------------
# The rule judge.


def test_rule_judge_good_trajectories():
  judge = RuleJudge()
  for t in (MATH_TRAJ, SEARCH_TRAJ):
    verdicts = judge.judge_steps(t)
    assert [v.label for v in verdicts] == ["GOOD"] * 3, verdicts
    assert all(v.judge == "rule/v1" and v.score == 1.0 for v in verdicts)
    assert judge.judge_outcome(t).label == "GOOD"
  assert "equals the calculator result of step 1" in judge.judge_steps(MATH_TRAJ)[2].explanation
  assert "search result of step 1" in judge.judge_steps(SEARCH_TRAJ)[2].explanation


@pytest.mark.parametrize("steps,bad_index,why", [
    ([step("I think <math_exp>2+2")], 0, "malformed: unclosed_tag"),
    ([step("<answer>4 <math_exp>2+2</math_exp>")], 0, "malformed: call_and_answer"),
    ([call("<math_exp>5 / 0</math_exp>", "error: division by zero", error="division_by_zero: x")], 0,
     "calculator input does not evaluate: division_by_zero"),
    ([call("<math_exp>sqrt(4)</math_exp>", "error: names")], 0, "does not evaluate: names_not_allowed"),
    ([call("<search_query>the ?!</search_query>", "error: empty")], 0, "empty search query"),
    ([call("<search_query>Jeunet born</search_query>", "r1"), call("<search_query>born, JEUNET</search_query>", "r1")],
     1, "repeats the query of step 0"),
    ([call("<math_exp>15 * 8</math_exp>", "120.0"), step("<answer>121</answer>")], 1, "answer not supported"),
    ([step("<answer>107</answer>")], 0, "no earlier tool result"),
    ([call("<search_query>Jeunet</search_query>", "Jeunet: born in Roanne."), step("<answer>Paris</answer>")], 1,
     "matches no calculator result or search result"),
])
def test_rule_judge_each_process_check(steps, bad_index, why):
  verdicts = RuleJudge().judge_steps(traj(steps))
  assert verdicts[bad_index].label == "BAD"
  assert verdicts[bad_index].score == 0.0
  assert why in verdicts[bad_index].explanation
  # Step k is judged on steps < k only: everything before the bad step is GOOD.
  assert all(v.label == "GOOD" for v in verdicts[:bad_index])


def test_rule_judge_answer_support_variants():
  judge = RuleJudge()
  # A number found in a search result supports a numeric answer; a calculator result only via its value.
  t = traj([call("<search_query>Jeunet birth year</search_query>", "Jeunet: born 3 September 1953."),
            step("<answer>1953</answer>")])
  assert judge.judge_steps(t)[1].label == "GOOD"
  # Yes/no answers are accepted once evidence was retrieved.
  t = traj([call("<search_query>Are both French</search_query>", "X: a French director."),
            step("<answer>Yes</answer>")])
  assert judge.judge_steps(t)[1].label == "GOOD"
  # A failed search is no evidence.
  t = traj([call("<search_query>zzz</search_query>", "error: no paragraph matches", error="no_results: x"),
            step("<answer>yes</answer>")])
  assert judge.judge_steps(t)[1].label == "BAD"
  # The observation is what counts ("EXPR -> 24.0"); without one the expression is re-evaluated.
  t = traj([dataclasses.replace(call("<math_exp>48 / 2</math_exp>", "24.0"), observation=None),
            step("<answer>24</answer>")])
  assert judge.judge_steps(t)[1].label == "GOOD"
  # The calculator prints small and large floats with an exponent; an answer copied from it is supported.
  for expr, result in [("1 / 20000", "5e-05"), ("100000000 * 100000000", "1e+16")]:
    t = traj([call(f"<math_exp>{expr}</math_exp>", result), step(f"<answer>{result}</answer>")])
    assert judge.judge_steps(t)[1].label == "GOOD", result


def test_rule_judge_outcome():
  judge = RuleJudge()
  for answer, key, aliases, label in [
      ("$10.00", "10", (), "GOOD"), ("10 dollars", "10", (), "GOOD"), ("10", "$10", (), "GOOD"),
      ("11", "10", (), "BAD"), ("The French Republic", "France", ("French Republic",), "GOOD"),
      ("Germany", "France", ("French Republic",), "BAD"),
      # numbers compare by value, not as text with "." "," "-" deleted (that made all of these GOOD)
      ("1.000", "1000", (), "BAD"), ("1.5", "15", (), "BAD"), ("-5", "5", (), "BAD"), ("12.5", "125", (), "BAD"),
      ("1,5", "15", (), "BAD"), ("1e3", "1000", (), "GOOD")]:
    t = traj([step(f"<answer>{answer}</answer>")], answer=key, aliases=aliases)
    v = judge.judge_outcome(t)
    assert v.label == label, (answer, key, v)
  v = judge.judge_outcome(traj([call("<math_exp>1+1</math_exp>", "2.0")]))  # budget ran out
  assert v.label == "BAD" and "no final answer" in v.explanation
  v = judge.judge_outcome(traj([step("<answer>French Republic</answer>")], answer="France",
                               aliases=("French Republic",)))
  assert "alias" in v.explanation


def test_label_returns_new_labelled_trajectories():
  ts = [MATH_TRAJ, SEARCH_TRAJ, traj([step("oops")], qid="q3")]
  labelled = RuleJudge().label(ts)
  assert [t.key for t in labelled] == [t.key for t in ts]
  assert all(s.verdict is None for t in ts for s in t.steps) and all(t.outcome is None for t in ts)  # unchanged
  assert [[s.verdict.label for s in t.steps] for t in labelled] == [["GOOD"] * 3, ["GOOD"] * 3, ["BAD"]]
  assert [t.outcome.label for t in labelled] == ["GOOD", "GOOD", "BAD"]
  only_outcome = RuleJudge().label(ts, process=False)
  assert all(s.verdict is None for t in only_outcome for s in t.steps)
  assert only_outcome[0].outcome.label == "GOOD"
  # Round-trips through JSON.
  assert Trajectory.from_json(json.loads(json.dumps(labelled[0].to_json()))) == labelled[0]


# ---------------------------------------------------------------------------------------------------
# The prompt judge over a fake backend.


class FakeBackend:
  """Answers by a function of (prompt, vote); counts every request it receives."""

  identity = "fake/judge"
  settings = "t=0"

  def __init__(self, answer=lambda prompt, vote: "Fine.\nVERDICT: GOOD", p_good=None):
    self.answer = answer
    self.p_good = p_good
    self.requests: list[JudgeRequest] = []
    self.lock = threading.Lock()

  def complete(self, requests, on_done=None):
    out = []
    for i, r in enumerate(requests):
      with self.lock:
        self.requests.append(r)
      c = Completion(self.answer(r.messages[0].content, r.vote), self.p_good)
      if on_done is not None:
        on_done(i, c)
      out.append(c)
    return out


def test_fake_backend_satisfies_the_protocol():
  assert isinstance(FakeBackend(), JudgeBackend)


def test_prompt_judge_labels_every_step_with_its_context():
  backend = FakeBackend(lambda p, v: "VERDICT: BAD" if "LAST MESSAGE (the one to judge):\n<answer>" in p
                        else "ok\nVERDICT: GOOD")
  judge = PromptJudge(backend, task="search")
  labelled = judge.label([SEARCH_TRAJ])[0]
  assert [s.verdict.label for s in labelled.steps] == ["GOOD", "GOOD", "BAD"]
  assert labelled.steps[0].verdict.judge == f"fake/judge|{judge_prompts.PROMPT_VERSION}"
  assert labelled.outcome.label == "GOOD"
  prompts_sent = [r.messages[0].content for r in backend.requests]
  assert len(prompts_sent) == 4  # 3 steps + 1 outcome
  # Step 0 sees no earlier turn; step 2 sees both earlier turns and their results.
  assert "[ASSISTANT]" not in prompts_sent[0] and "Roanne" in prompts_sent[2]
  assert "ANSWER KEY:\nFrance" in prompts_sent[3]


def test_prompt_judge_no_final_answer_needs_no_call():
  backend = FakeBackend()
  v = PromptJudge(backend).judge_outcome(traj([call("<math_exp>1+1</math_exp>", "2.0")]))
  assert v.label == "BAD" and backend.requests == []


def test_cache_hit_avoids_a_second_backend_call(tmp_path):
  path = str(tmp_path / "judge_cache.jsonl")
  first = FakeBackend()
  with JudgeCache(path) as cache:
    labelled = PromptJudge(first, cache=cache).label([MATH_TRAJ, SEARCH_TRAJ])
  assert len(first.requests) == 8
  second = FakeBackend(lambda p, v: pytest.fail("the backend was called on a cache hit"))
  with JudgeCache(path) as cache:
    again = PromptJudge(second, cache=cache).label([MATH_TRAJ, SEARCH_TRAJ])
    assert cache.hits == 8 and cache.misses == 0
  assert second.requests == []
  assert again == labelled
  # Identical requests within one batch are sent once.
  dup = FakeBackend()
  PromptJudge(dup).label([MATH_TRAJ, MATH_TRAJ])
  assert len(dup.requests) == 4


def test_cache_key_covers_identity_settings_version_text_and_vote():
  base = cache_key("a", "s", "v1", "text", 0)
  assert len(base) == 64
  assert len({base, cache_key("b", "s", "v1", "text", 0), cache_key("a", "t", "v1", "text", 0),
              cache_key("a", "s", "v2", "text", 0), cache_key("a", "s", "v1", "text!", 0),
              cache_key("a", "s", "v1", "text", 1)}) == 6


def test_cache_survives_a_torn_last_line(tmp_path):
  path = tmp_path / "cache.jsonl"
  with JudgeCache(str(path)) as cache:
    cache.put("k1", CachedCompletion("VERDICT: GOOD"), vote=0)
    cache.put("k2", CachedCompletion("VERDICT: BAD", p_good=0.25), vote=0)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"key": "k3", "text": "VERDICT: GO')  # a crash mid-write
  with JudgeCache(str(path)) as cache:
    assert len(cache) == 2 and "k3" not in cache
    assert cache.get("k2") == CachedCompletion("VERDICT: BAD", 0.25)
    cache.put("k4", CachedCompletion("VERDICT: GOOD"))
  lines = path.read_text(encoding="utf-8").splitlines()
  assert [json.loads(l)["key"] for l in lines] == ["k1", "k2", "k4"]  # the torn line never glued on
  # A corrupt line in the middle is skipped, not fatal.
  with open(path, "a", encoding="utf-8") as f:
    f.write("not json\n" + json.dumps({"key": "k5", "text": "VERDICT: BAD", "p_good": None}) + "\n")
  cache = JudgeCache(str(path))
  assert len(cache) == 4 and cache.skipped_lines == 1


def test_a_read_only_cache_never_touches_the_file(tmp_path):
  """The other processes of a multi-process run read the writer's file, including its line in progress,
  without cutting it or appending: their entries stay in memory."""
  path = tmp_path / "cache.jsonl"
  with JudgeCache(str(path)) as writer:
    writer.put("k1", CachedCompletion("VERDICT: GOOD"), vote=0)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"key": "k2", "text": "VERDICT: GO')  # the writer is mid-line
  before = path.read_bytes()
  reader = JudgeCache(str(path), read_only=True)
  assert len(reader) == 1 and reader.get("k1") == CachedCompletion("VERDICT: GOOD")
  reader.put("k3", CachedCompletion("VERDICT: BAD"))
  reader.close()
  assert "k3" in reader and path.read_bytes() == before


def test_cache_is_thread_safe(tmp_path):
  path = str(tmp_path / "cache.jsonl")
  with JudgeCache(path) as cache:
    def work(t):
      for i in range(50):
        cache.put(f"{t}-{i}", CachedCompletion(f"VERDICT: GOOD {t} {i}"))
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
      th.start()
    for th in threads:
      th.join()
  reloaded = JudgeCache(path)
  assert len(reloaded) == 400 and reloaded.skipped_lines == 0


def test_majority_vote():
  labels = {0: "GOOD", 1: "BAD", 2: "GOOD"}
  backend = FakeBackend(lambda p, v: f"vote {v} says\nVERDICT: {labels[v]}")
  judge = PromptJudge(backend, n_votes=3)
  verdicts = judge.judge_steps(MATH_TRAJ)
  assert len(backend.requests) == 9 and sorted({r.vote for r in backend.requests}) == [0, 1, 2]
  v = verdicts[0]
  assert v.label == "GOOD" and v.score == pytest.approx(2 / 3)
  assert "[vote 1/3: GOOD] vote 0 says" in v.explanation and "[vote 2/3: BAD] vote 1 says" in v.explanation
  assert "[vote 3/3: GOOD]" in v.explanation
  assert v.judge.endswith("|votes=3")
  # A tie is BAD.
  tie = verdict_from_completions([Completion("VERDICT: GOOD"), Completion("VERDICT: BAD")], "j")
  assert tie.label == "BAD" and tie.score == 0.5


def test_p_good_and_unparseable_replies():
  v = verdict_from_completions([Completion("GOOD", p_good=0.8)], "j")
  assert v.label == "GOOD" and v.score == 0.8
  v = verdict_from_completions([Completion("VERDICT: BAD", p_good=0.3)], "j")
  assert v.label == "BAD" and v.score == 0.3
  backend = FakeBackend(lambda p, v: "I cannot decide.")
  cache = JudgeCache()
  verdict = PromptJudge(backend, cache=cache).judge_steps(traj([step("<answer>1</answer>")]))[0]
  assert verdict.label == "BAD" and verdict.explanation.startswith("UNPARSEABLE")
  assert len(cache) == 0  # not cached: a rerun asks again


def test_stage_two_context_matches_stage_one():
  """A decomposed state plus its recorded action gives the judge the same prompt as the trajectory, with
  the step budget the rollout recorded (a budget other than the task's default included)."""
  cases = [(MATH_TRAJ, "math", None), (SEARCH_TRAJ, "search", None), (MATH_TRAJ, "math", 6)]
  for t, task, budget in cases:
    if budget:
      t = dataclasses.replace(t, provenance={**t.provenance, "budget": budget})
    examples = decompose(t, task, demos=task_prompts.DEFAULT_DEMOS[task], budget=budget)
    for ex, ctx in zip(examples, step_contexts(t, task)):
      if budget:
        assert f"at most {budget} times" in ctx.prompt
      again = context_from_state(task, ex.state, ex.step_index, ex.action, budget=ex.budget)
      assert again.prompt == ctx.prompt
      assert judge_prompts.process_prompt(task, again.prompt, again.previous, again.action.text) == \
          judge_prompts.process_prompt(task, ctx.prompt, ctx.previous, ctx.action.text)
      assert RuleJudge().judge_contexts([again]) == RuleJudge().judge_contexts([ctx])


def _over_budget_trajectory() -> Trajectory:
  """A math trajectory with budget 2 whose third turn, a tool call, the rollout recorded as over budget."""
  steps = [call("<math_exp>2 + 3</math_exp>", "5.0"), call("<math_exp>5 * 4</math_exp>", "20.0")]
  third = over_budget_step(step("<math_exp>20 * 5</math_exp>"), 2, 2)
  t = traj(steps + [third], text="What is (2 + 3) * 4 * 5?")
  return dataclasses.replace(t, provenance={"task": "math", "budget": 2,
                                            "end_reason": "step budget exhausted"})


def test_over_budget_step_is_the_rollouts_record():
  over = over_budget_step(step("<math_exp>20 * 5</math_exp>"), 2, 2)
  assert over.kind == "malformed" and over.call.input == "20 * 5" and over.observation is None
  assert over.error == "over_budget: the tool was already called 2 times, the most the prompt allows"
  assert over_budget_step(step("no tag at all"), 3, 2).error == step("no tag at all").error  # parser's reason
  assert over_budget_step(step("<math_exp>1 + 1</math_exp>"), 1, 2) is None  # within the budget
  assert over_budget_step(step("<answer>100</answer>"), 2, 2) is None  # an answer is never over budget
  assert over_budget_step(step("<math_exp>1 + 1</math_exp>"), 0, 0).kind == "malformed"  # budget 0
  assert over_budget_step(step("<math_exp>1 + 1</math_exp>"), 99, None) is None  # unknown budget


def test_prompt_judges_label_a_call_past_the_budget_bad_without_asking():
  """The model and HTTP judges saw the over-budget call as its text alone (a sensible calculation) and
  said GOOD: the process filter kept a trajectory that ran out of budget, and stage 2 rewarded such calls."""
  backend = FakeBackend()
  t = _over_budget_trajectory()
  labelled = PromptJudge(backend).label([t])[0]
  assert [s.verdict.label for s in labelled.steps] == ["GOOD", "GOOD", "BAD"]
  assert labelled.steps[2].verdict.explanation.startswith("not run: over_budget:")
  assert len(backend.requests) == 2 + 0  # the two calls within the budget; no outcome (no answer)
  examples = decompose(t, "math", demos=task_prompts.DEFAULT_DEMOS["math"])
  sampled = context_from_state("math", examples[2].state, 2, "<math_exp>20 * 5</math_exp>", budget=2)
  assert PromptJudge(backend).judge_contexts([sampled])[0].label == "BAD" and len(backend.requests) == 2


def test_stage_two_judges_a_call_past_the_budget_as_stage_one():
  """The same over-budget call: BAD in stage 1 (recorded malformed) and in stage 2 (sampled at that state)."""
  t = _over_budget_trajectory()
  stage1 = step_contexts(t, "math")
  for budget_arg in (2, None):  # the budget passed to decompose, else the one in provenance
    examples = decompose(t, "math", demos=task_prompts.DEFAULT_DEMOS["math"], budget=budget_arg)
    assert [ex.budget for ex in examples] == [2, 2, 2]
  for ex, ctx in zip(examples, stage1):
    again = context_from_state("math", ex.state, ex.step_index, ex.action, budget=ex.budget)
    assert again.action == dataclasses.replace(ctx.action, observation=None)  # a sampled turn has no result
    assert RuleJudge().judge_contexts([again]) == RuleJudge().judge_contexts([ctx])
  verdict = RuleJudge().judge_contexts([context_from_state("math", ex.state, 2, ex.action, budget=2)])[0]
  assert verdict.label == "BAD" and "over_budget" in verdict.explanation
  answer = context_from_state("math", ex.state, 2, "<answer>100</answer>", budget=2)
  assert answer.action.kind == "answer"  # answering is what the last state allows
  # A step example without a budget (a file written before the field existed): judged as before.
  stale = context_from_state("math", ex.state, ex.step_index, ex.action)
  assert stale.action.kind == "tool_call" and RuleJudge().judge_contexts([stale])[0].label == "GOOD"
