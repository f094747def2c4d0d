#!/usr/bin/env bash
# Run swirl_jax on this machine: launchers/local.sh CONFIG WORKDIR [--config.a.b=value ...]
# CONFIG and WORKDIR are relative to the directory it is called from (they are made absolute before the
# script moves to the checkout). Uses every local accelerator (or the CPU). For several virtual CPU
# devices, e.g. to try a mesh:
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 launchers/local.sh configs/quickstart.py runs/x
set -euo pipefail
config=${1:?usage: launchers/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launchers/local.sh CONFIG WORKDIR [overrides...]}
shift 2
# Portable absolute paths (no `realpath -m` on macOS); a CONFIG's ":args" suffix is kept as it is.
case $config in /*) ;; *) config=$PWD/$config ;; esac
case $workdir in /*) ;; *) workdir=$PWD/$workdir ;; esac
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
if [ -d .venv ]; then . .venv/bin/activate; fi
exec python -m swirl_jax.main --config="$config" --workdir="$workdir" "$@"
