#!/usr/bin/env bash
# Run swirl_jax on every worker of a TPU VM pod slice (JAX finds the pod by itself):
#   launchers/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=value ...]
# WORKDIR should be a path every worker sees (a GCS bucket via gcsfuse, or an NFS mount), so that
# outputs and checkpoints are written once, by process 0, and read by all.
set -euo pipefail
tpu=${1:?usage: launchers/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?zone}; config=${3:?config}; workdir=${4:?workdir}
shift 4
repo=${SWIRL_JAX_REMOTE_DIR:-~/swirl_jax}
# 1. copy this checkout to every worker, 2. install the pinned requirements + TPU JAX, 3. run.
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$(dirname "$0")/.." "$tpu:$repo"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; cd $repo
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -r requirements.txt && pip install -q -U 'jax[tpu]'
  python -m swirl_jax.main --config=$config --workdir=$workdir $*"
