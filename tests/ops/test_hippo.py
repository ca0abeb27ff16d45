"""seqlab.ops.hippo against entrywise formulas of the HiPPO / S4 / S4D / S4-PTD papers."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import yaml
from _assert import assert_close
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
    assert_close(A, A_ref, atol=1e-14)
    assert_close(B, B_ref, atol=1e-14)


def test_fout_is_rotations_minus_rank_one():
    N = 8
    A, B = hippo.transition("fout", N)
    assert_close(B, [1, 0, np.sqrt(2), 0, np.sqrt(2), 0, np.sqrt(2), 0])
    rot = A + np.outer(B, B)
    assert_close(rot, -rot.T, atol=1e-14)  # skew: pure rotations
    for k in range(1, N // 2):  # (cos_k, sin_k) rotate at angular speed pi k
        assert_close(rot[2 * k, 2 * k + 1], -np.pi * k)
    assert np.count_nonzero(rot) == 2 * (N // 2 - 1)


@pytest.mark.parametrize("N", [4, 8, 16, 64])
@pytest.mark.parametrize("measure", hippo.MEASURES)
def test_nplr_reconstructs_and_dplr_is_its_half(measure, N):
    A, B = hippo.transition(measure, N)
    Lambda, P, B2, V = hippo.nplr(measure, N)
    atol = 1e-14 * N * np.abs(A).max()
    assert_close(V.conj().T @ V, np.eye(N), atol=1e-12)
    assert_close(V @ np.diag(Lambda) @ V.conj().T - P.T @ P, A, atol=atol)
    assert np.isrealobj(P) and np.allclose(B2, B)
    idx = hippo._positive_half(Lambda)
    Lh, Ph, Bh = hippo.dplr(measure, N)
    assert Lh.shape == (N // 2,) and Ph.shape == (P.shape[0], N // 2) and Bh.shape == (N // 2,)
    np.testing.assert_array_equal(Lh, Lambda[idx])
    assert_close(Ph, P @ V[:, idx].conj(), atol=1e-12 * N)
    assert_close(Bh, V[:, idx].conj().T @ B, atol=1e-12 * N)
    assert np.all(Lh.imag >= 0)
    # V is [V_half, conj V_half] up to order: every dropped column is a kept one's conjugate
    W = np.concatenate([V[:, idx], V[:, idx].conj()], axis=1)
    assert_close(W.conj().T @ W, np.eye(N), atol=1e-12)
    assert_close(np.sort_complex(np.concatenate([Lh, Lh.conj()])),
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
    assert_close(np.abs(v[:2]), [2**-0.5, 2**-0.5], atol=1e-14)
    assert_close(v[2:], 0, atol=1e-14)
    assert_close(v @ v, 0, atol=1e-14)  # v orthogonal to conj v


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
        assert_close(G_half, G, rtol=1e-12, atol=1e-12 * np.abs(G).max())


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
    assert_close(c, project(1.0), atol=1e-7)
    s = np.linspace(0, 1, 11)
    recon = sum(c[n] * np.sqrt(2 * n + 1) * legendre.Legendre.basis(n)(2 * s - 1) for n in range(N))
    assert_close(recon, f(s), atol=1e-6)
    assert abs(c[N - 1]) < 1e-7  # no energy beyond the polynomial's degree


def test_diagonal_inits_match_s4d_formulas():
    N = 10
    n = np.arange(N // 2)
    L, B = hippo.diagonal_init("lin", N)
    assert_close(L, [-0.5 + 1j * np.pi * k for k in n])
    assert_close(B, np.ones(N // 2))
    L, B = hippo.diagonal_init("inv", N)
    assert_close(L, [-0.5 + 1j * N / np.pi * (N / (2 * k + 1) - 1) for k in n])
    L, B = hippo.diagonal_init("legs", N, B_clip=None)
    Lh, _, Bh = hippo.dplr("legs", N)
    assert_close(L, Lh)
    assert_close(B, Bh / 2)  # the S4D theorem's B/2 (state-spaces/s4 too)
    assert_close(L.real, -0.5, atol=1e-12)  # the normal part of LegS
    _, B_ref = hippo.diagonal_init("legs", N)  # S4D-LegS as the S4 reference: Im B clipped
    np.testing.assert_array_equal(B_ref, hippo.dplr("legs", N, B_clip=2.0)[2] / 2)


@pytest.mark.parametrize("measure", hippo.MEASURES)
def test_dplr_b_clip_clamps_only_the_imaginary_part_of_b(measure):
    """S4 reference: ``nplr(..., B_clip=2.0)`` clamps Im(V^H B) to [-2, 2], nothing else."""
    N = 64
    L0, P0, B0 = hippo.dplr(measure, N)  # exact
    assert_close(B0, hippo.nplr(measure, N)[3][:, hippo._positive_half(
        hippo.nplr(measure, N)[0])].conj().T @ hippo.transition(measure, N)[1], atol=1e-12 * N)
    L2, P2, B2 = hippo.dplr(measure, N, B_clip=2.0)
    np.testing.assert_array_equal(L2, L0)
    np.testing.assert_array_equal(P2, P0)
    np.testing.assert_array_equal(B2.real, B0.real)
    big = np.abs(B0.imag) > 2
    np.testing.assert_array_equal(B2.imag[~big], B0.imag[~big])
    np.testing.assert_array_equal(B2.imag[big], 2 * np.sign(B0.imag[big]))
    if measure == "legs":  # the count: 11 of 32 entries exceed 2, the largest 40.8
        assert big.sum() == 11 and abs(np.abs(B0.imag).max() - 40.75) < 0.01
    if measure == "fout":
        assert not big.any()


def _shipped(N):
    path = hippo.ptd_data_path(N, hippo.default_lambda(N))
    with gzip.open(path, "rt") as f:
        header = dict(line[2:].split(": ", 1) for line in f.read().splitlines()
                      if line.startswith("# ") and ": " in line)
    return hippo.ptd_perturbation(N), header


# The reference's own N = 64 array (AnnanYu/Approximate_Diagonal, S4-PTD/ptb.mat) has kappa(V)
# 9.17 at ||E||_F/||A||_F = 0.034; the shipped arrays must be of that quality (N = 64 and 128:
# the bounds of the S4-PTD issue; N = 256, which it does not bound, is held to N = 128's).
QUALITY = {64: (15.0, 0.05), 128: (30.0, 0.05), 256: (30.0, 0.05)}


@pytest.mark.parametrize("N", sorted(QUALITY))
def test_ptd_is_well_conditioned_small_and_stable(N):
    """N = 64: kappa(V) <= 15 with ||E|| <= 5% ||A||; N = 128 and 256: kappa(V) <= 30 with
    ||E|| <= 5% ||A|| (Frobenius and spectral norms); all
    N modes kept and strictly stable after reflection; the shipped header states what the array
    gives (provenance is honest)."""
    A, B = hippo.transition("legs", N)
    E, header = _shipped(N)
    assert E.shape == (N, N) and np.iscomplexobj(E) and np.abs(E.imag).max() > 0
    system = hippo.ptd(N)
    max_kappa, max_rel = QUALITY[N]
    assert system.cond <= max_kappa and system.rel_norm <= max_rel
    assert np.linalg.norm(E, 2) <= max_rel * np.linalg.norm(A, 2)
    assert_close(system.rel_norm, np.linalg.norm(E) / np.linalg.norm(A))
    assert_close(float(header["kappa(V)"]), system.cond, rtol=1e-3)
    assert_close(float(header["||E||_F/||A||_F"]), system.rel_norm, rtol=1e-3)
    assert system.Lambda.shape == system.B.shape == (N,) and system.V.shape == (N, N)
    assert np.all(system.Lambda.real < 0)
    # A + E = V diag(w) V^-1, and Lambda is w with its real parts reflected into Re < 0
    w = np.linalg.solve(system.V, (A + E) @ system.V)
    assert_close(w, np.diag(np.diag(w)), atol=1e-9 * np.abs(A).max())
    w = np.diag(w)
    assert_close(system.Lambda, -np.abs(w.real) + 1j * w.imag, atol=1e-9)
    assert int(header["modes reflected (Re > 0)"]) == np.sum(w.real > 0)
    assert_close(system.B, np.linalg.solve(system.V, B), atol=1e-9)
    assert_close(np.linalg.norm(system.V, axis=0), 1.0, atol=1e-12)
    # a random real E at 1e-3 ||A|| gave kappa(V) = 7.9e3, max |V^-1 B| = 2.9e4 at N = 64
    assert np.abs(system.B).max() < 1e3


def test_every_shipped_size_is_stable_and_covers_the_configs():
    """N = 2 ... 256 shipped; each strictly stable after reflection with its header's kappa;
    every S5-PTD config's block size P/J is among them."""
    sizes = hippo.shipped_sizes()
    assert {2, 4, 8, 16, 32, 64, 128, 256} <= set(sizes)
    for N in sizes:
        _, header = _shipped(N)
        system = hippo.ptd(N)
        assert np.all(system.Lambda.real < 0) and np.all(np.isfinite(system.B))
        assert_close(float(header["kappa(V)"]), system.cond, rtol=1e-3)
    configs = Path(hippo.__file__).parents[1] / "configs" / "lra"
    for path in configs.glob("*/s5-ptd.yaml"):
        args = yaml.safe_load(path.read_text())["model"]["mixer_args"]
        assert args["d_state"] // args["blocks"] in sizes, path


