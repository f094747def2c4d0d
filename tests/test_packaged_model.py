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


@pytest.fixture(scope="module")
def reference():
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate")
  from transformers import AutoModelForCausalLM

  from swirl_jax.checkpoints.packaged import packaged_gguf

  path = packaged_gguf("gemma3-270m")
  return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def test_logits_match_transformers_on_the_same_gguf(ours, reference):
  import torch

  seqs = [ours.tokenizer.encode(p) for p in PROMPTS]
  tokens, valid = pad_batch(seqs, ours.tokenizer.pad_id)
  with torch.no_grad():
    ref = [reference(input_ids=torch.tensor([s])).logits[0].float().numpy() for s in seqs]
  got = ours.logits(tokens, valid)
  for i, s in enumerate(seqs):
    diff = np.abs(got[i, :len(s)] - ref[i]).max()
    assert diff <= 2e-3, (PROMPTS[i], diff)
    np.testing.assert_array_equal(got[i, :len(s)].argmax(-1), ref[i].argmax(-1))


def test_greedy_decode_equals_transformers_generate(ours, reference):
  """A batch of prompts of different lengths, 40 new tokens each, token for token."""
  import torch
  from flax import nnx

  from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
  from swirl_jax.sampling.generate import generate

  n_new = 40
  sampler = Sampler.create(ours.model, batch=len(PROMPTS), cache_len=256,
                           sampling=SamplingConfig(temperature=0, max_new_tokens=n_new),
                           stops=build_stop_table(ours.tokenizer, [], []), steps_per_call=16, max_chunk=64,
                           exit_when_done=len(PROMPTS))
  seqs = [ours.tokenizer.encode(p) for p in PROMPTS]
  outs = generate(sampler, nnx.state(ours.model), seqs)
  for s, out in zip(seqs, outs):
    with torch.no_grad():
      ref = reference.generate(torch.tensor([s]), max_new_tokens=n_new, min_new_tokens=n_new,
                               do_sample=False)[0, len(s):].tolist()
    assert out == ref


def test_closing_tags_stop_generation_in_every_context(ours):
  """The stop table built from the real tokenizer fires right after each closing tag however the tag's
  first characters merge with the text before it."""
  from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
  from swirl_jax.tools import STOP_STRINGS
  import jax.numpy as jnp

  tok = ours.tokenizer
  table = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  sampler = Sampler.create(ours.model, batch=1, cache_len=64, sampling=SamplingConfig(max_new_tokens=500),  # no budget stop here
                           stops=table, max_chunk=512)
  cases = ["I add them. <math_exp>15 * 8</math_exp> and more", "<search_query>Paris (city)</search_query>x",
           "so:<answer>42</answer>!", "(<math_exp>1+2)</math_exp>", "done.<answer>yes.</answer>\n",
           "no tag here, just </b> text <end_of_turn>"]
  for text in cases:
    ids = tok.encode(text, add_bos=False)
    width = table.tails.shape[1] + 1
    fired = []
    for i in range(len(ids)):
      recent = ([-1] * width + ids[:i + 1])[-width:]
      hit = sampler._stopped(sampler.device_stops, jnp.asarray([recent]), jnp.asarray([ids[i]]),
                             jnp.asarray([i + 1]), jnp.asarray([10]))
      if bool(hit[0]):
        fired.append(i)
    first = fired[0] if fired else None
    kept = tok.decode(ids[:first + 1]) if first is not None else None
    if "<end_of_turn>" in text:
      assert kept == text
    else:
      assert kept is not None and kept.endswith(("</math_exp>", "</search_query>", "</answer>")), (text, kept)
      assert text.startswith(kept)


def test_second_load_is_fast():
  load_model("gemma3-270m")  # converted copy exists after this
  t = time.perf_counter()
  load_model("gemma3-270m")
  # Generous bound (the issue asks < 60 s; measured ~6 s here): a regression to re-parsing the GGUF
  # (~45 s) on a loaded machine would still be caught by the README figure, not by a flaky test.
  assert time.perf_counter() - t < 60


def test_a_gguf_cut_short_by_a_killed_run_is_assembled_again(tmp_path):
  """A run killed while assembling used to leave a truncated GGUF under the final name, and every later
  run failed on its checksum ('pass overwrite=True'); now the file is assembled under a temporary name,
  and a bad file found under the final name (or a dead process's temp) is replaced."""
  import hashlib
  import os
  import subprocess
  import sys

  from swirl_jax.checkpoints import packaged

  pkg = packaged._package("gemma3-270m")
  gguf_dir = tmp_path / "gguf"
  gguf_dir.mkdir()
  (gguf_dir / pkg.MODEL_NAME).write_bytes(b"GGUF" + b"\0" * 1000)  # cut short
  dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True, check=True).stdout)
  host = packaged.temp_prefix().split("@")[1]
  (gguf_dir / f".tmp-{dead}@{host}@{pkg.MODEL_NAME}").write_bytes(b"GGUF")
  path = packaged.packaged_gguf("gemma3-270m", cache=str(tmp_path))
  assert hashlib.sha256(path.read_bytes()).hexdigest() == pkg.EXPECTED_SHA256
  assert os.listdir(gguf_dir) == [pkg.MODEL_NAME]


def test_the_model_judge_stops_at_every_verdict_and_a_stopped_echo_is_no_verdict(ours):
  """stop_at_verdict stops at a verdict wherever it stands (a reply that starts with it, markdown, after a
  newline); a base model copying out the instruction is stopped inside it ('... exactly "VERDICT: GOOD'),
  which parsed as GOOD and now parses as no verdict."""
  from swirl_jax.judges.model_backend import VERDICT_STOPS
  from swirl_jax.judges.prompts import parse_verdict
  from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
  import jax.numpy as jnp

  tok = ours.tokenizer
  table = build_stop_table(tok, VERDICT_STOPS, [tok.eos_id, tok.end_of_turn_id])
  sampler = Sampler.create(ours.model, batch=1, cache_len=64, sampling=SamplingConfig(max_new_tokens=500),
                           stops=table, max_chunk=512)

  def kept(text):
    ids, width = tok.encode(text, add_bos=False), table.tails.shape[1] + 1
    for i in range(len(ids)):
      recent = ([-1] * width + ids[:i + 1])[-width:]
      if bool(sampler._stopped(sampler.device_stops, jnp.asarray([recent]), jnp.asarray([ids[i]]),
                               jnp.asarray([i + 1]), jnp.asarray([10]))[0]):
        return tok.decode(ids[:i + 1])
    return None

  assert kept("The query helps.\nVERDICT: GOOD\nMore rambling") == "The query helps.\nVERDICT: GOOD"
  assert kept("VERDICT: BAD\nThe query repeats step 1.") == "VERDICT: BAD"
  assert kept("It repeats step 1.\n\n**VERDICT: BAD** and so on") == "It repeats step 1.\n\n**VERDICT: BAD"
  assert kept("Unsupported. VERDICT: BAD.") == "Unsupported. VERDICT: BAD"
  echo = kept('End with a line that is exactly "VERDICT: GOOD" or "VERDICT: BAD".')
  assert echo == 'End with a line that is exactly "VERDICT: GOOD' and parse_verdict(echo) is None
