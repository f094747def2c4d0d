"""Questions and search corpora: TFDS builders for the real datasets, and synthetic task families.

Start with ``registry.load_questions(DatasetSpec(...))`` and ``registry.build_corpus(...)``. Importing this
package does not import TFDS; ``swirl_jax.data.tfds_builders`` does (and registers our builders).
"""

from swirl_jax.data.registry import DatasetSpec
from swirl_jax.data.registry import UnknownDatasetError
from swirl_jax.data.registry import UnknownSplitError
from swirl_jax.data.registry import build_corpus
from swirl_jax.data.registry import dataset_names
from swirl_jax.data.registry import list_datasets
from swirl_jax.data.registry import load_questions
from swirl_jax.data.synthetic_arith import ArithConfig
from swirl_jax.data.synthetic_multihop import MultihopConfig

__all__ = [
    "ArithConfig", "DatasetSpec", "MultihopConfig", "UnknownDatasetError", "UnknownSplitError", "build_corpus",
    "dataset_names", "list_datasets", "load_questions",
]
