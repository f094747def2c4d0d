"""The train step's XLA:CPU options: only dots go to YNNPACK, never reductions; other backends get
no options, and the user's XLA_FLAGS win."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swirl_jax.xla_options import CPU_OPTIONS, YNN_FUSION_TYPE, compiler_options

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")


def ynn_fusion_ops(hlo: str) -> list[str]:
  """The op_name (last path element) of every YNNPACK fusion in compiled HLO text."""
  return [re.search(r'op_name="[^"]*/([^"/]+)"', line).group(1)
          for line in hlo.splitlines() if '"kind":"__ynn_fusion"' in line and "op_name=" in line]


def test_options_per_backend_and_user_flags_win(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert compiler_options("cpu") == {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_DOT"}
  assert compiler_options("gpu") == {} and compiler_options("tpu") == {}
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{YNN_FUSION_TYPE}=")
  assert compiler_options("cpu") == {}
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert compiler_options("cpu") == CPU_OPTIONS


@cpu_only
def test_reductions_stay_out_of_ynnpack_dots_do_not(monkeypatch):
  """XLA's default hands a softmax's sum to YNNPACK (why the option exists); ours leaves it to XLA and
  still gives the dot to YNNPACK. Same values."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)

  def f(h, w):
    logits = h @ w
    return jnp.sum(jnp.exp(logits - jnp.max(logits, -1, keepdims=True)), -1)

  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.standard_normal((8, 64), np.float32))
  w = jnp.asarray(rng.standard_normal((64, 4096), np.float32))
  default = jax.jit(f).lower(h, w).compile().as_text()
  if not ynn_fusion_ops(default):
    pytest.skip("XLA:CPU uses no YNNPACK fusion on this CPU")
  ours = jax.jit(f, compiler_options=compiler_options()).lower(h, w).compile().as_text()
  assert "reduce_sum" in ynn_fusion_ops(default)
  assert ynn_fusion_ops(ours) and not any(op.startswith("reduce") for op in ynn_fusion_ops(ours))
  ours_fn = jax.jit(f, compiler_options=compiler_options())
  np.testing.assert_allclose(ours_fn(h, w), jax.jit(f)(h, w), rtol=1e-6)
