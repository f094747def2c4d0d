"""GGUF import of Gemma 2 and Gemma 3 on files the test writes with gguf's own writer.

The files follow llama.cpp's conventions (tensor names, (1 + w) norms stored as w + 1, metadata keys),
so a model read from GGUF must give the logits of the same weights read from the HF directory.
"""

import numpy as np
import pytest

pytest.importorskip("torch")

from hf_reference import tiny_hf_model  # noqa: E402
from swirl_jax.checkpoints.layout import entries  # noqa: E402
from swirl_jax.checkpoints.safetensors_io import SafetensorsFile  # noqa: E402
from swirl_jax.loading import load_model, pad_batch  # noqa: E402


def _write_gguf(hf_dir, path, family: str, quantize: str | None = None, untied: bool = False):
  import gguf

  lm = load_model(str(hf_dir))
  cfg = lm.config
  f = SafetensorsFile(str(hf_dir / "model.safetensors"))
  w = gguf.GGUFWriter(str(path), family)
  w.add_block_count(cfg.num_layers)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.mlp_dim)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.rms_eps)
  w.add_context_length(cfg.max_seq_len)
  w.add_sliding_window(cfg.sliding_window)
  w.add_rope_freq_base(cfg.rope_base_global)
  w.add_vocab_size(cfg.vocab_size)
  if family == "gemma2":
    w.add_attn_logit_softcapping(cfg.attn_logit_softcap)
    w.add_final_logit_softcapping(cfg.final_logit_softcap)
  for e in entries(cfg):
    arr = np.asarray(f.get(e.hf), np.float32)
    if e.is_norm:
      arr = arr + 1.0  # llama.cpp folds Gemma's (1 + w) into the stored weight
    if quantize and e.path.endswith("mlp.down"):
      qtype = getattr(gguf.GGMLQuantizationType, quantize)
      if quantize == "Q8_1":  # (gguf cannot quantize to it either: zero blocks of its byte size)
        data = np.zeros(gguf.quant_shape_to_byte_shape(arr.shape, qtype), np.uint8)
      else:
        data = gguf.quants.quantize(arr, qtype)
      w.add_tensor(e.gguf, data, raw_dtype=qtype)
    else:
      w.add_tensor(e.gguf, arr)
  if untied:
    w.add_tensor("output.weight", np.ones((cfg.vocab_size, cfg.d_model), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return lm


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_gguf_weights_give_the_hf_logits(family, tmp_path):
  kw = {} if family == "gemma2" else {"layer_types": ["sliding_attention"] * 5 + ["full_attention"]}
  hf = tiny_hf_model(family, **kw)
  hf.save_pretrained(tmp_path / "hf")
  ref = _write_gguf(tmp_path / "hf", tmp_path / "m.gguf", family)
  from swirl_jax.checkpoints.build import build_model
  from swirl_jax.checkpoints.gguf_import import read_gguf

  cfg, fetch, _ = read_gguf(str(tmp_path / "m.gguf"))
  assert cfg == ref.config
  model = build_model(cfg, fetch)
  from swirl_jax.loading import LoadedModel

  got = LoadedModel(model, None, cfg, "gguf")
  rng = np.random.default_rng(0)
  tokens, valid = pad_batch([list(rng.integers(3, 512, n)) for n in (19, 6)], 0)
  np.testing.assert_allclose(got.logits(tokens, valid)[valid], ref.logits(tokens, valid)[valid], atol=1e-5)


@pytest.mark.parametrize("qtype", ["Q8_0", "BF16"])  # BF16: the reader gives raw bytes, not numbers
def test_quantized_tensors_are_dequantized(tmp_path, qtype):
  import gguf

  hf = tiny_hf_model("gemma2")
  hf.save_pretrained(tmp_path / "hf")
  _write_gguf(tmp_path / "hf", tmp_path / "q.gguf", "gemma2", quantize=qtype)
  from swirl_jax.checkpoints.gguf_import import read_gguf

  _, fetch, _ = read_gguf(str(tmp_path / "q.gguf"))
  exact = np.asarray(SafetensorsFile(str(tmp_path / "hf" / "model.safetensors")).get(
      "model.layers.0.mlp.down_proj.weight"), np.float32)
  t = getattr(gguf.GGMLQuantizationType, qtype)
  want = gguf.quants.dequantize(gguf.quants.quantize(exact, t), t)
  got = fetch("layers.0.mlp.down")
  assert got.shape == exact.T.shape
  np.testing.assert_array_equal(got, want.T)
  assert 0 < np.abs(got - exact.T).max() < 0.01  # really rounded, and close


def test_not_a_gemma_gguf_is_refused(tmp_path):
  import gguf

  w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
  w.add_block_count(1)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  from swirl_jax.checkpoints.gguf_import import read_gguf

  with pytest.raises(ValueError, match="general.architecture is 'llama'"):
    read_gguf(str(tmp_path / "llama.gguf"))
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="junk.gguf: cannot read as GGUF"):
    read_gguf(str(tmp_path / "junk.gguf"))


def test_an_untied_lm_head_is_refused(tmp_path):
  """A separate output.weight was ignored: logits came from token_embd, not from the file's LM head."""
  tiny_hf_model("gemma3").save_pretrained(tmp_path / "hf")
  _write_gguf(tmp_path / "hf", tmp_path / "u.gguf", "gemma3", untied=True)
  from swirl_jax.checkpoints.gguf_import import read_gguf

  with pytest.raises(ValueError, match="u.gguf: has a separate output.weight"):
    read_gguf(str(tmp_path / "u.gguf"))


def test_rope_metadata_is_read_or_refused(tmp_path):
  """Gemma 3's local RoPE base was hard-coded to 10k even where the file stores rope.freq_base_swa; a
  yarn scaling type read as unscaled."""
  tiny_hf_model("gemma3").save_pretrained(tmp_path / "hf")
  _write_gguf(tmp_path / "hf", tmp_path / "m.gguf", "gemma3")
  from swirl_jax.checkpoints.gguf_import import read_gguf
  from swirl_jax.models.config import from_gguf_metadata

  cfg, _, meta = read_gguf(str(tmp_path / "m.gguf"))
  assert from_gguf_metadata({**meta, "gemma3.rope.freq_base_swa": 5000.0}).rope_base_local == 5000.0
  assert cfg.rope_base_local == 10_000.0  # older files: Gemma 3's own
  linear = {**meta, "gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0}
  assert from_gguf_metadata(linear).rope_scale_global == 8.0
  with pytest.raises(ValueError, match="rope.scaling.type 'yarn' is not supported"):
    from_gguf_metadata({**meta, "gemma3.rope.scaling.type": "yarn", "gemma3.rope.scaling.factor": 8.0})


def test_a_type_gguf_cannot_dequantize_is_named_up_front(tmp_path):
  """A Q8_1 tensor passed read_gguf and failed in build_model with gguf's NotImplementedError, naming neither
  the file nor the tensor."""
  tiny_hf_model("gemma2").save_pretrained(tmp_path / "hf")
  _write_gguf(tmp_path / "hf", tmp_path / "q81.gguf", "gemma2", quantize="Q8_1")
  from swirl_jax.checkpoints.gguf_import import read_gguf

  with pytest.raises(ValueError, match=r"q81.gguf: tensor blk.0.ffn_down.weight has type Q8_1, which the gguf "
                                       r"package cannot dequantize"):
    read_gguf(str(tmp_path / "q81.gguf"))


def test_a_gguf_without_a_tokenizer_is_named(tmp_path):
  """transformers' converter said 'Cannot build a tokenizer from a GGUF file stating tokenizer None', naming
  no file."""
  import gguf

  from swirl_jax.tokenizer import Tokenizer

  w = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "gemma3")
  w.add_block_count(1)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"bare.gguf: cannot read the tokenizer the GGUF file should embed"):
    Tokenizer.from_gguf(str(tmp_path / "bare.gguf"))
