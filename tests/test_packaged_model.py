"""The packaged pretrained Gemma 3 270M: loads by short name and matches transformers on the same GGUF."""

import time

import numpy as np
import pytest

from swirl_jax.loading import load_model, pad_batch

PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWhat is 15 * 8 - 13?<end_of_turn>\n<start_of_turn>model\n<math_exp>15 * 8</math_exp>",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Question: Who wrote the novel that was adapted into the film Blade Runner?\nAnswer:",
]


@pytest.fixture(scope="module")
def ours():
  return load_model("gemma3-270m")


def test_tokenizer_has_single_token_chat_markers(ours):
  tok = ours.tokenizer
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 1, 0)
  assert (tok.start_of_turn_id, tok.end_of_turn_id) == (105, 106)
  ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>")
  assert ids[:2] == [2, 105] and ids[-1] == 106
  assert tok.decode(ids[1:]) == "<start_of_turn>user\nHi<end_of_turn>"


def test_config_is_the_270m_preset(ours):
  from swirl_jax.models.config import preset

  assert ours.config == preset("gemma3-270m")


def test_logits_match_transformers_on_the_same_gguf(ours):
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate")
  from transformers import AutoModelForCausalLM

  from swirl_jax.checkpoints.packaged import packaged_gguf

  path = packaged_gguf("gemma3-270m")
  hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  seqs = [ours.tokenizer.encode(p) for p in PROMPTS]
  tokens, valid = pad_batch(seqs, ours.tokenizer.pad_id)
  with torch.no_grad():
    ref = [hf(input_ids=torch.tensor([s])).logits[0].float().numpy() for s in seqs]
  got = ours.logits(tokens, valid)
  for i, s in enumerate(seqs):
    diff = np.abs(got[i, :len(s)] - ref[i]).max()
    assert diff <= 2e-3, (PROMPTS[i], diff)
    np.testing.assert_array_equal(got[i, :len(s)].argmax(-1), ref[i].argmax(-1))


def test_second_load_is_fast():
  load_model("gemma3-270m")  # converted copy exists after this
  t = time.perf_counter()
  load_model("gemma3-270m")
  # Generous bound (the issue asks < 60 s; measured ~6 s here): a regression to re-parsing the GGUF
  # (~45 s) on a loaded machine would still be caught by the README figure, not by a flaky test.
  assert time.perf_counter() - t < 60
