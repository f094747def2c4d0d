"""The configuration schema of ``python -m swirl_jax.main``: defaults, documentation, and conversion
of the ml_collections ConfigDict into the frozen dataclasses the library takes.

Every setting is listed in ``base_config`` with its meaning in ``HELP``; config files in configs/
start from ``base_config()`` and change what they need, and any field can be overridden on the command
line (``--config.sampling.temperature=0.7``).
"""

from __future__ import annotations

import ml_collections

from swirl_jax.data.registry import DatasetSpec
from swirl_jax.data.synthetic_arith import ArithConfig
from swirl_jax.data.synthetic_multihop import MultihopConfig
from swirl_jax.models.sharding import MeshConfig
from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.sampling.rollout import RolloutConfig

HELP: dict[str, str] = {
    "mode": "what to run: generate (stage-1 rollouts to trajectories.jsonl) or sample (plain completions)",
    "model.source": "packaged short name (gemma3-270m), a HF checkpoint directory, a .gguf file, or random:PRESET",
    "model.dtype": "compute dtype: float32 or bfloat16",
    "model.param_dtype": "parameter storage dtype: float32 or bfloat16",
    "model.cache_dir": "where packaged models are converted once ('' = $SWIRL_JAX_CACHE or ~/.cache/swirl_jax)",
    "mesh.data": "devices on the data-parallel mesh axis (-1 = the rest)",
    "mesh.fsdp": "devices on the FSDP mesh axis (-1 = the rest)",
    "mesh.tensor": "devices on the tensor-parallel mesh axis (-1 = the rest)",
    "data.name": "dataset: synthetic_arith, synthetic_multihop, gsm8k, hotpot_qa, musique, beerqa, cofca",
    "data.split": "split to read (train, validation/dev, test)",
    "data.source": "tfds (prepare to array_record from data.manual_dir) or file (read data.path)",
    "data.path": "for source=file: a JSON / JSON Lines file in the dataset's official format",
    "data.manual_dir": "for source=tfds: a directory holding the official files (offline preparation)",
    "data.data_dir": "TFDS data directory ('' = TFDS's default)",
    "data.drop_easy": "drop HotPotQA questions of level easy (as the paper did)",
    "data.limit": "keep at most this many questions (0 = all)",
    "data.seed": "seed of the synthetic generators",
    "data.num_questions": "questions per split of the synthetic families",
    "rollout.task": "math (calculator, <math_exp>) or search (BM25, <search_query>)",
    "rollout.samples_per_question": "trajectories per question (the paper: 5)",
    "rollout.max_tool_calls": "tool calls per trajectory (0 = task default: 10 math, 5 search)",
    "rollout.num_demos": "worked demonstrations shown before the question (0 or 1)",
    "rollout.seed": "base seed of trajectory sampling",
    "rollout.refill": "refill finished rows at once (continuous batching)",
    "sampling.temperature": "0 = greedy",
    "sampling.top_k": "sample among the k most likely tokens (0 = all)",
    "sampling.top_p": "nucleus sampling mass (1.0 = off)",
    "sampling.max_new_tokens": "tokens per model turn",
    "sampler.batch_size": "rows decoded together",
    "sampler.cache_len": "KV-cache tokens per row (prompt + every turn and tool result)",
    "sampler.steps_per_call": "decode steps per jitted call before the host looks at finished rows",
    "sampler.max_chunk": "longest chunk appended to the cache at once (prompts are split into such chunks)",
    "search.corpus": "comma-separated corpus files ([{title,text}], JSON Lines, or {title:[sentences]})",
    "search.top_k": "paragraphs returned per query",
    "search.max_words": "word budget of one search observation",
    "sample.prompts": "for mode=sample: prompts separated by '|||'",
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "generate"
  c.model = dict(source="gemma3-270m", dtype="float32", param_dtype="float32", cache_dir="")
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.data = dict(name="synthetic_arith", split="train", source="tfds", path="", manual_dir="", data_dir="",
                drop_easy=False, limit=0, seed=0, num_questions=1000)
  c.rollout = dict(task="math", samples_per_question=1, max_tool_calls=0, num_demos=1, seed=0, refill=True)
  c.sampling = dict(temperature=0.7, top_k=64, top_p=1.0, max_new_tokens=96)
  c.sampler = dict(batch_size=8, cache_len=1024, steps_per_call=32, max_chunk=256)
  c.search = dict(corpus="", top_k=1, max_words=200)
  c.sample = dict(prompts="The capital of France is")
  return c


def check_documented(cfg: ml_collections.ConfigDict) -> None:
  """Refuses settings without documentation (keeps HELP and base_config in step)."""
  def walk(d, prefix=""):
    for k, v in d.items():
      name = prefix + k
      if isinstance(v, ml_collections.ConfigDict):
        yield from walk(v, name + ".")
      else:
        yield name
  missing = [n for n in walk(cfg) if n not in HELP]
  if missing:
    raise KeyError(f"config settings without documentation in swirl_jax.config.HELP: {missing}")


def mesh_config(cfg) -> MeshConfig:
  return MeshConfig(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def dataset_spec(cfg) -> DatasetSpec:
  d = cfg.data
  return DatasetSpec(
      name=d.name, split=d.split, source=d.source, path=d.path or None, manual_dir=d.manual_dir or None,
      data_dir=d.data_dir or None, drop_easy=d.drop_easy, limit=d.limit or None, seed=d.seed,
      arith=ArithConfig(num_questions=d.num_questions), multihop=MultihopConfig(num_questions=d.num_questions))


def sampling_config(cfg) -> SamplingConfig:
  s = cfg.sampling
  return SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)


def rollout_config(cfg) -> RolloutConfig:
  r = cfg.rollout
  return RolloutConfig(task=r.task, samples_per_question=r.samples_per_question,
                       max_tool_calls=r.max_tool_calls or None, num_demos=r.num_demos, seed=r.seed,
                       refill=r.refill)
