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


def test_hf_directory_imported_then_exported_loads_in_transformers(tmp_path):
  """A Hugging Face checkpoint imported, then exported again (after training, say): transformers 5 checks
  config.json field types, and query_pre_attn_scalar must stay an int."""
  from transformers import AutoModelForCausalLM

  from hf_reference import tiny_hf_model

  src = tiny_hf_model("gemma3", seed=2)
  src.save_pretrained(tmp_path / "src")
  lm = load_model(str(tmp_path / "src"))
  out = export_hf(lm.config, model_weights(lm.model), str(tmp_path / "out"))
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert cfg["query_pre_attn_scalar"] == 16 and isinstance(cfg["query_pre_attn_scalar"], int)
  hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens, valid = pad_batch([[2, 5, 9, 33, 70, 11]], 0)
  np.testing.assert_allclose(hf_logits(hf, tokens, valid), hf_logits(src, tokens, valid), atol=1e-5)


def test_untied_lm_head_is_refused(tmp_path):
  """A checkpoint with its own lm_head.weight would load with the embedding as the head (wrong logits)."""
  from hf_reference import tiny_hf_model

  tiny_hf_model("gemma3", tie_word_embeddings=False).save_pretrained(tmp_path / "untied")
  with pytest.raises(ValueError, match="config.json: tie_word_embeddings is false"):
    load_model(str(tmp_path / "untied"))


def test_export_refuses_a_gemma3_attention_softcap(tmp_path):
  """transformers' Gemma 3 ignores attn_logit_softcapping: the export would compute other logits."""
  from swirl_jax.checkpoints.build import random_model
  from swirl_jax.models.config import preset

  cfg = preset("tiny-gemma3", attn_logit_softcap=5.0)
  with pytest.raises(ValueError, match="model.attn_logit_softcap=5.0"):
    export_hf(cfg, model_weights(random_model(cfg, 1)), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


def test_export_overwrites_only_an_earlier_export_and_follows_the_umask(tmp_path):
  """overwrite=True replaces an earlier export, never a directory of other files (a parent folder given
  as export.out); the export is readable by others under umask 022 (mkdtemp alone makes 0700); a killed
  export's temporary folder does not stay."""
  import os

  lm = load_model("random:tiny-gemma3", seed=1)
  w = model_weights(lm.model)
  mine = tmp_path / "models"
  mine.mkdir()
  (mine / "important.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not an earlier export"):
    export_hf(lm.config, w, str(mine), overwrite=True)
  assert (mine / "important.txt").read_text() == "keep me"
  # the folder of an export killed mid-write (its pid no longer runs): removed by the next export
  import subprocess
  import sys

  from swirl_jax.atomic_io import temp_prefix

  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  killed = tmp_path / f".export-{int(dead.stdout)}@{temp_prefix().split('@')[1]}@abc"
  killed.mkdir()
  (killed / "model.safetensors").write_bytes(b"\0" * 64)
  # an export killed between its two renames: the previous export set aside, removed by the next export
  aside = tmp_path / f".replaced-export-{int(dead.stdout)}@{temp_prefix().split('@')[1]}@xyz" / "hf"
  aside.mkdir(parents=True)
  (aside / "model.safetensors").write_bytes(b"\0" * 64)
  old = os.umask(0o022)
  try:
    out = export_hf(lm.config, w, str(tmp_path / "hf"), max_shard_bytes=1 << 16)  # shards
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    export_hf(lm.config, w, out, overwrite=True, dtype="bfloat16")
  finally:
    os.umask(old)
  assert not [p.name for p in (tmp_path / "hf").iterdir() if p.name.startswith("model-")]  # the old shards
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
  assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "models"]  # nothing left aside


