"""TopKAttention and DSA layers: dense limits, decode == forward, indexer loss gradient flow,
DSA's training stages (dense warm-up, then sparse) and what each loss reaches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
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
    assert_close(fwd(wide, x), fwd(dense, x), atol=1e-6)
    layer = MIXERS["topk"](d_model=16, topk=3, rngs=nnx.Rngs(0))
    y = fwd(layer, x)
    assert float(jnp.abs(y - fwd(dense, x)).max()) > 1e-3
    assert_close(decode_all(layer, x, 12), y, atol=2e-6)


@pytest.mark.parametrize("base", ["mha", "mla"])
def test_dsa_layer_decode_equals_forward(base):
    layer = MIXERS["dsa"](d_model=16, base=base, topk=3, block_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 16))
    y = fwd(layer, x)
    assert_close(decode_all(layer, x, 11), y, atol=2e-6)
    step = jax.jit(layer.decode)  # compiled: eager decode dispatches hundreds of small ops
    y1, cache = step(x[:, :5], layer.init_cache(2, 11))
    y2, _ = step(x[:, 5:], cache)
    assert_close(jnp.concatenate([y1, y2], 1), y, atol=2e-6)


def test_dsa_dense_limit_and_padding():
    x = jax.random.normal(jax.random.key(2), (2, 8, 16))
    layer = DSA(16, topk=8, block_size=3, rngs=nnx.Rngs(0))
    assert_close(fwd(layer, x), fwd(layer.attn, x), atol=2e-6)
    sparse = DSA(16, topk=2, block_size=3, rngs=nnx.Rngs(0))
    assert float(jnp.abs(fwd(sparse, x) - fwd(layer.attn, x)).max()) > 1e-3
    mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
    padded = fwd(sparse, x.at[1, 5:].set(9.0), mask)
    assert_close(padded[1, :5], fwd(sparse, x[1:, :5])[0], atol=2e-6)
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
    idx = ("wq_idx/kernel", "wk_idx/proj/kernel", "wk_idx/norm/scale", "w_idx/kernel")
    for stage in (0, 1):  # 0: dense warm-up, 1: sparse
        y, aux, rest, g_out, g_aux, refs = train_call(params, rest)
        assert_close(jnp.where(real, y, 0), jnp.where(real, refs[stage], 0),
                                   atol=2e-6)
        assert_close(aux, 0.5 * refs[2 + stage], rtol=1e-5)
        g_out, g_aux = max_abs(g_out), max_abs(g_aux)
        assert all(g_out[n] == 0 for n in idx) and g_out["attn/wv/kernel"] > 0, g_out
        assert all(g_aux[n] > 0 for n in idx), g_aux
        assert all(v == 0 for n, v in g_aux.items() if n.startswith("attn")), g_aux
    assert int(rest["indexer_step"].get_value()) == 2 and train_call._cache_size() == 1
    assert float(jnp.abs(jnp.where(real, refs[0] - refs[1], 0)).max()) > 1e-3
    assert float(refs[2]) > 0 and float(refs[3]) > 0


def _rope_half_np(z, pos, base):
    """Rotate-half RoPE in float64: pair (i, i + D/2) turns by pos * base^(-2i/D)."""
    d = z.shape[-1]
    ang = pos[:, None] * base ** (-np.arange(0, d, 2) / d)  # [t, D/2]
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    z1, z2 = z[..., : d // 2], z[..., d // 2 :]
    return np.concatenate([z1 * c - z2 * s, z2 * c + z1 * s], -1)


def _indexer_reference(layer, x):
    """DeepSeek-V3.2 ``Indexer`` in float64 numpy: q from the query latent (MLA) or x,
    k = LayerNorm(x W_k), RoPE on the first index_rope_dim dims only, I = sum_j w_j relu(q_j.k)."""
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    x = f(x)
    b, t, _ = x.shape
    Hi, Di, r = layer.index_heads, layer.index_head_dim, layer.index_rope_dim
    c = x
    if getattr(layer.attn, "q_lora_rank", None):
        a = x @ f(layer.attn.wq_a.kernel[...])
        c = a / np.sqrt(np.mean(a**2, -1, keepdims=True) + 1e-6) * f(layer.attn.q_norm.scale[...])
    q = (c @ f(layer.wq_idx.kernel[...])).reshape(b, t, Hi, Di)
    k = x @ f(layer.wk_idx.proj.kernel[...])
    k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6)
    k = (k * f(layer.wk_idx.norm.scale[...]) + f(layer.wk_idx.norm.bias[...]))[:, :, None]
    pos = np.arange(t, dtype=np.float64)
    q = np.concatenate([_rope_half_np(q[..., :r], pos, layer.rope_base), q[..., r:]], -1)
    k = np.concatenate([_rope_half_np(k[..., :r], pos, layer.rope_base), k[..., r:]], -1)[:, :, 0]
    w = x @ f(layer.w_idx.kernel[...]) / np.sqrt(Hi)
    score = np.einsum("btj,btjs->bts", w, np.maximum(np.einsum("btjd,bsd->btjs", q, k), 0))
    return q, k, score / np.sqrt(Di)


@pytest.mark.parametrize("base, options", [("mha", {"rope_dim": 4}),
                                           ("mla", {"q_lora_rank": 12, "rope_dim": 4})])
def test_dsa_indexer_is_deepseek_v32s(base, options):
    """LayerNorm'd index key, RoPE on the first rope dims only (the base's: 4 of 8 here; the
    rest position-free), the index query from MLA's query latent; scores equal the float64
    reference."""
    layer = DSA(16, base=base, topk=3, index_heads=2, index_head_dim=8, rngs=nnx.Rngs(1),
                **options)
    layer.wk_idx.norm.scale[...] = jnp.linspace(0.5, 1.5, 8)
    layer.wk_idx.norm.bias[...] = jnp.linspace(-0.2, 0.2, 8)
    assert layer.index_rope_dim == layer.attn.rope_dim == 4
    x = jax.random.normal(jax.random.key(7), (2, 7, 16))
    q, k, w = jax.jit(layer.indexer_inputs)(x, jnp.arange(7))
    q_ref, k_ref, score_ref = _indexer_reference(layer, x)
    assert_close(q, q_ref, atol=1e-5)
    assert_close(k, k_ref, atol=1e-5)
    score = jnp.einsum("btj,btjs->bts", w, jax.nn.relu(jnp.einsum("btjd,bsd->btjs", q, k)))
    assert_close(score / np.sqrt(8), score_ref, atol=1e-5)
    r = layer.index_rope_dim  # the dims past r do not depend on the position
    q_moved, _, _ = jax.jit(layer.indexer_inputs)(x, jnp.arange(7) + 5)
    assert_close(q_moved[..., r:], q[..., r:], atol=1e-6)
    assert float(jnp.abs(q_moved[..., :r] - q[..., :r]).max()) > 1e-2


def test_bf16_indexer_agrees_with_float32():
    """index_dtype='bfloat16' keeps q_idx, k_idx (and the k_idx cache) in bf16 and picks
    nearly the same keys as the float32 indexer."""
    from seqlab.ops.attention import dsa_indexer

    f32 = DSA(32, topk=8, index_heads=4, index_head_dim=16, rngs=nnx.Rngs(0))
    b16 = DSA(32, topk=8, index_heads=4, index_head_dim=16, index_dtype="bfloat16",
              rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 64, 32))
    pos = jnp.arange(64)
    q, k, w = b16.indexer_inputs(x, pos)
    assert q.dtype == k.dtype == jnp.bfloat16
    assert b16.init_cache(1, 4)["k_idx"].dtype == jnp.bfloat16
    i32 = np.asarray(dsa_indexer(*f32.indexer_inputs(x, pos), topk=8))
    i16 = np.asarray(dsa_indexer(q, k, w, topk=8))
    overlap = [len(set(a[a >= 0]) & set(c[c >= 0])) / max(1, (a >= 0).sum())
               for a, c in zip(i32.reshape(-1, 8), i16.reshape(-1, 8), strict=True)]
    assert np.mean(overlap) > 0.9
    with pytest.raises(ValueError, match="float32, bfloat16"):
        DSA(32, index_dtype="float16", rngs=nnx.Rngs(0))
