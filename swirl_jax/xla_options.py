"""The XLA compile options swirl_jax's train step is built with (``compiler_options``).

On XLA:CPU (jaxlib 0.10) the default ``xla_cpu_experimental_ynn_fusion_type`` hands both dot fusions
and reduction fusions to YNNPACK. Its reduction fusions are slow on what the train step reduces most:
softmax sums over Gemma's 262k-entry vocabulary (exp + sum over [256, 262144]: 261 ms against 159 ms
for XLA's own loop; the entropy of those rows: 833 against 214 ms), and they swallow whole MLPs into
one fusion ahead of a norm's reduction. Dots alone (``LIBRARY_FUSION_TYPE_DOT``) measured fastest,
back to back in one process on the 2-core development CPU: the step-wise RL train step of Gemma 3
270M at 8 x 512 tokens took 71.2 s against 82.1 s by default; with 4 layers 27.5 s against 34.9
(dots + reductions 31.5, individual dots 31.3, dots + elementwise 29.5, no YNNPACK 50.6).

The decode loop keeps XLA's defaults: there the option helped float32 at batch 16 (~149 against ~163
ms per step) but slowed bfloat16 (153-162 against 146-148 ms) and changed nothing at batch 64.

The options go to one program (``jax.jit(compiler_options=...)``), never to the process; other
backends get none, and an option the user sets in XLA_FLAGS wins.
"""

from __future__ import annotations

import os

import jax

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS: dict[str, str] = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(backend: str | None = None) -> dict[str, str]:
  """The per-program XLA options for ``backend`` (default: JAX's default backend), minus any option the
  XLA_FLAGS environment variable sets."""
  if (backend or jax.default_backend()) != "cpu":
    return {}
  user = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU_OPTIONS.items() if f"--{k}=" not in user}