def test_truncated_or_corrupt_safetensors_name_the_file_and_tensor(tmp_path):
  """A truncated shard failed in numpy's reshape, a corrupt header length with a MemoryError, a bad index
  with a bare KeyError: none named the file."""
  import json
  import struct

  import numpy as np
  import safetensors.numpy

  from swirl_jax.checkpoints.safetensors_io import SafetensorsFile, ShardedSafetensors, save_file

  path = tmp_path / "model.safetensors"
  save_file({"a": np.ones((10, 100), np.float32), "b": np.arange(4, dtype=np.int64)}, str(path))
  blob = path.read_bytes()
  np.testing.assert_array_equal(SafetensorsFile(str(path)).get("a"), safetensors.numpy.load_file(str(path))["a"])
  (tmp_path / "cut.safetensors").write_bytes(blob[:len(blob) - 40])
  with pytest.raises(ValueError, match=r"cut.safetensors: tensor '.' ends at byte .* \(truncated file\?\)"):
    SafetensorsFile(str(tmp_path / "cut.safetensors"))
  (tmp_path / "len.safetensors").write_bytes(struct.pack("<Q", 2 ** 62) + blob[8:])
  with pytest.raises(ValueError, match="len.safetensors: corrupt safetensors header"):
    SafetensorsFile(str(tmp_path / "len.safetensors"))
  head = b"[1,2]"
  (tmp_path / "list.safetensors").write_bytes(struct.pack("<Q", len(head)) + head)
  with pytest.raises(ValueError, match="list.safetensors: corrupt safetensors header"):
    SafetensorsFile(str(tmp_path / "list.safetensors"))
  head = json.dumps({"a": {"dtype": "F32", "shape": [10, 100], "data_offsets": [0, 8]}}).encode()
  (tmp_path / "offs.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bytes(8))
  with pytest.raises(ValueError, match=r"offs.safetensors: tensor 'a': data_offsets \[0, 8\] do not hold F32"):
    SafetensorsFile(str(tmp_path / "offs.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
  with pytest.raises(ValueError, match="model.safetensors.index.json: not a safetensors index"):
    ShardedSafetensors(str(tmp_path))


def test_export_never_replaces_a_model_folder_and_keeps_files_it_did_not_write(tmp_path):
  """Any folder holding config.json and safetensors counted as an earlier export: export.out pointing at
  the downloaded base model replaced its weights and deleted its README (and a pipeline re-export deleted
  a model card added to export/hf)."""
  import hashlib
  import os

  from swirl_jax.checkpoints.hf_export import MARKER

  lm = load_model("random:tiny-gemma3", seed=1)
  w = model_weights(lm.model)
  base = tmp_path / "base"
  export_hf(lm.config, w, str(base))
  (base / MARKER).unlink()  # a Hugging Face folder of another origin: config.json + safetensors
  (base / "README.md").write_text("base model card")
  digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
  before = {p.name: digest(p) for p in base.iterdir()}
  with pytest.raises(FileExistsError, match=f"not an earlier export of swirl_jax \\(no {MARKER}"):
    export_hf(lm.config, w, str(base), overwrite=True)
  assert {p.name: digest(p) for p in base.iterdir()} == before

  out = tmp_path / "export"
  export_hf(lm.config, w, str(out))
  (out / "README.md").write_text("my card")
  (out / "extra").mkdir()
  (out / "extra" / "notes.txt").write_text("n")
  export_hf(lm.config, w, str(out), overwrite=True, dtype="bfloat16")
  assert (out / "README.md").read_text() == "my card" and (out / "extra" / "notes.txt").read_text() == "n"
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  written = json.loads((out / MARKER).read_text())["files"]
  assert "README.md" not in written and "model.safetensors" in written and MARKER in written
  export_hf(lm.config, w, str(out), overwrite=True)  # the kept files stay kept, not adopted
  assert (out / "README.md").read_text() == "my card"

  # an export made before the marker, in a workdir's export folder: replaced only when the caller says so
  (out / MARKER).unlink()
  with pytest.raises(FileExistsError):
    export_hf(lm.config, w, str(out), overwrite=True)
  export_hf(lm.config, w, str(out), overwrite=True, replace_unmarked=True)
  assert (out / "README.md").read_text() == "my card" and (out / MARKER).exists()
  assert sorted(os.listdir(tmp_path)) == ["base", "export"]


def test_export_carries_gemmas_chat_template(tmp_path):
  """The packaged 270M's tokenizer (from its GGUF) has no chat template, so apply_chat_template failed on the
  exported policy. A tokenizer without one gets Google's Gemma 3 template; the export renders our prompts."""
  from transformers import AutoTokenizer

  from swirl_jax import chat
  from swirl_jax.types import Message
  from tiny_tokenizer import tiny_tokenizer

  tok = tiny_tokenizer()
  assert not tok.hf.chat_template
  lm = load_model("random:tiny-gemma3", seed=1)
  out = export_hf(lm.config, model_weights(lm.model), str(tmp_path / "hf"), tokenizer=tok)
  assert not tok.hf.chat_template  # the shared tokenizer is left as it was
  hf_tok = AutoTokenizer.from_pretrained(out)
  turns = [("user", " What is 48 / 2? "), ("model", "<math_exp>48 / 2</math_exp>\n"), ("user", "48 / 2 -> 24.0")]
  got = hf_tok.apply_chat_template([{"role": "system", "content": "Be brief."}] + [
      {"role": "assistant" if r == "model" else r, "content": c} for r, c in turns], tokenize=False,
      add_generation_prompt=True)
  # by hand: the system text before the first user turn, contents trimmed, "model" turns, the model's turn open
  want = ("<bos><start_of_turn>user\nBe brief.\n\nWhat is 48 / 2?<end_of_turn>\n<start_of_turn>model\n"
          "<math_exp>48 / 2</math_exp><end_of_turn>\n<start_of_turn>user\n48 / 2 -> 24.0<end_of_turn>\n"
          "<start_of_turn>model\n")
  assert got == want
  assert got == "<bos>" + chat.render([Message("user", "Be brief.\n\nWhat is 48 / 2?"),
                                        Message("model", "<math_exp>48 / 2</math_exp>"),
                                        Message("user", "48 / 2 -> 24.0")])


def test_tensors_the_config_has_no_place_for_are_refused(tmp_path):
  """A config.json with fewer layers than the weights (or a stray tensor) loaded a truncated model without a
  word; transformers reports them as unexpected."""
  import os

  lm = load_model("random:tiny-gemma3", seed=1)
  out = tmp_path / "hf"
  export_hf(lm.config, model_weights(lm.model), str(out))
  cfg = json.loads((out / "config.json").read_text())
  cfg["num_hidden_layers"] -= 1
  cfg["layer_types"] = cfg["layer_types"][:-1]
  (out / "config.json").write_text(json.dumps(cfg))
  last = lm.config.num_layers - 1
  with pytest.raises(ValueError, match=rf"tensors of the text model have no place in .*config.json "
                                       rf"\(num_hidden_layers={last}\), e.g. \['model.layers.{last}."):
    load_model(str(out))
  assert os.path.exists(out / "model.safetensors")
