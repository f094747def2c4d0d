"""swirl_jax: Step-Wise Reinforcement Learning (SWiRL) for multi-step tool use, in JAX/Flax."""

__version__ = "0.1.0"


def load_model(*args, **kwargs):
  """See swirl_jax.loading.load_model (imported lazily so ``import swirl_jax`` stays light)."""
  from swirl_jax.loading import load_model as _load

  return _load(*args, **kwargs)
