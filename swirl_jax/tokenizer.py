"""Tokenizers for Gemma checkpoints: from a HF directory's tokenizer files or the one embedded in a GGUF.

transformers does the reading (tokenizer.json / tokenizer.model, or converting GGUF's SentencePiece vocab);
this wrapper pins down what the rest of swirl_jax relies on: BOS/EOS/pad ids and the chat turn markers
``<start_of_turn>`` / ``<end_of_turn>`` as single tokens.
"""

from __future__ import annotations

import os
from typing import Sequence

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


class Tokenizer:
  """Text <-> token ids for a Gemma model."""

  def __init__(self, hf_tokenizer, source: str = ""):
    self.hf = hf_tokenizer
    self.source = source
    self.start_of_turn_id = self._single(START_OF_TURN)
    self.end_of_turn_id = self._single(END_OF_TURN)
    self.bos_id = int(hf_tokenizer.bos_token_id)
    self.eos_id = int(hf_tokenizer.eos_token_id)
    pad = hf_tokenizer.pad_token_id
    self.pad_id = int(pad) if pad is not None else 0

  def _single(self, marker: str) -> int:
    ids = self.hf.encode(marker, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(f"tokenizer {self.source!r}: chat marker {marker} is not a single token ({ids})")
    return int(ids[0])

  @classmethod
  def from_hf_dir(cls, directory: str) -> "Tokenizer":
    from transformers import AutoTokenizer

    return cls(AutoTokenizer.from_pretrained(directory), source=directory)

  @classmethod
  def from_gguf(cls, path: str) -> "Tokenizer":
    from transformers import AutoTokenizer

    path = os.path.abspath(path)
    try:
      hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    except (ValueError, KeyError) as e:  # transformers' converter names neither the file nor what is missing
      raise ValueError(f"{path}: cannot read the tokenizer the GGUF file should embed "
                       f"(tokenizer.ggml.*): {e}") from None
    return cls(hf, source=path)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids = self.hf.encode(text, add_special_tokens=False)
    return [self.bos_id] + ids if add_bos else ids

  def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=skip_special)

  def save(self, directory: str) -> None:
    self.hf.save_pretrained(directory)
