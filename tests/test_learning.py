"""A real learning test: step-wise RL with the rule judge clearly raises the mean reward.

The task: states are "Add A and B." user turns; the rule judge rewards an action that is a well-formed
calculator call whose expression evaluates (``<math_exp>A + B</math_exp>``) and gives 0 to a call that
does not evaluate (``<math_exp>A +</math_exp>``), to an unsupported answer (``<answer>..</answer>`` with no
tool result before it) and to anything malformed. A tiny model (2 layers, d_model 64, the tiny BPE
tokenizer) is trained from scratch by SFT on an even mix of the three recorded actions, so that it
speaks the format but earns a low reward; then RL (G samples per state, leave-one-out baseline, k3 KL
to the SFT policy) must find the rewarded action. The mean reward on held-out states, over fixed
sampling seeds, is measured before and after RL. The offline variant (recorded actions rewarded by
their stored labels) must move it too.
"""

import dataclasses
import time

import numpy as np
import pytest

from tiny_tokenizer import tiny_tokenizer

from swirl_jax import chat
from swirl_jax.checkpoints.build import random_model
from swirl_jax.judges.base import context_from_state
from swirl_jax.judges.rule import RuleJudge
from swirl_jax.loading import LoadedModel
from swirl_jax.models.config import preset
from swirl_jax.sampling.decode import Sampler, SamplingConfig, build_stop_table
from swirl_jax.sampling.generate import generate
from swirl_jax.tools.parser import STOP_STRINGS, truncate_after_action
from swirl_jax.training import rl
from swirl_jax.training.losses import LossConfig
from swirl_jax.training.optimizer import OptimizerConfig
from swirl_jax.training.train_state import model_params
from swirl_jax.types import Message, StepExample

ACTIONS = ("<math_exp>{a} + {b}</math_exp>", "<math_exp>{a} +</math_exp>", "<answer>{s}</answer>")
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=20)
COMMON = dict(max_len=64, seq_bucket=32, slot_bucket=8, progress=False, seed=0)


def _examples(n, seed, recorded=True):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    a, b = (int(x) for x in rng.integers(1, 99, 2))
    action = ACTIONS[i % 3].format(a=a, b=b, s=a + b) if recorded else ""
    out.append(StepExample(f"q{seed}-{i}", 0, 0, (Message("user", f"Add {a} and {b}."),), action))
  return out


def _held_out_reward(lm, states, samples=4):
  """Mean rule-judge reward of ``samples`` sampled actions per state (fixed seeds)."""
  tok = lm.tokenizer
  stops = build_stop_table(tok, STOP_STRINGS, [tok.eos_id, tok.end_of_turn_id])
  sampler = Sampler.create(lm.model, batch=len(states) * samples, cache_len=64, sampling=SAMPLING, stops=stops,
                           steps_per_call=24)
  prompts = [tok.encode(chat.render(ex.state)) for ex in states for _ in range(samples)]
  outs = generate(sampler, model_params(lm.model), prompts, list(range(len(prompts))))
  ends = {tok.eos_id, tok.end_of_turn_id}
  texts = [truncate_after_action(tok.decode(o[:-1] if o and o[-1] in ends else o)) for o in outs]
  exs = [ex for ex in states for _ in range(samples)]
  verdicts = RuleJudge().judge_contexts([context_from_state("math", ex.state, 0, t) for ex, t in zip(exs, texts)])
  return float(np.mean([v.score for v in verdicts])), texts


@pytest.fixture(scope="module")
def sft_policy():
  """The tiny model after SFT on the even mix of recorded actions (speaks the format, low reward)."""
  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:learning-test")
  sft = rl.train(rl.TrainConfig(mode="sft", steps=40, states_per_step=16, **COMMON), _examples(96, seed=1), lm,
                 optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=5))
  assert sft.history[-1]["loss"] < sft.history[0]["loss"] / 2
  return rl.with_params(lm, sft.params)


def test_step_wise_rl_raises_mean_reward(sft_policy):
  t0 = time.time()
  held_out = _examples(16, seed=2, recorded=False)
  before, _ = _held_out_reward(sft_policy, held_out)
  steps = 150
  res = rl.train(rl.TrainConfig(mode="rl", steps=steps, states_per_step=8, group_size=4, steps_per_call=24, **COMMON),
                 _examples(64, seed=3, recorded=False), sft_policy, RuleJudge(),
                 loss=LossConfig(kl_coef=0.02, baseline="loo"),
                 optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=10), sampling=SAMPLING)
  after, texts = _held_out_reward(rl.with_params(sft_policy, res.params), held_out)
  train_rewards = [h["mean_reward"] for h in res.history]
  first, last = np.mean(train_rewards[:15]), np.mean(train_rewards[-15:])
  print(f"RL: held-out reward {before:.3f} -> {after:.3f}; training reward {first:.3f} -> {last:.3f}; "
        f"{time.time() - t0:.0f}s; samples after: {texts[:4]}")
  assert before <= 0.6, before
  assert after >= 0.85 and after - before >= 0.3, (before, after)
  assert last - first >= 0.25, (first, last)
  assert len(res.history) == steps and all(np.isfinite(h["loss"]) for h in res.history)
  for key in ("kl", "mean_reward", "judge_pass_rate", "reward_by_step/0", "tokens_per_s", "learning_rate"):
    assert key in res.history[-1], key


