"""The judge prompts, defined once, and the parser of the judge's verdict.

Three prompts (SWiRL's labels, DESIGN.md):

* process, search steps: does the last message make sense given the conversation so far (a search
  query likely to help; an answer that follows from the retrieved evidence, whether or not it is true)?
* process, calculator steps: is the expression a sensible next step for the problem given the previous
  results; is an answer supported by the calculations?
* outcome: does the final answer match the answer key or one of its aliases ("10", "10.00", "$10" and
  "10 dollars" are the same answer)?

Each asks the judge to explain briefly and end with a line ``VERDICT: GOOD`` or ``VERDICT: BAD``;
``parse_verdict`` reads it back. Every prompt is one user message: Gemma's chat template has no system
role, and the judge may be a served Gemma.

The conversation shown to the judge is the question's task prompt (without in-context demonstrations)
followed by the earlier model turns and their tool results, written as plain text blocks. The step to
judge is shown separately as the LAST MESSAGE; its own tool result is not shown (stage 2 judges sampled
actions whose tools are never run, and the two stages must see the same thing).

``PROMPT_VERSION`` goes into every judge identity and cache key: change it whenever any prompt text
or the conversation rendering changes, so stale cached verdicts are never reused.
"""

from __future__ import annotations

import re
from typing import Sequence

from swirl_jax import prompts as task_prompts
from swirl_jax.types import Label, Message, Step, Trajectory

PROMPT_VERSION = "swirl-judge-v1"

# Datasets whose questions are math word problems (calculator task); all others are search tasks.
MATH_DATASETS = frozenset({"gsm8k", "synthetic_arith", "math", "svamp", "asdiv"})

_INSTRUCTIONS_END = (
    "First explain your reasoning briefly (a few sentences at most). Then end your reply with a line that "
    'is exactly "VERDICT: GOOD" or "VERDICT: BAD".')

PROCESS_SEARCH = """You are judging one step of an assistant that answers a multi-hop question step by step with the help of a search engine. In each turn the assistant either calls the search engine with <search_query>QUERY</search_query> (the top retrieved paragraph comes back as "QUERY -> RESULT") or gives its final answer with <answer>ANSWER</answer>.

Judge only the LAST MESSAGE, given the conversation before it. Decide whether it makes sense given the conversation so far:
- a search query is GOOD if it is likely to retrieve information that helps answer the question and does not merely repeat an earlier query;
- a final answer is GOOD if it follows from the evidence retrieved so far, whether or not it is actually true;
- a message without exactly one well-formed <search_query> or <answer> tag, or one that both searches and answers, is BAD.
Anything else that does not make sense at this point is BAD.

CONVERSATION SO FAR:
{conversation}

LAST MESSAGE (the one to judge):
{action}

{end}"""

PROCESS_CALCULATOR = """You are judging one step of an assistant that solves a math word problem step by step with the help of a calculator. In each turn the assistant either calls the calculator with <math_exp>EXPRESSION</math_exp> (the result comes back as "EXPRESSION -> RESULT") or gives its final answer with <answer>ANSWER</answer>.

Judge only the LAST MESSAGE, given the conversation before it. Decide whether it makes sense given the conversation so far:
- an expression is GOOD if it is a sensible next step towards solving the problem, given the problem and the previous results;
- a final answer is GOOD if it is supported by the calculations so far (it follows from the previous results);
- a message without exactly one well-formed <math_exp> or <answer> tag, or one that both calculates and answers, is BAD.
Anything else that does not make sense at this point is BAD.

CONVERSATION SO FAR:
{conversation}

LAST MESSAGE (the one to judge):
{action}

{end}"""

OUTCOME = """You are grading the final answer to a question against the answer key.

QUESTION:
{question}

ANSWER KEY:
{key}

ACCEPTED ALIASES OF THE KEY:
{aliases}

FINAL ANSWER TO GRADE:
{answer}

The final answer is GOOD if it means the same as the answer key or one of its aliases, and BAD otherwise. Ignore differences of formatting, capitalisation, articles and units: "10", "10.00", "$10" and "10 dollars" are the same answer. Extra words are fine as long as the answer is unambiguous and does not contradict the key; an answer that hedges between several options, or is only partly right, is BAD.

{end}"""

