"""A model turn's action: the text up to its first complete action and the tokens that cover it.

The device stop rule ends a turn at a closing tag, but when the tag's last token merges with what
follows (``>.``) the turn runs on; the host then cuts the text after the action (one parser:
``truncate_after_action``) and keeps the fewest tokens whose text covers it. The rollout rolls the
cache back to those tokens (and rewrites the turn as the text's own encoding when they are not it, so
later turns see what decompose's states hold); step-wise RL trains on the sampled tokens whose text lies
within what the judge saw (``trained_tokens``).
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


def trained_tokens(tok, ids: Sequence[int], end_ids: Collection[int]) -> tuple[str, list[int]]:
  """(action text, the sampled ids step-wise RL's loss covers) of a turn's sampled ``ids``.

  A turn that ended at its action keeps every id (its end-of-turn / EOS token too). One that ran past
  its action keeps the ids within the action's text: when the last id covering it runs past it (``>.``,
  the closing tag's ">" merged with what followed, whether or not the turn ended right after it) it is
  left out, and the end-of-turn token with it, since the judge never saw its text and reinforcing it
  teaches turns the stop rule cannot end.
  """
  text, keep = cut_turn(tok, ids, end_ids)
  if tok.decode(list(ids[:keep])) != text:  # (also when the turn ended right after that token)
    return text, list(ids[:keep - 1])
  if keep == len(ids) - (1 if ids and ids[-1] in end_ids else 0):
    return text, list(ids)
  return text, list(ids[:keep])
