"""A tiny real Hugging Face tokenizer for tests: byte-level BPE with Gemma's special tokens.

Trained in milliseconds on a few sentences, so tests never need the packaged model. Byte-level, so
every text round-trips exactly through encode/decode (what mask tests rely on). Special tokens, with
Gemma's ids for the first three: <pad>=0, <eos>=1, <bos>=2, <start_of_turn>=3, <end_of_turn>=4.

  from tiny_tokenizer import tiny_tokenizer
  tok = tiny_tokenizer()            # a swirl_jax.tokenizer.Tokenizer
  tok.encode("hello", add_bos=True)
  lm = tiny_lm()                    # random tiny Gemma 3 + tiny_tokenizer(512)
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from swirl_jax import prompts
from swirl_jax.tokenizer import Tokenizer

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")

_CORPUS = (
    "You are solving a math word problem step by step with the help of a calculator.",
    "First I count all trees. <math_exp>15 * 8</math_exp> 15 * 8 -> 120.0 <answer>107</answer>",
    "I need the director first. <search_query>Amélie film director</search_query>",
    "The quick brown fox jumps over the lazy dog. How many apples are left? 0123456789 + - * / ( )",
    "user model question answer search query result the of and to in is was born France",
)


@functools.lru_cache(maxsize=None)
def _hf_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
  tok = HFTokenizer(models.BPE(unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  corpus = list(_CORPUS) + [prompts.user_prompt("math", "q"), prompts.user_prompt("search", "q")]
  tok.train_from_iterator(corpus, trainer=trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def tiny_tokenizer(vocab_size: int = 400) -> Tokenizer:
  """A swirl_jax Tokenizer over a small byte-level BPE vocabulary (cached per vocab size)."""
  return Tokenizer(_hf_tokenizer(vocab_size), source=f"tiny-bpe-{vocab_size}")


def tiny_lm():
  """The random ``tiny-gemma3`` preset with ``tiny_tokenizer(512)`` (its vocabulary size): a LoadedModel
  that samples, serves and judges like a real one."""
  from swirl_jax.loading import LoadedModel, load_model

  tok = tiny_tokenizer(512)
  base = load_model("random:tiny-gemma3")
  assert base.config.vocab_size == tok.vocab_size == 512
  return LoadedModel(base.model, tok, base.config, "tiny-gemma3-random")
