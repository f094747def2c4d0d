"""What the host CPU can do, from /proc/cpuinfo: the sampler's weight dtype and the benchmarks' machine
records depend on it."""

from __future__ import annotations

import functools
import hashlib
import platform

# Vector extensions that change what XLA:CPU's matmuls can do (and how fast).
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_ARITHMETIC = ("avx512_bf16", "amx_bf16")


def _first_cpu_fields(text: str) -> dict[str, str]:
  """/proc/cpuinfo's "key: value" lines, the first CPU's value of each key."""
  fields = {}
  for line in text.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  return fields


def parse_cpuinfo(text: str) -> dict:
  """{"cpu_model": str | None, "cpu_extensions": [those of EXTENSIONS the first CPU lists]}."""
  fields = _first_cpu_fields(text)
  if "flags" not in fields and "model name" not in fields:
    return {}  # not x86 (ARM lists "Features" and "CPU part"): unknown, as where there is no cpuinfo
  flags = set(fields.get("flags", "").split())
  return {"cpu_model": fields.get("model name"), "cpu_extensions": [x for x in EXTENSIONS if x in flags]}


@functools.cache
def cpu_description() -> dict:
  """``parse_cpuinfo`` of this host; empty where /proc/cpuinfo cannot be read (off Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      return parse_cpuinfo(f.read())
  except OSError:
    return {}


@functools.cache
def host_id() -> str:
  """A short name for this CPU's instruction set: the machine type and a hash of /proc/cpuinfo's model
  name and full flags line (e.g. ``x86_64-3f2a9c01b7d4``). Code XLA:CPU compiled for one host may use
  instructions another lacks, so anything holding compiled programs is kept per host id."""
  try:
    with open("/proc/cpuinfo") as f:
      ident = cpuinfo_identity(f.read())
  except OSError:
    ident = platform.platform() + "|" + platform.processor()
  return f"{platform.machine() or 'cpu'}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def cpuinfo_identity(text: str) -> str:
  """What host_id hashes: x86's model name and flags; ARM's core (implementer, architecture, variant,
  part) and "Features" (SVE, bf16, ...), which x86 does not list."""
  fields = _first_cpu_fields(text)
  ident = fields.get("model name", "") + "|" + " ".join(sorted(fields.get("flags", "").split()))
  arm = [fields.get(k, "") for k in ("CPU implementer", "CPU architecture", "CPU variant", "CPU part")]
  if any(arm) or "Features" in fields:
    ident += "|" + "|".join(arm) + "|" + " ".join(sorted(fields.get("Features", "").split()))
  return ident


def has_bf16_arithmetic(description: dict | None = None) -> bool:
  """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX). Without it XLA:CPU runs each
  bfloat16 matmul as a float32 one on upcast copies of both operands; with it YNNPACK has bfloat16
  kernels for the dots written as ``gemma.project`` writes them. Unknown hosts count as capable, so
  nothing changes where /proc/cpuinfo is missing."""
  d = cpu_description() if description is None else description
  if not d:
    return True
  return any(x in d.get("cpu_extensions", ()) for x in BF16_ARITHMETIC)
