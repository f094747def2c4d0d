"""Gemma's chat format: the one place that turns messages into prompt text.

A conversation renders as
  <start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n{text}<end_of_turn>\n ...
and a prompt for the model's next turn ends with ``<start_of_turn>model\n``. The tokenizer adds BOS.
Tool results come back as user turns (``QUERY -> RESULT``), as in the SWiRL paper. ``encode_state`` gives a
multi-step state's token ids as the rollout wrote them into its KV cache (piece by piece).
"""

from __future__ import annotations

from typing import Sequence

from swirl_jax.tokenizer import END_OF_TURN, START_OF_TURN, Tokenizer
from swirl_jax.types import Message

MODEL_PREFIX = f"{START_OF_TURN}model\n"


# Google's published Gemma 3 chat template (tokenizer_config.json of the -it checkpoints), written into
# exports whose tokenizer has none (the packaged 270M's GGUF carries none), so that transformers'
# ``apply_chat_template`` gives the prompts ``render`` does: a system message goes before the first user
# turn, contents are trimmed, "assistant" is the "model" role.
GEMMA_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}"""


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


def encode_continuation(tok: Tokenizer, user_text: str) -> list[int]:
  """The ids of ``continuation(user_text)``, encoded on its own as the rollout appends it after a turn."""
  return tok.encode(continuation(user_text), add_bos=False)


def encode_state(tok: Tokenizer, opening: Sequence[Message], history: Sequence[Message]) -> list[int]:
  """Token ids of a state, ending with the model's turn opened, exactly as the rollout built its cache:
  ``opening`` (demonstrations and the question) rendered and encoded as one text with BOS, then for each
  (model turn, tool result) pair of ``history`` the turn's text and its ``continuation`` each encoded on
  their own (rollout._end_turn).

  Encoding the whole rendered text at once is not the same: the Gemma tokenizer has tokens for runs of
  newlines, so a model turn that starts with "\n" right after the opening's "model\n" would become one
  "\n\n" token the sampler never saw, and every later state would differ from the context the actions
  were sampled in.
  """
  history = tuple(history)
  if len(history) % 2 or any(m.role != ("model" if i % 2 == 0 else "user") for i, m in enumerate(history)):
    raise ValueError(f"a state's history alternates model turns and tool results; got roles "
                     f"{[m.role for m in history]}")
  ids = tok.encode(render(opening, add_generation_prompt=True), add_bos=True)
  for turn, result in zip(history[::2], history[1::2]):
    ids += tok.encode(turn.content, add_bos=False) + encode_continuation(tok, result.content)
  return ids
