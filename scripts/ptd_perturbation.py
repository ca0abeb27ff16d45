"""Optimise S4-PTD's perturbation of HiPPO-LegS and write it as a shipped text array.

For each N, runs ``seqlab.ops.hippo.optimise_perturbation`` (Adam on
``kappa(V(A + E))^2 + lambda ||E||_F``, the recipe of AnnanYu/Approximate_Diagonal's
``perturbation_trainer``), rounds E to ``--decimals`` decimals and writes
``seqlab/ops/ptd_data/legs_N<N>_lambda<lambda>.txt``: ``#`` lines with the provenance (command,
recipe, machine, wall time, and kappa(V), ||E||/||A|| and the modes reflected, all measured on
the rounded E that is shipped), then N rows ``Re E[n,0] Im E[n,0] Re E[n,1] ...``.

    python scripts/ptd_perturbation.py --N 64 [--lam 3e-3] [--steps 3000] [--lr 0.02] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from seqlab.ops import hippo


def describe(E: np.ndarray) -> dict[str, float]:
    """kappa_2(V), ||E||/||A|| (Frobenius and spectral), eigenvalues of A + E right of 0."""
    A = hippo.transition("legs", len(E))[0]
    w, V = np.linalg.eig(A + E)
    V = V / np.linalg.norm(V, axis=0, keepdims=True)
    return {"kappa(V)": float(np.linalg.cond(V)),
            "||E||_F/||A||_F": float(np.linalg.norm(E) / np.linalg.norm(A)),
            "||E||_2/||A||_2": float(np.linalg.norm(E, 2) / np.linalg.norm(A, 2)),
            "modes reflected (Re > 0)": int((w.real > 0).sum()),
            "max Re(eig(A + E))": float(w.real.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, nargs="+", required=True)
    ap.add_argument("--lam", type=float, default=hippo.PTD_LAMBDA)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decimals", type=int, default=4)
    ap.add_argument("--out", type=Path, default=hippo.PTD_DATA)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for N in args.N:
        t0 = time.perf_counter()

        def log(step, kappa, norm, N=N, t0=t0):
            if step % max(100, args.steps // 20) == 0 or step == args.steps:
                print(f"N={N} step {step}: kappa {kappa:.4g}, ||E||_F {norm:.4g} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)

        E = hippo.optimise_perturbation(N, args.lam, steps=args.steps, lr=args.lr,
                                        seed=args.seed, log=log)
        wall = time.perf_counter() - t0
        E = np.round(E, args.decimals)
        stats = describe(E)
        rows = np.stack([E.real, E.imag], axis=-1).reshape(N, 2 * N)
        path = args.out / hippo.ptd_data_path(N, args.lam).name
        header = [
            f"S4-PTD perturbation E [{N}, {N}] (complex) of HiPPO-LegS A, lambda = {args.lam:g}",
            "minimises kappa_2(V(A + E))^2 + lambda ||E||_F (hippo.optimise_perturbation)",
            f"recipe: Adam lr {args.lr:g} x 0.98 every 100 steps, {args.steps} steps, seed "
            f"{args.seed}, E rounded to {args.decimals} decimals",
            "command: python " + shlex.join(sys.argv),
            f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f}; wall time {wall:.0f} s; "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            *(f"{k}: {v:.4g}" for k, v in stats.items()),
            "rows: Re E[n, 0] Im E[n, 0] Re E[n, 1] Im E[n, 1] ...",
        ]
        np.savetxt(path, rows, fmt=f"%.{args.decimals}f", header="\n".join(header))
        print(f"wrote {path}: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
