"""The command line: overrides, refusal of bad settings, the recipes, and the whole pipeline end to end.

The end-to-end test runs ``python -m swirl_jax.main`` in a subprocess, as a user does, on a tiny random
Gemma 3 saved as a Hugging Face directory with the tiny BPE tokenizer, and checks every stage's files on
disk; a second run must skip every stage and change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swirl_jax import config as config_lib
from swirl_jax.config import HELP
from swirl_jax.main import check_override_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module(name):
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(args, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "swirl_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_unknown_key_is_refused_with_suggestions():
  with pytest.raises(SystemExit) as e:
    check_override_keys(["main", "--config.train.learning_rat=1e-6"])
  msg = str(e.value)
  assert "--config.train.learning_rat" in msg and "--config.train.learning_rate" in msg
  assert "train.warmup_steps" in msg  # the valid settings of the section are listed
  with pytest.raises(SystemExit) as e:  # no such group: the groups are listed, not under the misspelt one
    check_override_keys(["main", "--config.trian.steps=3"])
  assert "--config.train.steps" in str(e.value) and "under --config.trian" not in str(e.value)
  assert str(e.value).endswith("Valid settings: " + ", ".join(sorted({k.split(".")[0] for k in HELP})))
  with pytest.raises(SystemExit, match=r"under --config.judge: judge.backend, .*judge.openai$"):
    check_override_keys(["main", "--config.judge.opnai.model=x"])
  check_override_keys(["main", "--config.train.learning_rate=1e-6", "--config=configs/quickstart.py"])


def test_command_line_refuses_bad_keys_types_and_choices():
  r = _run(["--config=configs/quickstart.py", "--config.sampling.temprature=0.5"], timeout=120)
  assert r.returncode != 0 and "--config.sampling.temperature" in r.stderr
  r = _run(["--config=configs/quickstart.py", "--config.train.steps=many"], timeout=120)
  assert r.returncode != 0 and "--config.train.steps=many" in r.stderr
  r = _run(["--config=configs/quickstart.py", "--config.filter.strategy=best"], timeout=120)
  assert r.returncode != 0
  assert "--config.filter.strategy='best'" in r.stderr and "process_and_outcome" in r.stderr
  r = _run(["--config=configs/quickstart.py", "--config.sampling.top_p=2"], timeout=120)
  # the error alone, not under the whole --help (which buried it under ~180 lines)
  assert r.returncode == 2 and r.stderr.splitlines()[-2:] == [
      "  --config.sampling.top_p=2.0: must be in (0.0, 1.0]", "(--help lists every setting)"]
  assert len(r.stderr.splitlines()) < 10


def test_validate_names_every_bad_setting():
  cfg = config_lib.base_config()
  cfg.mode = "fly"
  cfg.train.mode = "ppo"
  cfg.sampler.batch_size = 0
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline", "eval"))
  msg = str(e.value)
  assert "--config.mode='fly'" in msg and "--config.train.mode='ppo'" in msg
  assert "--config.sampler.batch_size=0: must be >= 1" in msg
  config_lib.validate(config_lib.base_config(), ("pipeline",))


def test_help_documents_every_setting():
  r = _run(["--help"], timeout=120)  # absl exits with status 1 after printing help
  out = " ".join(r.stdout.split())  # absl wraps lines
  assert "Settings and their values in " + os.path.join(REPO, "configs", "quickstart.py") in out, r.stderr
  for name, text in config_lib.HELP.items():
    assert f"--config.{name}=" in out, name
    assert " ".join(text.split()[:4]) in out, name
  config_lib.check_documented(config_lib.base_config())


def test_help_shows_the_selected_configs_values():
  r = _run(["--config", "configs/paper.py:gemma2-2b,hotpot_qa", "--help"], timeout=120)
  out = " ".join(r.stdout.split())
  assert "Settings and their values in configs/paper.py:gemma2-2b,hotpot_qa" in out, r.stderr
  # paper.py's values, not base_config's (synthetic_arith, 0 tool calls)
  assert "--config.data.name='hotpot_qa'" in out and "--config.rollout.max_tool_calls=5:" in out
  assert "--config.model.source='hf/gemma-2-2b-it'" in out


@pytest.mark.parametrize("arg", ["gemma2-2b,gsm8k", "gemma2-9b,hotpot_qa", "gemma2-27b,hotpot_qa", "gemma2-27b,gsm8k"])
def test_paper_recipes_are_valid(arg, monkeypatch, tmp_path):
  monkeypatch.setenv("GEMINI_API_KEY", "k")  # the recipes' judge key, checked up front
  paper = _config_module("paper")
  cfg = paper.get_config(arg)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=f"--config.model.source='{cfg.model.source}': no such file or directory"):
    config_lib.validate(cfg, ("pipeline",))
  os.makedirs(cfg.model.source)  # the weights' directory (checked up front)
  config_lib.check_documented(cfg)
  config_lib.validate(cfg, ("pipeline",))
  assert cfg.rollout.samples_per_question == 5 and cfg.filter.strategy == "process"
  hotpot = arg.endswith("hotpot_qa")
  assert cfg.rollout.task == ("search" if hotpot else "math")
  assert cfg.rollout.max_tool_calls == (5 if hotpot else 10) and cfg.rollout.num_demos == 0
  assert cfg.data.limit == (10_000 if hotpot else 0) and cfg.data.drop_easy == hotpot
  specs = config_lib.eval_dataset_specs(cfg)
  assert [(s.name, s.split) for s in specs] == [
      ("gsm8k", "test"), ("hotpot_qa", "validation"), ("musique", "validation"), ("beerqa", "validation"),
      ("cofca", "test")]
  assert [config_lib.dataset_task(s.name) for s in specs] == ["math"] + ["search"] * 4
  with pytest.raises(ValueError, match="MODEL,DATASET"):
    paper.get_config("gemma2-3b,gsm8k")


def test_eval_configs_cover_the_five_datasets(monkeypatch, tmp_path):
  monkeypatch.setenv("GEMINI_API_KEY", "k")
  eval_configs = _config_module("eval")
  monkeypatch.chdir(tmp_path)
  os.makedirs(eval_configs.get_config().model.source)  # the weights' directory (checked up front)
  assert config_lib.eval_dataset_specs(eval_configs.get_config())[-1].name == "cofca"
  for name in eval_configs.DATASETS:
    cfg = eval_configs.get_config(name)
    config_lib.validate(cfg, ("eval",))
    assert [s.name for s in config_lib.eval_dataset_specs(cfg)] == [name]
    assert cfg.rollout.num_demos == 0  # the paper recipes' prompt
  with pytest.raises(ValueError, match="unknown dataset"):
    eval_configs.get_config("squad")


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from tiny_tokenizer import tiny_tokenizer

  from swirl_jax.checkpoints.build import model_weights, random_model
  from swirl_jax.checkpoints.hf_export import export_hf
  from swirl_jax.models.config import preset

  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  out = str(tmp_path_factory.mktemp("tiny") / "hf")
  export_hf(cfg, model_weights(random_model(cfg, 0)), out, tokenizer=tok)
  return out


def _jsonl_count(path):
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def test_pipeline_end_to_end_then_every_stage_skips(tiny_hf_dir, tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config=configs/quickstart.py", f"--workdir={workdir}", f"--config.model.source={tiny_hf_dir}",
          "--config.data.num_questions=3", "--config.rollout.num_demos=0", "--config.rollout.max_tool_calls=2",
          "--config.sampling.max_new_tokens=12", "--config.sampler.cache_len=1024", "--config.filter.strategy=none",
          "--config.train.steps=2", "--config.train.save_every=1", "--config.train.max_len=1024",
          "--config.train.max_new_tokens=12", "--config.eval.limit=2",
          "--config.judge.openai.api_key_env=SWIRL_TEST_KEY", f"--config.compile_cache_dir={tmp_path / 'xla'}"]
  secret = "sk-test-never-written-0123456789"
  # every program goes to the persistent compilation cache, however fast it compiled
  r = _run(args, {"SWIRL_TEST_KEY": secret, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
  cached = os.listdir(tmp_path / "xla")
  assert any(n.startswith("jit__decode") for n in cached) and any(n.startswith("jit__extend") for n in cached)

  # 3 questions x 2 samples, judged, filtered (none: all kept), one example per step.
  assert _jsonl_count(os.path.join(workdir, "trajectories.jsonl")) == 6
  assert _jsonl_count(os.path.join(workdir, "labelled.jsonl")) == 6
  assert _jsonl_count(os.path.join(workdir, "kept.jsonl")) == 6
  with open(os.path.join(workdir, "labelled.jsonl"), encoding="utf-8") as f:
    steps = sum(len(json.loads(line)["steps"]) for line in f)
  assert _jsonl_count(os.path.join(workdir, "step_examples.jsonl")) == steps
  assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())[-1] == "2"
  for policy in ("base", "trained"):
    with open(os.path.join(workdir, "eval", policy, "synthetic_arith.json"), encoding="utf-8") as f:
      report = json.load(f)
    assert report["num_questions"] == 2 and 0.0 <= report["judged_accuracy"] <= 1.0
  with open(os.path.join(workdir, "export", "hf", "config.json"), encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["Gemma3ForCausalLM"]
  assert "base -> trained" in r.stdout

  # The resolved config is saved, with the key's variable name but never the key.
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["model"]["source"] == tiny_hf_dir and saved["judge"]["openai"]["api_key_env"] == "SWIRL_TEST_KEY"
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert secret.encode() not in f.read(), os.path.join(root, name)
  assert secret not in r.stdout + r.stderr

  # Rerun: every stage is complete, nothing is redone or rewritten.
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in
            ("trajectories.jsonl", "labelled.jsonl", "kept.jsonl", "step_examples.jsonl")}
  r = _run(args, {"SWIRL_TEST_KEY": secret})
  assert r.returncode == 0, r.stderr[-5000:]
  for stage in ("generate", "label", "filter", "train", "export"):
    assert f"== {stage}: already complete, skipped" in r.stdout
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}

  # A single-mode run in the pipeline's workdir keeps the pipeline's config and summary.
  records = {p: open(os.path.join(workdir, p), encoding="utf-8").read() for p in ("config.json", "summary.json")}
  r = _run(args + ["--config.mode=filter"], {"SWIRL_TEST_KEY": secret})
  assert r.returncode == 0, r.stderr[-5000:]
  assert records == {p: open(os.path.join(workdir, p), encoding="utf-8").read() for p in records}
  assert json.load(open(os.path.join(workdir, "config-filter.json")))["mode"] == "filter"
  assert json.load(open(os.path.join(workdir, "summary-filter.json")))["filter"]["kept"] == 6


def test_validate_refuses_cross_setting_and_dataset_mistakes_up_front():
  """Mistakes that used to surface late: normalize_std without a baseline (offline's default) and an
  eval dataset or split typo (found only when the eval stage ran, after generation and training)."""
  cfg = config_lib.base_config()
  cfg.train.mode = "offline"
  cfg.train.normalize_std = True
  cfg.eval.datasets = "synthetic_arith,hotpotqa"
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  msg = str(e.value)
  assert "--config.train.normalize_std=True needs --config.train.baseline=loo or mean" in msg
  assert "--config.eval.datasets / eval.split: unknown dataset 'hotpotqa'" in msg
  cfg = config_lib.base_config()
  cfg.eval.split = "tset"
  with pytest.raises(ValueError, match="has no split 'tset'"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.mode = "train"
  config_lib.validate(cfg, ("pipeline", "train"))  # eval settings do not matter to a train run
  cfg.train.mode = "offline"
  cfg.train.normalize_std = True
  cfg.train.baseline = "mean"
  config_lib.validate(cfg, ("pipeline", "train"))


def test_validate_refuses_out_of_range_values_and_a_missing_judge_key_up_front(monkeypatch):
  """These used to surface when their stage ran (train.temperature=-1 after generation, labelling and
  filtering, under the name sampling.temperature; a missing API key after generation)."""
  cfg = config_lib.base_config()
  cfg.train.temperature = -1.0
  cfg.sampling.top_p = 1.5
  cfg.rollout.max_tool_calls = -3
  cfg.mesh.data, cfg.mesh.tensor = 0, -1
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  msg = str(e.value)
  for part in ("--config.train.temperature=-1.0: must be in [0.0, inf]", "--config.sampling.top_p=1.5: must be in "
               "(0.0, 1.0]", "--config.rollout.max_tool_calls=-3: must be >= 0", "--config.mesh.data=0: must be >= 1",
               "at most one of them may be -1"):
    assert part in msg
  monkeypatch.delenv("SWIRL_TEST_UNSET_KEY", raising=False)
  cfg = config_lib.base_config()
  config_lib.use_openai_judge(cfg, api_key_env="SWIRL_TEST_UNSET_KEY")
  with pytest.raises(ValueError, match="api_key_env='SWIRL_TEST_UNSET_KEY': that environment variable is not set"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.mode = "generate"  # generation does not call the judge
  config_lib.validate(cfg, ("generate",))
  monkeypatch.setenv("SWIRL_TEST_UNSET_KEY", "k")
  cfg.mode = "pipeline"
  config_lib.validate(cfg, ("pipeline",))


def test_a_single_data_file_is_not_evaluated_as_another_split(tmp_path):
  """With data.path one file, the default GSM8K eval (test) read the train file under the name test."""
  train = tmp_path / "train.jsonl"
  train.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
  cfg = config_lib.base_config()
  cfg.data.name, cfg.data.source, cfg.data.path, cfg.rollout.task = "gsm8k", "file", str(train), "math"
  with pytest.raises(ValueError, match="is one file, which holds gsm8k/train only; to evaluate gsm8k/test"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.eval.datasets = "synthetic_arith"  # generated, not read from data.path
  config_lib.validate(cfg, ("pipeline",))
  cfg.eval.datasets, cfg.eval.split = "", "train"
  assert [s.split for s in config_lib.eval_dataset_specs(cfg)] == ["train"]
  (tmp_path / "test.jsonl").write_text(train.read_text())
  cfg.data.path, cfg.eval.split = str(tmp_path), ""  # a directory holding each split's file
  config_lib.validate(cfg, ("pipeline",))


def test_data_files_no_dataset_reads_are_refused(tmp_path):
  """data.path with the default source (tfds) or a synthetic dataset was ignored without a word: the run
  generated, trained and evaluated on other questions than the user's file."""
  path = str(tmp_path / "train.jsonl")
  (tmp_path / "train.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
  cfg = config_lib.base_config()  # synthetic_arith, source tfds
  cfg.data.path = path
  with pytest.raises(ValueError, match=r"--config.data.path='.*train.jsonl' would not be read: "
                     r"--config.data.source='tfds' reads data.manual_dir"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.data.source = "file"
  with pytest.raises(ValueError, match=r"would not be read: synthetic_arith is generated"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.mode, cfg.eval.datasets, cfg.eval.split = "eval", "gsm8k", "train"  # an eval set read from the file
  config_lib.validate(cfg, ("pipeline", "eval"))
  cfg.eval.datasets = "gsm8k,musique"  # one file cannot hold both (named after the first real eval set)
  with pytest.raises(ValueError, match="is one file, which holds gsm8k/train only; to evaluate musique/train"):
    config_lib.validate(cfg, ("pipeline", "eval"))
  cfg.eval.datasets = "gsm8k"
  cfg.mode = "generate"  # generation reads data.name only: synthetic
  with pytest.raises(ValueError, match="would not be read"):
    config_lib.validate(cfg, ("pipeline", "generate"))
  cfg.mode = "train"  # reads step examples: data.* does not matter
  config_lib.validate(cfg, ("pipeline", "train"))
  cfg = config_lib.base_config()
  cfg.data.name, cfg.data.manual_dir, cfg.data.source, cfg.data.path = "gsm8k", str(tmp_path), "file", path
  cfg.eval.split = "train"
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  assert "--config.data.manual_dir='" in str(e.value) and "--config.data.source='file' reads data.path" in str(e.value)
  assert str(e.value).count("would not be read") == 1  # data.path is read: not refused
  cfg.data.source, cfg.data.path = "tfds", ""
  config_lib.validate(cfg, ("pipeline",))


def test_missing_data_files_and_a_task_that_does_not_fit_the_dataset_are_refused(tmp_path):
  """A mistyped data.manual_dir made TFDS download the official release (204 s of retries offline, the
  whole release online); data.source=file without data.path failed after start-up; data.name=hotpot_qa with
  the default rollout.task=math generated with the calculator (and gsm8k with search failed on an empty
  corpus named after a generated file)."""
  cfg = config_lib.base_config()
  cfg.data.name, cfg.rollout.task, cfg.eval.datasets = "hotpot_qa", "search", "hotpot_qa"
  cfg.data.manual_dir = str(tmp_path / "gone")  # fine where the data is prepared already (prepare() checks)
  config_lib.validate(cfg, ("pipeline",))
  cfg.data.source, cfg.data.manual_dir, cfg.data.path = "file", "", str(tmp_path / "typo.json")
  with pytest.raises(ValueError, match=r"--config.data.path='.*typo.json': no such file or directory"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.data.source, cfg.data.path = "tfds", ""
  (tmp_path / "file").write_text("x")
  cfg.data.manual_dir = str(tmp_path / "file")
  with pytest.raises(ValueError, match=r"--config.data.manual_dir='.*file': not a directory"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.data.manual_dir, cfg.data.source = "", "file"
  with pytest.raises(ValueError, match=r"--config.data.source='file' reads --config.data.path, which is not set: "
                                       r"pass the official file of hotpot_qa"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.data.source, cfg.rollout.task = "tfds", "math"
  with pytest.raises(ValueError, match=r"--config.rollout.task='math' does not fit --config.data.name='hotpot_qa', a "
                                       r"search dataset .*pass --config.rollout.task=search"):
    config_lib.validate(cfg, ("generate",))
  cfg.mode = "train"  # reads step examples: data.name is not read
  config_lib.validate(cfg, ("train",))
  cfg = config_lib.base_config()
  cfg.data.name, cfg.rollout.task, cfg.eval.datasets = "gsm8k", "search", "gsm8k"
  with pytest.raises(ValueError, match=r"--config.rollout.task='search' does not fit --config.data.name='gsm8k', a "
                                       r"math dataset"):
    config_lib.validate(cfg, ("pipeline",))


def test_validate_refuses_training_settings_that_cannot_learn():
  """bfloat16 parameter storage (the paper recipe's, until this check): AdamW's 1e-6 steps rounded away and
  the weights barely moved while the losses looked normal. rl with group_size=1 and a group baseline:
  every advantage r - r = 0."""
  cfg = config_lib.base_config()
  cfg.model.param_dtype = "bfloat16"
  cfg.train.group_size = 1
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  msg = str(e.value)
  assert "--config.model.param_dtype='bfloat16' cannot train" in msg and "--config.model.param_dtype=float32" in msg
  assert "--config.train.group_size=1 with --config.train.baseline='loo' (rl)" in msg
  cfg.train.steps = 0  # generation and evaluation only: bfloat16 storage is fine
  config_lib.validate(cfg, ("pipeline",))
  cfg.mode, cfg.train.steps = "train", 5
  cfg.model.param_dtype, cfg.model.dtype = "float32", "bfloat16"
  cfg.train.baseline = "none"  # advantage = reward: a one-action group learns
  config_lib.validate(cfg, ("pipeline", "train"))
  cfg.train.baseline, cfg.train.mode = "mean", "offline"  # group_size is rl's
  config_lib.validate(cfg, ("pipeline", "train"))


def test_eval_datasets_that_cannot_load_stop_the_pipeline_before_generation(tmp_path, monkeypatch):
  """A missing eval file surfaced only at the eval stage, after generation, labelling and training (and in
  mode=eval after the model load). Now every eval set is loaded first; the error names each one."""
  from swirl_jax import modes

  (tmp_path / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
  cfg = config_lib.base_config()
  cfg.eval.datasets = "synthetic_arith,gsm8k,cofca"
  cfg.data.source, cfg.data.path = "file", str(tmp_path)  # gsm8k's test file is there, cofca's is not
  (tmp_path / "cofca_test.json").write_text('[{"id": "1", "question": "q?", "answer": "a", "context": [}]')
  config_lib.validate(cfg, ("pipeline",))  # names and splits are fine: files are found when loaded

  def no_model(*a, **k):
    raise AssertionError("a model was loaded before the eval data was checked")

  monkeypatch.setattr(modes, "load", no_model)
  paths = modes.Paths(str(tmp_path / "run"))
  with pytest.raises(modes.EvalDataError) as e:
    modes.run_pipeline(cfg, paths)
  msg = str(e.value)
  assert msg.startswith("--config.eval.datasets: cannot load this evaluation dataset")
  assert "cofca (test): RecordError:" in msg and "cofca_test.json" in msg and "gsm8k" not in msg
  assert not os.path.exists(paths.trajectories)
  (tmp_path / "cofca_test.json").unlink()
  os.remove(tmp_path / "test.jsonl")
  with pytest.raises(modes.EvalDataError) as e:
    modes.run_eval(cfg, paths)
  assert "cannot load these evaluation datasets" in str(e.value)
  assert "gsm8k (test): FileNotFoundError:" in str(e.value) and "cofca (test): FileNotFoundError:" in str(e.value)


def test_a_bad_data_file_is_reported_without_a_traceback(tmp_path):
  """A data file's error (file:line: what) came at the end of a 13-frame traceback."""
  data = tmp_path / "train.jsonl"
  data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + '\n{"question": "x",\n')
  r = _run(["--config=configs/quickstart.py", f"--workdir={tmp_path / 'run'}", "--config.mode=generate",
            "--config.data.name=gsm8k", "--config.data.source=file", f"--config.data.path={data}"], timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(f"swirl_jax.main: {data}:2: not valid JSON")
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "run" / "trajectories.jsonl")


def test_a_second_run_in_a_busy_workdir_is_refused(tmp_path):
  """Two runs in one workdir appended to the same files and did every job twice, without a word."""
  import fcntl

  work = tmp_path / "w"
  work.mkdir()
  with open(work / ".lock", "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("pid 123 on host, mode=pipeline\n")
    held.flush()
    r = _run(["--config=configs/quickstart.py", f"--workdir={work}", "--config.mode=filter"], timeout=120)
  assert r.returncode != 0
  assert f"{work} is in use by another run (pid 123 on host, mode=pipeline)" in r.stderr
  assert sorted(os.listdir(work)) == [".lock"]  # nothing written


def test_a_workdir_that_cannot_be_locked_says_so(tmp_path, monkeypatch, capsys):
  """flock fails on some network mounts (ENOLCK): the run goes on, but not silently."""
  import errno
  import fcntl

  from swirl_jax import main as main_module

  def no_locks(f, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  assert main_module._lock_workdir(str(tmp_path), "pipeline") is not None
  assert f"warning: cannot lock {tmp_path} (No locks available)" in capsys.readouterr().err


def test_validate_refuses_what_used_to_fail_after_hours(monkeypatch, tmp_path):
  """Each of these passed validate and failed when its stage came: an empty judge endpoint or model (at label,
  after generation), a misspelt eval.checkpoint (after the whole base evaluation), a judge model that does not
  exist (at label), train batches that do not split over micro-batches (at train); a serve.port out of range;
  a negative data.num_questions reported under data.name; an unknown data.name also blamed on rollout.task."""
  cfg = config_lib.base_config()
  cfg.judge.backend = "openai"
  cfg.train.states_per_step, cfg.train.micro_batches = 3, 2
  cfg.serve.port = 70000
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  msg = str(e.value)
  for part in ("--config.judge.openai.base_url='': judge.backend=openai needs", "--config.judge.openai.model='': ",
               "--config.train.states_per_step=3 = 3 sequences per step do not divide into "
               "--config.train.micro_batches=2 x 1 batch shards", "--config.serve.port=70000: must be in [0, 65535]"):
    assert part in msg, (part, msg)
  cfg = config_lib.base_config()
  cfg.mode, cfg.eval.checkpoint = "eval", str(tmp_path / "no_such_run" / "checkpoints")
  with pytest.raises(ValueError, match=f"--config.eval.checkpoint='{cfg.eval.checkpoint}': no such file or dir"):
    config_lib.validate(cfg, ("eval",))
  cfg = config_lib.base_config()
  cfg.judge.backend = "model"
  cfg.judge.model.source = "gemma3-207m"
  cfg.data.num_questions = -5
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("pipeline",))
  msg = str(e.value)
  assert "--config.judge.model.source='gemma3-207m': no such file" in msg and "(gemma3-270m)" in msg
  assert "--config.data.num_questions=-5: must be >= 1" in msg and "data.name / data.split" not in msg
  cfg.mode = "generate"  # generation loads no judge
  cfg.data.num_questions = 10
  cfg.data.name = "gsm8x"
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg, ("generate",))
  assert "unknown dataset 'gsm8x'" in str(e.value) and "rollout.task" not in str(e.value)
  cfg = config_lib.base_config()
  cfg.train.states_per_step, cfg.train.group_size, cfg.train.micro_batches = 3, 4, 2
  cfg.train.share_prefix = False  # 12 rows, one sequence each: they split
  config_lib.validate(cfg, ("pipeline",))
  cfg.eval.checkpoint = str(tmp_path / "run" / "checkpoints")  # a pipeline that trains writes them itself
  config_lib.validate(cfg, ("pipeline",))
  cfg.eval.checkpoint = ""
  cfg.train.share_prefix = True  # 3 packed sequences: they do not
  with pytest.raises(ValueError, match=r"states_per_step=3 = 3 sequences .*one sequence per state"):
    config_lib.validate(cfg, ("pipeline",))
  cfg.train.steps = 0  # nothing trained
  config_lib.validate(cfg, ("pipeline",))


def test_validate_checks_the_mesh_against_the_devices():
  """A mesh that does not fit the devices failed when the model loaded (a 28-line traceback); the paper's
  batch of 64 packed sequences on more batch shards than micro-batches allow failed at the train stage."""
  from multidevice import run_with_devices

  out = run_with_devices("""
    from swirl_jax import config as config_lib
    cfg = config_lib.base_config()
    cfg.mesh.data = 3
    try:
      config_lib.validate(cfg, ("pipeline",))
    except ValueError as e:
      print("REFUSED", e)
    cfg = config_lib.base_config()
    cfg.mesh.data, cfg.mesh.fsdp = 2, 4
    cfg.train.states_per_step, cfg.train.micro_batches = 64, 16
    try:
      config_lib.validate(cfg, ("pipeline",))
    except ValueError as e:
      print("REFUSED", e)
    cfg.train.micro_batches = 8
    config_lib.validate(cfg, ("pipeline",))
    print("OK")
  """, n=8, timeout=300)
  assert "--config.mesh.data / fsdp / tensor: mesh [3, -1, 1]: 8 devices are not divisible by 3" in out
  assert "micro_batches=16 x 8 batch shards of the mesh (8 devices" in out
  assert out.rstrip().endswith("OK")


def test_a_missing_config_file_and_bad_process_flags_get_one_line(tmp_path):
  """A --config path that does not exist printed a 42-line double traceback; --process_id without
  --coordinator_address a 15-line one."""
  r = _run([f"--config={tmp_path / 'nope.py'}:arg"], timeout=120)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert f"--config={tmp_path / 'nope.py'}:arg: no such file" in r.stderr
  r = _run(["--config=configs/quickstart.py", f"--workdir={tmp_path}", "--num_processes=2"], timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert "--num_processes and --process_id need --coordinator_address" in r.stderr
