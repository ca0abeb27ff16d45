"""S4 (DPLR) layer: conv == recurrent decode, padding invariance, gradients, options, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.common import SSMParam, as_complex
from seqlab.layers.s4 import S4
from seqlab.ops.ssm import c_from_c_tilde

H, N = 6, 8
fwd = nnx.jit(lambda m, x, mask=None: m(x, mask))
dec = nnx.jit(lambda m, x, c: m.decode(x, c))


def _x(b=2, L=13, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, L, H))


def test_registry_defaults_and_decode_step_forms_no_dense_state_matrix():
    """Defaults, SSM parameter set; a decode step is O(H N r): its program holds no
    [H, N/2, N/2] array (the old path formed and inverted dense matrices on every call)."""
    m = MIXERS["s4"](d_model=32, rngs=nnx.Rngs(0))
    assert m.measure == "legs" and m.d_state == 64 and m.disc == "bilinear"
    ssm = {path for path, _ in nnx.to_flat_state(nnx.state(m, SSMParam))}
    assert ssm == {("log_dt",), ("Lambda_re",), ("Lambda_im",), ("B",), ("P",)}
    graphdef, state = nnx.split(m)
    step = jax.jit(lambda s, x, c: nnx.merge(graphdef, s).decode(x, c))
    hlo = step.lower(state, jnp.ones((1, 1, 32)), m.init_cache(1, 4)).as_text()
    assert "tensor<32x32x32x" not in hlo  # e.g. a dense dA: [H, N/2, N/2] complex


def test_conv_equals_decode():
    """FFT convolution with the kernel == prefill + token-by-token Woodbury recurrence (LegT:
    rank 2); dt up to 0.5 so that the C~ = C (I - dA^L) correction of the kernel matters."""
    m = S4(H, rngs=nnx.Rngs(0), d_state=N, measure="legt", dt_min=0.05, dt_max=0.5)
    x = _x()
    y = fwd(m, x)
    cache = m.init_cache(2, 13)
    y1, cache = dec(m, x[:, :6], cache)  # prefill
    ys = [y1]
    for t in range(6, 13):
        yt, cache = dec(m, x[:, t : t + 1], cache)
        ys.append(yt)
    assert_close(np.asarray(jnp.concatenate(ys, 1)), np.asarray(y), atol=3e-5)


def test_c_tilde_option_conv_equals_decode_and_matches_true_c():
    """c_tilde=True: C holds C~ for L = max_length (learned directly); the conv path over a
    shorter input equals decode (which converts C~ back to C), and the kernel equals the
    default layer's kernel once its C is set to that converted C."""
    kw = dict(d_state=N, measure="legt", dt_min=0.05, dt_max=0.5, max_length=16)
    m = S4(H, rngs=nnx.Rngs(0), c_tilde=True, **kw)
    x = _x(L=11)
    y = fwd(m, x)
    y_dec, _ = dec(m, x, m.init_cache(2, 11))
    assert_close(np.asarray(y_dec), np.asarray(y), atol=3e-5)
    plain = S4(H, rngs=nnx.Rngs(0), **kw)
    A, _, C_t, dt = m.ssm()
    C_true = c_from_c_tilde(A, as_complex(m.P[...]), C_t[0], dt, 16)
    plain.C[...] = jnp.stack([C_true.real, C_true.imag], -1)[None].astype(plain.C[...].dtype)
    assert_close(m.kernel(11), plain.kernel(11), atol=3e-5)
    with pytest.raises(ValueError, match="max_length"):
        S4(H, rngs=nnx.Rngs(0), c_tilde=True, d_state=N)


def test_bidirectional_padding_invariance_and_no_decode():
    m = S4(H, rngs=nnx.Rngs(0), d_state=N, causal=False)
    L = 13
    x = _x(L=L)
    mask = jnp.arange(L)[None] < jnp.asarray([13, 7])[:, None]
    y = fwd(m, jnp.where(mask[..., None], x, 50.0), mask)
    y_alone = fwd(m, x[1:, :7])
    assert_close(np.asarray(y[1, :7]), np.asarray(y_alone[0]), atol=3e-5)
    assert np.abs(np.asarray(y[0, :3] - fwd(m, x[:1, :7])[0, :3])).max() > 1e-4  # sees the future
    with pytest.raises(ValueError, match="causal=False"):
        m.init_cache(2, L)


def test_gradients_reach_every_parameter():
    m = S4(H, rngs=nnx.Rngs(0), d_state=N)
    x = _x()
    grads = nnx.jit(nnx.grad(lambda model: jnp.sum(model(x) ** 2)))(m)
    for path, g in nnx.to_flat_state(nnx.state(grads, nnx.Param)):
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_state=7), "even"),
        (dict(measure="fourier"), "legs, legt, lagt, fout"),
        (dict(init="legs"), "measure"),
        (dict(disc="zoh"), "bilinear"),
        (dict(mode="scan"), "fft"),
        (dict(dt_min=-1.0), "dt_min"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4(H, rngs=nnx.Rngs(0), **kwargs)



def test_b_clip_default_is_the_s4_reference():
    """S4 builds B with the reference's nplr(..., B_clip=2.0): Im(V^H B) in [-2, 2], P exact;
    b_clip=None keeps the exact HiPPO projection."""
    from seqlab.ops import hippo

    n = 16
    clipped = S4(H, rngs=nnx.Rngs(0), d_state=n)
    exact = S4(H, rngs=nnx.Rngs(0), d_state=n, b_clip=None)
    _, P0, B0 = hippo.dplr("legs", n)
    assert_close(np.asarray(exact.B[0, :, 1]), B0.imag, rtol=1e-6)
    assert_close(np.asarray(clipped.B[0, :, 1]), np.clip(B0.imag, -2, 2), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped.P[...]), np.asarray(exact.P[...]))
    assert (np.abs(B0.imag) > 2).sum() == 3
