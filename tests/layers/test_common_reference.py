"""GatedRMSNorm (both orders) and ShortConv against numpy references written from their
definitions (Mamba-2 Sec. 7.3 gated norm; a depthwise FIR filter is ``np.convolve``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers.common import GatedRMSNorm, ShortConv


def _silu(z):
    return z / (1 + np.exp(-z))


def rmsnorm_ref(x, w, z, norm_before_gate, eps):
    """float64: rms(x) = x / sqrt(mean(x^2) + eps) over the last axis; gate silu(z) applied
    after the norm (norm_before_gate) or to x before it."""
    x = np.asarray(x, np.float64)
    if z is not None and not norm_before_gate:
        x = x * _silu(np.asarray(z, np.float64))
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    if z is not None and norm_before_gate:
        y = y * _silu(np.asarray(z, np.float64))
    return y


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("gated", [True, False])
def test_gated_rmsnorm_matches_numpy(norm_before_gate, gated):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 6)) * 3
    z = rng.standard_normal(x.shape) * 2 if gated else None
    norm = GatedRMSNorm(6, norm_before_gate=norm_before_gate, eps=1e-5)
    w = rng.uniform(0.5, 1.5, 6)
    norm.weight[...] = jnp.asarray(w, jnp.float32)
    got = norm(jnp.asarray(x, jnp.float32), None if z is None else jnp.asarray(z, jnp.float32))
    assert got.dtype == jnp.float32 and got.shape == x.shape
    assert_close(got, rmsnorm_ref(x, w, z, norm_before_gate, 1e-5), rtol=2e-5, atol=2e-6)
    if gated:  # the two orders differ on these inputs, so each test pins its order
        other = rmsnorm_ref(x, w, z, not norm_before_gate, 1e-5)
        assert np.abs(np.asarray(got) - other).max() > 0.1


def conv_ref(x, w, b, causal):
    """Per channel c: ``np.convolve`` of x[:, c] with the kernel. A causal filter with taps
    w[0..K-1] applied at t reads x[t-K+1..t] (w[K-1] multiplies x_t); the centred one reads
    x[t-(K-1)/2 .. t+(K-1)/2]. np.convolve flips its second argument, so pass w reversed."""
    batch, length, ch = x.shape
    k = w.shape[0]
    y = np.zeros(x.shape)
    for n in range(batch):
        for c in range(ch):
            full = np.convolve(x[n, :, c], w[::-1, c])  # full[t + K - 1 - j] gets x_t w_j
            start = 0 if causal else (k - 1) // 2
            y[n, :, c] = full[start : start + length] + b[c]
    return y


@pytest.mark.parametrize("causal,k", [(True, 4), (True, 3), (False, 3), (False, 5)])
def test_short_conv_matches_np_convolve(causal, k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 5))
    conv = ShortConv(5, k, causal=causal, rngs=nnx.Rngs(0))
    w = np.asarray(conv.weight[...], np.float64)
    b = rng.standard_normal(5)
    conv.bias[...] = jnp.asarray(b, jnp.float32)
    got = jax.jit(lambda c, x: c(x))(conv, jnp.asarray(x, jnp.float32))
    assert_close(got, conv_ref(x, w, b, causal), rtol=1e-5, atol=1e-5)
    # padding: zeroed before the convolution, so real positions never see it
    mask = np.ones((2, 9), bool)
    mask[1, 6:] = False
    got = conv(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
    want = conv_ref(np.where(mask[..., None], x, 0.0), w, b, causal)
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    if causal:  # decode in pieces of 1, 3 and 5 steps from an empty cache
        cache, ys = conv.init_cache(2), []
        for t0, t1 in ((0, 1), (1, 4), (4, 9)):
            y, cache = conv.decode(jnp.asarray(x[:, t0:t1], jnp.float32), cache)
            ys.append(y)
        assert_close(jnp.concatenate(ys, 1), conv_ref(x, w, b, causal), rtol=1e-5, atol=1e-5)
