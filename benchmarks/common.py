"""Helpers shared by the benchmarks: machine peaks measured in the same run, timing, JSON output.

Every benchmark states its ceiling next to its result, measured on the same machine in the same process
(this machine is shared, so a peak measured yesterday says little about a number measured now):

* ``memory_bandwidth()``: bytes/s of streaming a large array once (a sum over ~1 GB), the bound of
  weight-streaming work such as batch-1 decode;
* ``matmul_peak(dtype)``: FLOP/s of a large square XLA matmul in a dtype, the bound of batched work.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Import the library from the checkout when run as `python benchmarks/x.py`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from swirl_jax import host_cpu  # noqa: E402  (after the path line above)
from swirl_jax.xla_options import compiler_options  # noqa: E402


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
  """Fewest seconds of ``fn()`` over ``repeats`` calls (after ``warmup`` calls); waits for JAX results.

  The minimum, not the mean: on a shared machine the noise is other people's work, which only adds.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def memory_bandwidth(gigabytes: float = 1.0, repeats: int = 5) -> dict[str, float]:
  """Streaming read bandwidth (bytes/s): a float32 sum over a ``gigabytes`` array, numpy and XLA.

  Returns both and ``best``, their max: the rate at which this process can read memory it does not
  cache (the array is far larger than the last-level cache).
  """
  n = int(gigabytes * 1e9) // 4
  host = np.ones(n, np.float32)
  np_s = best_time(lambda: host.sum(), repeats)
  dev = jnp.asarray(host)
  del host
  total = jax.jit(jnp.sum)
  jax_s = best_time(lambda: total(dev), repeats)
  del dev
  nbytes = n * 4
  out = {"numpy_bytes_per_s": nbytes / np_s, "xla_bytes_per_s": nbytes / jax_s}
  out["best"] = max(out.values())
  return out


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of an [n, n] x [n, n] XLA matmul with inputs in ``dtype``.

  The best of XLA's default compile options and swirl_jax's (swirl_jax/xla_options.py) and, for a
  16-bit dtype, of a result in that dtype and a float32 result (the form the model's projections use):
  on a CPU with AMX, XLA:CPU runs bfloat16 x bfloat16 -> float32 on AMX at ~5x the rate of
  bfloat16 -> bfloat16, so a peak without it would flatter every share of it (MFU, roofline).
  """
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32).astype(dtype)
  forms = [jnp.matmul]
  if jnp.dtype(dtype).itemsize < 4:
    forms.append(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  rates = []
  for form in forms:
    for mm in (jax.jit(form), jax.jit(form, compiler_options=compiler_options())):
      rates.append(2 * n ** 3 / best_time(lambda: mm(a, b), repeats))
  return max(rates)


def load_average() -> float | None:
  """The 1-minute load average: above the core count, other work shared the CPU during the run."""
  return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
  """What ran the benchmark: enough to tell runs on different machines apart."""
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      # The CPU model and vector extensions: the development machine's 2 cores measured a 190 GFLOP/s
      # float32 matmul peak in one session and 72 (an AVX2-only "AMD EPYC") in another, so runs are only
      # comparable on the same ones.
      **host_cpu.cpu_description(),
      "cpu_count": os.cpu_count(),
      "load_average_1m_at_start": load_average(),
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "python": platform.python_version(),
  }


def rounded(obj: Any, digits: int = 4) -> Any:
  """Rounds floats in nested dicts and lists to ``digits`` significant digits (readable JSON)."""
  if isinstance(obj, float):
    return float(f"{obj:.{digits}g}") if np.isfinite(obj) else str(obj)
  if isinstance(obj, dict):
    return {k: rounded(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [rounded(v, digits) for v in obj]
  if isinstance(obj, np.generic):
    return rounded(obj.item(), digits)
  return obj


def print_json(obj: Any) -> None:
  """Prints one JSON object on its own line (floats rounded), flushing so `| tail -1` works."""
  print(json.dumps(rounded(obj), sort_keys=False), flush=True)


def log(msg: str) -> None:
  """Progress to stderr, so stdout holds only the JSON (and the optional table)."""
  print(msg, file=sys.stderr, flush=True)
