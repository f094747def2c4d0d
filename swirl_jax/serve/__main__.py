"""``python -m swirl_jax.serve``: see swirl_jax/serve/__init__.py."""

from swirl_jax.serve.server import main

main()
