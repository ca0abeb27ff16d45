"""DeltaNet, Gated DeltaNet and DeltaProduct against float64 numpy references from their weights.

Reference (Yang et al. 2024a sec. 3, 2024b sec. 3; Siems et al. 2025 sec. 3), per token t:
q_t, k_tj, v_tj = silu(causal conv(x W)) (q, k: the layer's qk_activation, silu / relu /
identity); q, k L2-normalised per head (x / sqrt(|x|^2 + 1e-6));
beta_tj = sigmoid(x w_b) (x 2 with negative eigenvalues); g_t = -exp(A_log) softplus(x w_a +
dt_bias); per token S <- exp(g_t) S, then n steps S <- (I - beta k k^T) S + beta k v^T;
o_t = S^T q_t / sqrt(K); y_t = (rms(o_t) w [* silu(x W_g)]) W_o. Padded positions: zero input
to the convolutions, beta = g = 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from _numpy_ref import conv_of, delta_rule, f64, linear, rmsnorm, sigmoid, silu, softplus
from flax import nnx

from seqlab.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet

TOL = {"rtol": 2e-4, "atol": 2e-5}


QK_ACT = {"silu": silu, "relu": lambda x: np.maximum(x, 0.0), "identity": lambda x: x}


def _l2(x):
    return x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)


def delta_ref(layer, x, mask=None):
    """float64 output [batch, T, d_model] and final state [batch, H, K, V]."""
    b, t, _ = x.shape
    h, n, dk, dv = layer.n_heads, layer.n_householder, layer.head_dim, layer.v_dim
    m = np.ones((b, t)) if mask is None else mask.astype(float)
    act = QK_ACT[layer.qk_activation]
    q = _l2(act(conv_of(linear(x, layer.q_proj), layer.q_conv, mask)).reshape(b, t, h, dk))
    k = _l2(act(conv_of(linear(x, layer.k_proj), layer.k_conv, mask)).reshape(b, t * n, h, dk))
    v = silu(conv_of(linear(x, layer.v_proj), layer.v_conv, mask)).reshape(b, t * n, h, dv)
    beta = sigmoid(linear(x, layer.b_proj)) * (2.0 if layer.allow_neg_eigval else 1.0)
    beta = (beta * m[..., None]).reshape(b, t * n, h)
    g = None
    if layer.a_proj is not None:
        a = linear(x, layer.a_proj) + f64(layer.dt_bias[...])
        g = -np.exp(f64(layer.A_log[...])) * softplus(a) * m[..., None]
    o, state = delta_rule(q, k, v, beta, g, n, dk**-0.5)
    gate = None if layer.g_proj is None else linear(x, layer.g_proj).reshape(o.shape)
    o = rmsnorm(o, f64(layer.o_norm.weight[...]), gate, norm_before_gate=True)
    return linear(o.reshape(b, t, h * dv), layer.o_proj), state


CASES = {
    "deltanet": lambda: DeltaNet(8, n_heads=2, chunk_size=4, rngs=nnx.Rngs(0)),
    "gated": lambda: GatedDeltaNet(8, n_heads=2, chunk_size=4, expand_v=2.0, rngs=nnx.Rngs(1)),
    "product": lambda: DeltaProduct(8, n_heads=2, n_householder=2, allow_neg_eigval=True,
                                    use_forget_gate=True, chunk_size=3, rngs=nnx.Rngs(2)),
    "product, identity qk": lambda: DeltaProduct(8, n_heads=2, n_householder=3,
                                                 qk_activation="identity", chunk_size=4,
                                                 rngs=nnx.Rngs(7)),
    "deltanet, relu qk": lambda: DeltaNet(8, n_heads=2, qk_activation="relu", chunk_size=4,
                                          rngs=nnx.Rngs(8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_delta_layers_match_reference(case):
    layer = CASES[case]()
    w = layer.o_norm.weight
    w[...] = jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.5, w.shape), jnp.float32)
    x = np.random.default_rng(4).standard_normal((2, 10, 8))
    mask = np.ones((2, 10), bool)
    mask[1, 7:] = False
    got = jax.jit(lambda m, x, mask: m(x, mask))(layer, jnp.asarray(x, jnp.float32),
                                                 jnp.asarray(mask))
    want, _ = delta_ref(layer, x, mask)
    assert_close(np.asarray(got)[mask], want[mask], **TOL)


@pytest.mark.parametrize("make", [
    lambda: GatedDeltaNet(8, n_heads=2, chunk_size=4, rngs=nnx.Rngs(5)),
    lambda: DeltaProduct(8, n_heads=2, qk_activation="identity", chunk_size=4, rngs=nnx.Rngs(9)),
], ids=["gated", "product, identity qk"])
def test_deltanet_decode_reaches_the_chunked_branch(make):
    """Decode in pieces of 5 (a prefill longer than chunk_size 4: the chunked op from an empty
    state), 1 (recurrent) and 4 (chunked again, now from the carried state) tokens."""
    layer = make()
    x = np.random.default_rng(6).standard_normal((2, 10, 8))
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    cache, ys = layer.init_cache(2), []
    for t0, t1 in [(0, 5), (5, 6), (6, 10)]:
        y, cache = step(layer, jnp.asarray(x[:, t0:t1], jnp.float32), cache)
        ys.append(y)
    want, state = delta_ref(layer, x)
    assert_close(jnp.concatenate(ys, 1), want, **TOL)
    assert_close(cache["state"], state, rtol=1e-4, atol=1e-5)
