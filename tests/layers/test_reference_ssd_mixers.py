"""Mamba-2 and Hydra against float64 numpy references built from each layer's own weights.

Mamba-2 (Dao & Gu 2024, Sec. 7 and eq. (1)): [z | xBC | dt] = u W_in; xBC = silu(causal
conv(xBC)); dt = softplus(dt + dt_bias); A = -exp(A_log); h_t = exp(dt_t A) h_{t-1} +
dt_t x_t B_t^T, y_t = h_t C_t + D x_t; out = (rms(y * silu(z)) w) W_out, the RMS taken per
group of d_inner / n_groups features (mamba_ssm's RMSNormGated(group_size=...)).
Hydra (Hwang et al. 2024, eq. (8) and Sec. 4): centred conv; two such scans (forward in time,
and backward on the reversed sequence), each shifted by one step (the output at t reads the
scan at t-1); diagonal D + x W_D; out = (rms(y) w silu(z)) W_out.
Parameters that init to constants (D, dt_bias, conv bias, norm weight) are randomised first, so
that every one of them matters. Tolerances: float32 layer against float64 reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from _numpy_ref import conv_of, f64, linear, rmsnorm, silu, softplus, ssm_scan
from flax import nnx

from seqlab.layers.hydra import Hydra, Mamba2

TOL = {"rtol": 2e-4, "atol": 2e-5}


def _randomise(layer, seed):
    rng = np.random.default_rng(seed)
    layer.D[...] = jnp.asarray(rng.uniform(0.5, 1.5, layer.D.shape), jnp.float32)
    layer.dt_bias[...] = jnp.asarray(rng.uniform(-3, 0, layer.dt_bias.shape), jnp.float32)
    if layer.conv.bias is not None:
        layer.conv.bias[...] = jnp.asarray(rng.normal(0, 0.2, layer.conv.bias.shape),
                                           jnp.float32)
    layer.norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, layer.norm.weight.shape),
                                         jnp.float32)
    for proj in (layer.in_proj, layer.out_proj):
        if proj.bias is not None:
            proj.bias[...] = jnp.asarray(rng.normal(0, 0.2, proj.bias.shape), jnp.float32)


def mamba2_ref(layer, u, mask=None, h0=None, conv_tail=None, eps=1e-5, dt_limit=(0, np.inf)):
    """float64 Mamba-2 output [batch, L, d_model] (and the last state); eps: the gated norm's,
    dt_limit: the step-size clamp after the softplus."""
    b, length, _ = u.shape
    di, gn, h, p, n = (layer.d_inner, layer.n_groups * layer.d_state, layer.n_heads,
                       layer.head_dim, layer.d_state)
    zxbcdt = linear(u, layer.in_proj)
    z, xbc, dt = zxbcdt[..., :di], zxbcdt[..., di:2 * di + 2 * gn], zxbcdt[..., 2 * di + 2 * gn:]
    if conv_tail is not None:  # decode: the cached inputs precede the new ones
        xbc = conv_of(np.concatenate([conv_tail, xbc], 1), layer.conv)[:, conv_tail.shape[1]:]
    else:
        xbc = conv_of(xbc, layer.conv, mask)
    xbc = silu(xbc)
    m = np.ones((b, length)) if mask is None else mask.astype(float)
    x = (xbc[..., :di] * m[..., None]).reshape(b, length, h, p)
    B = xbc[..., di:di + gn].reshape(b, length, -1, n)
    C = xbc[..., di + gn:].reshape(b, length, -1, n)
    dt = np.clip(softplus(dt + f64(layer.dt_bias[...])), *dt_limit) * m[..., None]
    A = -np.exp(f64(layer.A_log[...]))
    y, last = ssm_scan(x, dt, A, B, C, h0)
    y = (y + f64(layer.D[...])[:, None] * x).reshape(b, length, di)
    # mamba_ssm's RMSNormGated(group_size=d_inner // n_groups): one norm per group of features
    g = layer.n_groups
    y = rmsnorm(y.reshape(b, length, g, -1), f64(layer.norm.weight[...]).reshape(g, -1),
                z.reshape(b, length, g, -1), norm_before_gate=False,
                eps=eps).reshape(b, length, di)
    return linear(y, layer.out_proj), last


def hydra_ref(layer, u, mask=None):
    b, length, _ = u.shape
    di, gn, h, p, n = (layer.d_inner, layer.n_groups * layer.d_state, layer.n_heads,
                       layer.head_dim, layer.d_state)
    zxbcdt = linear(u, layer.in_proj)
    z, xbc, dt = zxbcdt[..., :di], zxbcdt[..., di:2 * di + 4 * gn], zxbcdt[..., 2 * di + 4 * gn:]
    xbc = silu(conv_of(xbc, layer.conv, mask))
    m = np.ones((b, length)) if mask is None else mask.astype(float)
    x = xbc[..., :di] * m[..., None]
    Bf, Cf, Bb, Cb = (xbc[..., di + i * gn:di + (i + 1) * gn].reshape(b, length, -1, n)
                      for i in range(4))
    dt = softplus(dt + np.tile(f64(layer.dt_bias[...]), 2)) * m[..., None]
    A = -np.exp(f64(layer.A_log[...]))
    diag = x @ f64(layer.fc_D.kernel[...]) + f64(layer.D[...])
    xh = x.reshape(b, length, h, p)
    fw, _ = ssm_scan(xh, dt[..., :h], A, Bf, Cf)
    rev = (slice(None), slice(None, None, -1))
    bw, _ = ssm_scan(xh[rev], dt[..., h:][rev], A, Bb[rev], Cb[rev])
    # shift: the output at t reads the scan one step earlier (each direction in its own time)
    y_fw, y_bw = np.zeros(xh.shape), np.zeros(xh.shape)
    y_fw[:, 1:], y_bw[:, 1:] = fw[:, :-1], bw[:, :-1]
    y = y_fw + y_bw[rev] + diag[..., None] * xh
    y = rmsnorm(y.reshape(b, length, di), f64(layer.norm.weight[...]), z, norm_before_gate=True)
    return linear(y, layer.out_proj)


MAMBA2_OPTIONS = {
    "default": {},
    # the options of released checkpoints: biased projections, no conv bias, a norm epsilon
    # that matters at this scale, and a step-size clamp that binds for some (b, t, head)
    "biases-eps-clamp": dict(use_bias=True, conv_bias=False, norm_eps=0.3,
                             dt_limit=(0.05, 0.2)),
}


@pytest.mark.parametrize("options", sorted(MAMBA2_OPTIONS))
def test_mamba2_matches_reference(options, groups=2, chunk=3):
    opts = MAMBA2_OPTIONS[options]
    layer = Mamba2(8, d_state=5, head_dim=4, n_groups=groups, chunk_size=chunk,
                   rngs=nnx.Rngs(0), **opts)
    assert (layer.conv.bias is None) == (opts.get("conv_bias") is False)
    _randomise(layer, 1)
    ref = {k: opts[k] for k in ("dt_limit",) if k in opts} | {"eps": opts.get("norm_eps", 1e-5)}
    u = np.random.default_rng(2).standard_normal((2, 11, 8))
    mask = np.ones((2, 11), bool)
    mask[1, 7:] = False
    fwd = jax.jit(lambda m, u, mask: m(u, mask))
    got = fwd(layer, jnp.asarray(u, jnp.float32), jnp.asarray(mask))
    want, _ = mamba2_ref(layer, u, mask, **ref)
    assert_close(np.asarray(got)[mask], want[mask], **TOL)
    # decode: a prefill of 6 tokens (over a chunk), then one token at a time
    cache = layer.init_cache(2, 11)
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    ys = []
    for t0, t1 in [(0, 6)] + [(t, t + 1) for t in range(6, 11)]:
        y, cache = step(layer, jnp.asarray(u[:, t0:t1], jnp.float32), cache)
        ys.append(y)
    want_full, last = mamba2_ref(layer, u, **ref)
    assert_close(jnp.concatenate(ys, 1), want_full, **TOL)
    assert_close(cache["state"], last, rtol=1e-4, atol=1e-5)


def test_hydra_matches_reference(groups=2):
    layer = Hydra(8, d_state=5, head_dim=4, n_groups=groups, d_conv=3, chunk_size=4,
                  rngs=nnx.Rngs(3))
    _randomise(layer, 4)
    u = np.random.default_rng(5).standard_normal((2, 9, 8))
    mask = np.ones((2, 9), bool)
    mask[0, 6:] = False
    got = jax.jit(lambda m, u, mask: m(u, mask))(layer, jnp.asarray(u, jnp.float32),
                                                 jnp.asarray(mask))
    want = hydra_ref(layer, u, mask)
    assert_close(np.asarray(got)[mask], want[mask], **TOL)
