"""The task prompts of the multi-step tool loop (SWiRL stage 1 and evaluation), defined once.

The user turn explains the task, the tool, the tags, the step budget and the rule "either call the tool
or answer, not both". Optional worked demonstrations (a base model needs one to follow the format) are
rendered as earlier turns of the same conversation.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

from swirl_jax.types import Message

Task = Literal["math", "search"]

_TOOL_TEXT = {
    "math": ("a calculator", "<math_exp>EXPRESSION</math_exp>",
             "an arithmetic expression such as 48 / 2 or (3 + 4) * 12.5", 10),
    "search": ("a search engine over paragraphs", "<search_query>QUERY</search_query>",
               "a short search query", 5),
}

TEMPLATE = """You are solving a {kind} problem step by step with the help of {tool}.
In each of your turns you may think briefly, then you must do exactly one of:
- call the tool by writing {call_format}, where the content is {content}; the result will be shown to you as "INPUT -> RESULT" in the next message;
- give the final answer by writing <answer>ANSWER</answer>.
Either call the tool or answer, not both. You may call the tool at most {budget} times.

{kind_title}: {question}"""


@dataclasses.dataclass(frozen=True)
class Demonstration:
  """A worked example shown before the question: (question, [model turns], [tool results])."""

  question: str
  model_turns: tuple[str, ...]
  observations: tuple[str, ...]


DEFAULT_DEMOS: dict[str, tuple[Demonstration, ...]] = {
    "math": (Demonstration(
        question="A farmer has 15 rows of 8 apple trees. 13 trees die. How many trees are left?",
        model_turns=("First I count all trees. <math_exp>15 * 8</math_exp>",
                     "Now I remove the trees that died. <math_exp>120 - 13</math_exp>",
                     "<answer>107</answer>"),
        observations=("15 * 8 -> 120.0", "120 - 13 -> 107.0")),),
    "search": (Demonstration(
        question="In which country was the director of the film Amélie born?",
        model_turns=("I need the director first. <search_query>Amélie film director</search_query>",
                     "The director is Jean-Pierre Jeunet. <search_query>Jean-Pierre Jeunet born</search_query>",
                     "<answer>France</answer>"),
        # written as the search tool writes its results (Title: text), so the demonstration shows the
        # format the model will see
        observations=("Amélie film director -> Amélie: Amélie is a 2001 French romantic comedy film directed "
                      "by Jean-Pierre Jeunet.",
                      "Jean-Pierre Jeunet born -> Jean-Pierre Jeunet: Jean-Pierre Jeunet (born 3 September "
                      "1953) is a French film director, born in Roanne, France.")),),
}


def step_budget(task: Task) -> int:
  """Tool calls allowed per trajectory (the paper: 10 for math, 5 for search)."""
  return _TOOL_TEXT[task][3]


def user_prompt(task: Task, question: str, budget: int | None = None) -> str:
  tool, call_format, content, default_budget = _TOOL_TEXT[task]
  kind = "math word" if task == "math" else "multi-hop question-answering"
  return TEMPLATE.format(kind=kind, tool=tool, call_format=call_format, content=content,
                         budget=default_budget if budget is None else budget, kind_title="Problem" if task == "math" else "Question",
                         question=question)


def initial_messages(task: Task, question: str, demos: Sequence[Demonstration] = (),
                     budget: int | None = None) -> list[Message]:
  """The conversation before the model's first turn: demonstrations, then the question."""
  msgs: list[Message] = []
  for demo in demos:
    msgs.append(Message("user", user_prompt(task, demo.question, budget)))
    for i, turn in enumerate(demo.model_turns):
      msgs.append(Message("model", turn))
      if i < len(demo.observations):
        msgs.append(Message("user", demo.observations[i]))
  msgs.append(Message("user", user_prompt(task, question, budget)))
  return msgs
