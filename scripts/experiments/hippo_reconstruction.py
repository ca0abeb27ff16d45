"""How to Train Your HiPPO (Gu et al. 2023) claims, with ``seqlab.ops.hippo``. No training.

(a) The impulse responses of time-invariant HiPPO-LegS, ``K_n(t) = e_n^T exp(t A) B``, are the
    exponentially-warped Legendre functions ``K_n(t) = sqrt(2n+1) P_n(2 e^{-t} - 1) e^{-t}``
    (paper Thm. 3 / Fig. 1; LagT's are the Laguerre functions ``e^{-t/2} L_n(t)``, checked too).
    Measured: ``max |K_n(t) - closed form|`` over n < N and a grid of t in [0, T], with K from the
    exact zero-order-hold transition ``expm(dt A)`` (scipy, float64).
(b) The state of each HiPPO system reconstructs the input's history: ``x(T) = int K(s) u(T-s) ds``
    and ``u(T - t) ~ sum_n x_n(T) p_n(t)`` with the measure's orthonormal basis p_n and measure
    w (``K_n = w p_n``): LegS ``w = e^{-t}``, ``p_n = sqrt(2n+1) P_n(2 e^{-t} - 1)``; LegT
    (window 2) ``w = 1/2`` on [0, 2], ``p_n = sqrt(2n+1) P_n(1 - t)``; FouT (window 2) ``w = 1/2``
    on [0, 2], ``p = (1, -, sqrt2 cos(pi k t), sqrt2 sin(pi k t), ...)``; LagT ``w = 1``,
    ``p_n = e^{-t/2} L_n(t)``. Input: random band-limited signals (16 sinusoids, frequencies
    uniform in [0, f_max], random phases) on [0, T], held piecewise constant over steps dt (ZOH is
    exact for such inputs). Measured: ``||u - u_hat||_w / ||u||_w`` over t in [0, T], mean and
    spread over seeds (signals), for N = 4 ... 256. LegT and FouT are exact only as N -> inf (their
    windowed measures are approximated), LegS and LagT are exact orthogonal SSMs.

Budget: measured 7 minutes on the 2-core CPU under a load average of 16-19; ``--smoke``:
seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/hippo_reconstruction.py
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg
from numpy.polynomial import laguerre, legendre

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from seqlab.ops import hippo


def zoh(A: np.ndarray, B: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact zero-order-hold discretisation: ``expm(dt [[A, B], [0, 0]])`` -> (dA, dB)."""
    N = A.shape[0]
    M = np.zeros((N + 1, N + 1))
    M[:N, :N], M[:N, N] = A * dt, B * dt
    E = scipy.linalg.expm(M)
    return E[:N, :N], E[:N, N]