def test_offline_variant_learns_from_stored_labels(sft_policy):
  """The offline variant (recorded actions rewarded by their process labels, no sampling) also moves
  the policy toward the GOOD action. Baseline "none" (A = r >= 0): with a baseline, BAD recorded
  actions get negative weights, and pushing down the likelihood of off-policy text drives probability
  onto arbitrary tokens (measured here: held-out reward 0.28 -> 0.02 with "loo")."""
  labelled = [dataclasses.replace(ex, process_label="GOOD" if i % 3 == 0 else "BAD")
              for i, ex in enumerate(_examples(96, seed=1))]
  held_out = _examples(16, seed=2, recorded=False)
  before, _ = _held_out_reward(sft_policy, held_out)
  res = rl.train(rl.TrainConfig(mode="offline", steps=40, states_per_step=16, **COMMON), labelled, sft_policy,
                 loss=LossConfig(kl_coef=0.0, baseline="none"),
                 optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=5))
  after, _ = _held_out_reward(rl.with_params(sft_policy, res.params), held_out)
  print(f"offline: held-out reward {before:.3f} -> {after:.3f}")
  assert abs(np.mean([h["mean_reward"] for h in res.history]) - 1 / 3) < 0.1  # a third are labelled GOOD
  assert after - before >= 0.2, (before, after)


def test_share_prefix_asks_for_states_divisible_by_micro_batches():
  """With train.share_prefix a step has one sequence per state: 3 states cannot split into 2
  micro-batches (though their 12 rows could), and the error names the settings."""
  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:share-prefix-test")
  with pytest.raises(ValueError, match=r"3 sequences per step \(train.share_prefix.*train.micro_batches=2"):
    rl.train(rl.TrainConfig(mode="rl", steps=1, states_per_step=3, group_size=4, micro_batches=2, **COMMON),
             _examples(6, seed=2), lm)


def test_training_refuses_settings_that_cannot_learn():
  """bfloat16 parameters: AdamW's steps round away (the weights barely move); rl with one action per
  state and a group baseline: every advantage is 0. Both used to train with normal-looking losses."""
  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"),
               param_dtype="bfloat16", dtype="bfloat16")
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:bf16-test")
  with pytest.raises(ValueError, match="cannot train bfloat16 parameters.*param_dtype='float32'"):
    rl.train(rl.TrainConfig(mode="rl", steps=1, states_per_step=2, group_size=2, **COMMON), _examples(2, seed=2), lm)
  cfg = cfg.replace(param_dtype="float32")
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:group-test")
  with pytest.raises(ValueError, match="group_size=1 with baseline='loo'.*every advantage is 0"):
    rl.train(rl.TrainConfig(mode="rl", steps=1, states_per_step=2, group_size=1, **COMMON), _examples(2, seed=2), lm)
  with pytest.raises(ValueError, match="group_size=1 with baseline='mean'"):
    rl.train(rl.TrainConfig(mode="rl", steps=1, states_per_step=2, group_size=1, **COMMON), _examples(2, seed=2), lm,
             loss=LossConfig(baseline="mean"))


def test_resuming_with_other_optimizer_settings_names_them(tmp_path):
  """clip_norm on or off changes the optimizer state's structure: the error says which setting, not only
  that two trees differ."""
  from swirl_jax.training.checkpointing import CheckpointConfig

  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:resume-test")
  run = lambda clip, steps: rl.train(
      rl.TrainConfig(mode="sft", steps=steps, states_per_step=4, **COMMON), _examples(8, seed=3), lm,
      optimizer=OptimizerConfig(clip_norm=clip), checkpoint=CheckpointConfig(str(tmp_path / "ckpt"), save_every=1))
  assert run(1.0, 1).state.step == 1
  with pytest.raises(ValueError, match="other optimizer settings \\(clip_norm: 1.0 in the checkpoint, 0.0 now\\)"):
    run(0.0, 2)
  assert run(1.0, 2).resumed_from == 1  # the saved settings resume
  with pytest.raises(ValueError, match="other data settings \\(seed: 0 in the checkpoint, 5 now; examples: 8"):
    rl.train(rl.TrainConfig(mode="sft", steps=3, states_per_step=4, **{**COMMON, "seed": 5}), _examples(9, seed=3),
             lm, optimizer=OptimizerConfig(clip_norm=1.0),
             checkpoint=CheckpointConfig(str(tmp_path / "ckpt"), save_every=1))


def test_rl_loss_covers_the_action_the_judge_saw(monkeypatch):
  """A sampled turn that runs past its closing tag (the tag's last token merged with what follows, so no
  stop fired) is judged on its action alone; the loss takes the same tokens, not the tail."""
  tok = tiny_tokenizer()
  cfg = preset("tiny-gemma3", vocab_size=len(tok.hf), num_layers=2, layer_types=("local", "global"))
  lm = LoadedModel(random_model(cfg, seed=0), tok, cfg, "random:cut-test")
  action = tok.encode("<answer>5</answer>", add_bos=False)
  ran_on = action + tok.encode(" and then some more words", add_bos=False) + [tok.end_of_turn_id]
  stopped = action + [tok.end_of_turn_id]
  monkeypatch.setattr(rl, "generate", lambda sampler, params, prompts, seeds: [ran_on, stopped][:len(prompts)])
  captured = {}
  real_pack = rl.pack_batch
  monkeypatch.setattr(rl, "pack_batch", lambda rows, *a, **k: captured.setdefault("rows", rows) and real_pack(rows, *a, **k))
  run = rl._Run(rl.TrainConfig(mode="rl", steps=1, states_per_step=1, group_size=2, **COMMON), _examples(2, seed=4),
                lm, RuleJudge(), SAMPLING)
  _, _, _, verdicts = run.rl_batch([0], model_params(lm.model), np.zeros(2, np.uint32), {})
  (t0, m0), (t1, m1) = captured["rows"]
  assert [t for t, m in zip(t0, m0) if m] == action  # the tail and its end of turn are not trained
  assert [t for t, m in zip(t1, m1) if m] == stopped  # a turn that stopped keeps its end of turn
