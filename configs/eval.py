"""Evaluation on the paper's datasets: the multi-step tool loop, judged accuracy, EM and F1.

  python -m swirl_jax.main --config=configs/eval.py:hotpot_qa --workdir=runs/eval-27b \
      --config.model.source=hf/gemma-2-27b-it --config.eval.checkpoint=runs/swirl-27b-hotpot/checkpoints \
      --config.data.manual_dir=/data/official-files

The argument is one of gsm8k, hotpot_qa, musique, beerqa, cofca, or "all" (the default) for the five.
GSM8K is evaluated with the calculator (10 calls), the others with BM25 search over the union of the
split's paragraphs (5 calls), on each dataset's test split where it has answers, else validation.
Writes WORKDIR/eval/base/DATASET.json for model.source and, when eval.checkpoint is set,
WORKDIR/eval/trained/DATASET.json and the base-versus-trained table.
"""

from swirl_jax.config import base_config, use_openai_judge

DATASETS = ("gsm8k", "hotpot_qa", "musique", "beerqa", "cofca")


def get_config(arg: str = "all"):
  names = DATASETS if arg == "all" else tuple(n.strip() for n in arg.split(","))
  unknown = [n for n in names if n.split("/")[0] not in DATASETS]
  if unknown:
    raise ValueError(f"configs/eval.py:{arg}: unknown dataset(s) {unknown}; choose from {DATASETS} or all")
  c = base_config()
  c.mode = "eval"
  c.model.source = "hf/gemma-2-27b-it"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.eval.datasets = ",".join(names)
  c.rollout.num_demos = 0  # configs/paper.py's prompt (instructions only), which its policies are trained on
  c.sampling.max_new_tokens = 256
  c.sampler.batch_size = 32
  c.sampler.cache_len = 4096
  c.sampler.max_chunk = 512
  use_openai_judge(c)
  return c
