"""Export to Hugging Face format: transformers loads the directory and gives our logits."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hf_reference import hf_logits  # noqa: E402
from swirl_jax.checkpoints.build import model_weights  # noqa: E402
from swirl_jax.checkpoints.hf_export import export_hf  # noqa: E402
from swirl_jax.loading import load_model, pad_batch  # noqa: E402


@pytest.mark.parametrize("preset", ["tiny-gemma2", "tiny-gemma3"])
def test_export_loads_in_transformers_with_our_logits(preset, tmp_path):
  from transformers import AutoModelForCausalLM

  lm = load_model(f"random:{preset}", seed=3)
  out = export_hf(lm.config, model_weights(lm.model), str(tmp_path / "hf"), max_shard_bytes=400_000)
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()  # sharded at this size
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(hf).__name__ == ("Gemma2ForCausalLM" if "gemma2" in preset else "Gemma3ForCausalLM")
  rng = np.random.default_rng(0)
  tokens, valid = pad_batch([list(rng.integers(3, 512, n)) for n in (21, 9)], 0)
  diff = np.abs(lm.logits(tokens, valid) - hf_logits(hf, tokens, valid))[valid].max()
  assert diff <= 1e-4, diff
  # Import of the export is the identity.
  again = load_model(out)
  for k, v in model_weights(again.model).items():
    np.testing.assert_array_equal(v, model_weights(lm.model)[k])


def test_export_refuses_to_overwrite_and_writes_bf16(tmp_path):
  lm = load_model("random:tiny-gemma3", seed=1)
  out = export_hf(lm.config, model_weights(lm.model), str(tmp_path / "hf"), dtype="bfloat16")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  with pytest.raises(FileExistsError):
    export_hf(lm.config, model_weights(lm.model), out)
  back = load_model(out)
  w = model_weights(lm.model)["layers.0.mlp.up"]
  np.testing.assert_allclose(model_weights(back.model)["layers.0.mlp.up"], w, rtol=1e-2, atol=1e-3)


def test_export_of_the_packaged_270m(tmp_path):
  from transformers import AutoModelForCausalLM, AutoTokenizer

  lm = load_model("gemma3-270m")
  out = export_hf(lm.config, model_weights(lm.model), str(tmp_path / "hf"), tokenizer=lm.tokenizer)
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tok = AutoTokenizer.from_pretrained(out)
  text = "<start_of_turn>user\nWhat is 48 / 2?<end_of_turn>\n<start_of_turn>model\n"
  assert tok.encode(text) == lm.tokenizer.encode(text)
  tokens, valid = pad_batch([lm.tokenizer.encode(text), lm.tokenizer.encode("The capital of France is")], 0)
  diff = np.abs(lm.logits(tokens, valid) - hf_logits(hf, tokens, valid))[valid].max()
  assert diff <= 2e-3, diff
  gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
  assert gen["eos_token_id"] == [1, 106]
