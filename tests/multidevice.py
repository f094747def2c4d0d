"""Runs a test body in a fresh Python process with N host CPU devices.

JAX fixes its device count when it starts, so multi-device tests run their body in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N and report failures through the exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_device_count(xla_flags: str, n: int) -> str:
  """XLA_FLAGS asking for n host devices, keeping the other inherited flags.

  An inherited count flag is dropped: with two, XLA takes the last one, which may not be ours.
  """
  kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={n}"])


def run_with_devices(code: str, n: int = 8, timeout: float = 600) -> str:
  env = dict(os.environ)
  env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), n)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
  return proc.stdout
