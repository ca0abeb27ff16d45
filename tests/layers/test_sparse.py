"""TopKAttention and DSA layers: dense limits, decode == forward, indexer loss gradient flow,
DSA's training stages (dense warm-up, then sparse) and what each loss reaches."""

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
    step = jax.jit(layer.decode)  # compiled: eager decode dispatches hundreds of small ops
    y1, cache = step(x[:, :5], layer.init_cache(2, 11))
    y2, _ = step(x[:, 5:], cache)
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


def test_dsa_training_stages_and_gradients():
    """Training mode: call 0 is the dense warm-up (dense output, eq. 3 KL), call 1 is sparse
    (the eval output, eq. 4 KL); one compiled function covers both; the sown KL reaches only the
    indexer, the output never; eval calls leave the counter alone."""
    layer = DSA(16, topk=2, block_size=4, indexer_warmup_steps=1, indexer_loss_weight=0.5,
                rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (2, 6, 16))
    mask = jnp.array([[True] * 6, [True] * 5 + [False]])
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    @jax.jit
    def train_call(params, rest):
        """One training-mode call: output, sown KL, new counter, d(output loss), d(KL); and
        the eval-mode references: dense and sparse outputs, both KLs of indexer_loss."""
        def parts(p):
            m = nnx.merge(graphdef, p, rest, copy=True)  # fresh variables in this trace
            m.train()
            y, sown = nnx.capture(m, nnx.Intermediate)(x, mask)
            (aux,) = sown["aux_loss"].get_value()
            out_loss = jnp.sum(jnp.where(mask[..., None], y, 0.0) ** 2)
            return (out_loss, aux), (y, nnx.state(m, nnx.Not(nnx.Param)))

        (_, aux), vjp, (y, new_rest) = jax.vjp(parts, params, has_aux=True)
        one, zero = jnp.ones(()), jnp.zeros(())
        m = nnx.merge(graphdef, params, rest, copy=True)
        refs = [m.attn(x, mask), m(x, mask)]
        refs += [m.indexer_loss(x, mask, sparse=sparse) for sparse in (False, True)]
        return y, aux, new_rest, vjp((one, zero))[0], vjp((zero, one))[0], refs

    def max_abs(grads):
        return {"/".join(map(str, p)): float(jnp.abs(g).max()) for p, g in nnx.to_flat_state(grads)}

    real = mask[..., None]
    idx = ("wq_idx/kernel", "wk_idx/kernel", "w_idx/kernel")
    for stage in (0, 1):  # 0: dense warm-up, 1: sparse
        y, aux, rest, g_out, g_aux, refs = train_call(params, rest)
        np.testing.assert_allclose(jnp.where(real, y, 0), jnp.where(real, refs[stage], 0),
                                   atol=2e-6)
        np.testing.assert_allclose(aux, 0.5 * refs[2 + stage], rtol=1e-5)
        g_out, g_aux = max_abs(g_out), max_abs(g_aux)
        assert all(g_out[n] == 0 for n in idx) and g_out["attn/wv/kernel"] > 0, g_out
        assert all(g_aux[n] > 0 for n in idx), g_aux
        assert all(v == 0 for n, v in g_aux.items() if n.startswith("attn")), g_aux
    assert int(rest["indexer_step"].get_value()) == 2 and train_call._cache_size() == 1
    assert float(jnp.abs(jnp.where(real, refs[0] - refs[1], 0)).max()) > 1e-3
    assert float(refs[2]) > 0 and float(refs[3]) > 0
