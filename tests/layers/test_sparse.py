"""TopKAttention and DSA layers: dense limits, decode == forward, indexer loss gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.sparse import DSA


def fwd(layer, x, mask=None):
    """The layer's parallel forward, compiled (DSA's per-block ops are many small ones)."""
    return jax.jit(lambda x, mask: layer(x, mask))(x, mask)


def decode_all(layer, x, max_length):
    cache = layer.init_cache(x.shape[0], max_length)
    step = jax.jit(layer.decode)
    ys = []
    for t in range(x.shape[1]):
        yt, cache = step(x[:, t : t + 1], cache)
        ys.append(yt)
    return jnp.concatenate(ys, 1)


def test_topk_layer_dense_limit_and_decode():
    x = jax.random.normal(jax.random.key(0), (2, 9, 16))
    dense = MultiHeadAttention(16, n_kv_heads=2, rngs=nnx.Rngs(0))
    wide = MIXERS["topk"](d_model=16, n_kv_heads=2, topk=9, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(fwd(wide, x), fwd(dense, x), atol=1e-6)
    layer = MIXERS["topk"](d_model=16, topk=3, rngs=nnx.Rngs(0))
    y = fwd(layer, x)
    assert float(jnp.abs(y - fwd(dense, x)).max()) > 1e-3
    np.testing.assert_allclose(decode_all(layer, x, 12), y, atol=2e-6)


@pytest.mark.parametrize("base", ["mha", "mla"])
def test_dsa_layer_decode_equals_forward(base):
    layer = MIXERS["dsa"](d_model=16, base=base, topk=3, block_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 16))
    y = fwd(layer, x)
    np.testing.assert_allclose(decode_all(layer, x, 11), y, atol=2e-6)
    cache = layer.init_cache(2, 11)
    y1, cache = layer.decode(x[:, :5], cache)
    y2, _ = layer.decode(x[:, 5:], cache)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, atol=2e-6)


def test_dsa_dense_limit_and_padding():
    x = jax.random.normal(jax.random.key(2), (2, 8, 16))
    layer = DSA(16, topk=8, block_size=3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(fwd(layer, x), fwd(layer.attn, x), atol=2e-6)
    sparse = DSA(16, topk=2, block_size=3, rngs=nnx.Rngs(0))
    assert float(jnp.abs(fwd(sparse, x) - fwd(layer.attn, x)).max()) > 1e-3
    mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
    padded = fwd(sparse, x.at[1, 5:].set(9.0), mask)
    np.testing.assert_allclose(padded[1, :5], fwd(sparse, x[1:, :5])[0], atol=2e-6)
    with pytest.raises(ValueError, match="causal"):
        DSA(16, causal=False, rngs=nnx.Rngs(0))


def grad_norms(layer, loss):
    """max |d loss / d param| for every parameter path, through one compiled gradient."""
    graphdef, params = nnx.split(layer, nnx.Param)
    grads = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p))))(params)
    return {"/".join(map(str, p)): float(jnp.abs(g).max()) for p, g in nnx.to_flat_state(grads)}


def test_dsa_indexer_loss_trains_only_the_indexer():
    layer = DSA(16, topk=3, block_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 7, 16))
    for sparse in (False, True):
        norms = grad_norms(layer, lambda m, sparse=sparse: m.indexer_loss(x, sparse=sparse))
        assert all(v == 0 for n, v in norms.items() if n.startswith("attn")), norms
        assert all(norms[f"{n}/kernel"] > 0 for n in ("wq_idx", "wk_idx", "w_idx")), norms
    # the language-model loss does not reach the indexer: selection is integer-valued
    flat = grad_norms(layer, lambda m: jnp.sum(m(x) ** 2))
    assert flat["wq_idx/kernel"] == 0 and flat["attn/wq/kernel"] > 0
