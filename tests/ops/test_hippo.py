"""seqlab.ops.hippo against entrywise formulas of the HiPPO / S4 / S4D / S4-PTD papers."""

import numpy as np
import pytest
from numpy.polynomial import legendre

from seqlab.ops import hippo


def _paper_transition(measure, N):
    """Entry by entry, as printed in the papers (our stable sign convention)."""
    A, B = np.zeros((N, N)), np.zeros(N)
    for n in range(N):
        for k in range(N):
            if measure == "legs":  # HiPPO eq. (2)
                rr = np.sqrt((2 * n + 1) * (2 * k + 1))
                A[n, k] = -rr if n > k else (-(n + 1) if n == k else 0)
            elif measure == "legt":  # HiPPO LegT, normalised basis, theta = 2
                s = 1.0 if n >= k else (-1.0) ** (n - k)
                A[n, k] = -0.5 * np.sqrt((2 * n + 1) * (2 * k + 1)) * s
            elif measure == "lagt":  # HiPPO LagT
                A[n, k] = -0.5 if n == k else (-1.0 if n > k else 0.0)
        B[n] = {"legs": np.sqrt(2 * n + 1), "legt": 0.5 * np.sqrt(2 * n + 1), "lagt": 1.0}[measure]
    return A, B


@pytest.mark.parametrize("measure", ["legs", "legt", "lagt"])
def test_transition_matches_paper_entries(measure):
    A, B = hippo.transition(measure, 7)
    A_ref, B_ref = _paper_transition(measure, 7)
    np.testing.assert_allclose(A, A_ref, atol=1e-14)
    np.testing.assert_allclose(B, B_ref, atol=1e-14)


