"""Pipeline reruns in a used workdir: a stage is skipped only when its output is complete and made from
the current inputs (files and settings), so changed settings never leave stale kept data, eval reports
or exports behind. Generate, model loading, training, evaluation and export are stubbed: this checks
the skip logic, not the stages (tests/test_main_cli.py runs them for real)."""

from __future__ import annotations

import json
import os

import pytest

from configs.quickstart import get_config
from swirl_jax import modes
from swirl_jax.evaluation import evaluate as evaluate_module
from swirl_jax.judges.rule import RuleJudge
from swirl_jax.pipeline import stage_inputs
from swirl_jax.pipeline.jsonl import read_records
from swirl_jax.types import Step, ToolCall, Trajectory, dumps


REAL_RUN_EXPORT = modes.run_export  # (the fixture stubs it; one test runs it with the model stubbed)


def _trajectory(q, k):
  if k == 0:  # a checked calculator step, then the right answer
    steps = (Step(text=f"<math_exp>{q.answer} + 0</math_exp>", kind="tool_call",
                  call=ToolCall("calculator", f"{q.answer} + 0"), observation=f"{q.answer} + 0 -> {float(q.answer)}"),
             Step(text=f"<answer>{q.answer}</answer>", kind="answer", answer=q.answer))
    return Trajectory(q, k, steps, final_answer=q.answer, provenance={"task": "math", "budget": 6, "num_demos": 1})
  steps = (Step(text="hmm", kind="malformed", error="no_tag: no tag", observation="error: no tag"),
           Step(text="<answer>7</answer>", kind="answer", answer="7"))
  return Trajectory(q, k, steps, final_answer="7", provenance={"task": "math", "budget": 6, "num_demos": 1})


@pytest.fixture
def stubbed(monkeypatch):
  calls = []

  def generate(cfg, paths, questions=None):
    calls.append("generate")
    modes._check_generate_inputs(cfg, paths, questions)  # what run_generate checks before loading the model
    done = {(r["question"]["id"], r["sample_index"]) for r in read_records(paths.trajectories)}
    with open(paths.trajectories, "a", encoding="utf-8") as f:
      for q in questions:
        for k in range(cfg.rollout.samples_per_question):
          if (q.id, k) not in done:
            f.write(dumps(_trajectory(q, k)) + "\n")
    return {}

  def run_train(cfg, paths):
    calls.append("train")
    os.makedirs(os.path.join(paths.checkpoints, str(cfg.train.steps)), exist_ok=True)
    return {}

  class LM:
    source, tokenizer = "stub", object()

  def evaluate(lm, questions, judge, tools, config, *, dataset, out_dir, label, provenance=None, resume_key=None):
    calls.append(f"eval {label} {dataset}")
    os.makedirs(out_dir, exist_ok=True)
    report = {"dataset": dataset, "policy": label, "judged_accuracy": 0.0, "num_questions": len(questions),
              "provenance": provenance}
    with open(os.path.join(out_dir, f"{dataset}.json"), "w", encoding="utf-8") as f:
      json.dump(report, f)
    return report

  def run_export(cfg, paths):
    calls.append("export")
    os.makedirs(paths.export, exist_ok=True)
    with open(os.path.join(paths.export, "config.json"), "w", encoding="utf-8") as f:
      f.write("{}")
    return {}

  # every backend judges by the rules here (a model judge's settings are still recorded as its own)
  monkeypatch.setattr(modes, "judge", lambda cfg, paths, policy=None, task=None: RuleJudge(task=task or cfg.rollout.task))
  monkeypatch.setattr(modes, "run_generate", generate)
  monkeypatch.setattr(modes, "run_train", run_train)
  monkeypatch.setattr(modes, "run_export", run_export)
  monkeypatch.setattr(modes, "load", lambda cfg, global_mesh=False, source=None: LM())
  monkeypatch.setattr(evaluate_module, "evaluate", evaluate)
  return calls


def test_changed_inputs_rerun_the_stages_that_depend_on_them(stubbed, tmp_path):
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions = 4
  cfg.eval.limit = 2

  def run():
    stubbed.clear()
    modes.run_pipeline(cfg, paths)
    return list(stubbed)

  assert run() == ["generate", "train", "eval base synthetic_arith", "eval trained synthetic_arith", "export"]
  assert json.load(open(paths.filter_report))["strategy"] == "process"
  assert run() == []  # nothing changed: everything skipped

  cfg.filter.strategy = "none"  # filter reruns (it is cheap); its new examples would mix with the checkpoints
  with pytest.raises(ValueError, match="checkpoints would continue under other inputs: .*step_examples.jsonl "
                                       "changed since they were trained on it"):
    run()
  assert json.load(open(paths.filter_report))["strategy"] == "none"
  assert len(list(read_records(paths.step_examples))) == 16  # 4 questions x 2 samples x 2 steps, all kept

  cfg.filter.strategy = "process"  # back to what the checkpoints were trained on
  assert run() == []  # filter reran (its inputs changed again), the rest is as before
  cfg.train.steps = 6  # train on: the trained policy's reports and the export are stale
  assert run() == ["train", "eval trained synthetic_arith", "export"]
  report = json.load(open(os.path.join(paths.eval_trained, "synthetic_arith.json")))
  assert report["provenance"] == {"source": paths.checkpoints, "checkpoint_step": 6}
  cfg.sampling.max_new_tokens = 32  # an eval setting: both policies are evaluated again
  assert run() == ["eval base synthetic_arith", "eval trained synthetic_arith"]
  cfg.sampling.temperature, cfg.sampling.top_p, cfg.data.limit = 0.7, 0.9, 3  # eval is greedy, takes eval.limit
  assert run() == []


def test_a_preempted_training_stops_the_pipeline_and_main_exits_143(stubbed, tmp_path, monkeypatch, capsys):
  """After a SIGTERM stopped training (checkpoint saved), the pipeline went on to evaluate and export the
  half-trained policy, spending the grace period, and main exited 0, so no scheduler requeued the job."""
  real_train = modes.run_train

  def preempted(cfg, paths):
    stubbed.append("train")
    os.makedirs(os.path.join(paths.checkpoints, "1"), exist_ok=True)
    return {"final_step": 1, "interrupted": True}

  monkeypatch.setattr(modes, "run_train", preempted)
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  summary = modes.run_pipeline(cfg, paths)
  assert stubbed == ["generate", "train"] and summary["interrupted"]
  assert "eval and export skipped" in capsys.readouterr().out
  monkeypatch.setattr(modes, "run_train", real_train)
  stubbed.clear()
  modes.run_pipeline(cfg, paths)  # the same command resumes
  assert stubbed == ["train", "eval base synthetic_arith", "eval trained synthetic_arith", "export"]

  from absl import flags

  from swirl_jax import main as main_module

  monkeypatch.setitem(modes.MODES, "pipeline", lambda cfg, paths: {"train": {"interrupted": True}, "interrupted": True})
  flags.FLAGS(["main", f"--workdir={tmp_path / 'w'}", f"--config={main_module._DEFAULT_CONFIG}"])
  try:
    with pytest.raises(SystemExit) as e:
      main_module.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()
  assert e.value.code == main_module.INTERRUPTED_EXIT == 143
  assert "training was interrupted (SIGTERM)" in capsys.readouterr().err


def test_an_interrupted_evaluation_keeps_the_datasets_it_finished(stubbed, tmp_path, monkeypatch, capsys):
  """A crash or preemption during the second of several eval datasets re-evaluated the first one too (its
  record said only 'in progress'), reporting the crash as changed settings; settings evaluation never reads
  (the generation seed, samples per question, refilling, data.split) re-evaluated everything; a changed
  judge discarded the saved rollouts of an interrupted dataset."""
  from swirl_jax.evaluation import evaluate as evaluate_module

  real = evaluate_module.evaluate
  keys = {}

  def crash_on(name):
    def evaluate(lm, questions, judge, tools, config, *, dataset, resume_key=None, **kw):
      keys[dataset] = resume_key
      if dataset == name:
        raise KeyboardInterrupt  # (SIGTERM / kill -9 while it ran)
      return real(lm, questions, judge, tools, config, dataset=dataset, resume_key=resume_key, **kw)
    return evaluate

  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  cfg.eval.datasets = "synthetic_arith,synthetic_multihop"
  monkeypatch.setattr(evaluate_module, "evaluate", crash_on("synthetic_multihop"))
  with pytest.raises(KeyboardInterrupt):
    modes.run_eval(cfg, paths)
  assert stubbed == ["eval base synthetic_arith"]
  first_key = keys["synthetic_multihop"]
  monkeypatch.setattr(evaluate_module, "evaluate", crash_on(None))
  stubbed.clear()
  cfg.judge.n_votes = 3  # the judge runs after the rollouts: the saved ones stay usable
  modes.run_eval(cfg, paths)
  assert stubbed == ["eval base synthetic_multihop"]
  assert "resuming an interrupted run: 1 of 2 datasets are done" in capsys.readouterr().out
  assert keys["synthetic_multihop"] == first_key
  stubbed.clear()
  cfg.rollout.seed, cfg.rollout.samples_per_question, cfg.rollout.refill, cfg.data.split = 7, 3, False, "test"
  modes.run_eval(cfg, paths)
  assert stubbed == []  # nothing evaluation reads changed
  cfg.sampling.max_new_tokens += 1  # this does change the rollouts
  modes.run_eval(cfg, paths)
  assert stubbed == ["eval base synthetic_arith", "eval base synthetic_multihop"]


def test_the_eval_table_holds_this_runs_datasets_only(stubbed, tmp_path):
  """Reports an earlier run left (another dataset list) stay on disk but not in this run's table."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  cfg.eval.datasets = "synthetic_arith,synthetic_multihop"
  modes.run_pipeline(cfg, paths)
  assert sorted(modes.run_eval(cfg, paths)["base"]) == ["synthetic_arith", "synthetic_multihop"]
  cfg.eval.datasets = "synthetic_arith"
  out = modes.run_eval(cfg, paths)
  assert sorted(out["base"]) == ["synthetic_arith"] and "synthetic_multihop" not in out["table"]
  assert os.path.exists(os.path.join(paths.eval_base, "synthetic_multihop.json"))


def test_the_workdir_search_corpus_follows_the_data_settings(tmp_path):
  """Another data.seed is another synthetic world: its corpus is built anew, not the old one searched."""
  cfg = get_config()
  cfg.data.name, cfg.rollout.task, cfg.data.num_questions = "synthetic_multihop", "search", 4
  paths = modes.Paths(str(tmp_path))
  modes.tools(cfg, paths)
  cfg.data.seed = 1
  modes.tools(cfg, paths)
  corpora = sorted(p for p in os.listdir(tmp_path) if p.startswith("corpus-") and p.endswith(".json"))
  assert len(corpora) == 2 and all(p.startswith("corpus-synthetic_multihop-train-") for p in corpora)
  worlds = [json.load(open(tmp_path / p)) for p in corpora]
  assert worlds[0] != worlds[1]
  cfg.data.limit = 2  # the corpus is the whole split's whatever the question limit: the same file
  modes.tools(cfg, paths)
  assert len([p for p in os.listdir(tmp_path) if p.startswith("corpus-") and p.endswith(".json")]) == 2


def test_the_workdir_search_corpus_follows_the_data_files_contents(tmp_path):
  """Questions added to a data file add their paragraphs: the corpus is built anew, not the old one searched."""
  record = {"_id": "a1", "question": "Where was Ada born?", "answer": "London", "type": "bridge", "level": "hard",
            "supporting_facts": [["Ada", 0]], "context": [["Ada", ["Ada was born in London."]]]}
  data = tmp_path / "hotpot_train_v1.1.json"
  data.write_text(json.dumps([record]), encoding="utf-8")
  cfg = get_config()
  cfg.data.name, cfg.data.source, cfg.data.path, cfg.rollout.task = "hotpot_qa", "file", str(data), "search"
  paths = modes.Paths(str(tmp_path / "w"))
  os.makedirs(paths.workdir)
  modes.tools(cfg, paths)
  record2 = dict(record, _id="b2", question="Where was Bo born?", answer="Oslo", supporting_facts=[["Bo", 0]],
                 context=[["Bo", ["Bo was born in Oslo."]]])
  data.write_text(json.dumps([record, record2]), encoding="utf-8")
  search = modes.tools(cfg, paths)["search"]
  corpora = sorted(p for p in os.listdir(paths.workdir) if p.startswith("corpus-") and p.endswith(".json"))
  assert len(corpora) == 2
  assert "Oslo" in search("Oslo").output


def test_export_refuses_a_workdir_without_checkpoints(tmp_path):
  """mode=export used to write model.source, untrained, and report it as the workdir's checkpoints."""
  cfg = get_config()
  cfg.mode = "export"
  paths = modes.Paths(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="holds no checkpoint.*--config.eval.checkpoint"):
    modes.run_export(cfg, paths)
  assert not os.path.exists(paths.export)


def test_export_refuses_to_write_over_the_model_it_came_from(tmp_path, monkeypatch):
  """export.out naming the base model's folder (or a folder above the checkpoints) replaced the weights the
  checkpoints were trained from."""
  monkeypatch.setattr(modes, "load", lambda *a, **k: pytest.fail("loaded a model before refusing"))
  base, ckpt = tmp_path / "hf" / "base", tmp_path / "run" / "checkpoints"
  base.mkdir(parents=True)
  ckpt.mkdir(parents=True)
  cfg = get_config()
  cfg.mode, cfg.model.source, cfg.eval.checkpoint = "export", str(base), str(ckpt)
  for out, what in ((base, "model.source"), (tmp_path / "hf", "model.source"), (tmp_path / "run", "the policy")):
    cfg.export.out = str(out)
    with pytest.raises(ValueError, match=f"--config.export.out='{out}' would replace {what}"):
      modes.run_export(cfg, modes.Paths(str(tmp_path / "run")))


def test_serve_mode_passes_the_mesh_rules_and_sampler_settings(monkeypatch, tmp_path):
  import swirl_jax.serve as serve_module

  seen = {}
  monkeypatch.setattr(serve_module, "run_serve", lambda source, **kw: seen.update(kw))
  cfg = get_config()
  cfg.mesh.replicate_kv_heads = True
  cfg.sampler.steps_per_call, cfg.sampler.max_chunk = 7, 96
  modes.run_serve(cfg, modes.Paths(str(tmp_path)))
  assert seen["steps_per_call"] == 7 and seen["max_chunk"] == 96
  assert dict(seen["rules"].table)["kv_heads"] is None


def test_trajectories_of_other_settings_are_never_mixed_or_used_silently(stubbed, tmp_path, capsys):
  """Generation was 'complete' when the file had enough lines: another data.seed (other questions)
  skipped it and trained on the old questions' trajectories."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  modes.run_pipeline(cfg, paths)
  cfg.data.seed = 1  # other questions: generating would append them to the old ones
  with pytest.raises(ValueError, match=r"trajectories.jsonl was generated with other settings \(changed: data\)"):
    modes.run_pipeline(cfg, paths)
  cfg.data.seed = 0
  cfg.sampling.temperature = 0.5  # the same questions, complete: kept, with a note
  stubbed.clear()
  capsys.readouterr()
  modes.run_pipeline(cfg, paths)
  assert "generate" not in stubbed
  assert "was generated with other settings (changed: sampling)" in capsys.readouterr().out


def test_train_and_label_settings_are_never_changed_silently(stubbed, tmp_path):
  """A complete pipeline skipped train (checkpoints at train.steps) whatever the train settings, and label
  appended nothing while recording the new judge settings as the labels' own."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  cfg.judge.backend = "model"  # (n_votes is a model judge's setting; the rule judge reads none)

  def run():
    stubbed.clear()
    modes.run_pipeline(cfg, paths)
    return list(stubbed)

  run()
  cfg.train.kl_coef = 0.5
  with pytest.raises(ValueError, match=r"trained with other settings \(train.kl_coef: 0.05 -> 0.5\)"):
    run()
  cfg.train.kl_coef = 0.05
  cfg.train.micro_batches, cfg.train.save_every = 2, 7  # memory and cadence: the same checkpoints
  assert run() == []
  cfg.judge.n_votes = 3  # other labels
  with pytest.raises(ValueError, match=r"labelled.jsonl was labelled with other judge settings "
                                       r"\(judge.n_votes: 1 -> 3\).*remove .*labelled.jsonl"):
    run()
  cfg.judge.n_votes = 1
  cfg.judge.model.batch_size = 2  # throughput only: neither relabelled nor re-evaluated
  cfg.judge.openai.model = "other"  # another backend's setting: the model judge never reads it
  assert run() == []
  # an eval record from before the throughput and unused settings were left out still matches
  for label in ("base", "trained"):
    record = modes.stamps.read(paths.workdir, f"eval-{label}")
    record["settings"]["judge"]["model"]["batch_size"] = 8
    record["settings"]["judge"]["openai"] = {"max_concurrency": 8, "model": "gpt"}
    modes.stamps.write(paths.workdir, f"eval-{label}", record)
  assert run() == []
  cfg.judge.backend = "rule"  # another judge: refused, naming the backend first
  with pytest.raises(ValueError, match=r"other judge settings \(judge.backend: 'model' -> 'rule';"):
    run()


def test_train_steps_0_evaluates_and_exports_no_trained_policy(stubbed, tmp_path):
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit, cfg.train.steps = 4, 2, 0
  os.makedirs(os.path.join(paths.checkpoints, "0"))  # what earlier versions saved for train.steps=0
  summary = modes.run_pipeline(cfg, paths)
  assert stubbed == ["generate", "eval base synthetic_arith"]
  assert summary["train"] == "skipped (train.steps=0)" and summary["export"] == "skipped (no checkpoint)"


def test_an_edited_question_file_is_evaluated_again(stubbed, tmp_path):
  """The eval record held the file's path, not its contents: an edited file's old report was reused."""
  data = tmp_path / "test.jsonl"
  data.write_text(json.dumps({"question": "What is 6 * 7?", "answer": "6 * 7 = 42\n#### 42"}) + "\n")
  cfg = get_config()
  cfg.data.name, cfg.data.source, cfg.data.path, cfg.data.split = "gsm8k", "file", str(data), "test"
  paths = modes.Paths(str(tmp_path / "w"))
  modes.run_eval(cfg, paths)
  stubbed.clear()
  modes.run_eval(cfg, paths)
  assert stubbed == []  # the same file: reused
  data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
  modes.run_eval(cfg, paths)
  assert stubbed == ["eval base gsm8k"]


def test_records_of_the_previous_version_do_not_redo_finished_stages(stubbed, tmp_path, monkeypatch):
  """Records written before the train settings, the checkpoint save time and the neutral judge keys were
  recorded compare without them: upgrading must not re-train, re-evaluate or re-export a finished run."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  def saved_at(time):
    for module in (modes, stage_inputs):
      monkeypatch.setattr(module, "checkpoint_saved", lambda source: {"checkpoint_saved": time} if
                          source == paths.checkpoints else {})

  saved_at(123.0)
  modes.run_pipeline(cfg, paths)
  old = {name: modes.stamps.read(paths.workdir, name) for name in ("train", "eval-trained", "export", "label")}
  modes.stamps.write(paths.workdir, "train", {"step_examples": old["train"]["step_examples"]})
  for name in ("eval-trained", "export"):
    modes.stamps.write(paths.workdir, name, {k: v for k, v in old[name].items() if k != "checkpoint_saved"})
  # earlier versions recorded every backend's settings, and the neutral ones, for the rule judge too
  old["label"]["settings"]["judge"]["openai"] = {"max_concurrency": 99, "model": "gpt"}
  old["label"]["settings"]["judge"]["n_votes"] = 1
  modes.stamps.write(paths.workdir, "label", old["label"])
  stubbed.clear()
  modes.run_pipeline(cfg, paths)
  assert stubbed == []
  saved_at(456.0)  # trained again to the same step: redone
  modes.stamps.write(paths.workdir, "export", old["export"])
  modes.stamps.write(paths.workdir, "eval-trained", old["eval-trained"])
  modes.run_pipeline(cfg, paths)
  assert stubbed == ["eval trained synthetic_arith", "export"]


def test_a_label_run_killed_midway_keeps_its_judge_settings(stubbed, tmp_path, monkeypatch):
  """The label record was written only at the end: after a killed first run, a rerun with other judge
  settings appended its labels to the first run's and recorded only its own settings."""
  from swirl_jax.pipeline import stages

  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions = 4
  cfg.judge.backend = "model"  # (stubbed: judges by the rules)
  from swirl_jax.config import dataset_spec
  from swirl_jax.data.registry import load_questions

  modes.run_generate(cfg, paths, load_questions(dataset_spec(cfg)))
  real_label = stages.label

  def killed(in_path, out_path, judge, **kw):
    with open(in_path, encoding="utf-8") as src, open(out_path, "w", encoding="utf-8") as f:
      f.write(src.readline())  # one trajectory written (unlabelled here; only the record matters), then killed
    raise KeyboardInterrupt

  monkeypatch.setattr(stages, "label", killed)
  with pytest.raises(KeyboardInterrupt):
    modes.run_label(cfg, paths)
  monkeypatch.setattr(stages, "label", real_label)
  cfg.judge.n_votes = 3
  with pytest.raises(ValueError, match=r"labelled with other judge settings \(judge.n_votes: 1 -> 3\)"):
    modes.run_label(cfg, paths)


def test_a_stage_run_alone_leaves_no_stale_record_for_the_pipeline(stubbed, tmp_path, monkeypatch):
  """mode=filter and mode=export changed their output but left the pipeline's record of the old one: the
  next pipeline skipped them as complete (0 step examples kept; a bfloat16 export kept as float32)."""
  import dataclasses

  from swirl_jax.checkpoints import build, hf_export

  exported = []
  monkeypatch.setattr(modes, "run_export", REAL_RUN_EXPORT)
  monkeypatch.setattr(build, "model_weights", lambda model: {})

  def export_hf(config, weights, out, tokenizer=None, dtype="float32", overwrite=False, replace_unmarked=False):
    exported.append(dtype)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
      f.write(json.dumps({"torch_dtype": dtype}))

  monkeypatch.setattr(hf_export, "export_hf", export_hf)
  monkeypatch.setattr(modes, "load", lambda cfg, global_mesh=False, source=None: dataclasses.make_dataclass(
      "LM", ["config", "model", "tokenizer"])(None, None, None))
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit, cfg.filter.strategy = 4, 2, "none"
  modes.run_pipeline(cfg, paths)
  examples = len(list(read_records(paths.step_examples)))
  assert examples == 16 and exported == ["float32"]

  alone = get_config()
  alone.data.num_questions, alone.eval.limit = 4, 2
  alone.filter.strategy, alone.export.dtype = "outcome", "bfloat16"
  modes.run_filter(alone, paths)
  modes.run_export(alone, paths)
  assert len(list(read_records(paths.step_examples))) < examples and exported[-1] == "bfloat16"
  summary = modes.run_pipeline(cfg, paths)  # filter and export redone (train refuses nothing: same examples)
  assert summary["filter"] != "skipped (complete)" and summary["export"] != "skipped (complete)"
  assert len(list(read_records(paths.step_examples))) == examples and exported[-1] == "float32"
  alone.filter.strategy, alone.export.dtype = "none", "float32"
  alone.eval.checkpoint = "gemma3-270m"  # another policy (a model source: no save time to tell it apart)
  modes.run_export(alone, paths)
  assert modes.run_pipeline(cfg, paths)["export"] != "skipped (complete)"


def test_a_half_labelled_file_is_not_skipped_as_complete(stubbed, tmp_path):
  """A label run killed half-way leaves its record and half the file; the pipeline compared the line count
  with questions x samples, so with fewer samples per question the rest was never labelled."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit, cfg.train.steps = 4, 2, 0
  modes.run_pipeline(cfg, paths)
  lines = open(paths.labelled, encoding="utf-8").readlines()
  assert len(lines) == 8
  with open(paths.labelled, "w", encoding="utf-8") as f:
    f.writelines(lines[:4])
  cfg.rollout.samples_per_question = 1  # the 8 trajectories are used as they are (with a note)
  summary = modes.run_pipeline(cfg, paths)
  assert summary["label"] != "skipped (complete)"
  assert len(list(read_records(paths.labelled))) == 8


def test_judge_settings_the_backend_never_reads_change_nothing(stubbed, tmp_path):
  """With the rule judge, a changed judge.model.* or judge.n_votes refused label ("labelled with other judge
  settings") and made train refuse and eval rerun."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  assert cfg.judge.backend == "rule"
  modes.run_pipeline(cfg, paths)
  cfg.judge.n_votes, cfg.judge.model.source, cfg.judge.openai.model = 3, "hf/other", "gpt"
  stubbed.clear()
  summary = modes.run_pipeline(cfg, paths)
  assert stubbed == [] and summary["label"] == "skipped (complete)"


def test_a_moved_workdir_keeps_its_finished_stages(stubbed, tmp_path, monkeypatch):
  """Records named the trained policy (WORKDIR/checkpoints) by its absolute path: a workdir moved or copied
  elsewhere re-evaluated and re-exported a policy that had not changed. Paths inside the workdir are
  recorded relative to it; a policy outside it is still named as it is."""
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  first = tmp_path / "first"
  paths = modes.Paths(str(first))
  modes.run_pipeline(cfg, paths)
  assert modes.stamps.read(paths.workdir, "export")["policy"] == "$WORKDIR/checkpoints"
  os.rename(first, tmp_path / "moved")
  moved = modes.Paths(str(tmp_path / "moved"))
  stubbed.clear()
  modes.run_pipeline(cfg, moved)
  assert stubbed == []
  os.chdir(tmp_path)  # the same workdir named relative to the current directory, in any spelling
  for spelling in ("moved", "./moved", "moved/", "./moved//"):
    modes.run_pipeline(cfg, modes.Paths(spelling))
    assert stubbed == [], spelling
  cfg.eval.checkpoint = str(tmp_path / "moved" / "checkpoints")  # the same policy, named explicitly
  modes.run_pipeline(cfg, moved)
  assert stubbed == []
  elsewhere = tmp_path / "other_checkpoints"
  os.makedirs(elsewhere / "4")
  cfg.eval.checkpoint = str(elsewhere)  # another policy: evaluated and exported
  modes.run_pipeline(cfg, moved)
  assert stubbed == ["eval trained synthetic_arith", "export"]
  assert modes.stamps.read(moved.workdir, "export")["policy"] == str(elsewhere)
  # an interrupted eval's saved rollouts are keyed by the policy's workdir-relative path: reused after a move
  cfg.eval.checkpoint = ""
  keys, stub = [], evaluate_module.evaluate
  monkeypatch.setattr(evaluate_module, "evaluate",
                      lambda *a, resume_key=None, **k: keys.append(resume_key) or stub(*a, resume_key=resume_key, **k))
  modes.run_pipeline(cfg, moved)  # the workdir's own policy again: evaluated
  os.rename(tmp_path / "moved", tmp_path / "again")
  os.remove(tmp_path / "again" / "eval" / "trained" / "synthetic_arith.json")  # as if that eval was cut short
  modes.run_pipeline(cfg, modes.Paths(str(tmp_path / "again")))
  assert len(keys) == 2 and keys[0] == keys[1]
  assert keys[0]["source"] == keys[0]["provenance"]["source"] == "$WORKDIR/checkpoints"


def test_trajectories_without_a_record_must_be_of_this_runs_questions(stubbed, tmp_path):
  """A workdir whose trajectories have no generate record (copied by hand, or made before records existed)
  was appended to, or used as complete, whatever questions its records held."""
  paths = modes.Paths(str(tmp_path))
  cfg = get_config()
  cfg.data.num_questions, cfg.eval.limit = 4, 2
  modes.run_pipeline(cfg, paths)
  os.remove(os.path.join(paths.workdir, "stages", "generate.json"))
  stubbed.clear()
  modes.run_pipeline(cfg, paths)  # the same questions: used as they are
  assert stubbed == []
  cfg.data.seed = 1  # other questions (their ids name the seed)
  with pytest.raises(ValueError, match=r"trajectories.jsonl: none of its 8 trajectories is of this run's questions"):
    modes.run_pipeline(cfg, paths)
  cfg.data.seed = 0
  lines = open(paths.trajectories).read().splitlines()
  edited = json.loads(lines[1])
  edited["question"]["text"] = "What is 1 + 1?"  # (an edited data file: the same id, another question)
  with open(paths.trajectories, "w") as f:
    f.write("\n".join([lines[0], json.dumps(edited)] + lines[2:]) + "\n")
  qid = edited["question"]["id"]
  with pytest.raises(ValueError, match=rf"trajectories.jsonl:2: the trajectory of question '{qid}' was generated "
                                       rf"for another question"):
    modes.run_pipeline(cfg, paths)
  before = open(paths.trajectories).read()
  cfg.data.num_questions = 6  # generate would append
  with pytest.raises(ValueError, match=r"trajectories.jsonl:2: .*another question"):
    modes.run_generate(cfg, paths, modes._train_questions(cfg))
  assert open(paths.trajectories).read() == before  # nothing appended
