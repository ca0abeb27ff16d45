"""Layer behaviour that mutation testing (scripts/mutation.py) found unchecked."""

import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers.common import apply_mask
from seqlab.layers.hydra import Hydra
from seqlab.layers.s4d import S4D
from seqlab.layers.s5 import S5
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


def test_apply_mask_any_rank():
    """apply_mask zeroes padded positions of x [batch, length, ...] for any number of trailing
    axes (a 5-d x as SSD's [b, l, heads, head_dim, d_state] states)."""
    x = np.arange(2 * 3 * 2 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2, 2) + 1
    mask = np.array([[True, False, True], [False, True, True]])
    want = x * mask[:, :, None, None, None]
    for nd in (3, 4, 5):
        xi = x.reshape(x.shape[:nd - 1] + (-1,))
        assert_close(apply_mask(jnp.asarray(xi), jnp.asarray(mask)),
                                      want.reshape(xi.shape))


def test_s5_output_matrix_per_direction():
    """S5's C~ is [dirs, H, M, 2]: one direction when causal, two when bidirectional."""
    for causal, dirs in ((True, 1), (False, 2)):
        layer = S5(8, d_state=4, blocks=1, causal=causal, rngs=nnx.Rngs(0))
        assert layer.C.shape[0] == dirs, (causal, layer.C.shape)


def test_hydra_names_itself_for_an_even_d_conv():
    """Hydra's own check (not only ShortConv's) names the layer and the option."""
    for bad in (4, 0):
        with pytest.raises(ValueError, match="Hydra: d_conv must be a positive odd"):
            Hydra(16, d_conv=bad, head_dim=4, d_state=4, rngs=nnx.Rngs(0))


def test_s4d_c_is_complex_standard_normal():
    """S4D's C ~ CN(0, 1): real and imaginary parts N(0, 1/2) (S4's init); 2 x 32 x 32 samples
    per part, so the mean is within 5 standard errors (0.06) and the variance within 10%."""
    c = np.asarray(S4D(32, d_state=64, rngs=nnx.Rngs(0)).C[...])  # [dirs, H, M, 2]
    for part in (c[..., 0], c[..., 1]):
        assert abs(part.mean()) < 5 * np.sqrt(0.5 / part.size), part.mean()
        assert abs(part.var() - 0.5) < 0.05, part.var()


def test_dsa_indexer_without_rope():
    """index_rope_dim=0 (no RoPE in the indexer) is allowed and leaves q_idx, k_idx unrotated."""
    layer = DSA(16, n_heads=2, topk=4, index_rope_dim=0, index_head_dim=8, rngs=nnx.Rngs(0))
    z = jnp.ones((1, 3, 2, 8))
    assert_close(layer._rope(z, jnp.arange(3)), z)


def test_dsa_base_mla_builds_mla():
    from seqlab.layers.attention import MultiHeadAttention
    from seqlab.layers.mla import MLA

    assert isinstance(DSA(16, base="mla", n_heads=2, rngs=nnx.Rngs(0)).attn, MLA)
    assert type(DSA(16, base="mha", n_heads=2, rngs=nnx.Rngs(0)).attn) is MultiHeadAttention


def test_eager_decode_checks_the_position():
    """Outside jit the cache position is known: decoding within the cache works, and a write
    that ends past max_length from a later position raises (t alone fits)."""
    from seqlab.layers.attention import MultiHeadAttention

    layer = MultiHeadAttention(16, n_heads=2, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 3, 16))
    y, cache = layer.decode(x, layer.init_cache(1, 4))
    assert y.shape == (1, 3, 16)
    with pytest.raises(ValueError, match="cache overflow"):
        layer.decode(x[:, :2], cache)


def test_real_part_of_each_parametrisation():
    """Re(Lambda) = -exp(p) ('exp') or min(p, -1e-4) ('clip')."""
    from seqlab.layers.common import real_part

    p = np.array([-2.0, -0.5, -1e-5, 0.3], np.float32)
    assert_close(real_part(jnp.asarray(p), "exp"), -np.exp(p), rtol=1e-6)
    assert_close(real_part(jnp.asarray(p), "clip"), np.minimum(p, -1e-4))
