"""seqlab: structured sequence mixers (S4, S4D, S5, Hydra, DeltaProduct, MLA, sparse attention)
as Flax NNX modules on pure JAX ops, plus one training loop, LRA data and a CLI."""

__version__ = "0.1.0"

from seqlab.generate import generate  # noqa: E402,F401
