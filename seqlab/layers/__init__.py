"""nnx.Module mixers and the registry that configs and the CLI reach them through.

The mixer protocol (DESIGN.md): ``MIXERS[name](d_model=..., rngs=..., **mixer_args)``;
``y = mixer(x, mask=None)`` with x, y: [batch, length, d_model], mask: [batch, length] bool.
Causal mixers add ``init_cache(batch_size, max_length, dtype)`` and ``decode(x, cache)``.
"""

from flax import nnx

from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from seqlab.layers.hydra import Hydra, Mamba2
from seqlab.layers.mla import MLA
from seqlab.layers.s4 import S4
from seqlab.layers.s4d import S4D, S4PTD
from seqlab.layers.s5 import S5
from seqlab.layers.sparse import DSA, TopKAttention

MIXERS: dict[str, type[nnx.Module]] = {
    "deltanet": DeltaNet,
    "gated-deltanet": GatedDeltaNet,
    "deltaproduct": DeltaProduct,
    "mha": MultiHeadAttention,
    "mla": MLA,
    "topk": TopKAttention,
    "dsa": DSA,
    "hydra": Hydra,
    "mamba2": Mamba2,
    "s4d": S4D,
    "s4-ptd": S4PTD,
    "s4": S4,
    "s5": S5,
}
