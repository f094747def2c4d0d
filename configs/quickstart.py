"""Quick start on CPU: the whole SWiRL pipeline with the packaged Gemma 3 270M on synthetic arithmetic.

  python -m swirl_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Stages (each skipped on a rerun once its output is complete; see swirl_jax/modes.py):
  generate  2 trajectories for each of 6 synthetic word problems with the calculator tool loop
  label     the rule judge labels every step (process) and every final answer (outcome)
  filter    process filter, then each kept trajectory becomes one StepExample per step
  train     a short step-wise RL run: 2 states x 4 sampled actions per step, rewarded by the judge
  eval      base and trained policy on 6 held-out problems (judged accuracy, EM, F1, steps)
  export    the trained checkpoint as a Hugging Face directory (runs/quickstart/export/hf)

Sized to finish in under 15 minutes on 2 CPU cores. It shows every stage working end to end on real
weights; a few RL steps at this scale do not make the model measurably better (tests/test_learning.py
shows learning on a tiny model, and configs/paper.py holds the paper-scale recipes).
"""

from swirl_jax.config import base_config


def get_config():
  c = base_config()
  c.mode = "pipeline"
  c.model.source = "gemma3-270m"
  c.data.name = "synthetic_arith"
  c.data.num_questions = 6
  c.rollout.task = "math"
  c.rollout.samples_per_question = 2
  c.rollout.max_tool_calls = 6
  c.sampling.temperature = 0.7
  c.sampling.max_new_tokens = 64
  c.sampler.batch_size = 4
  c.sampler.cache_len = 1024
  c.judge.backend = "rule"
  c.filter.strategy = "process"
  c.train.mode = "rl"
  c.train.steps = 3
  c.train.states_per_step = 2
  c.train.group_size = 4
  c.train.max_len = 640
  c.train.remat = True  # halves peak memory (18 -> 9 GB here) for ~the same step time
  c.train.max_new_tokens = 64
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = 1
  c.train.save_every = 3
  c.eval.limit = 6
  return c
