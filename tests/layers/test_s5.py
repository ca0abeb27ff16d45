"""S5 layer against a float64 sequential MIMO recurrence; decode, padding, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.common import SSMParam
from seqlab.layers.s5 import S5, block_hippo_n
from seqlab.ops import hippo

H, P = 6, 8
fwd = nnx.jit(lambda m, x, mask=None: m(x, mask))
dec = nnx.jit(lambda m, x, c: m.decode(x, c))


def _x(b=2, L=13, seed=1):
    return jax.random.normal(jax.random.key(seed), (b, L, H))


def reference_ssm(m, u, method: str = "zoh"):
    """S5 eqs. (6)-(7) in float64, one step at a time, both directions; ``method`` is the
    discretisation (``zoh``: S5 eq. (6); ``bilinear``: S5 eq. (17) of its appendix)."""
    re = np.asarray(m.Lambda_re[...], np.float64)
    re = {"none": re, "exp": -np.exp(re), "clip": np.minimum(re, -1e-4)}[m.real_param]
    lam = re + 1j * np.asarray(m.Lambda_im[...], np.float64)
    dt = np.exp(np.asarray(m.log_dt[...], np.float64))
    Bt = np.asarray(m.B[...], np.float64) @ np.array([1, 1j])
    Ct = np.asarray(m.C[...], np.float64) @ np.array([1, 1j])
    if method == "zoh":
        dlam = np.exp(lam * dt)
        dB = ((dlam - 1) / lam)[:, None] * Bt
    else:
        den = 1 - lam * dt / 2
        dlam = (1 + lam * dt / 2) / den
        dB = (dt / den)[:, None] * Bt
    u = np.asarray(u, np.float64)
    b, L, _ = u.shape
    y = np.asarray(m.D[...], np.float64) * u
    for d, order in enumerate([range(L), range(L - 1, -1, -1)][: Ct.shape[0]]):
        x = np.zeros((b, len(lam)), complex)
        for t in order:
            x = dlam * x + u[:, t] @ dB.T
            y[:, t] += (2 if m.conj_sym else 1) * np.real(x @ Ct[d].T)
    return y


@pytest.mark.parametrize("causal, init, real_param", [(True, "hippo-n", "none"),
                                                       (False, "hippo-n", "exp"),
                                                       (False, "ptd", "clip")])
def test_scan_matches_sequential_reference(causal, init, real_param):
    m = S5(H, rngs=nnx.Rngs(0), d_state=P, blocks=2, causal=causal, out="none",
           activation="identity", init=init, real_param=real_param)
    x = _x()
    assert_close(np.asarray(fwd(m, x)), reference_ssm(m, x), atol=2e-5)


def test_conv_equals_decode_and_registry():
    m = MIXERS["s5"](d_model=H, rngs=nnx.Rngs(0), d_state=P, blocks=2)
    x = _x()
    y = fwd(m, x)
    cache = m.init_cache(2, 13)
    ys = []
    for t0, t1 in [(0, 4), (4, 5), (5, 13)]:
        yt, cache = dec(m, x[:, t0:t1], cache)
        ys.append(yt)
    assert_close(np.asarray(jnp.concatenate(ys, 1)), np.asarray(y), atol=2e-5)
    ssm = {path for path, _ in nnx.to_flat_state(nnx.state(m, SSMParam))}
    assert ssm == {("log_dt",), ("Lambda_re",), ("Lambda_im",), ("B",)}


def test_bidirectional_padding_invariance_gradients_and_no_decode():
    m = S5(H, rngs=nnx.Rngs(0), d_state=P, blocks=2, causal=False)
    L = 13
    x = _x(L=L)
    mask = jnp.arange(L)[None] < jnp.asarray([13, 7])[:, None]
    y = fwd(m, jnp.where(mask[..., None], x, 50.0), mask)
    assert_close(np.asarray(y[1, :7]), np.asarray(fwd(m, x[1:, :7])[0]), atol=2e-5)
    grads = nnx.jit(nnx.grad(lambda model: jnp.sum(model(x) ** 2)))(m)
    for path, g in nnx.to_flat_state(nnx.state(grads, nnx.Param)):
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, path
    with pytest.raises(ValueError, match="causal=False"):
        m.init_cache(2, L)


def test_block_hippo_n_init():
    lam, V = block_hippo_n(8, 2)
    assert_close(V.conj().T @ V, np.eye(4), atol=1e-12)
    A, _ = hippo.transition("legs", 4)
    normal = A + np.outer(np.sqrt(np.arange(4) + 0.5), np.sqrt(np.arange(4) + 0.5))
    Vb = V[:4, :2]  # first block: normal HiPPO-LegS eigenpairs
    assert_close(normal @ Vb, Vb * lam[:2], atol=1e-12)
    assert_close(lam.real, -0.5)
    with pytest.raises(ValueError, match="blocks"):
        block_hippo_n(8, 3)
    with pytest.raises(ValueError, match="blocks"):
        S5(H, rngs=nnx.Rngs(0), d_state=12, blocks=4)  # blocks of odd size 3
    for bad, match in ((dict(init="legs"), "hippo-n, ptd"), (dict(c_init="normal"), "trunc_"),
                       (dict(real_param="softplus"), "none, exp, clip")):
        with pytest.raises(ValueError, match=match):
            S5(H, rngs=nnx.Rngs(0), d_state=P, **bad)


def test_init_statistics_are_the_reference_s5():
    """lindermanlab/S5: B LeCun normal [P, H] (std 1/sqrt(P), not 1/sqrt(H)), then B~ = V^H B,
    so E|B~|^2 = 1/P; C complex with real and imaginary parts of std 1/sqrt(P), then C~ = C V,
    so E|C~|^2 = 2/P (a real C gives 1/P); Re(Lambda) is the parameter itself (-1/2)."""
    p, h = 64, 16
    m = S5(h, rngs=nnx.Rngs(0), d_state=p, blocks=4)
    Bt = np.asarray(m.B[...], np.float64) @ [1, 1j]
    Ct = np.asarray(m.C[...], np.float64) @ [1, 1j]
    assert Bt.shape == (p // 2, h) and Ct.shape == (1, h, p // 2)
    assert_close(np.mean(np.abs(Bt) ** 2) * p, 1.0, rtol=0.15)
    assert_close(np.mean(np.abs(Ct) ** 2) * p / 2, 1.0, rtol=0.15)
    assert_close(np.asarray(m.Lambda_re[...]), -0.5, atol=1e-6)
    lecun = S5(h, rngs=nnx.Rngs(0), d_state=p, blocks=4, c_init="lecun_normal")
    Cl = np.asarray(lecun.C[...], np.float64) @ [1, 1j]
    assert_close(np.mean(np.abs(Cl) ** 2) * p * h / 2, 1.0, rtol=0.15)
    direct = S5(h, rngs=nnx.Rngs(0), d_state=p, blocks=4, c_init="complex_normal")
    assert_close(np.mean(np.asarray(direct.C[...]) ** 2), 0.5, rtol=0.15)


def test_s5_ptd_keeps_every_mode_of_each_block():
    """S5-PTD (init='ptd'): each block is S4-PTD's A + E (all P/J modes, reflected), no
    conjugate symmetry; B~ = V^-1 B maps back to a real B; kappa(V) and ||E||/||A|| reported."""
    p, blocks = 32, 2
    m = S5(H, rngs=nnx.Rngs(0), d_state=p, blocks=blocks, init="ptd")
    system = hippo.ptd(p // blocks)
    assert m.n_modes == p and not m.conj_sym
    assert m.cond_V == system.cond < 10 and m.rel_norm_E == system.rel_norm < 0.1
    assert_close(np.asarray(m.Lambda_re[...]), np.tile(system.Lambda.real, 2),
                               rtol=1e-6)
    Bt = np.asarray(m.B[...], np.float64) @ [1, 1j]
    B = np.kron(np.eye(blocks), system.V) @ Bt
    assert_close(B.imag, 0, atol=1e-4 * np.abs(B).max())
    assert_close(np.std(B.real) * np.sqrt(p), 1.0, rtol=0.2)
    x = _x()
    cache = m.init_cache(2, 13)
    assert_close(np.asarray(dec(m, x, cache)[0]), np.asarray(fwd(m, x)), atol=2e-5)
