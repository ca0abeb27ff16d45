"""Top-k attention and DSA against float64 numpy references from their weights.

MHA part (both): q = RoPE(x W_q), k = RoPE(x W_k), v = x W_v per head (rotate-half RoPE,
theta_i = 10000^(-2i/D)); y = o W_o. Top-k (Gupta et al. 2021): each (query, head) attends the
topk visible keys of largest score only. DSA (DeepSeek-V3.2 eq. 1-2): indexer score
I_{t,s} = sum_j w_{t,j} relu(q^I_{t,j} . k^I_s / sqrt(D_I)), each query's topk causal keys by
I, shared by all heads. The indexer's own inputs (LayerNorm on the index keys, partial
RoPE) are checked separately (:func:`test_dsa_indexer_inputs_match_reference`).
"""

import jax
import jax.numpy as jnp
import numpy as np
from _assert import assert_close
from _numpy_ref import f64, linear
from flax import nnx

from seqlab.layers.sparse import DSA, TopKAttention

TOL = {"rtol": 1e-4, "atol": 2e-5}


def rope(x, pos, base=10000.0):
    """x [..., T, heads, D] rotated in pairs (i, i + D/2) by pos * base^(-2i/D)."""
    half = x.shape[-1] // 2
    ang = pos[:, None] * base ** (-np.arange(half) * 2.0 / x.shape[-1])
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def mha_qkv(attn, x):
    b, t, _ = x.shape
    pos = np.arange(t, dtype=np.float64)
    q = rope(linear(x, attn.wq).reshape(b, t, attn.n_heads, attn.head_dim), pos)
    k = rope(linear(x, attn.wk).reshape(b, t, attn.n_kv_heads, attn.head_dim), pos)
    return q, k, linear(x, attn.wv).reshape(b, t, attn.n_kv_heads, attn.head_dim)


def attend(q, k, v, keys, scale):
    """softmax over the listed keys of one (batch, query, head): q [D], k, v [S, D]."""
    s = np.array([scale * q @ k[j] for j in keys])
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v[keys]


def topk_ref(layer, x, topk):
    q, k, v = mha_qkv(layer, x)
    b, t, hq, d = q.shape
    g = hq // k.shape[2]
    o = np.zeros((b, t, hq, d))
    for bi in range(b):
        for ti in range(t):
            for h in range(hq):
                scores = [q[bi, ti, h] @ k[bi, s, h // g] for s in range(ti + 1)]
                keys = sorted(range(ti + 1), key=lambda s: -scores[s])[:topk]
                o[bi, ti, h] = attend(q[bi, ti, h], k[bi, :, h // g], v[bi, :, h // g], keys,
                                      d**-0.5)
    return linear(o.reshape(b, t, hq * d), layer.wo)


def test_topk_attention_matches_reference():
    layer = TopKAttention(16, topk=3, n_heads=4, n_kv_heads=2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((2, 9, 16))
    got = jax.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
    assert_close(got, topk_ref(layer, x, 3), **TOL)


def dsa_ref(layer, x, q_idx, k_idx, w_idx):
    """The layer's output from its base attention's weights and the given indexer inputs."""
    q, k, v = mha_qkv(layer.attn, x)
    b, t, hq, d = q.shape
    g = hq // k.shape[2]
    di = q_idx.shape[-1]
    o = np.zeros((b, t, hq, d))
    for bi in range(b):
        for ti in range(t):
            score = [sum(w_idx[bi, ti, j] * max(q_idx[bi, ti, j] @ k_idx[bi, s] / np.sqrt(di), 0)
                         for j in range(q_idx.shape[2])) for s in range(ti + 1)]
            keys = sorted(range(ti + 1), key=lambda s: -score[s])[: layer.topk]
            for h in range(hq):
                o[bi, ti, h] = attend(q[bi, ti, h], k[bi, :, h // g], v[bi, :, h // g], keys,
                                      d**-0.5)
    return linear(o.reshape(b, t, hq * d), layer.attn.wo)


def _dsa():
    layer = DSA(16, topk=3, index_heads=2, index_head_dim=4, block_size=4, n_heads=4,
                n_kv_heads=2, rngs=nnx.Rngs(2))
    return layer, np.random.default_rng(3).standard_normal((2, 10, 16))


def test_dsa_matches_reference_and_decodes():
    """Eval mode (sparse path) and token-by-token decode against the reference."""
    layer, x = _dsa()
    idx = layer.indexer_inputs(jnp.asarray(x, jnp.float32), jnp.arange(10))
    want = dsa_ref(layer, x, *(f64(a) for a in idx))
    got = jax.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
    assert_close(got, want, **TOL)
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    cache, ys = layer.init_cache(2, 10), []
    for t0, t1 in [(0, 4)] + [(t, t + 1) for t in range(4, 10)]:
        y, cache = step(layer, jnp.asarray(x[:, t0:t1], jnp.float32), cache)
        ys.append(y)
    assert_close(jnp.concatenate(ys, 1), want, **TOL)


def test_dsa_indexer_inputs_match_reference():
    """DeepSeek-V3.2's indexer (MHA base): q^I = x W_qI per index head, k^I = LayerNorm(x W_kI)
    (scale and bias, eps 1e-6), RoPE on the first index_rope_dim dims of both (rotate-half),
    w = x W_w / sqrt(index_heads)."""
    layer = DSA(16, topk=3, index_heads=2, index_head_dim=8, index_rope_dim=4, block_size=4,
                n_heads=4, n_kv_heads=2, rngs=nnx.Rngs(2))
    norm = layer.wk_idx.norm
    rng = np.random.default_rng(7)
    norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.normal(0, 0.3, 8), jnp.float32)
    x = rng.standard_normal((2, 10, 16))
    got = layer.indexer_inputs(jnp.asarray(x, jnp.float32), jnp.arange(10))
    pos = np.arange(10, dtype=np.float64)

    def partial_rope(z):
        return np.concatenate([rope(z[..., :4], pos), z[..., 4:]], -1)

    kk = linear(x, layer.wk_idx.proj)
    kk = (kk - kk.mean(-1, keepdims=True)) / np.sqrt(kk.var(-1, keepdims=True) + 1e-6)
    kk = kk * f64(norm.scale[...]) + f64(norm.bias[...])
    q_idx = partial_rope(linear(x, layer.wq_idx).reshape(2, 10, 2, 8))
    k_idx = partial_rope(kk.reshape(2, 10, 1, 8))[:, :, 0]
    w_idx = linear(x, layer.w_idx) / np.sqrt(2)
    for a, w in zip(got, (q_idx, k_idx, w_idx), strict=True):
        assert_close(a, w, **TOL)
