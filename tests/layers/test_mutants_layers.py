"""Layer behaviour that mutation testing (scripts/mutation.py) found unchecked."""

import jax.numpy as jnp
from flax import nnx

from seqlab.layers.sparse import DSA


def test_dsa_defaults():
    """DSA's indexer defaults (docstring of DSA; DeepSeek-V3.2 uses 64 index heads of 128 dims
    and top-2048 at its scale): 4 index heads of 32 dims, top-64, RoPE on the base's rope dims."""
    layer = DSA(16, n_heads=2, rngs=nnx.Rngs(0))
    assert (layer.topk, layer.index_heads, layer.index_head_dim) == (64, 4, 32)
    assert (layer.block_size, layer.rope_base, layer.index_dtype) == (256, 10000.0, jnp.float32)
    assert (layer.indexer_warmup_steps, layer.indexer_loss_weight) == (0, 1.0)
    assert layer.index_rope_dim == min(layer.attn.rope_dim, 32)
    assert layer.wq_idx.kernel.shape == (16, 4 * 32) and layer.w_idx.kernel.shape == (16, 4)