def test_ptd_folds_b_into_c():
    """C~ = (C V) * V^-1 B with B~ = 1 is the transfer function C (sI - (A + E))^-1 B."""
    N = 64
    A, B = hippo.transition("legs", N)
    system = hippo.ptd(N)
    w = np.diag(np.linalg.solve(system.V, (A + hippo.ptd_perturbation(N)) @ system.V))
    C = np.random.default_rng(0).standard_normal(N)
    C_fold = (C @ system.V) * system.B
    s = np.array([0.5 + 3j, -2 + 40j, 7 - 1j])
    G = _resolvent_tf(A + hippo.ptd_perturbation(N), B, C, s)
    G_fold = (C_fold / (s[:, None] - w)).sum(-1)
    assert_close(G_fold, G, rtol=1e-8)


@pytest.mark.parametrize("rank", [None, 2])
def test_optimise_perturbation_lowers_kappa_deterministically(rank):
    """A tiny run of the optimiser: the objective kappa(V)^2 + lam ||E|| falls far below its
    start, a rank-r run returns a rank-r E, and a rerun gives the same E bit for bit."""
    N, lam = 6, 3e-2
    A = hippo.transition("legs", N)[0]
    rng = np.random.default_rng(0)
    if rank is None:
        E0 = -0.1 * rng.uniform(size=(2, N, N))
        E0 = E0[0] + 1j * E0[1]
    else:
        X, Y = (0.1 * rng.standard_normal((2, N, rank)) for _ in range(2))
        E0 = (X[0] + 1j * X[1]) @ (Y[0] + 1j * Y[1]).T

    def objective(E):
        V = np.linalg.eig(A + E)[1]
        return np.linalg.cond(V / np.linalg.norm(V, axis=0)) ** 2 + lam * np.linalg.norm(E)

    logged = []
    E = hippo.optimise_perturbation(N, lam, rank=rank, steps=60, lr=0.1, chunk=30,
                                    log=lambda *a: logged.append(a))
    assert [step for step, *_ in logged] == [30, 60]
    assert objective(E0) > 1e3 and objective(E) < 0.01 * objective(E0)
    assert objective(E) <= min(k**2 + lam * n for _, k, n in logged) + 1e-9
    assert np.linalg.matrix_rank(E) == (N if rank is None else rank)
    rerun = hippo.optimise_perturbation(N, lam, rank=rank, steps=60, lr=0.1, chunk=30)
    np.testing.assert_array_equal(rerun, E)


