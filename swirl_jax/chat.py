"""Gemma's chat format: the one place that turns messages into prompt text.

A conversation renders as
  <start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n{text}<end_of_turn>\n ...
and a prompt for the model's next turn ends with ``<start_of_turn>model\n``. The tokenizer adds BOS.
Tool results come back as user turns (``QUERY -> RESULT``), as in the SWiRL paper.
"""

from __future__ import annotations

from typing import Sequence

from swirl_jax.tokenizer import END_OF_TURN, START_OF_TURN
from swirl_jax.types import Message

MODEL_PREFIX = f"{START_OF_TURN}model\n"


def render_turn(message: Message) -> str:
  """One complete turn, closed with end-of-turn and a newline."""
  return f"{START_OF_TURN}{message.role}\n{message.content}{END_OF_TURN}\n"


def render(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
  """The prompt text of a conversation; with ``add_generation_prompt`` it opens the model's next turn."""
  text = "".join(render_turn(m) for m in messages)
  return text + MODEL_PREFIX if add_generation_prompt else text


def continuation(user_text: str) -> str:
  """Closes the model turn already in context, adds a user turn and reopens the model's turn: what the
  rollout appends to the KV cache after a tool call."""
  return f"{END_OF_TURN}\n{START_OF_TURN}user\n{user_text}{END_OF_TURN}\n{MODEL_PREFIX}"
