"""JAX's persistent compilation cache for ``python -m swirl_jax.main``: compiled programs are kept on
disk and reused by later runs with the same shapes and settings, in any workdir (the quick start on a
2-core CPU: 301 s of stages on a first run, 257 s on a second one in a new workdir).

The default directory sits beside the converted packaged models, one folder per host CPU
(``host_cpu.host_id``): XLA:CPU compiles for the host's instruction set, and a home directory shared by
different machines must not hand one's programs to another. JAX keys entries on the program, the
compile options, the XLA flags and the devices, so accelerators share it safely.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from swirl_jax import host_cpu
from swirl_jax.checkpoints.packaged import cache_dir

OFF = "none"


def default_directory(model_cache_dir: str = "") -> str:
  """<the packaged-model cache (model.cache_dir, $SWIRL_JAX_CACHE or ~/.cache/swirl_jax)>/xla/<host id>."""
  return str(cache_dir(model_cache_dir or None) / "xla" / host_cpu.host_id())


def enable(setting: str, model_cache_dir: str = "") -> str | None:
  """Turns the cache on for this process and returns its directory, or None where it stays off.

  setting: '' = ``default_directory``, 'none' = off, else the directory. JAX_COMPILATION_CACHE_DIR in
  the environment (JAX's own switch) wins over both. A directory that cannot be created is reported and
  the run goes on without the cache.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if setting == OFF:
    return None
  directory = setting or default_directory(model_cache_dir)
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning("compile_cache_dir=%r: cannot create it (%s); compiling without the cache", directory, e)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory
