"""What a training run is made from: a resume refuses other step examples (even as many) and other
train settings, train.steps=0 leaves no checkpoint to pass off as trained, and the learning-rate decay
settings reach the optimizer. Tiny random Gemma 3, sft (no sampling), real checkpoints."""

from __future__ import annotations

import json
import os

import pytest

from configs.quickstart import get_config
from swirl_jax import modes
from swirl_jax.pipeline import stage_inputs
from swirl_jax.checkpoints.build import random_model
from swirl_jax.loading import LoadedModel
from swirl_jax.models.config import preset
from swirl_jax.types import Message, StepExample, write_jsonl
from tiny_tokenizer import tiny_tokenizer


@pytest.fixture
def tiny(monkeypatch):
  tok = tiny_tokenizer()
  mcfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(mcfg, seed=0), tok, mcfg, "random:test")
  monkeypatch.setattr(modes, "load", lambda cfg, global_mesh=False, source=None: lm)
  cfg = get_config()
  cfg.train.mode, cfg.train.steps, cfg.train.states_per_step, cfg.train.max_len = "sft", 2, 2, 64
  cfg.train.save_every = 1
  return cfg


def _examples(word: str) -> list[StepExample]:
  return [StepExample(f"q{i}", 0, 0, (Message("user", f"Add {i} and {i}."),), f"<answer>{word} {i}</answer>")
          for i in range(4)]


def test_mode_train_refuses_to_resume_on_other_examples_of_the_same_count(tiny, tmp_path):
  """mode=train compared only the number of examples: a filter change that kept as many continued the
  old checkpoints on new data."""
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  assert modes.MODES["train"](tiny, paths)["final_step"] == 2
  saved = stage_inputs.checkpoint_saved(paths.checkpoints)["checkpoint_saved"]
  write_jsonl(paths.step_examples, _examples("other"))  # as many, other actions
  tiny.train.steps = 4
  with pytest.raises(ValueError, match="step_examples.jsonl changed since they were trained on it"):
    modes.MODES["train"](tiny, paths)
  # without the workdir's record (train() called directly, or the record removed): the checkpoint's digest
  os.remove(os.path.join(paths.workdir, "stages", "train.json"))
  with pytest.raises(ValueError, match="as many as the checkpoint's, but other ones"):
    modes.MODES["train"](tiny, paths)
  write_jsonl(paths.step_examples, _examples("ten"))  # the same examples: trains on
  assert modes.MODES["train"](tiny, paths)["resumed_from"] == 2
  assert stage_inputs.checkpoint_saved(paths.checkpoints)["checkpoint_saved"] > saved  # step 4, saved later


def test_train_refuses_other_settings_and_allows_steps_and_memory_knobs(tiny, tmp_path):
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  modes.MODES["train"](tiny, paths)
  lr = tiny.train.learning_rate
  tiny.train.learning_rate = 1e-3
  tiny.train.steps = 3
  with pytest.raises(ValueError, match=rf"trained with other settings \(train.learning_rate: {lr!r} -> 0.001\)"):
    modes.MODES["train"](tiny, paths)
  tiny.train.learning_rate = lr
  tiny.train.micro_batches, tiny.train.remat, tiny.train.save_every = 2, True, 3  # same updates
  out = modes.MODES["train"](tiny, paths)
  assert (out["resumed_from"], out["final_step"]) == (2, 3)


def test_steps_0_writes_no_checkpoint(tiny, tmp_path):
  """A step-0 checkpoint (the initial weights) was evaluated and exported as the trained policy."""
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  tiny.train.steps = 0
  assert modes.MODES["train"](tiny, paths)["steps_run"] == 0
  assert stage_inputs.checkpoint_step(paths.checkpoints) is None


