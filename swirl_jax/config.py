"""The configuration schema of ``python -m swirl_jax.main``: defaults, documentation, and conversion
of the ml_collections ConfigDict into the frozen dataclasses the library takes.

Every setting is listed in ``base_config`` with its meaning in ``HELP``; config files in configs/
start from ``base_config()`` and change what they need, and any field can be overridden on the command
line (``--config.sampling.temperature=0.7``).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import ml_collections

from swirl_jax.data.registry import DatasetSpec, UnknownDatasetError, UnknownSplitError, resolve
from swirl_jax.data.synthetic_arith import ArithConfig
from swirl_jax.data.synthetic_multihop import MultihopConfig
from swirl_jax.models.config import REMAT_POLICIES
from swirl_jax.models.sharding import MeshConfig
from swirl_jax.sampling.decode import SamplingConfig
from swirl_jax.sampling.rollout import RolloutConfig

HELP: dict[str, str] = {
    "mode": "pipeline (every stage in order, skipping finished ones), generate, label, filter, train, eval, "
            "export, serve, or sample (complete sample.prompts)",
    "model.source": "packaged short name (gemma3-270m), a HF checkpoint directory, a .gguf file, or random:PRESET",
    "model.dtype": "compute dtype: float32 or bfloat16",
    "model.param_dtype": "parameter storage dtype: float32 or bfloat16 (bfloat16 cannot train: AdamW's small "
                         "updates round away; train float32 parameters with model.dtype=bfloat16)",
    "model.cache_dir": "where packaged models are converted once ('' = $SWIRL_JAX_CACHE or ~/.cache/swirl_jax)",
    "compile_cache_dir": "JAX's persistent compilation cache, reused by later runs ('' = MODEL_CACHE/xla/HOST "
                         "beside the packaged models, one folder per host CPU; 'none' = off; "
                         "$JAX_COMPILATION_CACHE_DIR wins)",
    "mesh.data": "devices on the data-parallel mesh axis (-1 = the rest)",
    "mesh.fsdp": "devices on the FSDP mesh axis (-1 = the rest)",
    "mesh.tensor": "devices on the tensor-parallel mesh axis (-1 = the rest)",
    "mesh.replicate_kv_heads": "replicate K/V projections instead of sharding kv heads over tensor "
                               "(needed when kv heads do not divide the tensor axis, e.g. Gemma 3 270M/1B)",
    "data.name": "dataset: synthetic_arith, synthetic_multihop, gsm8k, hotpot_qa, musique, beerqa, cofca",
    "data.split": "split to read (train, validation/dev, test)",
    "data.source": "tfds (prepare to array_record from data.manual_dir) or file (read data.path)",
    "data.path": "for source=file: a JSON / JSON Lines file in the dataset's official format, or a directory "
                 "holding each split's official file",
    "data.manual_dir": "for source=tfds: a directory holding the official files (sub-folders are searched) for "
                       "offline preparation ('' = TFDS downloads the official release)",
    "data.data_dir": "TFDS data directory ('' = TFDS's default)",
    "data.drop_easy": "drop HotPotQA questions of level easy (as the paper did)",
    "data.limit": "keep at most this many questions (0 = all)",
    "data.shuffle_seed": "shuffle the questions with this seed before data.limit (-1 = file order)",
    "data.seed": "seed of the synthetic generators",
    "data.num_questions": "questions per split of the synthetic families",
    "rollout.task": "math (calculator, <math_exp>) or search (BM25, <search_query>)",
    "rollout.samples_per_question": "trajectories per question (the paper: 5)",
    "rollout.max_tool_calls": "tool calls per trajectory (0 = task default: 10 math, 5 search)",
    "rollout.num_demos": "worked demonstrations shown before the question (0 or 1)",
    "rollout.seed": "base seed of trajectory sampling",
    "rollout.refill": "refill finished rows at once (continuous batching)",
    "sampling.temperature": "stage-1 sampling temperature (0 = greedy)",
    "sampling.top_k": "sample among the k most likely tokens (0 = all)",
    "sampling.top_p": "nucleus sampling mass (1.0 = off)",
    "sampling.max_new_tokens": "tokens per model turn",
    "sampler.batch_size": "rows decoded together",
    "sampler.cache_len": "KV-cache tokens per row (prompt + every turn and tool result)",
    "sampler.steps_per_call": "decode steps per jitted call before the host looks at finished rows",
    "sampler.max_chunk": "longest chunk appended to the cache at once (prompts are split into such chunks)",
    "search.corpus": "comma-separated corpus files ([{title,text}], JSON Lines, or {title:[sentences]}); "
                     "'' = the union of the dataset split's paragraphs",
    "search.top_k": "paragraphs returned per query",
    "search.max_words": "word budget of one search observation",
    "judge.backend": "rule (deterministic checks), model (an in-process JAX model) or openai (an "
                     "OpenAI-compatible endpoint)",
    "judge.n_votes": "judge samples per prompt, majority vote (model/openai)",
    "judge.cache": "reuse judge completions across reruns (a JSON Lines cache in the workdir)",
    "judge.openai.base_url": "endpoint base URL, e.g. http://127.0.0.1:8000/v1",
    "judge.openai.model": "model name sent to the endpoint",
    "judge.openai.api_key_env": "NAME of the environment variable holding the API key ('' = no key); the key "
                                "itself is never a config value",
    "judge.openai.max_concurrency": "requests in flight at once",
    "judge.openai.timeout_s": "seconds one attempt of a request may take, to the reply's last byte",
    "judge.openai.max_retries": "retries on 429, 5xx and timeouts; an unparseable reply is asked again (once at "
                                 "temperature 0) and then counted as BAD",
    "judge.openai.temperature": "judge sampling temperature",
    "judge.openai.max_tokens": "judge reply length limit",
    "judge.model.source": "judge model source (any model.source form)",
    "judge.model.mode": "score (P(GOOD) from next-token logits) or generate (explanation + verdict)",
    "judge.model.batch_size": "judge prompts per batch",
    "judge.model.max_new_tokens": "judge reply length (generate mode)",
    "judge.model.temperature": "judge sampling temperature (generate mode)",
    "judge.model.cache_len": "judge KV-cache length (generate mode) / longest judge prompt",
    "filter.strategy": "none, process (every step GOOD), outcome (final answer correct) or process_and_outcome",
    "filter.equalize": "keep exactly this many passing trajectories (0 = all that pass; -1 = the largest "
                       "count every strategy can meet on this data, so filters compare at one size)",
    "filter.seed": "seed of the equalizing subsample",
    "train.mode": "rl (sample G actions per state, judge them), offline (recorded actions, stored labels) or "
                  "sft (likelihood of recorded actions)",
    "train.steps": "optimizer steps",
    "train.states_per_step": "states per optimizer step",
    "train.group_size": "actions sampled per state (rl)",
    "train.micro_batches": "gradient accumulation slices per step",
    "train.max_len": "tokens per training row (state + action)",
    "train.temperature": "sampling temperature of the rl policy samples",
    "train.max_new_tokens": "tokens per sampled action (rl)",
    "train.remat": "rematerialise each block in the backward pass",
    "train.remat_policy": "what remat recomputes: block (everything; least memory) or dots (all but the "
                          "weight matmuls; ~9% faster on CPU for ~1.5 GB more at 270M, 8 x 512)",
    "train.share_prefix": "rl: pack each state once with its G actions after it in one train-step sequence "
                          "(same loss and gradient, the state computed once, not G times; needs "
                          "states_per_step divisible by micro_batches x batch shards)",
    "train.seed": "data order and sampling seed",
    "train.offline_reward": "offline mode: which stored label rewards a recorded action (process, outcome, "
                            "process_and_outcome)",
    "train.learning_rate": "AdamW peak learning rate",
    "train.warmup_steps": "linear warmup steps",
    "train.decay_steps": "cosine decay steps after warmup, down to train.end_lr_ratio x the peak, then constant "
                         "(0 = constant after warmup; -1 = until train.steps: a resume with more train.steps is "
                         "then refused, as it would move the decay of the steps taken; pass the number to extend)",
    "train.end_lr_ratio": "learning rate at the end of the decay, as a fraction of the peak",
    "train.weight_decay": "AdamW weight decay",
    "train.clip_norm": "global gradient-norm clip",
    "train.baseline": "baseline of the advantage: loo (leave-one-out over the group), mean (group mean), none, "
                      "or '' = loo for rl and none for offline (a baseline there pushes down off-policy text)",
    "train.normalize_std": "divide advantages by the group's reward std (needs train.baseline loo or mean)",
    "train.kl_coef": "weight of the KL penalty to the initial policy",
    "train.save_every": "checkpoint every N steps (and at the end and on SIGTERM)",
    "train.keep_checkpoints": "checkpoints kept",
    "eval.datasets": "comma-separated datasets to evaluate ('' = data.name), each with the data.* settings, "
                     "its own split, and its own tool (calculator for synthetic_arith and gsm8k, else search)",
    "eval.split": "split of the evaluation questions ('' = each dataset's own: test where it has answers, "
                  "else validation)",
    "eval.limit": "questions per evaluation dataset (0 = all)",
    "eval.judge_process": "also judge every step (process pass rate)",
    "eval.checkpoint": "policy to evaluate and export (mode=eval, export, pipeline): a load_model source or "
                       "checkpoint dir ('' = the trained checkpoints of this workdir, against model.source as "
                       "base)",
    "export.dtype": "dtype of the exported safetensors: float32, bfloat16 or float16",
    "export.out": "export directory ('' = WORKDIR/export/hf)",
    "serve.host": "address to bind (127.0.0.1 by default: local only)",
    "serve.port": "port (0 = pick a free one)",
    "serve.model_name": "model name reported by /v1/models ('' = the source)",
    "serve.api_key_env": "NAME of an environment variable holding a key that clients must send ('' = none)",
    "serve.request_timeout_s": "a request not answered in this many seconds gets 504 (a judge client's timeout_s "
                               "should exceed the server's worst-case latency)",
    "serve.max_pending": "queued requests at most; beyond that new ones get 503 (clients retry)",
    "serve.max_body_bytes": "larger request bodies get 413",
    "serve.max_tokens_limit": "longest completion a request may ask for (0 = min(512, sampler.cache_len // 2))",
    "serve.batch_wait_ms": "when idle, how long to wait after a first request for others to batch with it",
    "serve.max_samplers": "distinct (temperature, top_p, top_k) samplers kept compiled (least recently used "
                          "dropped)",
    "sample.prompts": "for mode=sample: prompts separated by '|||'",
}


def base_config() -> ml_collections.ConfigDict:
  """Every setting with its default; see HELP for the meaning of each."""
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"
  c.compile_cache_dir = ""
  c.model = dict(source="gemma3-270m", dtype="float32", param_dtype="float32", cache_dir="")
  c.mesh = dict(data=1, fsdp=-1, tensor=1, replicate_kv_heads=False)
  c.data = dict(name="synthetic_arith", split="train", source="tfds", path="", manual_dir="", data_dir="",
                drop_easy=False, limit=0, shuffle_seed=-1, seed=0, num_questions=1000)
  c.rollout = dict(task="math", samples_per_question=1, max_tool_calls=0, num_demos=1, seed=0, refill=True)
  c.sampling = dict(temperature=0.7, top_k=64, top_p=1.0, max_new_tokens=96)
  c.sampler = dict(batch_size=8, cache_len=1024, steps_per_call=32, max_chunk=256)
  c.search = dict(corpus="", top_k=1, max_words=200)
  c.judge = dict(backend="rule", n_votes=1, cache=True,
                 openai=dict(base_url="", model="", api_key_env="", max_concurrency=8, timeout_s=60.0,
                             max_retries=5, temperature=0.0, max_tokens=512),
                 model=dict(source="gemma3-270m", mode="score", batch_size=8, max_new_tokens=256,
                            temperature=0.0, cache_len=2048))
  c.filter = dict(strategy="process", equalize=0, seed=0)
  c.train = dict(mode="rl", steps=100, states_per_step=8, group_size=4, micro_batches=1, max_len=1024,
                 temperature=1.0, max_new_tokens=96, remat=False, remat_policy="block", share_prefix=True,
                 seed=0, offline_reward="process", learning_rate=1e-6, warmup_steps=10, decay_steps=0,
                 end_lr_ratio=0.1, weight_decay=0.0, clip_norm=1.0, baseline="", normalize_std=False,
                 kl_coef=0.05, save_every=50, keep_checkpoints=3)
  c.eval = dict(datasets="", split="", limit=0, judge_process=False, checkpoint="")
  c.export = dict(dtype="float32", out="")
  c.serve = dict(host="127.0.0.1", port=8000, model_name="", api_key_env="", request_timeout_s=600.0,
                 max_pending=1024, max_body_bytes=4 << 20, max_tokens_limit=0, batch_wait_ms=5.0,
                 max_samplers=4)
  c.sample = dict(prompts="The capital of France is")
  return c


# Settings that take one of a fixed set of values; main refuses anything else before any work starts.
CHOICES: dict[str, tuple] = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "data.source": ("tfds", "file"),
    "rollout.task": ("math", "search"),
    "rollout.num_demos": (0, 1),
    "judge.backend": ("rule", "model", "openai"),
    "judge.model.mode": ("score", "generate"),
    "filter.strategy": ("none", "process", "outcome", "process_and_outcome"),
    "train.mode": ("rl", "offline", "sft"),
    "train.offline_reward": ("process", "outcome", "process_and_outcome"),
    "train.remat_policy": REMAT_POLICIES,
    "train.baseline": ("", "loo", "mean", "none"),
    "export.dtype": ("float32", "bfloat16", "float16"),
}
# Counts that must be at least this.
MINIMUM: dict[str, int] = {
    "rollout.samples_per_question": 1, "sampling.max_new_tokens": 1, "sampler.batch_size": 1,
    "sampler.cache_len": 16, "sampler.steps_per_call": 1, "sampler.max_chunk": 1, "search.top_k": 1,
    "judge.n_votes": 1, "train.steps": 0, "train.states_per_step": 1, "train.group_size": 1,
    "train.micro_batches": 1, "train.max_len": 16, "train.max_new_tokens": 1, "train.save_every": 1,
    "train.keep_checkpoints": 1, "eval.limit": 0, "data.limit": 0, "sampling.top_k": 0,
    "rollout.max_tool_calls": 0, "search.max_words": 1, "judge.model.batch_size": 1,
    "judge.model.max_new_tokens": 1, "judge.model.cache_len": 16, "judge.openai.max_concurrency": 1,
    "judge.openai.max_retries": 0, "judge.openai.max_tokens": 1, "train.warmup_steps": 0, "filter.equalize": -1,
    "train.decay_steps": -1, "data.num_questions": 1, "serve.port": 0,
}
# Real-valued settings: (lowest, highest, whether the lowest itself is allowed).
RANGES: dict[str, tuple[float, float, bool]] = {
    "sampling.temperature": (0.0, float("inf"), True), "sampling.top_p": (0.0, 1.0, False),
    "train.temperature": (0.0, float("inf"), True), "judge.model.temperature": (0.0, float("inf"), True),
    "judge.openai.temperature": (0.0, 2.0, True), "judge.openai.timeout_s": (0.0, float("inf"), False),
    "train.learning_rate": (0.0, float("inf"), False), "train.end_lr_ratio": (0.0, 1.0, True),
    "train.weight_decay": (0.0, float("inf"), True),
    "train.clip_norm": (0.0, float("inf"), False), "train.kl_coef": (0.0, float("inf"), True),
}


def validate(cfg: ml_collections.ConfigDict, modes=()) -> None:
  """Refuses values outside their choices or range, naming the setting and what it accepts."""
  def get(name):
    v = cfg
    for part in name.split("."):
      v = v[part]
    return v

  errors = []
  if modes and cfg.mode not in modes:
    errors.append(f"--config.mode={cfg.mode!r}: choose one of {sorted(modes)}")
  for name, choices in CHOICES.items():
    if get(name) not in choices:
      errors.append(f"--config.{name}={get(name)!r}: choose one of {list(choices)}")
  for name, low in MINIMUM.items():
    if get(name) < low:
      errors.append(f"--config.{name}={get(name)!r}: must be >= {low}")
  for name, (low, high, low_ok) in RANGES.items():
    v = get(name)
    if not (low <= v <= high if low_ok else low < v <= high):
      errors.append(f"--config.{name}={v!r}: must be in {'[' if low_ok else '('}{low}, {high}]")
  for axis in ("data", "fsdp", "tensor"):
    if cfg.mesh[axis] < 1 and cfg.mesh[axis] != -1:
      errors.append(f"--config.mesh.{axis}={cfg.mesh[axis]!r}: must be >= 1, or -1 (the devices left)")
  if [cfg.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
    errors.append("--config.mesh.data / fsdp / tensor: at most one of them may be -1")
  key_env = cfg.judge.openai.api_key_env
  # (found now, not after hours of generation: the judge is first called by label)
  judging = cfg.mode in ("pipeline", "label", "eval") or (cfg.mode == "train" and cfg.train.mode == "rl")
  errors += _model_source_errors(cfg, judging) + _judge_endpoint_errors(cfg, judging) + _mesh_errors(cfg)
  if cfg.judge.backend == "openai" and key_env and not os.environ.get(key_env) and judging:
    errors.append(f"--config.judge.openai.api_key_env={key_env!r}: that environment variable is not set or "
                  f"empty; set it to the endpoint's API key, or pass --config.judge.openai.api_key_env='' for an "
                  f"endpoint without a key")
  t = cfg.train
  if t.normalize_std and (t.baseline or ("none" if t.mode == "offline" else "loo")) == "none":
    errors.append(f"--config.train.normalize_std=True needs --config.train.baseline=loo or mean (it is "
                  f"{t.baseline or 'none, the default of train.mode=offline'}): without a baseline a group of "
                  "equal rewards would be divided by a zero std")
  if cfg.mode == "train" or (cfg.mode == "pipeline" and t.steps > 0):
    if cfg.model.param_dtype != "float32":
      errors.append(f"--config.model.param_dtype={cfg.model.param_dtype!r} cannot train: AdamW updates smaller "
                    "than half a bfloat16 rounding step are lost (at train.learning_rate=1e-6, 99% of the Gemma 3 "
                    "270M's weights would never change); pass --config.model.param_dtype=float32 and keep "
                    "--config.model.dtype=bfloat16 for bfloat16 matmuls")
    if t.mode == "rl" and t.group_size == 1 and (t.baseline or "loo") != "none":
      errors.append(f"--config.train.group_size=1 with --config.train.baseline={t.baseline or 'loo'!r} (rl): the "
                    "baseline of a one-action group is its own reward, so every advantage is 0; pass "
                    "--config.train.group_size >= 2, or --config.train.baseline=none")
  if cfg.serve.port > 65535:
    errors.append(f"--config.serve.port={cfg.serve.port}: must be in [0, 65535]")
  dataset_known = True
  if cfg.mode in ("pipeline", "generate", "eval") and cfg.data.num_questions >= 1:  # (else named above)
    # name and split typos surface now, not after hours of generation and training
    checks = {"data.name / data.split": lambda: resolve(dataset_spec(cfg))}
    if cfg.mode in ("pipeline", "eval"):
      checks["eval.datasets / eval.split"] = lambda: [resolve(spec) for spec in eval_dataset_specs(cfg)]
    for keys, check in checks.items():
      try:
        check()
      except (UnknownDatasetError, UnknownSplitError, ValueError) as e:
        errors.append(f"--config.{keys}: {e}")
        dataset_known &= not (keys.startswith("data.") and isinstance(e, UnknownDatasetError))
    errors += _unread_data_files(cfg)
  task = dataset_task(cfg.data.name)
  if cfg.mode in ("pipeline", "generate") and task != cfg.rollout.task and dataset_known:
    # (eval picks each dataset's tool itself; training data made with the other tool would teach its tags)
    errors.append(f"--config.rollout.task={cfg.rollout.task!r} does not fit --config.data.name={cfg.data.name!r}, a "
                  f"{task} dataset ({'calculator, <math_exp>' if task == 'math' else 'search, <search_query>'}): "
                  f"pass --config.rollout.task={task} (rollout.max_tool_calls=0 takes its default budget)")
  if errors:
    raise ValueError("invalid configuration:\n  " + "\n  ".join(errors))


def source_problem(source: str) -> str | None:
  """Why load_model cannot load ``source``, judged without reading it; None when it may."""
  from swirl_jax.checkpoints.packaged import PACKAGED

  if source in PACKAGED or source.startswith("random:"):
    return None
  if not os.path.exists(source):
    return (f"no such file or directory, and not a packaged model ({', '.join(sorted(PACKAGED))}) or "
            "random:PRESET")
  if os.path.isfile(source) and not source.endswith(".gguf"):
    return "a file that is not a .gguf (a Hugging Face checkpoint is a directory)"
  return None


def _model_source_errors(cfg, judging: bool) -> list[str]:
  """model.source, judge.model.source and eval.checkpoint that cannot load, before the work that comes first
  (a judge model loads after generation, a trained policy after the base model's evaluation)."""
  named = []
  if cfg.mode not in ("label", "filter"):
    named.append(("model.source", cfg.model.source))
  if cfg.judge.backend == "model" and judging:
    named.append(("judge.model.source", cfg.judge.model.source))
  # (a pipeline that trains may name the checkpoints it is about to write)
  if cfg.eval.checkpoint and (cfg.mode in ("eval", "export") or (cfg.mode == "pipeline" and cfg.train.steps == 0)):
    named.append(("eval.checkpoint", cfg.eval.checkpoint))
  return [f"--config.{key}={source!r}: {why}" for key, source in named if (why := source_problem(source))]


def _judge_endpoint_errors(cfg, judging: bool) -> list[str]:
  o = cfg.judge.openai
  if cfg.judge.backend != "openai" or not judging:
    return []
  errors = []
  if not o.base_url.startswith(("http://", "https://")):
    errors.append(f"--config.judge.openai.base_url={o.base_url!r}: judge.backend=openai needs the endpoint's "
                  "http:// or https:// API root (e.g. http://127.0.0.1:8000/v1)")
  if not o.model:
    errors.append("--config.judge.openai.model='': judge.backend=openai needs the model name the endpoint serves")
  return errors


def _mesh_errors(cfg) -> list[str]:
  """A mesh that does not fit this run's devices, and training batches that do not split over its batch
  shards: found now, not when the model loads (a mesh) or after generation and labelling (a train batch)."""
  import jax

  from swirl_jax.models.sharding import ShardingError, make_mesh
  from swirl_jax.training.train_step import batch_shards

  mesh = mesh_config(cfg)
  training = cfg.mode == "train" or (cfg.mode == "pipeline" and cfg.train.steps > 0)
  # sampling meshes span each process's devices, the training mesh all of them (modes._mesh); one device: none
  counts = {jax.local_device_count()} | ({jax.device_count()} if training else set())
  for n in sorted(c for c in counts if c > 1):
    try:
      mesh.shape(n)
    except ShardingError as e:
      return [f"--config.mesh.data / fsdp / tensor: {e}"]
  if not training:
    return []
  # (the training mesh as modes._mesh makes it: none on one device)
  shards = batch_shards(make_mesh(mesh, jax.devices()), rules(cfg)) if jax.device_count() > 1 else 1
  t = cfg.train
  per_state = 1 if t.mode != "rl" or t.share_prefix else t.group_size
  seqs = t.states_per_step * per_state
  if seqs % (t.micro_batches * shards):
    return [f"--config.train.states_per_step={t.states_per_step}"
            + (f" x --config.train.group_size={t.group_size}" if per_state > 1 else "")
            + f" = {seqs} sequences per step do not divide into --config.train.micro_batches={t.micro_batches} x "
            f"{shards} batch shards of the mesh ({jax.device_count()} devices, mesh.data x mesh.fsdp)"
            + (" (train.share_prefix packs each state with its group: one sequence per state)"
               if t.mode == "rl" and t.share_prefix else "")]
  return []


def _unread_data_files(cfg) -> list[str]:
  """data.path / data.manual_dir set where no dataset of the run reads them (a synthetic dataset, or the
  other data.source): the run would go on with other questions than the user's file."""
  d = cfg.data
  names = ([d.name] if cfg.mode in ("pipeline", "generate") else []) + (
      [n.strip() for n in cfg.eval.datasets.split(",") if n.strip()] or [d.name]
      if cfg.mode in ("pipeline", "eval") else [])
  real = sorted({n for n in names if not n.startswith("synthetic_")})
  errors = []
  for key, source in (("path", "file"), ("manual_dir", "tfds")):
    if d[key] and (d.source != source or not real):
      why = (f"--config.data.source={d.source!r} reads {'data.path' if d.source == 'file' else 'data.manual_dir'}"
             if d.source != source else f"{', '.join(sorted(set(names)))} {'is' if len(set(names)) == 1 else 'are'} "
             "generated, not read from files")
      errors.append(f"--config.data.{key}={d[key]!r} would not be read: {why}. Pass --config.data.source={source} "
                    f"with a dataset that has files (data.name / eval.datasets), or drop data.{key}")
    elif key == "path" and d[key] and not os.path.exists(d[key]):
      errors.append(f"--config.data.path={d[key]!r}: no such file or directory")
    # (a missing manual_dir is fine where the data is prepared already; prepare() refuses it otherwise)
    elif key == "manual_dir" and d[key] and os.path.exists(d[key]) and not os.path.isdir(d[key]):
      errors.append(f"--config.data.manual_dir={d[key]!r}: not a directory (it holds the official files)")
  if d.source == "file" and real and not d.path:
    errors.append(f"--config.data.source='file' reads --config.data.path, which is not set: pass the official file "
                  f"of {', '.join(real)} (or a directory holding each split's file)")
  return errors


# The LLM judge of the paper recipes: Gemini through its OpenAI-compatible API (any such endpoint works).
GEMINI_OPENAI_URL = "https://generativelanguage.googleapis.com/v1beta/openai"
# The paper's judge, Gemini 1.5 Pro, is shut down. This is the replacement Google's deprecations page names
# for gemini-2.5-pro (retired 2026-12-01), read on 2026-12-03; models retire, so pass
# --config.judge.openai.model to choose (a run asks the endpoint once before it generates: modes.py).
GEMINI_JUDGE_MODEL = "gemini-3.8-flash"


def use_openai_judge(cfg: ml_collections.ConfigDict, base_url: str = GEMINI_OPENAI_URL,
                     model: str = GEMINI_JUDGE_MODEL, api_key_env: str = "GEMINI_API_KEY",
                     max_concurrency: int = 32) -> None:
  """Sets judge.* to an OpenAI-compatible endpoint (the key is read from ``api_key_env`` at run time)."""
  cfg.judge.backend = "openai"
  o = cfg.judge.openai
  o.base_url, o.model, o.api_key_env, o.max_concurrency = base_url, model, api_key_env, max_concurrency


def settings(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every leaf setting, e.g. ("train.learning_rate", 1e-6)."""
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from settings(v, prefix + k + ".")
    else:
      yield prefix + k, v


def check_documented(cfg: ml_collections.ConfigDict) -> None:
  """Refuses settings without documentation (keeps HELP and base_config in step)."""
  missing = [name for name, _ in settings(cfg) if name not in HELP]
  if missing:
    raise KeyError(f"config settings without documentation in swirl_jax.config.HELP: {missing}")


def decay_steps(cfg) -> int:
  """train.decay_steps as the optimizer takes it: -1 = from the end of warmup to train.steps."""
  t = cfg.train
  return max(t.steps - t.warmup_steps, 0) if t.decay_steps < 0 else t.decay_steps


def mesh_config(cfg) -> MeshConfig:
  return MeshConfig(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)


def dataset_spec(cfg) -> DatasetSpec:
  d = cfg.data
  return DatasetSpec(
      name=d.name, split=d.split, source=d.source, path=d.path or None, manual_dir=d.manual_dir or None,
      data_dir=d.data_dir or None, drop_easy=d.drop_easy, limit=d.limit or None,
      shuffle_seed=None if d.shuffle_seed < 0 else d.shuffle_seed, seed=d.seed,
      arith=ArithConfig(num_questions=d.num_questions), multihop=MultihopConfig(num_questions=d.num_questions))


def sampling_config(cfg) -> SamplingConfig:
  s = cfg.sampling
  return SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, max_new_tokens=s.max_new_tokens)


def rollout_config(cfg) -> RolloutConfig:
  r = cfg.rollout
  return RolloutConfig(task=r.task, samples_per_question=r.samples_per_question,
                       max_tool_calls=r.max_tool_calls or None, num_demos=r.num_demos, seed=r.seed,
                       refill=r.refill)


def rules(cfg):
  from swirl_jax.models.sharding import Rules

  return Rules.make({"kv_heads": None}) if cfg.mesh.replicate_kv_heads else Rules()


MATH_DATASETS = ("synthetic_arith", "gsm8k")  # evaluated with the calculator; every other with search


def dataset_task(name: str) -> str:
  """The tool task a dataset is evaluated with: "math" (calculator) or "search"."""
  return "math" if name.split("/")[0] in MATH_DATASETS else "search"


def default_eval_split(name: str) -> str:
  """The split with answers that a dataset is evaluated on: "test" where it has one, else "validation".

  Raises UnknownDatasetError (listing the datasets) for a name the registry does not know.
  """
  try:
    resolve(DatasetSpec(name, split="test"))
    return "test"
  except UnknownSplitError:
    return "validation"


def eval_dataset_specs(cfg) -> list[DatasetSpec]:
  """One spec per eval dataset: data.* settings with the eval split (or the dataset's own) and limit."""
  import dataclasses

  base = dataclasses.replace(dataset_spec(cfg), limit=cfg.eval.limit or None)
  names = [n.strip() for n in cfg.eval.datasets.split(",") if n.strip()] or [cfg.data.name]
  specs = [dataclasses.replace(base, name=n, split=cfg.eval.split or default_eval_split(n)) for n in names]
  if cfg.data.source == "file" and cfg.data.path and not os.path.isdir(cfg.data.path):
    # One file holds one split of one dataset (data.name / data.split): evaluating another split or
    # dataset from it would score the training questions under the eval split's name.
    real = [s for s in specs if not resolve(s)[0].startswith("synthetic_")]
    # (a synthetic data.name reads no file: the first real eval set is the file's)
    holder = base if not resolve(base)[0].startswith("synthetic_") else (real[0] if real else base)
    other = [f"{s.name}/{s.split}" for s in real if resolve(s) != resolve(holder)]
    if other:
      raise ValueError(f"data.path={cfg.data.path!r} is one file, which holds {holder.name}/{holder.split} "
                       f"only; to evaluate {', '.join(other)} set --config.data.path to a directory holding "
                       f"each split's official file (or to the same file with --config.eval.split="
                       f"{holder.split})")
  return specs


def openai_judge_config(cfg):
  from swirl_jax.judges.openai_backend import OpenAIJudgeConfig

  o = cfg.judge.openai
  if not o.base_url or not o.model:
    raise ValueError("judge.backend=openai needs --config.judge.openai.base_url and --config.judge.openai.model")
  return OpenAIJudgeConfig(base_url=o.base_url, model=o.model, api_key_env=o.api_key_env or None,
                           max_concurrency=o.max_concurrency, timeout_s=o.timeout_s, max_retries=o.max_retries,
                           temperature=o.temperature, max_tokens=o.max_tokens)


def model_judge_config(cfg):
  from swirl_jax.judges.model_backend import ModelJudgeConfig

  m = cfg.judge.model
  return ModelJudgeConfig(source=m.source, mode=m.mode, batch_size=m.batch_size, max_new_tokens=m.max_new_tokens,
                          temperature=m.temperature, cache_len=m.cache_len, dtype=cfg.model.dtype,
                          param_dtype=cfg.model.param_dtype)
