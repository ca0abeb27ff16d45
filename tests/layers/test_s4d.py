"""S4D / S4-PTD layers: conv == recurrent decode == scan, padding invariance, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.common import SSMParam
from seqlab.layers.s4d import S4D, S4PTD
from seqlab.ops import hippo

H, N = 6, 8
fwd = nnx.jit(lambda m, x, mask=None: m(x, mask))
dec = nnx.jit(lambda m, x, c: m.decode(x, c))


def _x(b=2, L=13, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, L, H))


def test_registry_defaults_and_ssm_params():
    m = MIXERS["s4d"](d_model=H, rngs=nnx.Rngs(0))
    assert m.d_state == 64 and m.init == "legs" and m.disc == "zoh" and m.n_modes == 32
    ssm = {path for path, _ in nnx.to_flat_state(nnx.state(m, SSMParam))}
    assert ssm == {("log_dt",), ("Lambda_re",), ("Lambda_im",), ("B",)}
    dt = np.exp(np.asarray(m.log_dt[...]))
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert "s4-ptd" in MIXERS


@pytest.mark.parametrize(
    "opts",
    [
        dict(init="legs", disc="zoh", real_param="exp"),
        dict(init="inv", disc="bilinear", real_param="clip"),
    ],
)
def test_conv_equals_decode_and_scan(opts):
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N, **opts)
    x = _x()
    y = fwd(m, x)
    cache = m.init_cache(2, 13)
    ys = []
    for t0, t1 in [(0, 5), (5, 6), (6, 7), (7, 13)]:  # prefill, single tokens, another chunk
        yt, cache = dec(m, x[:, t0:t1], cache)
        ys.append(yt)
    assert_close(np.asarray(jnp.concatenate(ys, 1)), np.asarray(y), atol=2e-5)
    assert int(cache["pos"]) == 13
    m.mode = "scan"
    assert_close(np.asarray(fwd(m, x)), np.asarray(y), atol=2e-5)


def test_bidirectional_fft_equals_scan_and_no_decode():
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N, causal=False, init="lin", out="linear",
            activation="silu")
    x = _x()
    y = fwd(m, x)
    # the reverse direction changes the output at early positions when late inputs change
    x2 = x.at[:, -1].add(1.0)
    assert np.abs(np.asarray(fwd(m, x2)[:, 0] - y[:, 0])).max() > 1e-4
    m.mode = "scan"
    assert_close(np.asarray(fwd(m, x)), np.asarray(y), atol=2e-5)
    with pytest.raises(ValueError, match="causal=False"):
        m.init_cache(2, 13)
    with pytest.raises(ValueError, match="causal=False"):
        m.decode(x[:, :1], {"state": None, "pos": None})


@pytest.mark.parametrize("causal", [True, False])
def test_padding_invariance(causal):
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N, causal=causal)
    L, lengths = 13, [13, 7]
    x = _x(L=L)
    mask = jnp.arange(L)[None] < jnp.asarray(lengths)[:, None]
    x = jnp.where(mask[..., None], x, 100.0)  # garbage in the padding
    y = fwd(m, x, mask)
    for i, n in enumerate(lengths):
        y_alone = fwd(m, x[i : i + 1, :n])
        assert_close(np.asarray(y[i, :n]), np.asarray(y_alone[0]), atol=2e-5)
    assert np.all(np.asarray(y)[1, 7:] == 0)


def test_gradients_reach_every_parameter():
    # exact LegS B (no clip): the float32 finite-difference tolerance below was set on it
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N, causal=False, b_clip=None)
    x = _x()

    def loss(model):
        return jnp.sum(model(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(m)
    for path, g in nnx.to_flat_state(nnx.state(grads, nnx.Param)):
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path
    # directional finite difference through the whole layer (kernel + FFT + GLU), float32
    d = jax.random.normal(jax.random.key(5), m.log_dt[...].shape) * 0.1
    g_dir = float(jnp.sum(grads.log_dt[...] * d))
    eps = 1e-2
    m.log_dt[...] = m.log_dt[...] + eps * d
    lp = nnx.jit(loss)(m)
    m.log_dt[...] = m.log_dt[...] - 2 * eps * d
    lm = nnx.jit(loss)(m)
    # float32 quotient: the loss (~60) is rounded at ~1e-5 relative through the FFT and GLU, so
    # the quotient over 2 eps carries ~1e-3 of relative error (2.6e-3 measured with XLA's
    # unoptimised CPU codegen, 1e-3 with the optimised one); a wrong gradient is off by far more
    assert_close((lp - lm) / (2 * eps), g_dir, rtol=5e-3)


def test_real_part_stays_negative():
    for rp in ("exp", "clip"):
        m = S4D(H, rngs=nnx.Rngs(0), d_state=N, real_param=rp)
        m.Lambda_re[...] = m.Lambda_re[...] + (5.0 if rp == "exp" else 10.0)
        A = m.ssm()[0]
        assert np.all(np.asarray(A.real) < 0)


def test_dropout_eval_and_bf16():
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N, dropout=0.5)
    x = _x()
    m.eval()
    y1, y2 = fwd(m, x), fwd(m, x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    m.train()
    assert not np.allclose(np.asarray(fwd(m, x)), np.asarray(y1))
    mb = S4D(H, rngs=nnx.Rngs(0), d_state=N, dtype=jnp.bfloat16)
    yb = fwd(mb, x.astype(jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    m32 = S4D(H, rngs=nnx.Rngs(0), d_state=N)
    assert_close(np.asarray(yb, np.float32), np.asarray(fwd(m32, x)), atol=0.05)


def test_s4_ptd_published_init_folds_b_into_c_and_decodes():
    """S4-PTD as Yu et al.'s reference: all N modes of A + E (E optimised, shipped), strictly
    stable after reflection, B~ = 1 and C~ = (C V) * V^-1 B; kappa(V), ||E||/||A|| reported."""
    n = 4
    m = S4PTD(H, rngs=nnx.Rngs(0), d_state=n)
    system = hippo.ptd(n)
    assert m.n_modes == n and m.cond_V == system.cond and m.rel_norm_E == system.rel_norm
    assert m.cond_V < 10 and m.rel_norm_E < 0.2  # shipped N = 4: 2.6, 0.13 (random E: 7.9e3)
    A, _, _, _ = m.ssm()
    assert np.all(np.asarray(A.real) < 0)
    assert_close(np.asarray(A[0]), system.Lambda, rtol=1e-6)
    assert_close(np.asarray(m.B[...]), np.tile([[[1.0, 0.0]]], (H, n, 1)))
    # C~ V^-1 B^-1 recovers a real C (the folded change of basis)
    C = (np.asarray(m.C[...], np.float64) @ [1, 1j]) / system.B @ np.linalg.inv(system.V)
    assert_close(C.imag, 0, atol=1e-4 * np.abs(C).max())
    x = _x()
    cache = m.init_cache(2, 13)
    y_dec, _ = dec(m, x, cache)
    assert_close(np.asarray(y_dec), np.asarray(fwd(m, x)), atol=2e-5)
    with pytest.raises(ValueError, match="no longer takes eps"):
        S4PTD(H, rngs=nnx.Rngs(0), d_state=n, eps=1e-3)


def test_s4d_legs_b_clip_default_is_the_reference():
    """S4D-LegS clamps Im(V^H B) to [-2, 2] by default (S4's B_clip=2.0), then halves B (the
    S4D theorem's B/2); None keeps it exact."""
    n = 16  # Im(V^H B) reaches 10.2 at N = 16
    clipped = S4D(H, rngs=nnx.Rngs(0), d_state=n)
    exact = S4D(H, rngs=nnx.Rngs(0), d_state=n, b_clip=None)
    b0 = hippo.dplr("legs", n)[2]
    assert_close(np.asarray(exact.B[0, :, 1]), b0.imag / 2, rtol=1e-6)
    assert_close(np.asarray(clipped.B[0, :, 1]), np.clip(b0.imag, -2, 2) / 2,
                               rtol=1e-6)
    assert_close(np.asarray(clipped.B[..., 0]), np.asarray(exact.B[..., 0]))
    assert np.abs(b0.imag).max() > 10
    unhalved = S4D(H, rngs=nnx.Rngs(0), d_state=n, b_half=False)  # the S4 reference code's B
    assert_close(np.asarray(unhalved.B[0, :, 1]), np.clip(b0.imag, -2, 2), rtol=1e-6)
    assert_close(np.asarray(unhalved.B[0, :, 0]), b0.real, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_state=7), "even"),
        (dict(init="legt"), "lin, inv, legs, ptd"),
        (dict(disc="euler"), "zoh, bilinear"),
        (dict(real_param="softplus"), "exp, clip"),
        (dict(dt_min=0.0), "dt_min"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min"),
        (dict(mode="chunked"), "fft, scan"),
        (dict(out="mlp"), "glu, linear, none"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4D(H, rngs=nnx.Rngs(0), **kwargs)


def test_bad_input_shape_and_length():
    for name in ("s4d", "s5"):
        m = MIXERS[name](d_model=H, rngs=nnx.Rngs(0), d_state=N, max_length=8)
        with pytest.raises(ValueError, match="max_length=8"):
            m(jnp.ones((1, 9, H)))
        with pytest.raises(ValueError, match="max_length=8"):
            m.init_cache(1, 16)
    m = S4D(H, rngs=nnx.Rngs(0), d_state=N)
    with pytest.raises(ValueError, match="d_model=6"):
        m(jnp.ones((2, 5, H + 1)))  # eager: the shape check runs before any compute


def test_all_ssm_mixers_build_abstractly():
    """``seqlab check`` builds models under nnx.eval_shape: no numpy conversion of tracers."""
    for name in ("s4d", "s4-ptd", "s4", "s5"):
        m = nnx.eval_shape(lambda n=name: MIXERS[n](d_model=H, rngs=nnx.Rngs(0), d_state=N))
        assert m.D.shape == (H,)