_VERDICT_RE = re.compile(r"\bverdict\b", re.IGNORECASE)
_LABEL_RE = re.compile(r"\b(good|bad)\b", re.IGNORECASE)
# Words that negate or hedge a label they come just before ("not a good step", "this is no good", "doesn't
# look good", "far from good", "wouldn't call it good", "would be good if ..."): no decision. Only the
# _NEGATION_WORDS words before the label count, so "there are no errors and the step is good" stays GOOD.
_NEGATION_RE = re.compile(r"\b(?:not|no|never|neither|nor|hardly|barely|scarcely|unlikely|cannot|far\s+from|"
                          r"less\s+than|rather\s+than|instead\s+of|if|unless)\b|n['’]t\b", re.IGNORECASE)
_NEGATION_WORDS = 3
# A qualifier right after the label (at most one word between) takes it back or makes it conditional ("Good
# question, but it repeats step 1", "good if the data is right"); an explanation ("GOOD because it does not
# repeat, although it could be shorter") does not.
_QUALIFIED_RE = re.compile(r"\W*(?:\w+\W+)?(?:but|though|although|however|yet|except|if|unless)\b", re.IGNORECASE)
# A label that concludes its sentence after "so", "therefore", ... (also "so it is GOOD") or after a clause
# break ("..., so BAD", "the search is not helpful, BAD"): it decides, whatever the sentence said before.
_CONCLUSION_RE = re.compile(r"(?:\b(?:so|therefore|thus|hence)\b(?:\W+(?:it|this|that|the\s+\w+)\W+(?:is|was))?"
                            r"|[,;:–—]|\s-)[\s*_\"'`“”]*(?P<label>good|bad)\W*$", re.IGNORECASE)
_SENTENCE_BREAK_RE = re.compile(r"[.!?;](?=\s|$)|\n[ \t]*\n")  # where a sentence before the label ends
_SENTENCE_END_RE = re.compile(r"[.!?;](?=\s|$)|\n")  # where the label's sentence ends: its line ends it too
_WINDOW = 80  # characters after "VERDICT" in which the label must appear
# A verdict statement: "verdict", then only punctuation or markup, an optional negation, and the label.
_STATEMENT_RE = re.compile(r"verdict\W*?(?:\b(?:is|was)\W+)?(?P<neg>\b(?:not|isn't|never|neither|hardly|barely)"
                           r"\W+)?(?P<label>good|bad)\b", re.IGNORECASE)
# The two options named together ("GOOD or BAD", "GOOD/BAD", "GOOD nor BAD"): an echo of the instruction,
# not a decision.
# (on one line: "VERDICT: GOOD\nOr BAD, if ..." is a verdict and then prose)
_OPTIONS_RE = re.compile(r"[ \t*\"'`“”]*(?:\bor\b|\bnor\b|/|\|)[ \t*\"'`“”]*(?:verdict\W*)?(?:good|bad)\b",
                         re.IGNORECASE)
_OPTIONS_BEFORE_RE = re.compile(r"\b(?:good|bad)\b[ \t*\"'`“”]*(?:\bor\b|\bnor\b|/|\|)[ \t*\"'`“”]*$",
                                re.IGNORECASE)
_QUOTES = "\"'`“‘«"
_CLOSING_QUOTES = "\"'`”’»"
_LETTERS_RE = re.compile(r"[^\W\d_]+")
_QUALIFIERS = frozenset({"final", "overall", "my", "preliminary", "revised", "updated", "step", "process",
                         "outcome", "answer", "judge"})
_ENDS_STATEMENT_RE = re.compile(r"\W*$|\s*[^\w\s]")  # only markup to the line's end, or punctuation next


def _label_of(match: re.Match) -> Label | None:
  if match.group("neg"):
    return None
  return "GOOD" if match.group("label").lower() == "good" else "BAD"


