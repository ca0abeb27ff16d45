"""TopKAttention and DSA layers: dense limits, decode == forward, indexer loss gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.sparse import DSA


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
    np.testing.assert_allclose(wide(x), dense(x), atol=1e-6)
    layer = MIXERS["topk"](d_model=16, topk=3, rngs=nnx.Rngs(0))
    y = layer(x)
    assert float(jnp.abs(y - dense(x)).max()) > 1e-3
    np.testing.assert_allclose(decode_all(layer, x, 12), y, atol=2e-6)


@pytest.mark.parametrize("base", ["mha", "mla"])
def test_dsa_layer_decode_equals_forward(base):
    layer = MIXERS["dsa"](d_model=16, base=base, topk=3, block_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 16))
    y = layer(x)
    np.testing.assert_allclose(decode_all(layer, x, 11), y, atol=2e-6)
    cache = layer.init_cache(2, 11)
    y1, cache = layer.decode(x[:, :5], cache)
    y2, _ = layer.decode(x[:, 5:], cache)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, atol=2e-6)


def test_dsa_dense_limit_and_padding():
    x = jax.random.normal(jax.random.key(2), (2, 8, 16))
    layer = DSA(16, topk=8, block_size=3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer(x), layer.attn(x), atol=2e-6)
    sparse = DSA(16, topk=2, block_size=3, rngs=nnx.Rngs(0))
    assert float(jnp.abs(sparse(x) - layer.attn(x)).max()) > 1e-3
    mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
    np.testing.assert_allclose(sparse(x.at[1, 5:].set(9.0), mask)[1, :5], sparse(x[1:, :5])[0],
                               atol=2e-6)
    with pytest.raises(ValueError, match="causal"):
        DSA(16, causal=False, rngs=nnx.Rngs(0))


def test_dsa_indexer_loss_trains_only_the_indexer():
    layer = DSA(16, topk=3, block_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 7, 16))
    for sparse in (False, True):
        grads = nnx.grad(lambda m, sparse=sparse: m.indexer_loss(x, sparse=sparse))(layer)
        norms = {"/".join(map(str, p)): float(jnp.abs(g).max())
                 for p, g in nnx.to_flat_state(grads)}
        assert all(v == 0 for n, v in norms.items() if n.startswith("attn")), norms
        assert all(norms[f"{n}/kernel"] > 0 for n in ("wq_idx", "wk_idx", "w_idx")), norms
    # the language-model loss does not reach the indexer: selection is integer-valued
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    flat = {"/".join(map(str, p)): float(jnp.abs(g).max()) for p, g in nnx.to_flat_state(grads)}
    assert flat["wq_idx/kernel"] == 0 and flat["attn/wq/kernel"] > 0