def test_ptd_perturbation_reads_shipped_text_and_names_the_script_when_missing(
        tmp_path, monkeypatch):
    monkeypatch.setattr(hippo, "PTD_DATA", tmp_path)
    hippo._perturbation.cache_clear()
    E = np.arange(8).reshape(2, 2, 2) / 7
    np.savetxt(hippo.ptd_data_path(2), E.reshape(2, 4), header="provenance")
    assert hippo.shipped_sizes() == [2] and hippo.default_lambda(2) == hippo.PTD_LAMBDA
    assert_close(hippo.ptd_perturbation(2), E[..., 0] + 1j * E[..., 1])
    with pytest.raises(ValueError, match=r"N=6 .*scripts/ptd_perturbation.py --N 6"):
        hippo.ptd_perturbation(6)
    hippo._perturbation.cache_clear()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hippo.transition("legendre", 4), "legs, legt, lagt, fout"),
        (lambda: hippo.diagonal_init("linear", 4), "lin, inv, legs, ptd"),
        (lambda: hippo.diagonal_init("lin", 5), "even"),
        (lambda: hippo.dplr("legs", 7), "even"),
        (lambda: hippo.dplr("legs", 8, B_clip=0.0), "B_clip"),
        (lambda: hippo.optimise_perturbation(0), "N"),
        (lambda: hippo.optimise_perturbation(4, lam=0.0), "lam"),
        (lambda: hippo.optimise_perturbation(4, rank=5), "rank"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