def test_fout_is_rotations_minus_rank_one():
    N = 8
    A, B = hippo.transition("fout", N)
    np.testing.assert_allclose(B, [1, 0, np.sqrt(2), 0, np.sqrt(2), 0, np.sqrt(2), 0])
    rot = A + np.outer(B, B)
    np.testing.assert_allclose(rot, -rot.T, atol=1e-14)  # skew: pure rotations
    for k in range(1, N // 2):  # (cos_k, sin_k) rotate at angular speed pi k
        np.testing.assert_allclose(rot[2 * k, 2 * k + 1], -np.pi * k)
    assert np.count_nonzero(rot) == 2 * (N // 2 - 1)


@pytest.mark.parametrize("N", [4, 8, 16, 64])
@pytest.mark.parametrize("measure", hippo.MEASURES)
def test_nplr_reconstructs_and_dplr_is_its_half(measure, N):
    A, B = hippo.transition(measure, N)
    Lambda, P, B2, V = hippo.nplr(measure, N)
    atol = 1e-14 * N * np.abs(A).max()
    np.testing.assert_allclose(V.conj().T @ V, np.eye(N), atol=1e-12)
    np.testing.assert_allclose(V @ np.diag(Lambda) @ V.conj().T - P.T @ P, A, atol=atol)
    assert np.isrealobj(P) and np.allclose(B2, B)
    idx = hippo._positive_half(Lambda)
    Lh, Ph, Bh = hippo.dplr(measure, N)
    assert Lh.shape == (N // 2,) and Ph.shape == (P.shape[0], N // 2) and Bh.shape == (N // 2,)
    np.testing.assert_array_equal(Lh, Lambda[idx])
    np.testing.assert_allclose(Ph, P @ V[:, idx].conj(), atol=1e-12 * N)
    np.testing.assert_allclose(Bh, V[:, idx].conj().T @ B, atol=1e-12 * N)
    assert np.all(Lh.imag >= 0)
    # V is [V_half, conj V_half] up to order: every dropped column is a kept one's conjugate
    W = np.concatenate([V[:, idx], V[:, idx].conj()], axis=1)
    np.testing.assert_allclose(W.conj().T @ W, np.eye(N), atol=1e-12)
    np.testing.assert_allclose(np.sort_complex(np.concatenate([Lh, Lh.conj()])),
                               np.sort_complex(Lambda), atol=1e-12 * N)


def test_fout_real_eigenvalue_is_one_conjugate_pair():
    """FouT's normal part has the double eigenvalue 0 on span(e_0, e_1) (the constant and the
    unused slot): the half keeps one mode (u_1 + i u_2)/sqrt2, its conjugate is the other."""
    N = 8
    Lambda, _, _, V = hippo.nplr("fout", N)
    idx = hippo._positive_half(Lambda)
    real = idx[np.abs(Lambda[idx]) < 1e-12]
    assert len(real) == 1
    v = V[:, real[0]]
    np.testing.assert_allclose(np.abs(v[:2]), [2**-0.5, 2**-0.5], atol=1e-14)
    np.testing.assert_allclose(v[2:], 0, atol=1e-14)
    np.testing.assert_allclose(v @ v, 0, atol=1e-14)  # v orthogonal to conj v


def _resolvent_tf(A, B, C, s):
    """G(s) = C (sI - A)^-1 B at each complex point of s, dense float64."""
    return np.array([C @ np.linalg.solve(si * np.eye(len(B)) - A, B) for si in s])


@pytest.mark.parametrize("N", [4, 8, 16, 64])
@pytest.mark.parametrize("measure", hippo.MEASURES)
def test_dplr_half_is_the_hippo_system(measure, N):
    """The 2x-real reconstruction of dplr's half, A = diag(Lambda, conj Lambda) - p p^H with
    p = [P^T; conj P^T], B = [B; conj B], C = [C; conj C] (what ops.ssm.kernel_dplr computes),
    has the HiPPO transfer function C (sI - A)^-1 B: for a real HiPPO C mapped into the half
    (C_half = C V_half), and for any complex C_half (the real C = 2 Re(C_half V_half^H))."""
    A, B = hippo.transition(measure, N)
    Lambda, _, _, V = hippo.nplr(measure, N)
    V_half = V[:, hippo._positive_half(Lambda)]
    Lh, Ph, Bh = hippo.dplr(measure, N)
    p = np.concatenate([Ph.T, Ph.T.conj()])
    A_full = np.diag(np.concatenate([Lh, Lh.conj()])) - p @ p.conj().T
    B_full = np.concatenate([Bh, Bh.conj()])
    # points off the pseudospectra of the non-normal LegS / LagT matrices (well conditioned)
    s = np.array([0.3 + 1j, -0.2 + 2.5j, 1.7 - 0.4j, 5j, 0.5 - 7j])
    rng = np.random.default_rng(N)
    C = rng.standard_normal(N)
    C_half = rng.standard_normal(N // 2) + 1j * rng.standard_normal(N // 2)
    for c_hippo, c_half in ((C, C @ V_half), (2 * (C_half @ V_half.conj().T).real, C_half)):
        G = _resolvent_tf(A, B, c_hippo, s)
        G_half = _resolvent_tf(A_full, B_full, np.concatenate([c_half, c_half.conj()]), s)
        np.testing.assert_allclose(G_half, G, rtol=1e-12, atol=1e-12 * np.abs(G).max())


def test_legs_memory_reconstructs_polynomials():
    """HiPPO-LegS: c' = (A c + B f) / t keeps the Legendre coefficients of f on [0, t], so a
    polynomial of degree < N is reconstructed exactly (HiPPO Thm. 2)."""
    N = 6
    A, B = hippo.transition("legs", N)
    coef = np.array([0.3, -1.0, 0.5, 2.0, -0.7])  # degree 4 < N
    f = np.polynomial.Polynomial(coef)
    xg, wg = legendre.leggauss(20)

    def project(t):  # c_n(t) = (1/t) int_0^t f(s) sqrt(2n+1) P_n(2s/t - 1) ds
        s = (xg + 1) * t / 2
        basis = np.stack([np.sqrt(2 * n + 1) * legendre.Legendre.basis(n)(xg) for n in range(N)])
        return basis @ (wg * f(s)) / 2

    # integrate in tau = log t: dc/dtau = A c + B f(e^tau), RK4 from t = 1e-3 to t = 1
    t0, steps = 1e-3, 3000
    tau, h = np.log(t0), -np.log(t0) / steps
    c = project(t0)

    def rhs(tau, c):
        return A @ c + B * f(np.exp(tau))

    for _ in range(steps):
        k1 = rhs(tau, c)
        k2 = rhs(tau + h / 2, c + h / 2 * k1)
        k3 = rhs(tau + h / 2, c + h / 2 * k2)
        k4 = rhs(tau + h, c + h * k3)
        c, tau = c + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), tau + h
    np.testing.assert_allclose(c, project(1.0), atol=1e-7)
    s = np.linspace(0, 1, 11)
    recon = sum(c[n] * np.sqrt(2 * n + 1) * legendre.Legendre.basis(n)(2 * s - 1) for n in range(N))
    np.testing.assert_allclose(recon, f(s), atol=1e-6)
    assert abs(c[N - 1]) < 1e-7  # no energy beyond the polynomial's degree


def test_diagonal_inits_match_s4d_formulas():
    N = 10
    n = np.arange(N // 2)
    L, B = hippo.diagonal_init("lin", N)
    np.testing.assert_allclose(L, [-0.5 + 1j * np.pi * k for k in n])
    np.testing.assert_allclose(B, np.ones(N // 2))
    L, B = hippo.diagonal_init("inv", N)
    np.testing.assert_allclose(L, [-0.5 + 1j * N / np.pi * (N / (2 * k + 1) - 1) for k in n])
    L, B = hippo.diagonal_init("legs", N)
    Lh, _, Bh = hippo.dplr("legs", N)
    np.testing.assert_allclose(L, Lh)
    np.testing.assert_allclose(B, Bh)
    np.testing.assert_allclose(L.real, -0.5, atol=1e-12)  # the normal part of LegS
    L, B = hippo.diagonal_init("ptd", N)
    assert L.shape == B.shape and len(L) >= N // 2 and np.all(L.real < 0)


def test_conjugate_reduce_is_exact_with_real_modes():
    rng = np.random.default_rng(1)
    blocks = np.zeros((6, 6))  # eigenvalues -1, -2 (real) and -0.5 +- 2i, -1 +- 3i
    blocks[0, 0], blocks[1, 1] = -1.0, -2.0
    blocks[2:4, 2:4] = [[-0.5, 2.0], [-2.0, -0.5]]
    blocks[4:, 4:] = [[-1.0, 3.0], [-3.0, -1.0]]
    S = rng.standard_normal((6, 6))
    A = S @ blocks @ np.linalg.inv(S)
    lam, V = np.linalg.eig(A)
    b, c = rng.standard_normal(6), rng.standard_normal(6)
    lr, br, Vr = hippo.conjugate_reduce(lam, np.linalg.solve(V, b), V)
    assert len(lr) == 4  # 2 pairs + 2 real modes
    w = np.linspace(-5, 5, 7)
    G = np.array([c @ np.linalg.solve(1j * wi * np.eye(6) - A, b) for wi in w])
    np.testing.assert_allclose(_transfer(c @ Vr, br, lr, w), G, atol=1e-12)


def _transfer(c, b, lam, w):
    """G(iw) over both halves of the conjugate pairs: c b/(iw - lam) + conj(c b)/(iw - conj lam)."""
    s = 1j * w[:, None]
    return ((c * b) / (s - lam) + np.conj(c * b) / (s - np.conj(lam))).sum(-1)


def test_ptd_transfer_function_converges_and_s4d_legs_does_not():
    """Yu et al. 2023, Thm. 1 vs Thm. 2: G_PTD -> G_LegS uniformly as eps -> 0; S4D-LegS
    (dropping the low-rank term) stays a fixed distance away."""
    N = 16
    A, B = hippo.transition("legs", N)
    C = np.random.default_rng(0).standard_normal(N)
    w = np.concatenate([-np.logspace(-2, 3, 150), np.logspace(-2, 3, 150)])
    G = np.array([C @ np.linalg.solve(1j * wi * np.eye(N) - A, B) for wi in w])
    errs, conds = [], []
    for eps in (1e-2, 1e-4, 1e-6):
        lam, bt, V, cond = hippo.ptd(N, eps)
        errs.append(np.abs(_transfer(C @ V, bt, lam, w) - G).max() / np.abs(G).max())
        conds.append(cond)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4 and errs[1] < 1e-2
    assert conds[0] < conds[1] < conds[2]
    lam, _, _, V = hippo.nplr("legs", N)
    keep = lam.imag > 0
    G_s4d = _transfer(C @ V[:, keep], V[:, keep].conj().T @ B, lam[keep], w)
    assert np.abs(G_s4d - G).max() / np.abs(G).max() > 0.1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hippo.transition("legendre", 4), "legs, legt, lagt, fout"),
        (lambda: hippo.diagonal_init("linear", 4), "lin, inv, legs, ptd"),
        (lambda: hippo.diagonal_init("lin", 5), "even"),
        (lambda: hippo.dplr("legs", 7), "even"),
        (lambda: hippo.ptd(8, eps=0.0), "eps"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
