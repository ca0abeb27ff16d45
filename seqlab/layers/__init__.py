"""nnx.Module mixers, the mixer protocol and the registry that configs and the CLI reach them
through (docs/architecture.md).

Every mixer: ``Cls(d_model, *, rngs, dtype=jnp.float32, **named_args)``; ``y = mixer(x,
mask=None)`` with x, y: [batch, length, d_model], mask: [batch, length] bool; ``mixer.causal``.
Causal mixers add ``init_cache(batch_size, max_length, dtype)`` and ``decode(x, cache)``.
``@register_mixer("name")`` adds a class to ``MIXERS``.
"""

from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.bidirectional import Bidirectional
from seqlab.layers.common import RENAMED_ARGS, check_renamed
from seqlab.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from seqlab.layers.hydra import Hydra, Mamba2
from seqlab.layers.mla import MLA
from seqlab.layers.protocol import MIXERS, CausalMixer, Mixer, register_mixer
from seqlab.layers.s4 import S4
from seqlab.layers.s4d import S4D, S4PTD
from seqlab.layers.s5 import S5
from seqlab.layers.sparse import DSA, TopKAttention

__all__ = [
    "MIXERS",
    "RENAMED_ARGS",
    "Bidirectional",
    "CausalMixer",
    "DSA",
    "DeltaNet",
    "DeltaProduct",
    "GatedDeltaNet",
    "Hydra",
    "MLA",
    "Mamba2",
    "Mixer",
    "MultiHeadAttention",
    "S4",
    "S4D",
    "S4PTD",
    "S5",
    "TopKAttention",
    "check_renamed",
    "register_mixer",
]
