"""float64 numpy building blocks for the layer references (tests/layers/test_reference_*.py).

Each is the textbook definition, written without looking at the layer's code paths: a dense
layer is ``x W + b``, a depthwise convolution is a sum over taps, the recurrences are Python
loops over time. The reference tests read a layer's weights and rebuild its output from these.
"""

from __future__ import annotations

import numpy as np


def f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def linear(x: np.ndarray, layer) -> np.ndarray:
    """``x W (+ b)`` of an nnx.Linear (kernel [d_in, d_out])."""
    y = x @ f64(layer.kernel[...])
    if getattr(layer, "bias", None) is not None:
        y = y + f64(layer.bias[...])
    return y


def silu(x):
    return x / (1 + np.exp(-x))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def depthwise_conv(x: np.ndarray, w: np.ndarray, b, causal: bool) -> np.ndarray:
    """x [batch, L, C], taps w [K, C]: causal y_t = sum_j w_j x_{t-K+1+j}; centred (K odd)
    y_t = sum_j w_j x_{t-(K-1)/2+j}; zeros outside the sequence; + b."""
    k, length = w.shape[0], x.shape[1]
    off = k - 1 if causal else (k - 1) // 2
    y = np.zeros(x.shape)
    for t in range(length):
        for j in range(k):
            s = t - off + j
            if 0 <= s < length:
                y[:, t] += w[j] * x[:, s]
    return y if b is None else y + b


def conv_of(x: np.ndarray, conv, mask=None) -> np.ndarray:
    """A ShortConv module applied by :func:`depthwise_conv` (inputs at padded positions zeroed)."""
    if mask is not None:
        x = x * mask[..., None]
    b = None if conv.bias is None else f64(conv.bias[...])
    return depthwise_conv(x, f64(conv.weight[...]), b, conv.causal)


def rmsnorm(x, w, z=None, norm_before_gate=True, eps=1e-5):
    """rms(x) = x / sqrt(mean(x^2) + eps) (last axis) times w; gate silu(z) after the norm or,
    with norm_before_gate=False, multiplied into x before it."""
    if z is not None and not norm_before_gate:
        x = x * silu(z)
    y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w
    return y * silu(z) if z is not None and norm_before_gate else y


def ssm_scan(x, dt, A, B, C, h0=None):
    """Mamba-2 eq. (1) per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t.
    x [batch, L, H, P]; dt [batch, L, H]; A [H]; B, C [batch, L, G, N] (head h uses group
    h // (H/G)). -> (y [batch, L, H, P], last state [batch, H, P, N])."""
    batch, length, heads, p = x.shape
    per = heads // B.shape[2]
    h = np.zeros((batch, heads, p, B.shape[-1])) if h0 is None else f64(h0).copy()
    y = np.zeros(x.shape)
    for t in range(length):
        for hd in range(heads):
            g = hd // per
            h[:, hd] = (np.exp(dt[:, t, hd] * A[hd])[:, None, None] * h[:, hd]
                        + (dt[:, t, hd, None] * x[:, t, hd])[:, :, None] * B[:, t, g, None, :])
            y[:, t, hd] = np.einsum("bpn,bn->bp", h[:, hd], C[:, t, g])
    return y, h


def delta_rule(q, k, v, beta, g, n, scale, s0=None):
    """The gated delta product, one Householder step at a time (Siems et al. 2025, eq. 3):
    per token S <- exp(g_t) S, then for j < n: S <- (I - beta k k^T) S + beta k v^T;
    o_t = S^T (scale q_t). q [batch, T, H, K]; k [batch, T*n, H, K]; v [batch, T*n, H, V];
    beta [batch, T*n, H]; g [batch, T, H] or None. -> (o [batch, T, H, V], S [batch, H, K, V])."""
    batch, t_len, heads, dk = q.shape
    dv = v.shape[-1]
    S = np.zeros((batch, heads, dk, dv)) if s0 is None else f64(s0).copy()
    o = np.zeros((batch, t_len, heads, dv))
    eye = np.eye(dk)
    for t in range(t_len):
        for b in range(batch):
            for h in range(heads):
                if g is not None:
                    S[b, h] *= np.exp(g[b, t, h])
                for j in range(n):
                    r = t * n + j
                    kk, bt = k[b, r, h], beta[b, r, h]
                    house = eye - bt * np.outer(kk, kk)
                    S[b, h] = house @ S[b, h] + bt * np.outer(kk, v[b, r, h])
                o[b, t, h] = S[b, h].T @ (scale * q[b, t, h])
    return o, S
