"""Judges: process labels for steps and outcome labels for final answers.

Backends (``make_judge``):

* ``rule``: deterministic checks, no model (rule.py).
* ``model``: an in-process JAX model, generating a verdict or scoring P(GOOD) from logits
  (model_backend.py; imported on first use, since it loads JAX).
* ``openai``: any OpenAI-compatible endpoint, including swirl_jax.serve (openai_backend.py).

The model-based backends run the same judge prompts (prompts.py) through ``PromptJudge``, with a
content-addressed completion cache (cache.py) and optional majority voting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from swirl_jax.judges.base import (Completion, Judge, JudgeBackend, JudgeRequest, PromptJudge, StepContext,
                                   context_from_state, step_contexts, verdict_from_completions)
from swirl_jax.judges.cache import JudgeCache
from swirl_jax.judges.openai_backend import JudgeBackendError, OpenAIBackend, OpenAIJudgeConfig
from swirl_jax.judges.prompts import PROMPT_VERSION, parse_verdict
from swirl_jax.judges.rule import RuleJudge

if TYPE_CHECKING:
  from swirl_jax.judges.model_backend import ModelBackend, ModelJudgeConfig
  from swirl_jax.loading import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("rule", "model", "openai")

__all__ = [
    "BACKENDS", "Completion", "Judge", "JudgeBackend", "JudgeBackendError", "JudgeCache", "JudgeRequest",
    "ModelBackend", "ModelJudgeConfig", "OpenAIBackend", "OpenAIJudgeConfig", "PROMPT_VERSION", "PromptJudge",
    "RuleJudge", "StepContext", "context_from_state", "make_judge", "parse_verdict", "step_contexts",
    "verdict_from_completions",
]


def __getattr__(name: str) -> Any:
  # The model backend imports JAX and Flax; load it only when asked for.
  if name in ("ModelBackend", "ModelJudgeConfig"):
    from swirl_jax.judges import model_backend

    return getattr(model_backend, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_judge(backend: str, *, task: str | None = None, cache_path: str | None = None, n_votes: int = 1,
               openai: OpenAIJudgeConfig | None = None, model: "ModelJudgeConfig | None" = None,
               model_instance: "LoadedModel | None" = None, mesh=None, model_name: str | None = None,
               cache_read_only: bool = False) -> Judge:
  """The judge for ``backend``.

  Args:
    backend: "rule", "model" or "openai".
    task: "math" or "search" for every trajectory judged, or None to infer it per trajectory.
    cache_path: JSON Lines completion cache for the prompt judges (None = in memory only). Ignored by
      "rule".
    cache_read_only: read the cache file but never write to it (every process but the first of a
      multi-process run: one writer per file).
    n_votes: samples per prompt, majority vote (prompt judges). Use an odd number and temperature > 0.
    openai: endpoint settings; required for "openai".
    model: ModelJudgeConfig for "model" (default: ModelJudgeConfig()).
    model_instance: an already loaded model for "model" (else ``model.source`` is loaded).
    mesh: the mesh to load ``model.source`` on (the policy's), for "model".
    model_name: the judge model's name in the identity (and so the cache key) for "model"; default its
      source. Give one per weights version when the weights behind a source change.
  """
  if backend not in BACKENDS:
    raise ValueError(f"unknown judge backend {backend!r}; choose one of {list(BACKENDS)}")
  if task not in (None, "math", "search"):
    raise ValueError(f"judge task must be 'math', 'search' or None (infer), got {task!r}")
  if backend == "rule":
    return RuleJudge(task=task)
  cache = JudgeCache(cache_path, read_only=cache_read_only)
  if backend == "openai":
    if openai is None:
      raise ValueError("judge backend 'openai' needs an OpenAIJudgeConfig (base_url, model, ...)")
    return PromptJudge(OpenAIBackend(openai), cache, n_votes=n_votes, task=task)
  from swirl_jax.judges.model_backend import ModelBackend, ModelJudgeConfig

  config = model if model is not None else ModelJudgeConfig()
  if config.mode == "score" and n_votes > 1:
    log.warning("model judge in score mode is deterministic: %d votes all give the same P(GOOD)", n_votes)
  judge_model = ModelBackend(config, model=model_instance, mesh=mesh, name=model_name)
  return PromptJudge(judge_model, cache, n_votes=n_votes, task=task)