def _label_in_sentence(text: str, start: int, stop: int, label: re.Match) -> Label | None:
  """The decision of the sentence holding ``label`` (a GOOD/BAD found after a "verdict" ending at
  ``start``; ``stop`` is the next "verdict"): a label concluding the sentence ("..., so BAD") decides;
  otherwise both labels in the sentence, a negation or hedge in the few words before the label ("not a good
  step", "It doesn't look good") or a "but"/"if" right after it ("Good question, but it repeats", "good if
  ...") is no decision; else the label."""
  begin = start
  for b in _SENTENCE_BREAK_RE.finditer(text, start, label.start()):
    begin = b.end()
  e = _SENTENCE_END_RE.search(text, label.end(), stop)
  sentence = text[begin : stop if e is None else e.start()]
  at = label.start() - begin
  conclusion = _CONCLUSION_RE.search(sentence)
  if conclusion is not None:
    return "GOOD" if conclusion.group("label").lower() == "good" else "BAD"
  just_before = " ".join(sentence[:at].split()[-_NEGATION_WORDS:])
  if (len({m.group(0).lower() for m in _LABEL_RE.finditer(sentence)}) > 1 or _NEGATION_RE.search(just_before)
      or _QUALIFIED_RE.match(sentence, at + len(label.group(0)))):
    return None
  return "GOOD" if label.group(0).lower() == "good" else "BAD"


def _opens_its_line(text: str, start: int) -> bool:
  """Nothing but qualifiers before text[start] on its line ("Final verdict:", "2. Verdict:")."""
  line_start = text.rfind("\n", 0, start) + 1
  return all(w.lower() in _QUALIFIERS for w in _LETTERS_RE.findall(text[line_start:start]))


def _quoted_in_prose(text: str, start: int) -> bool:
  """A "verdict" opening a quote that its line never closes, after other words: a quotation cut off (a base
  model copying out the instruction 'end your reply with a line that is exactly "VERDICT: GOOD', stopped
  there), not a verdict. A closed quote ('Therefore my last line is "VERDICT: GOOD".') is one; a quoted
  pair of options ('"VERDICT: GOOD" or "VERDICT: BAD"') is read as no decision by the options rule."""
  if start == 0 or text[start - 1] not in _QUOTES or _opens_its_line(text, start):
    return False
  line_end = text.find("\n", start)
  return not any(q in text[start : len(text) if line_end < 0 else line_end] for q in _CLOSING_QUOTES)


def _ends_statement(text: str, end: int) -> bool:
  """Only punctuation or the line's end right after the label ending at text[end]."""
  line_end = text.find("\n", end)
  return _ENDS_STATEMENT_RE.match(text[end : len(text) if line_end < 0 else line_end]) is not None


def _is_statement(text: str, start: int, end: int) -> bool:
  """Whether the "verdict ... LABEL" at text[start:end] states the verdict rather than sits in prose ("The
  verdict: good ideas aside, ..."): nothing but qualifiers before it on its line ("Final verdict:",
  "2. Verdict:", "**Overall verdict**:"), or punctuation or the line's end right after the label."""
  return _opens_its_line(text, start) or _ends_statement(text, end)


