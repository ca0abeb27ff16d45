"""S4D claim (Gu, Gupta, Goel, Ré 2022, Sec. 3 / Thm. 3): the diagonal restriction of S4-LegS
recovers S4-LegS's kernel as the state size N grows. No training.

S4-LegS is HiPPO-LegS in its DPLR form ``A = diag(Lambda) - p p^H`` (``ops.hippo.dplr``, exactly
the HiPPO matrix in the unitary eigenbasis V of its normal part). S4D-LegS drops the low-rank term:
``A_D = diag(Lambda)``. The paper's theorem pairs ``A_D`` with **half** the input vector, ``B/2``;
``hippo.diagonal_init("legs")`` returns ``B/2``; both ``B`` and ``B/2`` are measured here.

Measured: the first ``n_basis`` LegS basis kernels ``K_n[l] = e_n^T dA^l dB`` (C = rows of V, the
original HiPPO coordinates), bilinear, step ``dt = T / L`` over ``t in [0, T]``, for S4 by seqlab's
``ops.ssm.kernel_dplr`` (S4's algorithm) and for S4D by ``ops.ssm.kernel_diag``, in float64; the
relative L2 error ``||K_D - K_S4|| / ||K_S4||`` per basis function, for N = 16 ... 1024.
A dense float64 recurrence (``(I - dt/2 A)^-1 (I + dt/2 A)`` on the real HiPPO-LegS matrix) checks
the S4 kernel at the smallest N.

Budget: measured 8 minutes on the 2-core CPU under a load average of 8-17 (N = 1024
dominates); ``--smoke``: seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/s4d_legs_kernel.py
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from scripts.experiments._common import Clock, figure_path, pyplot
from seqlab.ops import hippo
from seqlab.ops.ssm import kernel_diag, kernel_dplr


def legs_kernels(N: int, n_basis: int, T: float, L: int) -> tuple[np.ndarray, ...]:
    """(K_S4, K_D(B), K_D(B/2)) [n_basis, L] float64: S4-LegS and its diagonal restrictions."""
    import jax.numpy as jnp

    Lam_full, _, _, V = hippo.nplr("legs", N)
    Lam, P, B = hippo.dplr("legs", N)
    C = V[:n_basis][:, hippo._positive_half(Lam_full)]  # e_n^T V, one mode of each pair
    H = n_basis
    A, Bh = jnp.tile(Lam, (H, 1)), jnp.tile(B, (H, 1))
    Ph, Cj, dt = jnp.tile(P[:, None, :], (1, H, 1)), jnp.asarray(C), jnp.full((H,), T / L)
    k_s4 = kernel_dplr(A, Ph, Bh, Cj, dt, L)
    k_d = kernel_diag(A, Bh, Cj, dt, L, method="bilinear")
    k_half = kernel_diag(A, Bh / 2, Cj, dt, L, method="bilinear")
    return tuple(np.asarray(k) for k in (k_s4, k_d, k_half))


def dense_legs_kernel(N: int, n_basis: int, T: float, L: int) -> np.ndarray:
    """The bilinear kernel of the real HiPPO-LegS matrix by a dense float64 recurrence."""
    A, B = hippo.transition("legs", N)
    dt = T / L
    M = np.eye(N) - dt / 2 * A
    dA, x = np.linalg.solve(M, np.eye(N) + dt / 2 * A), np.linalg.solve(M, dt * B)
    out = np.empty((L, N))
    for i in range(L):
        out[i], x = x, dA @ x
    return out[:, :n_basis].T


def rel_err(k: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.linalg.norm(k - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--Ns", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--n-basis", type=int, default=8)
    p.add_argument("--T", type=float, default=10.0, help="kernels on t in [0, T]")
    p.add_argument("--L", type=int, default=1024, help="kernel length (dt = T / L)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    if a.smoke:
        a.Ns, a.n_basis, a.L = [8], 2, 32
    with jax.enable_x64(True):  # float64 here only (the smoke test runs in-process)
        return _run(a)


def _run(a) -> dict:
    clock = Clock()
    dense = dense_legs_kernel(a.Ns[0], a.n_basis, a.T, a.L)
    results, curves = {}, {}
    print(f"basis kernels n < {a.n_basis}, t in [0, {a.T}], L = {a.L}, bilinear, float64")
    print("    N   err(B) max   err(B/2) n=0   err(B/2) mean   err(B/2) max")
    for N in a.Ns:
        k_s4, k_d, k_half = legs_kernels(N, a.n_basis, a.T, a.L)
        if N == a.Ns[0]:
            print(f"check: seqlab S4 kernel vs dense recurrence at N={N}: "
                  f"max rel error {rel_err(k_s4, dense).max():.1e}")
        e_b, e_half = rel_err(k_d, k_s4), rel_err(k_half, k_s4)
        results[N] = {"B": e_b, "B/2": e_half}
        curves[N] = (k_s4, k_half)
        print(f"{N:5d}   {e_b.max():10.3f}   {e_half[0]:12.4f}   {e_half.mean():13.4f}"
              f"   {e_half.max():12.4f}", flush=True)
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
        Ns = np.array(a.Ns)
        for key, style in (("B/2", "o-"), ("B", "s--")):
            ax0.loglog(Ns, [results[N][key].mean() for N in Ns], style,
                       label=f"S4D-LegS with {key}: mean over n < {a.n_basis}")
        ax0.loglog(Ns, [results[N]["B/2"][0] for N in Ns], "o:", label="with B/2: n = 0")
        ax0.set(xlabel="state size N", ylabel="||K_S4D - K_S4|| / ||K_S4||",
                title="LegS basis kernels: diagonal restriction vs S4")
        ax0.legend(fontsize=8)
        t = np.arange(a.L) * a.T / a.L
        for N, ls in ((a.Ns[0], ":"), (a.Ns[-1], "--")):
            k_s4, k_half = curves[N]
            for n in range(min(3, a.n_basis)):
                ax1.plot(t, k_half[n] * a.L / a.T, ls, color=f"C{n}", label=f"S4D N={N}, n={n}")
        for n in range(min(3, a.n_basis)):
            ax1.plot(t, curves[a.Ns[-1]][0][n] * a.L / a.T, "-", color=f"C{n}", lw=0.8,
                     alpha=0.6, label=f"S4 n={n}")
        ax1.set(xlabel="t", ylabel="K_n(t)", title="basis kernels (S4D with B/2)", xlim=(0, 4))
        ax1.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        out = figure_path("repro_s4d_kernel", a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return results


if __name__ == "__main__":
    main()