def basis(measure: str, N: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p [len(t), N], w [len(t)]): the measure's orthonormal basis and its density at lags t."""
    n = np.arange(N)
    eye = np.eye(N)
    if measure == "legs":
        z = 2 * np.exp(-t) - 1
        return legendre.legval(z, eye).T * np.sqrt(2 * n + 1), np.exp(-t)
    if measure == "legt":
        inside = (t <= 2).astype(np.float64)
        return legendre.legval(1 - t, eye).T * np.sqrt(2 * n + 1), inside / 2
    if measure == "lagt":
        return laguerre.lagval(t, eye).T * np.exp(-t / 2)[:, None], np.ones_like(t)
    inside = (t <= 2).astype(np.float64)
    p = np.zeros((len(t), N))
    p[:, 0] = 1
    k = np.arange(1, N // 2)
    p[:, 2::2] = np.sqrt(2) * np.cos(np.pi * k * t[:, None])
    p[:, 3::2] = np.sqrt(2) * np.sin(np.pi * k * t[:, None])
    return p, inside / 2


def impulse(measure: str, N: int, dt: float, L: int) -> np.ndarray:
    """``K[l] = exp(l dt A) B`` [L, N] (exact at the grid points)."""
    A, B = hippo.transition(measure, N)
    dA = scipy.linalg.expm(dt * A)
    K, x = np.empty((L, N)), B.copy()
    for i in range(L):
        K[i], x = x, dA @ x
    return K


def signals(n: int, length: int, dt: float, f_max: float, seed: int) -> np.ndarray:
    """n random band-limited signals [length, n] with unit RMS (float64)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) * dt
    f = rng.uniform(0, f_max, (n, 16))
    ph = rng.uniform(0, 2 * np.pi, (n, 16))
    u = np.cos(2 * np.pi * f[:, :, None] * t + ph[:, :, None]).sum(1).T
    return u / np.sqrt((u**2).mean(0))


def reconstruction_error(measure: str, N: int, u: np.ndarray, dt: float) -> np.ndarray:
    """Relative L2(w) error of the history reconstructed from the final state, per signal."""
    A, B = hippo.transition(measure, N)
    dA, dB = zoh(A, B, dt)
    x = np.zeros((N, u.shape[1]))
    # u_k is held on [k dt, (k+1) dt): its lag from T = len(u) dt is t = T - (k + 1/2) dt
    t = (np.arange(len(u))[::-1] + 0.5) * dt
    p, w = basis(measure, N, t)
    with np.errstate(over="ignore", invalid="ignore"):
        for u_k in u:
            x = dA @ x + dB[:, None] * u_k
        u_hat = p @ x
        err = np.sqrt((w[:, None] * (u - u_hat) ** 2).sum(0) / (w[:, None] * u**2).sum(0))
    # the recurrence can blow up in float64 (LegT at large N): reported as inf
    return np.where(np.isfinite(err), err, np.inf)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--Ns", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 256])
    p.add_argument("--seeds", type=int, default=3, help="signals per (measure, N)")
    p.add_argument("--T", type=float, default=8.0, help="signal length (time units)")
    p.add_argument("--dt", type=float, default=1e-3)
    p.add_argument("--f-max", type=float, default=1.0, help="highest signal frequency")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    if a.smoke:
        a.Ns, a.T, a.dt = [4, 8], 2.0, 1e-2
    clock = Clock()
    # (a) closed forms of the impulse responses
    L = int(round(a.T / a.dt))
    t = np.arange(L) * a.dt
    print(f"(a) max |K_n(t) - closed form| over n < N, t in [0, {a.T}) (dt = {a.dt}):")
    closed = {}
    for measure in ("legs", "lagt"):
        for N in sorted({a.Ns[len(a.Ns) // 2], a.Ns[-1]}):
            K = impulse(measure, N, a.dt, L)
            pb, w = basis(measure, N, t)
            ref = pb * w[:, None]
            closed[(measure, N)] = float(np.abs(K - ref).max())
            print(f"  {measure} N={N:4d}: {closed[(measure, N)]:.2e} "
                  f"(max |K| {np.abs(ref).max():.2f})")
    # (b) reconstruction error against N
    print(f"(b) relative reconstruction error ||u - u_hat||_w / ||u||_w, {a.seeds} signals,"
          f" f_max = {a.f_max}, T = {a.T}")
    u = signals(a.seeds, L, a.dt, a.f_max, seed=0)
    errors = {}
    for measure in hippo.MEASURES:
        for N in a.Ns:
            e = reconstruction_error(measure, N, u, a.dt)
            errors[(measure, N)] = e
            shown = spread(e, ".2e") if np.isfinite(e).all() else "diverged (float64 overflow)"
            print(f"  {measure}  N={N:4d}  {shown}", flush=True)
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
        N = a.Ns[len(a.Ns) // 2]
        K = impulse("legs", N, a.dt, L)
        pb, w = basis("legs", N, t)
        for n in range(4):
            ax0.plot(t, K[:, n], color=f"C{n}", lw=3, alpha=0.35, label=f"exp(tA)B, n={n}")
            ax0.plot(t, pb[:, n] * w, "k--", lw=0.8)
        ax0.plot([], [], "k--", lw=0.8, label="sqrt(2n+1) P_n(2e^-t - 1) e^-t")
        ax0.set(xlabel="t", ylabel="K_n(t)", title=f"HiPPO-LegS impulse responses (N={N})",
                xlim=(0, min(a.T, 6)))
        ax0.legend(fontsize=7)
        for measure in hippo.MEASURES:
            ok = [N for N in a.Ns if np.isfinite(errors[(measure, N)]).all()]
            m = np.array([errors[(measure, N)].mean() for N in ok])
            s = np.array([errors[(measure, N)].std() for N in ok])
            ax1.errorbar(ok, m, yerr=s, fmt="o-", capsize=2, label=measure)
        ax1.set(xscale="log", yscale="log", xlabel="state size N",
                ylabel="||u - u_hat||_w / ||u||_w",
                title=f"history reconstruction from x(T) ({a.seeds} signals)")
        ax1.legend()
        fig.tight_layout()
        out = figure_path("repro_hippo", a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return {"closed_form": closed, "errors": errors}


if __name__ == "__main__":
    main()
