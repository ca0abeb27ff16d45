"""Gated DeltaNet with separate value heads (``n_v_heads``) against a float64 reference, values
and gradients of every parameter; decode in pieces equals the forward.

Reference (Yang et al. 2024b, sec. 3, with grouped value heads), per token t, written as a
Python loop over time in float64 jax (so that its gradient is autodiff of the definition):
q, k = L2norm(silu(causal conv(x W_q|k))) per query/key head, v = silu(conv(x W_v));
value head j reads query/key head j // r (r = n_v_heads / n_heads), by an explicit index;
beta = sigmoid(x w_b), g = -exp(A_log) softplus(x w_a + dt_bias) per value head;
S_j <- exp(g_j) S_j, then S_j <- S_j + beta_j k (v_j - S_j^T k)^T; o_j = S_j^T q / sqrt(K);
y = (rms(o_j) w * silu(x W_g)) W_o.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from _float64_check import assert_matches_float64
from flax import nnx

from seqlab.layers.deltanet import DeltaProduct, GatedDeltaNet

B, T, D = 2, 9, 12


def _conv(x, w):
    """Causal depthwise convolution: x [B, T, C], taps w [K, C]."""
    k = w.shape[0]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    return sum(w[j] * xp[:, j : j + x.shape[1]] for j in range(k))


def reference(p, x, h, hv, dk, dv, eps):
    """float64 output [B, T, D] of the layer whose parameters (flat names) are ``p``."""
    silu, b, t = jax.nn.silu, x.shape[0], x.shape[1]
    q = silu(_conv(x @ p["q_proj.kernel"], p["q_conv.weight"])).reshape(b, t, h, dk)
    k = silu(_conv(x @ p["k_proj.kernel"], p["k_conv.weight"])).reshape(b, t, h, dk)
    v = silu(_conv(x @ p["v_proj.kernel"], p["v_conv.weight"])).reshape(b, t, hv, dv)
    q = q / jnp.sqrt(jnp.sum(q * q, -1, keepdims=True) + 1e-6)
    k = k / jnp.sqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-6)
    group = np.arange(hv) // (hv // h)  # value head j -> its query/key head
    q, k = q[:, :, group], k[:, :, group]
    beta = jax.nn.sigmoid(x @ p["b_proj.kernel"])
    g = -jnp.exp(p["A_log"]) * jax.nn.softplus(x @ p["a_proj.kernel"] + p["dt_bias"])
    s, outs = jnp.zeros((b, hv, dk, dv)), []
    for i in range(t):
        s = s * jnp.exp(g[:, i])[..., None, None]
        err = v[:, i] - jnp.einsum("bhkv,bhk->bhv", s, k[:, i])
        s = s + jnp.einsum("bhk,bhv->bhkv", k[:, i], beta[:, i][..., None] * err)
        outs.append(jnp.einsum("bhkv,bhk->bhv", s, q[:, i]) / np.sqrt(dk))
    o = jnp.stack(outs, 1)
    o = o / jnp.sqrt(jnp.mean(o * o, -1, keepdims=True) + eps) * p["o_norm.weight"]
    o = o * silu((x @ p["g_proj.kernel"]).reshape(o.shape))
    return o.reshape(b, t, hv * dv) @ p["o_proj.kernel"]


def _layer(**kw):
    layer = GatedDeltaNet(D, n_heads=2, n_v_heads=6, head_dim=4, expand_v=1.5, chunk_size=4,
                          norm_eps=1e-6, rngs=nnx.Rngs(0), **kw)
    w = layer.o_norm.weight
    w[...] = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, w.shape), jnp.float32)
    return layer


def test_value_heads_match_float64_reference_values_and_gradients():
    layer = _layer()
    assert (layer.v_dim, layer.A_log.shape, layer.b_proj.kernel.shape) == (6, (6,), (D, 6))
    x = np.random.default_rng(2).standard_normal((B, T, D))
    assert_matches_float64(layer, x, lambda p, x: reference(p, x, 2, 6, 4, 6, 1e-6))


def test_value_heads_decode_in_pieces_equals_forward():
    layer = _layer()
    x = jax.random.normal(jax.random.key(4), (B, T, D))
    y = jax.jit(lambda x: layer(x))(x)
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    cache, ys = layer.init_cache(B), []
    assert cache["state"].shape == (B, 6, 4, 6)
    for t0, t1 in [(0, 5), (5, 6), (6, 9)]:  # chunked prefill, one step, a short piece
        y_t, cache = step(layer, x[:, t0:t1], cache)
        ys.append(y_t)
    assert_close(jnp.concatenate(ys, 1), y, rtol=1e-4, atol=1e-5)


def test_value_heads_in_deltaproduct_and_bad_counts():
    layer = DeltaProduct(D, n_heads=2, n_v_heads=4, n_householder=2, chunk_size=3,
                         rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(6), (B, 7, D))
    y = jax.jit(lambda x: layer(x))(x)
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    cache, ys = layer.init_cache(B), []
    for t in range(7):
        y_t, cache = step(layer, x[:, t : t + 1], cache)
        ys.append(y_t)
    assert_close(jnp.concatenate(ys, 1), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_v_heads=3 must be a positive multiple"):
        GatedDeltaNet(D, n_heads=2, n_v_heads=3, rngs=nnx.Rngs(0))
