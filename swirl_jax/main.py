"""Command line: ``python -m swirl_jax.main --config=configs/NAME.py --workdir=DIR [--config.a.b=value]``.

Modes (``--config.mode``): pipeline (every stage in order, each skipped when its output is complete),
generate, label, filter (+ decompose), train, eval, export, serve, sample. What each writes is in
swirl_jax/modes.py; every setting is listed below and in swirl_jax/config.py.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from swirl_jax.atomic_io import atomic_open
from swirl_jax.config import HELP, base_config, settings


# The exit status of a run whose training a SIGTERM stopped (128 + SIGTERM, as a shell reports it): not 0, so
# that SLURM or a retry loop does not take a preempted job for a finished one.
INTERRUPTED_EXIT = 143

# The checkout's quick-start config, so that the default works from any directory.
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                               "quickstart.py")


def _config_arg(argv: list[str]) -> str | None:
  """The value of ``--config=SPEC`` / ``--config SPEC`` in argv (the last one wins, as in absl)."""
  spec = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith("--config="):
      spec = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _load_config(spec: str):
  """``get_config([ARG])`` of ``PATH[:ARG]``, as ml_collections' config flag reads it."""
  import importlib.util

  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("swirl_jax_help_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _settings_help(argv: list[str]) -> str:
  """Every setting with its meaning and value: under --help, the value in the config that would run."""
  cfg, source = base_config(), "their defaults"
  spec = _config_arg(argv) or _DEFAULT_CONFIG
  if any(a in ("--help", "-h", "--helpfull", "-?", "--helpshort") for a in argv[1:]):
    try:
      cfg, source = _load_config(spec), f"their values in {spec}"
    except Exception:  # noqa: BLE001 - parsing the flag reports the config's own error
      pass
  lines = [f"  --config.{name}={value!r}: {HELP.get(name, '')}" for name, value in settings(cfg)]
  return f"ml_collections config file (get_config()). Settings and {source}:\n" + "\n".join(lines)


def check_override_keys(argv: list[str]) -> None:
  """Refuses ``--config.KEY`` overrides that name no setting, listing the valid ones nearby."""
  import difflib
  import sys

  for arg in argv[1:]:
    if not arg.startswith("--config.") or arg.startswith("--config.help"):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    if key in HELP:
      continue
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    while not any(k.startswith(section) for k in HELP):  # "trian.steps": list the groups, not every setting
      section = section[:-1].rsplit(".", 1)[0] + "." if "." in section[:-1] else ""
    siblings = sorted({section + k[len(section):].split(".")[0] for k in HELP if k.startswith(section)})
    close = difflib.get_close_matches(key, list(HELP), n=3)
    hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
    sys.exit(f"error: unknown setting --config.{key}.{hint} Valid settings"
             f"{' under --config.' + section[:-1] if section else ''}: {', '.join(siblings)}")


def check_config_file(argv: list[str]) -> None:
  """Refuses a ``--config`` file that does not exist (ml_collections' error is a double traceback)."""
  spec = _config_arg(argv)
  path = spec.partition(":")[0] if spec else None
  if path and not os.path.isfile(path):
    sys.exit(f"error: --config={spec}: no such file {path!r} (the configs are in "
             f"{os.path.dirname(_DEFAULT_CONFIG)})")


if __name__ == "__main__":  # before the config flag parses the overrides (at definition)
  check_config_file(sys.argv)
  check_override_keys(sys.argv)

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, _settings_help(sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Directory for every output of the run.")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-process runs "
                             "(TPU pods and SLURM are detected without it).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # before JAX starts its backends (they log at INFO)
  from swirl_jax import distributed

  try:
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  except distributed.StartupError as e:
    print(f"swirl_jax.main: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  import jax

  from swirl_jax import modes
  from swirl_jax.config import check_documented, validate

  cfg = _CONFIG.value
  check_documented(cfg)
  try:
    validate(cfg, modes.MODES)
  except ValueError as e:
    # the message alone (app.UsageError would print the whole --help first, burying it)
    print(f"swirl_jax.main: {e}\n(--help lists every setting)", file=sys.stderr, flush=True)
    sys.exit(2)
  from swirl_jax import compilation_cache

  compilation_cache.enable(cfg.compile_cache_dir, cfg.model.cache_dir)  # before anything compiles
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  lock = _lock_workdir(workdir, cfg.mode) if jax.process_index() == 0 and cfg.mode not in ("serve", "sample") \
      else None  # (held until main returns)
  if jax.process_index() == 0:  # written once; holds no secret (API keys come from the environment only)
    with atomic_open(os.path.join(workdir, _file_name("config", cfg.mode))) as f:
      f.write(cfg.to_json(indent=1))
  try:
    summary = modes.MODES[cfg.mode](cfg, modes.Paths(workdir))
  except Exception as e:  # noqa: BLE001 - bad input files get their message, not a traceback
    if not isinstance(e, _input_errors()):
      raise
    print(f"swirl_jax.main: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if jax.process_index() == 0 and summary:
    _report(cfg.mode, summary, workdir)
  del lock
  if summary and summary.get("interrupted"):  # (mode=train and pipeline: training stopped by SIGTERM)
    print("swirl_jax.main: training was interrupted (SIGTERM) after saving its checkpoint; the same command "
          "resumes it", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_EXIT)


def _input_errors() -> tuple[type[Exception], ...]:
  """The errors that name a bad or missing input (a data file's line and field, an unknown dataset, a file
  that is not there): main prints their message alone. Anything else keeps its traceback."""
  from swirl_jax import modes
  from swirl_jax.data.registry import UnknownDatasetError, UnknownSplitError
  from swirl_jax.judges.openai_backend import JudgeBackendError
  from swirl_jax.types import RecordError

  # (JudgeBackendError names the endpoint, the status and the reply: its traceback adds nothing)
  errors = (RecordError, FileNotFoundError, UnknownDatasetError, UnknownSplitError, modes.EvalDataError,
            JudgeBackendError)
  tfds_builders = sys.modules.get("swirl_jax.data.tfds_builders")  # (loaded only where TFDS was used)
  return errors + ((tfds_builders.StalePreparedDataError,) if tfds_builders else ())


def _lock_workdir(workdir: str, mode: str):
  """Takes an exclusive advisory lock on WORKDIR/.lock for this run, or exits naming the run that holds
  it: two runs in one workdir append to the same files and do every job (and pay every judge call) twice.
  Returns the open lock file; the lock lasts while it is open (and ends with the process)."""
  import fcntl
  import socket

  f = open(os.path.join(workdir, ".lock"), "a+", encoding="utf-8")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "a process that wrote no name"
    sys.exit(f"swirl_jax.main: {workdir} is in use by another run ({holder}); wait for it to end, or use "
             "another --workdir")
  except OSError as e:  # a file system without flock (some network mounts): the run goes on unlocked
    print(f"swirl_jax.main: warning: cannot lock {workdir} ({e.strerror}); nothing stops a second run "
          "from writing there at the same time", file=sys.stderr, flush=True)
    return f
  f.truncate(0)
  f.write(f"pid {os.getpid()} on {socket.gethostname()}, mode={mode}\n")
  f.flush()
  return f


def _file_name(kind: str, mode: str) -> str:
  """config.json / summary.json for the pipeline; config-MODE.json / summary-MODE.json for a single mode
  (an export or eval run in a pipeline's workdir keeps the pipeline's record)."""
  return f"{kind}.json" if mode == "pipeline" else f"{kind}-{mode}.json"


def _report(mode: str, summary: dict, workdir: str) -> None:
  """Saves the whole summary as WORKDIR/summary.json (summary-MODE.json for a single mode) and prints a
  short one with the eval table."""
  from swirl_jax import run_summary

  table = summary.pop("table", None)
  if mode == "pipeline" and isinstance(summary.get("eval"), dict):
    table = summary["eval"].pop("table", None)
  path = os.path.join(workdir, _file_name("summary", mode))
  with atomic_open(path) as f:
    json.dump(summary, f, indent=1, default=str)
  lines = run_summary.summary_lines(summary if mode == "pipeline" else {mode: summary})
  if lines:
    print(f"\n== summary of {mode} in {workdir} (everything in {path})\n" + "\n".join(lines))
  else:
    print(json.dumps(summary, indent=1, default=str))
  if table:
    print("\nbase -> trained\n" + table)


if __name__ == "__main__":
  app.run(main)
