"""SWiRL paper recipes: Gemma 2 2B, 9B or 27B, trained on GSM8K (calculator) or HotPotQA (search).

  python -m swirl_jax.main --config=configs/paper.py:gemma2-27b,hotpot_qa --workdir=runs/swirl-27b-hotpot \
      --config.data.manual_dir=/data/qa --config.judge.openai.base_url=URL --config.judge.openai.model=NAME

The argument after the colon is MODEL,DATASET with MODEL in gemma2-2b, gemma2-9b, gemma2-27b and DATASET
in gsm8k, hotpot_qa. Runs every stage (mode=pipeline); any field can be overridden as usual.

What follows the paper (Goldie et al. 2025, "Synthetic Data Generation & Multi-Step RL for Reasoning &
Tool Use"; see ../shared/DESIGN.md):
  * 5 trajectories per question, sampled at temperature > 0; HotPotQA: 10,000 non-easy training
    questions (50,000 trajectories); GSM8K: all 7,473 training questions (~37,500 trajectories);
  * step budgets of 5 search calls (HotPotQA) and 10 calculator calls (GSM8K);
  * a prompt of instructions only (task, tool, tags, budget; no worked demonstration: rollout.num_demos=0);
  * process-only filtering (the paper's best), with the kept count held at the size every filter can
    meet (filter.equalize=-1) so that runs with other filters compare;
  * one strong LLM judge for the process and outcome labels and for the step rewards of RL; evaluation
    by judged accuracy on all five datasets (GSM8K, HotPotQA, MuSiQue, BeerQA, CofCA).

What the paper leaves open and is chosen here (documented, override freely): the judge endpoint
(Gemini's OpenAI-compatible API; any vLLM/SGLang server of a large model works), the RL optimiser
(REINFORCE with a leave-one-out baseline over 4 samples per state, KL 0.05 to the initial policy,
AdamW 1e-6), batch sizes and the mesh.

The weights are read from a Hugging Face directory (no hub access is assumed):
  hf download google/gemma-2-27b-it --local-dir hf/gemma-2-27b-it
"""

from swirl_jax.config import base_config, use_openai_judge

MODELS = {
    # name: (HF directory, mesh (data, fsdp, tensor), sampler rows per process)
    "gemma2-2b": ("hf/gemma-2-2b-it", (1, -1, 1), 64),
    "gemma2-9b": ("hf/gemma-2-9b-it", (1, -1, 1), 32),
    "gemma2-27b": ("hf/gemma-2-27b-it", (1, -1, 4), 32),
}
DATASETS = {
    # name: (task, questions, context tokens): search observations are whole paragraphs, so HotPotQA
    # conversations run longer than GSM8K's.
    "gsm8k": ("math", 0, 2048),
    "hotpot_qa": ("search", 10_000, 4096),
}
ALL_EVAL = "gsm8k,hotpot_qa,musique,beerqa,cofca"


def get_config(arg: str = "gemma2-27b,hotpot_qa"):
  try:
    model, dataset = (a.strip() for a in arg.split(","))
    source, mesh, rows = MODELS[model]
    task, limit, context = DATASETS[dataset]
  except (ValueError, KeyError):
    raise ValueError(f"configs/paper.py:{arg}: expected MODEL,DATASET with MODEL in {sorted(MODELS)} and "
                     f"DATASET in {sorted(DATASETS)}") from None
  c = base_config()
  c.mode = "pipeline"
  c.model.source = source
  # bfloat16 matmuls over float32 parameters: AdamW's 1e-6 steps would round away in bfloat16 storage
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh

  c.data.name = dataset
  c.data.split = "train"
  c.data.drop_easy = dataset == "hotpot_qa"
  c.data.limit = limit
  c.data.shuffle_seed = 0 if limit else -1

  c.rollout.task = task
  c.rollout.samples_per_question = 5
  c.rollout.max_tool_calls = 5 if task == "search" else 10
  c.rollout.num_demos = 0  # the paper's prompt: instructions only (the worked example is for base models)
  c.sampling.temperature = 0.8
  c.sampling.top_k = 0
  c.sampling.max_new_tokens = 256
  c.sampler.batch_size = rows
  c.sampler.cache_len = context
  c.sampler.max_chunk = 512

  use_openai_judge(c)

  c.filter.strategy = "process"
  c.filter.equalize = -1

  c.train.mode = "rl"
  c.train.steps = 1000
  c.train.states_per_step = 64
  c.train.group_size = 4
  # share_prefix (the default) packs each state with its 4 actions: 64 sequences per step, so
  # micro_batches x the mesh's batch shards must divide 64 (e.g. micro_batches=1 on 64 data shards).
  c.train.micro_batches = 4
  c.train.max_len = context
  c.train.max_new_tokens = 256
  c.train.remat = True
  c.train.learning_rate = 1e-6
  c.train.warmup_steps = 50
  c.train.kl_coef = 0.05
  c.train.save_every = 100

  c.eval.datasets = ALL_EVAL
  c.export.dtype = "bfloat16"
  return c
