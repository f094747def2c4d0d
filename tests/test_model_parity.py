"""Logit parity of our Flax Gemma 2 / Gemma 3 with transformers' PyTorch implementation."""

import numpy as np
import pytest

pytest.importorskip("torch")

from hf_reference import hf_logits, tiny_hf_model  # noqa: E402
from swirl_jax.loading import load_model, pad_batch  # noqa: E402

# Lengths straddle the sliding window (8): local and global layers differ past it.
LENGTHS = (21, 13, 5)


def _batch(vocab: int, left: bool, seed: int = 1):
  rng = np.random.default_rng(seed)
  seqs = [list(rng.integers(3, vocab, n)) for n in LENGTHS]
  return pad_batch(seqs, 0, left=left)


@pytest.mark.parametrize("kv_heads", [4, 1])  # 1: the single-kv-head attention path (Gemma 3 270M, 1B)
@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_tiny_random_logits_match_transformers(family, left, kv_heads, tmp_path):
  hf = tiny_hf_model(family, num_key_value_heads=kv_heads)
  hf.save_pretrained(tmp_path)
  lm = load_model(str(tmp_path))
  assert lm.config.family == family
  tokens, valid = _batch(lm.config.vocab_size, left)
  ours = lm.logits(tokens, valid)
  ref = hf_logits(hf, tokens, valid)
  diff = np.abs(ours - ref)[valid]
  assert diff.max() <= 1e-4, diff.max()
  # The reference is not trivially matched: logits vary a lot across the vocabulary.
  assert ref[valid].std() > 0.5


def test_sliding_window_changes_logits(tmp_path):
  """Guards the parity test itself: the window must matter at these lengths."""
  hf = tiny_hf_model("gemma3")
  hf.save_pretrained(tmp_path)
  lm = load_model(str(tmp_path))
  tokens, valid = _batch(lm.config.vocab_size, False)
  wide = load_model(str(tmp_path))
  for block in wide.model.layers:
    if block.attn.window is not None:
      block.attn.window = 10_000
  a, b = lm.logits(tokens, valid), wide.logits(tokens, valid)
  assert np.abs(a[0, 15:] - b[0, 15:]).max() > 1e-3
  assert np.abs(a[0, :8] - b[0, :8]).max() < 1e-5


def test_gemma3_text_tower_of_conditional_generation(tmp_path):
  """Weights under the multimodal checkpoint's language_model prefix load like a Gemma3ForCausalLM."""
  import json

  from swirl_jax.checkpoints.safetensors_io import SafetensorsFile, save_file

  hf = tiny_hf_model("gemma3")
  hf.save_pretrained(tmp_path / "text")
  f = SafetensorsFile(str(tmp_path / "text" / "model.safetensors"))
  mm = tmp_path / "mm"
  mm.mkdir()
  save_file({"model.language_model." + k[len("model."):]: np.array(f.get(k)) for k in f.keys()
             if k.startswith("model.")} | {"model.vision_tower.dummy": np.zeros(3, np.float32)},
            str(mm / "model.safetensors"))
  text_cfg = json.loads((tmp_path / "text" / "config.json").read_text())
  (mm / "config.json").write_text(json.dumps({
      "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text_cfg}))
  tokens, valid = _batch(512, False)
  a = load_model(str(tmp_path / "text")).logits(tokens, valid)
  b = load_model(str(mm)).logits(tokens, valid)
  np.testing.assert_array_equal(a, b)
