"""Quick start on CPU: the packaged Gemma 3 270M on the synthetic calculator task.

  python -m swirl_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Generates 2 trajectories for each of 6 synthetic arithmetic problems with the tool loop, writing
runs/quickstart/trajectories.jsonl (rerunning resumes).
"""

from swirl_jax.config import base_config


def get_config():
  c = base_config()
  c.mode = "generate"
  c.model.source = "gemma3-270m"
  c.data.name = "synthetic_arith"
  c.data.num_questions = 6
  c.rollout.task = "math"
  c.rollout.samples_per_question = 2
  c.sampling.max_new_tokens = 64
  c.sampler.batch_size = 4
  c.sampler.cache_len = 1024
  return c
