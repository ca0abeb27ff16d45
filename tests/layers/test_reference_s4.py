"""S4D, S4 and S4-PTD against float64 numpy references from their weights, and their initial
parameters against the papers' formulas.

Forward reference (S4 eq. (1)-(3); S4D eq. (5)): per channel h the real system of N = 2M
states ``A = diag(Lambda, conj Lambda) - p p^H`` (p = [P; conj P], no p for S4D), B_full =
[B; conj B], C_full = [C; conj C], discretised by ZOH (diagonal only) or bilinear
(``dA = (I - dt/2 A)^-1 (I + dt/2 A)``, ``dB = (I - dt/2 A)^-1 dt B``), run as the recurrence
``x_k = dA x_{k-1} + dB u_k``, ``y_k = Re(C_full x_k) + D u_k`` (+ the same recurrence over the
reversed sequence with the second C when not causal); then gelu, the GLU projection, mask.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from _numpy_ref import f64, linear
from flax import nnx
from scipy.special import erf

from seqlab.layers.s4 import S4
from seqlab.layers.s4d import S4D, S4PTD
from seqlab.ops import hippo

TOL = {"rtol": 2e-4, "atol": 2e-5}
# The S4 repository clips Im(V^* B) of LegS to [-2, 2] (``B_clip=2.0``). The init checks compare
# the layers with ``ops.hippo`` and ops.hippo's unclipped system with the paper's formulas.
NO_CLIP = {"B_clip": None}
LAYER_CLIP = {"B_clip": 2.0}  # the layers' default: the reference's


def _c(p):
    p = f64(p)
    return p[..., 0] + 1j * p[..., 1]


def system(layer):
    """(Lambda [H, M], P [r, H, M] or None, B [H, M], C [dirs, H, M], dt [H]) in complex128."""
    re = f64(layer.Lambda_re[...])
    re = -np.exp(re) if layer.real_param == "exp" else np.minimum(re, -1e-4)
    lam = re + 1j * f64(layer.Lambda_im[...])
    P = _c(layer.P[...]) if hasattr(layer, "P") else None
    return lam, P, _c(layer.B[...]), _c(layer.C[...]), np.exp(f64(layer.log_dt[...]))


def discrete(lam, P, B, dt, disc):
    """Dense (dA [2M, 2M], dB [2M]) of one channel."""
    n = 2 * lam.size
    A = np.diag(np.concatenate([lam, lam.conj()]))
    if P is not None:
        p = np.concatenate([P, P.conj()], -1)  # [r, 2M]
        A = A - p.T @ p.conj()
    Bf = np.concatenate([B, B.conj()])
    if disc == "zoh":  # diagonal A: exp per mode
        d = np.diag(A)
        return np.diag(np.exp(dt * d)), (np.exp(dt * d) - 1) / d * Bf
    inv = np.linalg.inv(np.eye(n) - dt / 2 * A)
    return inv @ (np.eye(n) + dt / 2 * A), inv @ (dt * Bf)


def ssm_layer_ref(layer, u, mask=None):
    """float64 layer output [batch, L, H] (GLU block included)."""
    lam, P, B, C, dt = system(layer)
    if mask is not None:
        u = u * mask[..., None]
    batch, length, H = u.shape
    y = f64(layer.D[...]) * u
    for h in range(H):
        dA, dB = discrete(lam[h], None if P is None else P[:, h], B[h], dt[h], layer.disc)
        for d, c in enumerate(C[:, h]):
            cf = np.concatenate([c, c.conj()])
            order = range(length) if d == 0 else range(length - 1, -1, -1)
            x = np.zeros((batch, dA.shape[0]), complex)
            for t in order:
                x = x @ dA.T + dB * u[:, t, h, None]
                y[:, t, h] += (x @ cf).real
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))  # exact gelu
    y = linear(y, layer.proj)
    y = y[..., :H] / (1 + np.exp(-y[..., H:]))  # GLU
    return y if mask is None else y * mask[..., None]


CASES = {
    "s4d-legs-zoh-fft": lambda: S4D(6, d_state=8, rngs=nnx.Rngs(0)),
    "s4d-lin-bilinear-scan-bidir": lambda: S4D(6, d_state=8, init="lin", disc="bilinear",
                                               mode="scan", causal=False, rngs=nnx.Rngs(1)),
    "s4d-inv-clip-bidir": lambda: S4D(6, d_state=6, init="inv", real_param="clip",
                                      causal=False, rngs=nnx.Rngs(2)),
    "s4-legs": lambda: S4(6, d_state=8, rngs=nnx.Rngs(3)),
    "s4-fout-bidir": lambda: S4(6, d_state=6, measure="fout", causal=False, rngs=nnx.Rngs(4)),
    "s4ptd": lambda: S4PTD(6, d_state=8, rngs=nnx.Rngs(5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ssm_layers_match_reference(case):
    layer = CASES[case]()
    u = np.random.default_rng(6).standard_normal((2, 13, 6))
    mask = np.ones((2, 13), bool)
    mask[1, 9:] = False
    got = jax.jit(lambda m, u, mask: m(u, mask))(layer, jnp.asarray(u, jnp.float32),
                                                 jnp.asarray(mask))
    assert_close(got, ssm_layer_ref(layer, u, mask), **TOL)
    if layer.causal:  # recurrent decode: 5 tokens, then one at a time
        step = jax.jit(lambda m, x, c: m.decode(x, c))
        cache, ys = layer.init_cache(2, 13), []
        for t0, t1 in [(0, 5)] + [(t, t + 1) for t in range(5, 13)]:
            y, cache = step(layer, jnp.asarray(u[:, t0:t1], jnp.float32), cache)
            ys.append(y)
        assert_close(jnp.concatenate(ys, 1), ssm_layer_ref(layer, u), **TOL)


# ---- initial parameters -------------------------------------------------------------------

def legs(N):
    """HiPPO-LegS (S4 eq. (2)): A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0;
    B_n = sqrt(2n+1); and its rank-1 correction P_n = sqrt(n + 1/2), so that A + P P^T is
    normal (S4 Thm. 1): -1/2 I plus a skew-symmetric matrix."""
    n = np.arange(N)
    r = np.sqrt(2 * n + 1)
    A = np.where(n[:, None] > n[None], -np.outer(r, r), 0.0) - np.diag(n + 1.0)
    return A, r, np.sqrt(n + 0.5)


def test_s4d_diagonal_inits_follow_the_paper():
    """S4D-Lin (eq. (8)) and S4D-Inv (eq. (9)) in every channel; S4D-LegS (Sec. 4) equal to
    ``ops.hippo``'s, whose unclipped values are the eigenvalues of the normal part of
    HiPPO-LegS and B = V^* B_LegS (compared through |B_n|: eigenvector phases are a convention)."""
    N, M = 8, 4
    n = np.arange(M)
    want = {"lin": -0.5 + 1j * np.pi * n, "inv": -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)}
    for init, lam_want in want.items():
        lam, _, B, _, _ = system(S4D(3, d_state=N, init=init, rngs=nnx.Rngs(0)))
        assert_close(lam, np.tile(lam_want, (3, 1)), rtol=1e-6, atol=1e-6)
        assert_close(B, np.ones((3, M)), rtol=0, atol=0)
    lam, _, B, _, _ = system(S4D(3, d_state=N, init="legs", rngs=nnx.Rngs(0)))
    lam_h, _, B_h = hippo.dplr("legs", N, **LAYER_CLIP)
    assert_close(lam, np.tile(lam_h, (3, 1)), rtol=1e-6, atol=1e-6)
    assert_close(B, np.tile(B_h / 2, (3, 1)), rtol=1e-6, atol=1e-6)  # S4D's B/2
    A, Bl, Pl = legs(N)
    w, V = np.linalg.eig(A + np.outer(Pl, Pl))
    pos = np.argsort(w.imag)[M:]  # the modes with positive imaginary part, increasing
    lam_h, _, B_h = hippo.dplr("legs", N, **NO_CLIP)
    order = np.argsort(lam_h.imag)
    assert_close(lam_h[order], w[pos], rtol=1e-9, atol=1e-9)
    assert_close(np.abs(B_h[order]), np.abs(V[:, pos].conj().T @ Bl), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("N", [6, 8])
def test_s4_dplr_init_is_hippo_legs_in_another_basis(N):
    """S4's (Lambda, P, B) are ``ops.hippo.dplr``'s; unclipped, they stand for HiPPO-LegS in a
    unitary eigenbasis, so every basis-free quantity agrees with the dense LegS matrix:
    b^H A^k b, p^H A^k b and p^H A^k p for k < 4 (A = diag(Lambda, conj Lambda) - p p^H,
    b = [B; conj B], p = [P; conj P])."""
    lam, P, B, _, _ = system(S4(2, d_state=N, rngs=nnx.Rngs(0)))
    lam_h, P_h, B_h = hippo.dplr("legs", N, **LAYER_CLIP)
    for got, want in ((lam[0], lam_h), (P[:, 0], P_h), (B[0], B_h)):
        assert_close(got, want, rtol=1e-6, atol=1e-6)
    lam, P, B = hippo.dplr("legs", N, **NO_CLIP)
    A, Bl, Pl = legs(N)
    p, b = np.concatenate([P[0], P[0].conj()]), np.concatenate([B, B.conj()])
    Af = np.diag(np.concatenate([lam, lam.conj()])) - np.outer(p, p.conj())
    for k in range(4):
        Ak, Alk = np.linalg.matrix_power(Af, k), np.linalg.matrix_power(A, k)
        tol = 1e-9 * np.linalg.norm(Alk) * N
        for (x, y), (xl, yl) in zip(((b, b), (p, b), (p, p)), ((Bl, Bl), (Pl, Bl), (Pl, Pl)),
                                    strict=True):
            assert_close(x.conj() @ Ak @ y, xl @ Alk @ yl, rtol=0, atol=tol, err_msg=f"k={k}")


def test_s4ptd_published_recipe():
    """Yu et al.'s recipe at N = 64: kappa(V) <= 100 with ||E|| <= 5% ||A||, every mode strictly
    stable (reflected), and the layer's Lambda is ``hippo.ptd``'s."""
    res = hippo.ptd(64)
    assert res.cond <= 100 and res.rel_norm <= 0.05, (res.cond, res.rel_norm)
    lam = system(S4PTD(1, d_state=64, rngs=nnx.Rngs(0)))[0]
    assert np.all(lam.real < 0)
    assert_close(np.sort_complex(lam[0]), np.sort_complex(res.Lambda), rtol=1e-5, atol=1e-5)


def test_legs_b_is_clipped_by_default():
    """The S4 repository's default ``B_clip=2.0``: Im(V^* B) in [-2, 2], Re and P unchanged."""
    lam0, P0, B0 = hippo.dplr("legs", 16, B_clip=None)
    lam, P, B = hippo.dplr("legs", 16, B_clip=2.0)
    layer_B = system(S4(1, d_state=16, rngs=nnx.Rngs(0)))[2][0]  # the layers' default clips
    assert_close(layer_B, B, rtol=1e-6, atol=1e-6)
    assert np.abs(B0.imag).max() > 2
    assert_close(B, B0.real + 1j * np.clip(B0.imag, -2, 2), rtol=1e-12, atol=1e-12)
    assert_close(P, P0, rtol=1e-12, atol=1e-12)
    assert_close(lam, lam0, rtol=1e-12, atol=1e-12)