def parse_verdict(text: str) -> Label | None:
  """The label of a judge reply: the GOOD/BAD of its last verdict statement, else of its last usable
  "VERDICT".

  Case-insensitive and tolerant of markdown ("**Verdict:** **bad**") and of a line break after the
  colon. A verdict statement is "VERDICT: GOOD" (only punctuation or markup, or "is", between the word
  and the label) with only qualifiers before it on its line ("Final verdict: BAD, because ...") or
  punctuation or the line's end after it ("On reflection, VERDICT: GOOD."); the last one decides, so prose
  after it that uses the word ("My verdict would be GOOD if ...", "The verdict: good ideas aside, ...")
  changes nothing. A statement whose label is followed by a word ("VERDICT: Good question, but it repeats
  step 1, so BAD") decides as its sentence reads (below). Without a statement, occurrences of "verdict"
  are tried from the last one back; for each, the first GOOD or BAD within 80 characters (and before any
  later "verdict") counts, read with its sentence: a label that ends the sentence after "so",
  "therefore", "thus" or a comma decides ("the step would be good if ..., so BAD" is BAD); otherwise a
  sentence that names both labels, negates or hedges the label before it ("not a good step", "It doesn't
  look good", "far from good") or qualifies it after it ("good, but ...", "good if ...") is no decision.
  A negated label ("VERDICT: not good", "neither GOOD nor BAD") or both options named together ("VERDICT:
  GOOD or BAD", "GOOD/BAD") is unusable rather than guessed: the reply gets None, not an earlier mention
  of a label. A quote opened at "verdict" after other words and never closed
  on its line is a quotation cut off (a model copying out the instruction), never a verdict.
  """
  if not text:
    return None
  mentions = [v for v in _VERDICT_RE.finditer(text) if not _quoted_in_prose(text, v.start())]
  for v in reversed(mentions):
    m = _STATEMENT_RE.match(text, v.start())
    if m is None:
      continue
    if _is_statement(text, v.start(), m.end()):
      line_start = text.rfind("\n", 0, v.start()) + 1
      undecided = _OPTIONS_RE.match(text, m.end()) or _OPTIONS_BEFORE_RE.search(text[line_start : v.start()])
      if undecided or m.group("neg"):
        return None
      if not _ends_statement(text, m.end()):  # a word follows: "Good question, ..., so BAD"
        stop = next((w.start() for w in mentions if w.start() > v.start()), len(text))
        return _label_in_sentence(text, v.end(), stop, _LABEL_RE.match(text, m.start("label")))
      return _label_of(m)
  # No verdict statement (e.g. "Verdict - the step is GOOD."): the loose scan.
  starts = [m.end() for m in mentions]
  for i in range(len(starts) - 1, -1, -1):
    end = starts[i + 1] if i + 1 < len(starts) else len(text)
    m = _LABEL_RE.search(text, starts[i], min(end, starts[i] + _WINDOW))
    if m is None:
      continue
    if _OPTIONS_RE.match(text, m.end()):
      return None
    return _label_in_sentence(text, starts[i], end, m)
  return None


def infer_task(trajectory: Trajectory) -> task_prompts.Task:
  """The task of a trajectory: provenance["task"], else the tool it called, else its dataset."""
  task = trajectory.provenance.get("task")
  if task in ("math", "search"):
    return task
  for step in trajectory.steps:
    if step.call is not None:
      return "math" if step.call.tool == "calculator" else "search"
  return "math" if trajectory.question.dataset in MATH_DATASETS else "search"


def history_messages(prompt: str, previous: Sequence[Step]) -> list[Message]:
  """The conversation before a step: the task prompt, then each earlier turn and its tool result."""
  msgs = [Message("user", prompt)]
  for step in previous:
    msgs.append(Message("model", step.text))
    if step.observation is not None:
      msgs.append(Message("user", step.observation))
  return msgs


def render_conversation(messages: Sequence[Message]) -> str:
  """Plain-text blocks: the first user message is the task, later user messages are tool results."""
  blocks = []
  for i, m in enumerate(messages):
    if m.role == "model":
      title = "[ASSISTANT]"
    else:
      title = "[USER]" if i == 0 else "[TOOL RESULT]"
    blocks.append(f"{title}\n{m.content}")
  return "\n\n".join(blocks)


def process_prompt(task: task_prompts.Task, prompt: str, previous: Sequence[Step], action: str) -> str:
  """The process-judge prompt for ``action`` after the turns ``previous`` of a question."""
  template = PROCESS_CALCULATOR if task == "math" else PROCESS_SEARCH
  return template.format(conversation=render_conversation(history_messages(prompt, previous)),
                         action=action, end=_INSTRUCTIONS_END)


def outcome_prompt(question: str, key: str, aliases: Sequence[str], answer: str) -> str:
  """The outcome-judge prompt: the final ``answer`` against the ``key`` and its ``aliases``."""
  alias_text = "\n".join(f"- {a}" for a in aliases) if aliases else "(none)"
  return OUTCOME.format(question=question, key=key, aliases=alias_text, answer=answer, end=_INSTRUCTIONS_END)