def test_decay_settings_reach_the_optimizer(tiny, tmp_path, monkeypatch):
  from swirl_jax.training import rl
  from swirl_jax.training.optimizer import schedule

  seen = {}

  def fake_train(config, examples, lm, judge, *, optimizer, **kw):
    seen["opt"] = optimizer
    raise RuntimeError("stop")

  monkeypatch.setattr(rl, "train", fake_train)
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  tiny.train.steps, tiny.train.warmup_steps, tiny.train.learning_rate = 100, 10, 1e-3
  tiny.train.decay_steps, tiny.train.end_lr_ratio = -1, 0.2  # until the last step
  with pytest.raises(RuntimeError, match="stop"):
    modes.run_train(tiny, paths)
  opt = seen["opt"]
  assert (opt.decay_steps, opt.end_lr_ratio) == (90, 0.2)
  lr = schedule(opt)
  assert float(lr(9)) == pytest.approx(1e-3) and float(lr(100)) == pytest.approx(2e-4)
  assert float(lr(55)) == pytest.approx(2e-4 + 0.8e-3 * 0.5)  # half way down the cosine


def test_a_resume_without_the_stage_record_refuses_other_updates(tiny, tmp_path):
  """rl.train checked only the data settings: a checkpoint directory without the workdir's stage record (a
  copied one, or rl.train called directly) resumed under another learning rate, loss and baseline."""
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  modes.MODES["train"](tiny, paths)
  os.remove(os.path.join(paths.workdir, "stages", "train.json"))
  lr = tiny.train.learning_rate
  tiny.train.steps, tiny.train.learning_rate, tiny.train.kl_coef = 3, 0.5, 0.0
  with pytest.raises(ValueError, match=rf"other settings \(optimizer.learning_rate: {lr!r} in the checkpoint, 0.5 "
                                       rf"now; loss.kl_coef: 0.05 in the checkpoint, 0.0 now\)"):
    modes.MODES["train"](tiny, paths)
  tiny.train.learning_rate, tiny.train.kl_coef = lr, 0.05
  assert modes.MODES["train"](tiny, paths)["final_step"] == 3


def test_raising_steps_under_a_decay_that_follows_them_is_refused(tiny, tmp_path):
  """train.decay_steps=-1 derives the decay from train.steps, which a resume may raise: the learning rate
  of the steps already taken moved (0.00325 at step 4 of 4, then 0.0065 at step 5 of 8, in the review)."""
  paths = modes.Paths(str(tmp_path))
  write_jsonl(paths.step_examples, _examples("ten"))
  tiny.train.warmup_steps, tiny.train.decay_steps = 0, -1
  modes.MODES["train"](tiny, paths)  # steps 2: decays over 2 steps
  record = os.path.join(paths.workdir, "stages", "train.json")
  with open(record, encoding="utf-8") as f:
    written = json.load(f)
  modes.MODES["train"](tiny, paths)  # the same command: nothing to do
  # a record written before decay_schedule existed (settings say -1): the same command still matches it
  old = json.loads(json.dumps(written))
  del old["inputs"]["decay_schedule"]
  with open(record, "w", encoding="utf-8") as f:
    json.dump(old, f)
  assert modes.MODES["train"](tiny, paths)["steps_run"] == 0
  with open(record, "w", encoding="utf-8") as f:
    json.dump(written, f)
  tiny.train.steps = 4
  with pytest.raises(ValueError, match=r"the learning-rate decay: 2 -> 4 steps .*--config.train.decay_steps=2"):
    modes.MODES["train"](tiny, paths)  # the workdir's record
  os.remove(os.path.join(paths.workdir, "stages", "train.json"))
  with pytest.raises(ValueError, match=r"optimizer.decay_steps: 2 in the checkpoint, 4 now\) \(train.decay_steps=-1"):
    modes.MODES["train"](tiny, paths)  # the checkpoint's own
  tiny.train.decay_steps = 2  # the saved schedule, extended at its end learning rate
  assert modes.MODES["train"](tiny, paths)["final_step"] == 4
