"""config.json import/export refuses what our Gemma does not compute; the mesh shape refuses bad axes."""

import re

import numpy as np
import pytest

from swirl_jax.models.config import from_hf_config, preset, to_hf_config
from swirl_jax.models.sharding import MeshConfig, ShardingError

GEMMA3 = dict(model_type="gemma3_text", num_hidden_layers=6, hidden_size=64, num_attention_heads=8,
              num_key_value_heads=4, head_dim=16, intermediate_size=128, vocab_size=512)
GEMMA2 = {**GEMMA3, "model_type": "gemma2", "num_hidden_layers": 4}
DEFAULT_LOCAL = {"rope_type": "default", "rope_theta": 1e4}


def _v5(full, sliding=DEFAULT_LOCAL):
  return {"rope_parameters": {"full_attention": full, "sliding_attention": sliding}}


@pytest.mark.parametrize("hf, field", [
    ({**GEMMA3, "rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling"),
    ({**GEMMA3, **_v5({"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6})}, "full_attention"),
    ({**GEMMA3, **_v5({"rope_type": "dynamic", "factor": 8.0, "rope_theta": 1e6})}, "full_attention"),
    ({**GEMMA3, **_v5({"rope_type": "default", "rope_theta": 1e6},
                      {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4})}, "sliding_attention"),
    ({**GEMMA3, **_v5({"rope_type": "default", "rope_theta": 1e6},
                      {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})}, "sliding_attention"),
    # Gemma 2 has one RoPE for all layers: a factor would scale its local layers too.
    ({**GEMMA2, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}},
     "rope_parameters"),
    ({**GEMMA2, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "rope_scaling"),
    ({**GEMMA2, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     "rope_parameters"),
], ids=["legacy_yarn", "v5_yarn", "v5_dynamic", "v5_local_linear", "v5_local_yarn", "g2_v5_linear",
        "g2_legacy_linear", "g2_v5_yarn"])
def test_unsupported_rope_is_refused_naming_the_field(hf, field):
  with pytest.raises(ValueError, match=field.replace("[", r"\[")):
    from_hf_config(hf)


@pytest.mark.parametrize("hf, expected", [
    ({**GEMMA3, **_v5({"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6})}, (1e6, 1e4, 8.0)),
    ({**GEMMA3, **_v5({"rope_type": "default", "rope_theta": 50.0},
                      {"rope_type": "default", "rope_theta": 100.0})}, (50.0, 100.0, 1.0)),
    # factor 1 on local layers changes nothing
    ({**GEMMA3, **_v5({"rope_type": "default", "rope_theta": 1e6},
                      {"rope_type": "linear", "factor": 1.0, "rope_theta": 1e4})}, (1e6, 1e4, 1.0)),
    ({**GEMMA3, "rope_theta": 1e6, "rope_local_base_freq": 1e3,
      "rope_scaling": {"type": "linear", "factor": 8.0}}, (1e6, 1e3, 8.0)),
    ({**GEMMA2, "rope_parameters": {"rope_type": "default", "rope_theta": 100.0}}, (100.0, 100.0, 1.0)),
    # all-global Gemma 2: the single dict's linear factor is read, not dropped
    ({**GEMMA2, "layer_types": ["full_attention"] * 4,
      "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}, (1e4, 1e4, 4.0)),
], ids=["v5_linear", "v5_bases", "v5_local_factor_1", "legacy_gemma3", "g2_v5_theta", "g2_all_global_linear"])
def test_supported_rope_is_read(hf, expected):
  cfg = from_hf_config(hf)
  assert (cfg.rope_base_global, cfg.rope_base_local, cfg.rope_scale_global) == expected


@pytest.mark.parametrize("extra, field", [
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"hidden_activation": "gelu"}, "hidden_activation"),
    ({"hidden_activation": "relu"}, "hidden_activation"),
])
@pytest.mark.parametrize("base", [GEMMA2, GEMMA3], ids=["gemma2", "gemma3"])
def test_unsupported_features_are_refused(base, extra, field):
  with pytest.raises(ValueError, match=field):
    from_hf_config({**base, **extra})


def test_default_features_are_accepted():
  from_hf_config({**GEMMA3, "use_bidirectional_attention": False, "hidden_activation": "gelu_pytorch_tanh"})
  from_hf_config({**GEMMA2, "use_bidirectional_attention": None, "hidden_activation": None})


@pytest.mark.parametrize("name, overrides, setting", [
    ("tiny-gemma2", dict(rope_scale_global=8.0), "model.rope_scale_global"),
    ("tiny-gemma2", dict(use_qk_norm=True), "model.use_qk_norm"),
    ("tiny-gemma2", dict(rope_base_local=100.0), "model.rope_base_local"),
    ("tiny-gemma3", dict(use_qk_norm=False), "model.use_qk_norm"),
])
def test_export_refuses_settings_transformers_would_not_reproduce(name, overrides, setting):
  with pytest.raises(ValueError, match=setting):
    to_hf_config(preset(name, **overrides))


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3", "gemma2-27b", "gemma3-4b", "gemma3-270m"])
def test_export_round_trips(name):
  cfg = preset(name)
  assert from_hf_config(to_hf_config(cfg)) == cfg


@pytest.mark.parametrize("dims, key", [
    ((0, -1, 1), "mesh.data"), ((1, 0, 1), "mesh.fsdp"), ((1, 1, 0), "mesh.tensor"),
    ((-2, -1, 1), "mesh.data"), ((1, 2, -3), "mesh.tensor"), ((1.5, -1, 1), "mesh.data"),
    ((-1, -1, 1), "mesh.fsdp"),
])
def test_mesh_shape_refuses_bad_axes_naming_them(dims, key):
  with pytest.raises(ShardingError, match=key) as info:
    MeshConfig(*dims).shape(8)
  assert isinstance(info.value, ValueError)


def test_mesh_shape_accepts_numpy_ints():
  assert MeshConfig(np.int64(2), -1, np.int32(2)).shape(8) == (2, 2, 2)


def test_indivisible_dimension_names_the_cli_keys():
  import jax

  from swirl_jax.models.sharding import Rules, checked_spec

  mesh = jax.sharding.AbstractMesh((1, 2, 4), ("data", "fsdp", "tensor"))
  with pytest.raises(ShardingError, match=r"--config\.mesh\.replicate_kv_heads=true") as info:
    checked_spec("layers.0.attn.k", (64, 1, 16), ("embed", "kv_heads", "head_dim"), mesh, Rules())
  assert "--config.mesh.tensor" in str(info.value)
  with pytest.raises(ShardingError, match=r"--config\.mesh\.tensor") as info:
    checked_spec("embedding", (510, 64), ("vocab", "embed"), mesh, Rules())
  assert "replicate_kv_heads" not in str(info.value)


# Accepted RoPE settings still match transformers' logits (tiny random models, written here).
@pytest.mark.parametrize("family, kw", [
    ("gemma3", _v5({"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6})),
    ("gemma3", _v5({"rope_type": "default", "rope_theta": 50.0},
                   {"rope_type": "default", "rope_theta": 100.0})),
    ("gemma2", dict(layer_types=["full_attention"] * 4,
                    rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4})),
], ids=["g3_linear", "g3_bases", "g2_all_global_linear"])
def test_accepted_rope_matches_transformers(family, kw, tmp_path):
  pytest.importorskip("torch")
  from hf_reference import hf_logits, tiny_hf_model
  from swirl_jax.loading import load_model, pad_batch

  hf = tiny_hf_model(family, **kw)
  hf.save_pretrained(tmp_path)
  lm = load_model(str(tmp_path))
  rng = np.random.default_rng(1)
  tokens, valid = pad_batch([list(rng.integers(3, 512, n)) for n in (21, 13, 5)], 0)
  ref = hf_logits(hf, tokens, valid)
  assert np.abs(lm.logits(tokens, valid) - ref)[valid].max() <= 1e-4


# A config.json with a missing, null or mistyped size names the key (and, read from a directory, the file).
@pytest.mark.parametrize("change, message", [
    ({"hidden_size": None}, "config.json key 'hidden_size' = None is not an integer"),
    ({"num_hidden_layers": None}, "config.json key 'num_hidden_layers' = None is not an integer"),
    ({"num_key_value_heads": "4"}, "config.json key 'num_key_value_heads' = '4' is not an integer"),
    ({"intermediate_size": 127.5}, "config.json key 'intermediate_size' = 127.5 is not an integer"),
    ({"num_attention_heads": 0}, "config.json key 'num_attention_heads' = 0 must be positive"),
    ({"vocab_size": True}, "config.json key 'vocab_size' = True is not an integer"),
    ({"max_position_embeddings": None}, "config.json key 'max_position_embeddings' = None is not an integer"),
    ({"rms_norm_eps": None}, "config.json key 'rms_norm_eps' = None is not a number"),
    ({"layer_types": "sliding_attention"}, "config.json key 'layer_types' is a JSON str, not a list"),
    ({"rope_theta": None}, "config.json key 'rope_theta' = None is not a number"),
    ({"rope_scaling": {"rope_type": "linear", "factor": None}},
     "config.json rope_scaling key 'factor' = None is not a number"),
])
def test_bad_config_value_names_the_key(change, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    from_hf_config({**GEMMA3, **change})


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "intermediate_size"])
def test_missing_config_key_names_the_key(key):
  """The sizes that define the weights have no default (the others take transformers': below)."""
  hf = dict(GEMMA3)
  del hf[key]
  with pytest.raises(ValueError, match=re.escape(f"config.json key {key!r} is missing")):
    from_hf_config(hf)


def test_whole_floats_nulls_with_defaults_and_text_config_are_read():
  assert from_hf_config({**GEMMA3, "hidden_size": 64.0}) == from_hf_config(GEMMA3)
  # null head_dim / sliding_window mean the default, as they always did
  cfg = from_hf_config({**GEMMA3, "head_dim": None, "sliding_window": None})
  assert (cfg.head_dim, cfg.sliding_window) == (64 // 8, 4096)
  with pytest.raises(ValueError, match="config.json key 'text_config' is a JSON list, not an object"):
    from_hf_config({"model_type": "gemma3", "text_config": []})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny Gemma 3 checkpoint directory as transformers writes it (config.json + model.safetensors)."""
  from swirl_jax.checkpoints.build import model_weights, random_model
  from swirl_jax.checkpoints.hf_export import export_hf

  cfg = preset("tiny-gemma3")
  return export_hf(cfg, model_weights(random_model(cfg)), str(tmp_path_factory.mktemp("hf") / "hf"))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("hidden_size"), "config.json key 'hidden_size' is missing"),
    (lambda c: c.update(num_hidden_layers=None), "config.json key 'num_hidden_layers' = None is not an integer"),
    (lambda c: c.update(model_type="llama"), "config.json model_type 'llama' is not gemma2"),
], ids=["missing", "null", "model_type"])
def test_hf_checkpoint_errors_name_the_config_file(hf_dir, tmp_path, change, message):
  import json
  import shutil

  from swirl_jax.checkpoints.hf_import import read_hf_checkpoint

  d = shutil.copytree(hf_dir, tmp_path / "hf")
  config = json.loads((d / "config.json").read_text())
  change(config)
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError) as info:
    read_hf_checkpoint(str(d))
  # The path takes the place of the bare "config.json": "/.../hf/config.json key 'hidden_size' is missing".
  assert str(info.value).startswith(str(d / "config.json") + message[len("config.json"):]), str(info.value)


def test_hf_checkpoint_whose_weights_do_not_fit_config_names_tensor_and_file(hf_dir, tmp_path):
  import json
  import shutil

  from swirl_jax.checkpoints.hf_import import read_hf_checkpoint

  d = shutil.copytree(hf_dir, tmp_path / "hf")
  config = json.loads((d / "config.json").read_text())
  real = config["intermediate_size"]
  config["intermediate_size"] = real // 2
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError) as info:
    read_hf_checkpoint(str(d))
  msg = str(info.value)
  assert "'model.layers.0.mlp.gate_proj.weight'" in msg and str(d / "config.json") in msg, msg
  assert f"has shape ({real}, {config['hidden_size']})" in msg and "intermediate_size" in msg, msg
  (d / "config.json").write_text("{")
  with pytest.raises(ValueError, match=re.escape(str(d / "config.json")) + ": not valid JSON"):
    read_hf_checkpoint(str(d))


# Google's gemma-3-4b-it config.json (its text_config leaves the head counts and vocabulary to transformers'
# defaults), and the 27B's text_config (no vocabulary size).
GEMMA3_4B = {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
             "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
             "model_type": "gemma3", "text_config": {
                 "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
                 "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
             "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
             "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                               "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                               "patch_size": 14, "vision_use_head": False}}
GEMMA3_27B = {**GEMMA3_4B, "text_config": {
    "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}}
SPARSE_GEMMA2 = {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}


@pytest.mark.parametrize("hf", [GEMMA3_4B, GEMMA3_27B, SPARSE_GEMMA2], ids=["gemma3_4b", "gemma3_27b", "gemma2_sparse"])
def test_keys_left_out_take_transformers_defaults(hf):
  """The published 4B and 27B configs were refused ('num_attention_heads' / 'vocab_size' missing), and a Gemma 2
  config without its soft-caps or query_pre_attn_scalar loaded without the caps (logits off by 23 in the
  review): keys config.json leaves out are read as transformers reads them."""
  import transformers

  ours = from_hf_config(hf)
  if hf["model_type"] == "gemma3":
    t = transformers.Gemma3Config(**hf).text_config
  else:
    t = getattr(transformers, "Gemma2Config" if hf["model_type"] == "gemma2" else "Gemma3TextConfig")(**hf)
  assert (ours.vocab_size, ours.num_heads, ours.num_kv_heads, ours.head_dim) == (
      t.vocab_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim)
  assert (ours.query_pre_attn_scalar, ours.sliding_window, ours.max_seq_len) == (
      t.query_pre_attn_scalar, t.sliding_window, t.max_position_embeddings)
  assert ours.layer_types == tuple("local" if x == "sliding_attention" else "global" for x in t.layer_types)
  if hf["model_type"] == "gemma2":
    assert (ours.attn_logit_softcap, ours.final_logit_softcap) == (t.attn_logit_softcapping, t.final_logit_softcapping)
  if hf is GEMMA3_4B:
    assert (ours.num_heads, ours.num_kv_heads, ours.vocab_size, ours.rope_scale_global) == (8, 4, 262_208, 8.0)


def test_unknown_layer_types_and_a_multimodal_soft_cap():
  """A layer type we do not compute was read as global attention; Gemma3ForConditionalGeneration applies no
  final soft-cap, whatever its text_config says."""
  with pytest.raises(ValueError, match=r"layer_types\[5\] = 'chunked_attention' is not supported"):
    from_hf_config({**GEMMA3, "layer_types": ["sliding_attention"] * 5 + ["chunked_attention"]})
  capped = {**GEMMA3_4B, "text_config": {**GEMMA3_4B["text_config"], "final_logit_softcapping": 5.0}}
  assert from_hf_config(capped).final_logit_softcap is None
  assert from_hf_config({**GEMMA3, "final_logit_softcapping": 5.0}).final_logit_softcap == 5.0  # Gemma3ForCausalLM
