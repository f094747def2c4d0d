#!/usr/bin/env bash
# Run swirl_jax on every worker of a TPU VM pod slice (every worker runs the same command and
# swirl_jax.distributed finds the pod from the TPU VM metadata, as JAX does):
#   launchers/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.a.b=value ...]
# CONFIG is relative to the checkout (it runs from the copy on the workers). WORKDIR should be a path
# every worker sees (a GCS bucket via gcsfuse, or an NFS mount), so that outputs and checkpoints are
# written once, by process 0, and read by all.
# SWIRL_JAX_REMOTE_DIR: where the code goes on the workers, relative to the remote home (default swirl_jax).
# SWIRL_JAX_PYTHON: the workers' interpreter for the venv (default python3; swirl_jax needs Python >= 3.11,
# which some TPU VM images do not ship as python3: install e.g. python3.11-venv and pass python3.11).
# SWIRL_JAX_ENV: names of environment variables to give the workers where they are set here (default
# GEMINI_API_KEY OPENAI_API_KEY HF_TOKEN: the judge's key, e.g. judge.openai.api_key_env); gcloud ssh
# passes none. They travel in a file of mode 600 that each worker reads and deletes before the run.
# Model weights are not copied (hf/ is ignored, like any large local file should be): put them where every
# worker sees them, e.g. --config.model.source=/mnt/shared/gemma-2-27b-it.
# The remote commands run in the workers' login shell (bash on TPU VM images).
set -euo pipefail
tpu=${1:?usage: launchers/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?zone}; config=${3:?config}; workdir=${4:?workdir}
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=${SWIRL_JAX_REMOTE_DIR:-swirl_jax}  # not ~/...: that would expand to the local home
python=${SWIRL_JAX_PYTHON:-python3}
jax_version=$(sed -n 's/^jax==//p' "$root/requirements.txt")
[ -n "$jax_version" ] || { echo "tpu_pod.sh: no jax== pin in requirements.txt" >&2; exit 1; }

# 1. Copy only the files git knows (tracked, edits included, and untracked but not ignored): not the local
# .venv (gigabytes, with this machine's absolute paths), .git or runs/.
tarball=$(mktemp "${TMPDIR:-/tmp}/swirl_jax.XXXXXX")
envfile=$(mktemp "${TMPDIR:-/tmp}/swirl_jax_env.XXXXXX")  # (mode 600)
trap 'rm -f "$tarball" "$envfile"' EXIT
git -C "$root" ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do
    case "$f" in .venv | .venv/* | hf/*) continue ;; esac  # (also where a checkout's .gitignore is older)
    if [ -e "$root/$f" ]; then printf '%s\0' "$f"; fi  # skip deleted
  done |
  tar -C "$root" --null -T - -czf "$tarball"
remote_tar=$remote_dir.tar.gz
gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all "$tarball" "$tpu:$remote_tar"

# The environment variables the run needs (an API key), in a file only its owner reads.
for name in ${SWIRL_JAX_ENV-GEMINI_API_KEY OPENAI_API_KEY HF_TOKEN}; do
  if [ -n "${!name:-}" ]; then printf 'export %s=%q\n' "$name" "${!name}" >> "$envfile"; fi
done
remote_env=$remote_dir.env
case $remote_env in /*) env_src=$remote_env ;; *) env_src=./$remote_env ;; esac  # (`. NAME` searches PATH)
if [ -s "$envfile" ]; then
  gcloud compute tpus tpu-vm scp --zone "$zone" --worker=all "$envfile" "$tpu:$remote_env"
fi

# 2. Unpack, create the venv there (never copied), install the pinned requirements + TPU JAX of the same
# version, 3. run. Every value is quoted with %q so that spaces, |, & or $ reach python unchanged.
printf -v run_cmd ' %q' python -m swirl_jax.main "--config=$config" "--workdir=$workdir" "$@"
# (pip would fail on an older Python with a resolver error about numpy/jax pins: say what is wrong instead)
# A venv an older Python made (an earlier run's, before this check) is rebuilt. The two pip installs are
# separate statements: under set -e a failure on the left of && would not stop the run.
printf -v remote 'set -e; if [ -f %q ]; then . %q; rm -f %q; fi
mkdir -p %q; tar -xzf %q -C %q; rm -f %q; cd %q; py=%q
if [ -d .venv ] && ! .venv/bin/python -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
  rm -rf .venv
fi
if [ ! -d .venv ]; then
  "$py" -c "import sys; sys.exit(sys.version_info < (3, 11))" || {
    echo "tpu_pod.sh: $(hostname): $py is $("$py" --version 2>&1); swirl_jax needs Python >= 3.11: install one on the workers and pass SWIRL_JAX_PYTHON=python3.11 (or newer)" >&2; exit 1; }
  "$py" -m venv .venv
fi
. .venv/bin/activate
pip install -q -r requirements.txt
pip install -q %q
' "$remote_env" "$env_src" "$remote_env" "$remote_dir" "$remote_tar" "$remote_dir" "$remote_tar" "$remote_dir" \
  "$python" \
  "jax[tpu]==$jax_version"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote$run_cmd"
