#!/usr/bin/env bash
# Run swirl_jax on this machine: launchers/local.sh CONFIG WORKDIR [--config.a.b=value ...]
# Uses every local accelerator (or the CPU). For several virtual CPU devices, e.g. to try a mesh:
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 launchers/local.sh configs/quickstart.py runs/x
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launchers/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launchers/local.sh CONFIG WORKDIR [overrides...]}
shift 2
[ -d .venv ] && . .venv/bin/activate
exec python -m swirl_jax.main --config="$config" --workdir="$workdir" "$@"
