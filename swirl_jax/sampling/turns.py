"""A model turn's action: the text up to its first complete action and the tokens that cover it.

The device stop rule ends a turn at a closing tag, but when the tag's last token merges with what
follows (``>.``) the turn runs on; the host then cuts the text after the action (one parser:
``truncate_after_action``) and keeps the fewest tokens whose text covers it. The rollout rolls the
cache back to those tokens (and rewrites the turn as the text's own encoding when they are not it, so
later turns see what decompose's states hold); step-wise RL trains on exactly them, so the loss covers
what the judge saw.
"""

from __future__ import annotations

from typing import Collection, Sequence

from swirl_jax.tools.parser import truncate_after_action


def cut_turn(tok, ids: Sequence[int], end_ids: Collection[int]) -> tuple[str, int]:
  """(action text, kept) for a turn's sampled ``ids``: the text cut after its first complete action, and
  how many leading ids cover it (a final end-of-turn / EOS token is never counted)."""
  text_ids = list(ids[:-1]) if ids and ids[-1] in end_ids else list(ids)
  full = tok.decode(text_ids)
  text = truncate_after_action(full)
  keep = len(text_ids)
  if len(text) < len(full):  # the turn ran past a closing tag: keep the fewest tokens covering it
    keep = next(n for n in range(1, len(text_ids) + 1) if tok.decode(text_ids[:n]).startswith(text))
  return text, keep
