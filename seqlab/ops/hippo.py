"""HiPPO transition matrices, their NPLR/DPLR forms and diagonal initialisations (numpy float64).

Init-time only: every function returns float64 / complex128 numpy arrays. S4-PTD's perturbation
is found by optimisation in JAX (:func:`optimise_perturbation`) and shipped for the common sizes
as text under ``ptd_data/`` (``scripts/ptd_perturbation.py`` writes them).

Conventions: the continuous system is ``x'(t) = A x(t) + B u(t)`` with A stable. References:
HiPPO (Gu et al. 2020, 'HiPPO: Recurrent Memory with Optimal Polynomial Projections'), S4 (Gu et
al. 2022, 'Efficiently Modeling Long Sequences with Structured State Spaces'), S4D (Gu et al.
2022, 'On the Parameterization and Initialization of Diagonal State Space Models'), 'How to
Train Your HiPPO' (Gu et al. 2022) and S4-PTD (Yu et al. 2023, 'Robustifying State-space Models
for Long Sequences via Approximate Diagonalization').
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

MEASURES = ("legs", "legt", "lagt", "fout")
DIAGONAL_INITS = ("lin", "inv", "legs", "ptd")


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown HiPPO measure {measure!r}; valid choices: {', '.join(MEASURES)}")


def _check_even(N: int, what: str) -> None:
    if not isinstance(N, (int, np.integer)) or N < 2 or N % 2:
        raise ValueError(
            f"{what} needs an even state size N >= 2 (conjugate pairs: N/2 complex modes), got {N}"
        )


def transition(measure: str, N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO transition ``(A [N, N], B [N])`` of ``x' = A x + B u``.

    - ``legs`` (HiPPO eq. (2), scaled Legendre): ``A[n,k] = -sqrt(2n+1) sqrt(2k+1)`` for n > k,
      ``-(n+1)`` for n = k, 0 for n < k; ``B[n] = sqrt(2n+1)``.
    - ``legt`` (HiPPO LegT, translated Legendre, window theta = 2, normalised basis):
      ``A[n,k] = -(1/2) sqrt(2n+1) sqrt(2k+1) * (1 if n >= k else (-1)^(n-k))``,
      ``B[n] = (1/2) sqrt(2n+1)``.
    - ``lagt`` (HiPPO LagT, translated Laguerre): ``A = I/2 - tril(1)``, i.e. ``-1/2`` on the
      diagonal and ``-1`` below it; ``B[n] = 1``.
    - ``fout`` ('How to Train Your HiPPO', translated Fourier): state ordered
      ``[1, -, cos_1, sin_1, cos_2, sin_2, ...]``; ``A = pi (-diag(d, 1) + diag(d, -1)) - B B^T``
      where ``d`` couples ``(cos_k, sin_k)`` with frequency k and
      ``B = [1, 0, sqrt2, 0, sqrt2, ...]``.
    """
    _check_measure(measure)
    if N < 1:
        raise ValueError(f"state size N must be >= 1, got {N}")
    n = np.arange(N, dtype=np.float64)
    r = np.sqrt(2 * n + 1)
    if measure == "legs":
        A = -np.tril(np.outer(r, r), -1) - np.diag(n + 1)
        B = r.copy()
    elif measure == "legt":
        sign = np.where(n[:, None] >= n[None, :], 1.0, (-1.0) ** (n[:, None] - n[None, :]))
        A = -0.5 * np.outer(r, r) * sign
        B = 0.5 * r
    elif measure == "lagt":
        A = 0.5 * np.eye(N) - np.tril(np.ones((N, N)))
        B = np.ones(N)
    else:  # fout
        _check_even(N, "the 'fout' measure")
        B = np.zeros(N)
        B[0::2] = np.sqrt(2.0)
        B[0] = 1.0
        # index 2k holds cos(k .), index 2k+1 holds sin(k .), k = 1 .. N/2-1 (index 1 is unused)
        d = np.zeros(N - 1)
        d[2::2] = np.arange(1, N // 2)
        A = np.pi * (-np.diag(d, 1) + np.diag(d, -1)) - np.outer(B, B)
    return A, B


def rank_correction(measure: str, N: int) -> np.ndarray:
    """Low-rank term ``P [r, N]`` that makes ``A + P^T P`` normal (S4, Thm. 1).

    legs: ``P[n] = sqrt(n + 1/2)`` (r = 1); legt: even/odd halves of ``sqrt(2n+1)/sqrt2``
    (r = 2); lagt: ``1/sqrt2`` (r = 1); fout: ``P = B`` (r = 1).
    """
    _check_measure(measure)
    n = np.arange(N, dtype=np.float64)
    if measure == "legs":
        return np.sqrt(n + 0.5)[None]
    if measure == "legt":
        r = np.sqrt(2 * n + 1) / np.sqrt(2.0)
        return np.stack([np.where(n % 2 == 0, r, 0.0), np.where(n % 2 == 1, r, 0.0)])
    if measure == "lagt":
        return np.full((1, N), np.sqrt(0.5))
    return transition("fout", N)[1][None]


def nplr(measure: str, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normal plus low-rank form ``A == V diag(Lambda) V^H - P^T P`` (S4, Thm. 1).

    Returns ``Lambda [N]`` (complex), ``P [r, N]`` (real), ``B [N]`` (real), ``V [N, N]``
    (unitary). ``S = A + P^T P`` is ``c I + K`` with K real skew-symmetric, diagonalised stably
    through the Hermitian matrix ``-i K``: ``Lambda = c + i w``.

    V is closed under conjugation, so that one mode of each pair describes the real system
    (:func:`dplr`): the eigenvectors for ``-w < 0`` are the conjugates of those for ``w > 0``
    (so also within a degenerate eigenspace), and the real eigenvalue c (``w = 0``: FouT's
    double 0, odd N) gets a real orthonormal basis ``u_1, u_2, ...`` of ``ker K`` paired as
    ``(u_1 +- i u_2) / sqrt2``, ... (a lone real ``u`` is left when its dimension is odd; the
    official S4 code hard-codes ``(e_0 + i e_1) / sqrt2`` for FouT).
    Order: ``-w`` descending conjugates, the real block (each ``v`` next to ``conj v``), ``+w``
    ascending; that is, sorted by imaginary part.
    """
    A, B = transition(measure, N)
    P = rank_correction(measure, N)
    S = A + P.T @ P
    sym = (S + S.T) / 2
    c = np.mean(np.diag(sym))
    if not np.allclose(sym, c * np.eye(N), atol=1e-8 * max(1.0, np.abs(S).max())):
        raise AssertionError(f"A + P^T P is not (c I + skew) for measure {measure!r}")
    w, U = np.linalg.eigh(-1j * (S - S.T) / 2)  # ascending w
    tol = 1e-9 * max(1.0, np.abs(w).max())
    pos, zero = w > tol, np.abs(w) <= tol
    V_pos, w_pos = U[:, pos], w[pos]
    # the kernel of the real K is real: a real orthonormal basis of the span of eigh's vectors
    Z = U[:, zero]
    m0 = Z.shape[1]
    R = np.linalg.svd(np.concatenate([Z.real, Z.imag], axis=1))[0][:, :m0]
    n_pairs = m0 // 2
    pairs = (R[:, 0 : 2 * n_pairs : 2] + 1j * R[:, 1 : 2 * n_pairs : 2]) / np.sqrt(2)
    real_block = np.stack([pairs, pairs.conj()], axis=-1).reshape(N, 2 * n_pairs)
    real_block = np.concatenate([real_block, R[:, 2 * n_pairs :]], axis=1)
    V = np.concatenate([V_pos[:, ::-1].conj(), real_block, V_pos], axis=1)
    w_all = np.concatenate([-w_pos[::-1], np.zeros(m0), w_pos])
    return c + 1j * w_all, P, B, V


def _positive_half(Lambda: np.ndarray) -> np.ndarray:
    """Indices of one mode per conjugate pair of :func:`nplr`'s spectrum: those with positive
    imaginary part, plus every second real one (nplr places each ``v`` of the real block next to
    ``conj v``, both with the real eigenvalue c)."""
    tol = 1e-9 * max(1.0, np.abs(Lambda).max())
    pos = np.nonzero(Lambda.imag > tol)[0]
    real = np.nonzero(np.abs(Lambda.imag) <= tol)[0]
    if 2 * len(pos) + len(real) != len(Lambda) or len(real) % 2:
        raise ValueError("the spectrum does not split into N/2 conjugate pairs")
    return np.concatenate([real[0::2], pos])


def dplr(
    measure: str, N: int, B_clip: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diagonal plus low-rank form in the eigenbasis, conjugate-symmetric half (S4, Sec. 3.3).

    Returns ``Lambda [N//2]``, ``P [r, N//2]``, ``B [N//2]`` (complex): the rows of
    ``V^H P^T`` and ``V^H B`` for the kept column ``v`` of each conjugate pair of :func:`nplr`'s
    V (``Im Lambda > 0``, and one of each ``(u_1 +- i u_2)/sqrt2`` of the real block; real
    eigenvalues stay in the half as such pairs, B not halved). Because V is exactly
    ``[V_half, conj V_half]`` up to order and P, B are real, the real N-state system is
    ``A = diag(Lambda, conj Lambda) - p p^H``, ``p = [P^T; conj P^T]``, ``B = [B; conj B]``,
    output ``2 Re(C x)`` (``ops.ssm.kernel_dplr``); it equals the HiPPO system up to the unitary
    change of basis V.

    ``B_clip``: the S4 reference's ``nplr(..., B_clip=2.0)`` (state-spaces/s4,
    ``src/models/hippo/hippo.py``) clamps ``Im(V^H B)`` to ``[-B_clip, B_clip]`` (P untouched);
    the system is then no longer exactly HiPPO (LegS at N = 64: 11 of 32 entries exceed 2, up to
    40.8). None (default here) keeps the exact form; the S4 layer and S4D-LegS
    (:func:`diagonal_init`) default to the reference's 2.0. The reference keeps the conjugate
    half (the same eigenvectors up to conjugation, its B is conj of ours), so the symmetric clamp
    acts identically.
    """
    _check_even(N, f"dplr({measure!r})")
    if B_clip is not None and not B_clip > 0:
        raise ValueError(f"B_clip must be > 0 (or None for no clipping), got {B_clip}")
    Lambda, P, B, V = nplr(measure, N)
    idx = _positive_half(Lambda)
    Vh = V.conj().T
    Bh = (Vh @ B)[idx]
    if B_clip is not None:
        Bh = Bh.real + 1j * np.clip(Bh.imag, -B_clip, B_clip)
    return Lambda[idx], (Vh @ P.T).T[:, idx], Bh


# --- S4-PTD: perturb-then-diagonalise with an optimised perturbation ---------------------------

PTD_LAMBDA = 3e-3
PTD_DATA = Path(__file__).with_name("ptd_data")


def _perturbation_of(p: dict):
    """E [N, N] complex from the optimiser's parameters: ``E`` ([2, N, N]: Re, Im) or the
    factors ``X, Y`` ([2, N, r]) of ``E = X Y^T``."""
    if "E" in p:
        return p["E"][0] + 1j * p["E"][1]
    return (p["X"][0] + 1j * p["X"][1]) @ (p["Y"][0] + 1j * p["Y"][1]).T


@functools.cache
def _ptd_runner(N: int, lam: float, lr: float, chunk: int):
    """Jitted ``chunk`` Adam steps on the PTD objective (built once per recipe), float64."""
    import jax
    import jax.numpy as jnp
    import optax

    # the reference's step decay (lr x 0.98 every 100 steps); a non-finite gradient (two
    # eigenvalues colliding make the eigenvector derivative 1/0) is skipped as zeros
    opt = optax.chain(optax.zero_nans(),
                      optax.adam(optax.exponential_decay(lr, 100, 0.98, staircase=True)))
    A = transition("legs", N)[0]

    def loss(p):
        E = _perturbation_of(p)
        V = jax.lax.linalg.eig(A + E, compute_left_eigenvectors=False,
                               enable_eigvec_derivs=True)[1]
        s = jnp.linalg.svd(V, compute_uv=False)
        kappa, norm = s[0] / s[-1], jnp.sqrt(jnp.sum(jnp.abs(E) ** 2))
        return kappa**2 + lam * norm, (kappa, norm)

    def body(carry, _):
        p, state, best_p, best = carry
        (value, aux), grad = jax.value_and_grad(loss, has_aux=True)(p)
        better = value < best
        best_p = jax.tree.map(lambda x, y: jnp.where(better, x, y), p, best_p)
        best = jnp.where(better, value, best)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state, best_p, best), aux

    def init(p0):
        p = jax.tree.map(jnp.asarray, p0)
        return p, opt.init(p), p, jnp.asarray(jnp.inf, jnp.float64)

    def finish(carry):  # the best iterate, including the one after the last update
        p, _, best_p, best = carry
        return jnp.where(loss(p)[0] < best, _perturbation_of(p), _perturbation_of(best_p))

    return init, jax.jit(lambda c: jax.lax.scan(body, c, length=chunk)), jax.jit(finish)


def optimise_perturbation(
    N: int, lam: float = PTD_LAMBDA, *, rank: int | None = None, steps: int = 10000,
    lr: float = 0.3, seed: int = 0, chunk: int = 100,
    log: Callable[[int, float, float], None] | None = None,
) -> np.ndarray:
    """The S4-PTD perturbation ``E [N, N]`` (complex128) of HiPPO-LegS's A (Yu et al. 2023, Sec. 4).

    Minimises ``kappa_2(V)^2 + lam ||E||_F`` over complex E, where ``A + E = V diag(w) V^-1``
    with unit-norm eigenvectors (LAPACK's normalisation), so that A + E is diagonalised by a
    well-conditioned V while E stays small. The recipe is the reference's
    (``perturbation_trainer`` in AnnanYu/Approximate_Diagonal, ``S4-PTD/src/models/sequence/
    modules/s4block.py`` lines 422-462, commit ec98d6a): Adam (betas 0.9, 0.999) at
    ``lr`` = 0.3 decayed by 0.98 every 100 steps, 10,000 steps. ``rank=None``: E is a full complex
    matrix started, as there,
    at ``E_0 = -(U + i U')/10`` with U, U' uniform on [0, 1) (the reference perturbs
    ``-A = A_pos`` by ``P_0 = (U + i U')/10``; ``E = -P``). ``rank=r``: ``E = X Y^T`` with
    complex ``X, Y [N, r]`` started at ``0.1 (Z + i Z')``, Z standard normal (the shipped
    arrays; see ``scripts/ptd_perturbation.py`` for why and what each gives). Also differing
    from the reference: float64 throughout (it trains P in complex64), numpy's generator draws
    the start (``seed``), and the iterate with the lowest objective is returned rather than the
    last one (the objective spikes when two eigenvalues nearly collide). Deterministic on a
    given machine (XLA's CPU LAPACK eig and SVD). Steps run in jitted chunks of ``chunk``
    (``steps`` is rounded up to a multiple); ``log(step, kappa, ||E||_F)`` is called after each
    chunk.
    """
    import jax

    if not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"the PTD state size N must be an integer >= 1, got {N!r}")
    if not lam > 0 or not steps > 0:
        raise ValueError(f"PTD needs lam > 0 and steps > 0, got lam={lam}, steps={steps}")
    if rank is not None and not 1 <= rank <= N:
        raise ValueError(f"the PTD rank must be in [1, N={N}] (or None: full), got {rank}")
    rng = np.random.default_rng(seed)
    if rank is None:
        p0 = {"E": -0.1 * rng.uniform(size=(2, N, N))}  # (Re E_0, Im E_0)
    else:
        p0 = {"X": 0.1 * rng.standard_normal((2, N, rank)),
              "Y": 0.1 * rng.standard_normal((2, N, rank))}
    # concrete even when a layer is built under a trace (nnx.eval_shape, jit)
    with (jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]),
          jax.ensure_compile_time_eval()):
        init, run, finish = _ptd_runner(int(N), float(lam), float(lr), int(chunk))
        carry = init(p0)
        for done in range(chunk, steps + chunk, chunk):  # steps rounded up to whole chunks
            carry, (kappa, norm) = run(carry)
            if log is not None:
                log(done, float(kappa[-1]), float(norm[-1]))
        return np.asarray(finish(carry))


def ptd_data_path(N: int, lam: float = PTD_LAMBDA) -> Path:
    """Where the shipped perturbation for ``(N, lam)`` lives (``scripts/ptd_perturbation.py``
    writes it): gzip-compressed text (``np.loadtxt`` reads it as such), a header of ``#`` lines
    with its provenance and what it gives (kappa(V), ||E||/||A||, modes reflected), then N rows
    ``Re E[n, 0] Im E[n, 0] Re E[n, 1] ...`` with 4 decimals."""
    return PTD_DATA / f"legs_N{N}_lambda{lam:g}.txt.gz"


def shipped_sizes() -> list[int]:
    """The state sizes N with a shipped perturbation, ascending."""
    return sorted({int(p.name.split("_")[1][1:]) for p in PTD_DATA.glob("legs_N*_lambda*.txt.gz")})


def default_lambda(N: int) -> float:
    """The ``lambda`` of the array shipped for size N (the smallest if several are), else
    :data:`PTD_LAMBDA` (3e-3, the reference's).

    The trade-off between kappa(V) and ||E|| set by lambda depends on N and on the
    optimiser (see :func:`optimise_perturbation`), so each size is shipped with the lambda
    named in its file (and its header)."""
    found = sorted(float(p.name.split("_lambda")[1].removesuffix(".txt.gz"))
                   for p in PTD_DATA.glob(f"legs_N{int(N)}_lambda*.txt.gz"))
    return found[0] if found else PTD_LAMBDA


@functools.cache
def _perturbation(N: int, lam: float) -> np.ndarray:
    path = ptd_data_path(N, lam)
    if not path.exists():
        shipped = [f"N={n} (lambda {default_lambda(n):g})" for n in shipped_sizes()]
        raise ValueError(
            f"no S4-PTD perturbation is shipped for state size N={N} with lambda={lam:g} "
            f"({path.name} is missing from {PTD_DATA}); shipped: {', '.join(shipped)}. Use one "
            f"of those sizes (S5-PTD: a block size P/J among them), or optimise and ship one "
            f"with `python scripts/ptd_perturbation.py --N {N} --lam {lam:g} --rank "
            f"{max(2, N // 32)}` (a larger N needs a larger rank of E: the shipped files' headers "
            "say which each used; minutes to hours on a CPU for N >= 64)."
        )
    rows = np.loadtxt(path, ndmin=2)
    return rows[:, 0::2] + 1j * rows[:, 1::2]


def ptd_perturbation(N: int, lam: float | None = None) -> np.ndarray:
    """``E [N, N]`` (complex128) of :func:`optimise_perturbation`: the shipped array for
    ``(N, lam)`` (:func:`ptd_data_path`; ValueError naming the script when there is none),
    cached in memory. ``lam=None``: :func:`default_lambda`."""
    lam = default_lambda(N) if lam is None else lam
    return _perturbation(int(N), float(lam)).copy()


class PTD(NamedTuple):
    """S4-PTD's diagonal system: ``Lambda [N]`` (complex, Re < 0), ``B = V^-1 B [N]``,
    ``V [N, N]`` (unit-norm eigenvectors of A + E), ``cond = kappa_2(V)`` and
    ``rel_norm = ||E||_F / ||A||_F``."""

    Lambda: np.ndarray
    B: np.ndarray
    V: np.ndarray
    cond: float
    rel_norm: float


def ptd(N: int, lam: float | None = None) -> PTD:
    """Perturb-then-diagonalise HiPPO-LegS (Yu et al. 2023, Sec. 3-4): ``A + E = V Lambda V^-1``.

    E is :func:`ptd_perturbation` (optimised for a well-conditioned V, complex; ``lam=None``:
    :func:`default_lambda`). As the
    reference (AnnanYu/Approximate_Diagonal), every one of the N modes is kept (A + E is
    complex: its eigenvalues do not come in conjugate pairs) and a mode that E pushed into the
    right half-plane is reflected, ``Re Lambda = -|Re Lambda|``, rather than clipped. A diagonal
    layer uses the N modes with output ``2 Re(C~ x)`` and folds ``V^-1 B`` into C:
    ``C~ = (C V) * B`` with ``B~ = 1`` (C real [..., N]). Modes are sorted by imaginary part.
    """
    A, B = transition("legs", N)
    E = ptd_perturbation(N, lam)
    Lambda, V = np.linalg.eig(A + E)
    order = np.lexsort((Lambda.real, Lambda.imag))
    Lambda, V = Lambda[order], V[:, order]
    V = V / np.linalg.norm(V, axis=0, keepdims=True)
    Bt = np.linalg.solve(V, B)
    Lambda = -np.abs(Lambda.real) + 1j * Lambda.imag
    rel = float(np.linalg.norm(E) / np.linalg.norm(A))
    return PTD(Lambda, Bt, V, float(np.linalg.cond(V)), rel)


def diagonal_init(
    kind: str, N: int, B_clip: float | None = 2.0, B_half: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal SSM initialisation ``(Lambda [N//2], B [N//2])`` (complex128), N = state size.

    (For ``ptd``, N modes: see :func:`ptd`.)

    - ``lin`` (S4D-Lin, S4D eq. (8)): ``Lambda_n = -1/2 + i pi n``, ``B_n = 1``.
    - ``inv`` (S4D-Inv, S4D eq. (9)): ``Lambda_n = -1/2 + i (N/pi) (N/(2n+1) - 1)``, ``B_n = 1``.
    - ``legs`` (S4D-LegS, S4D Sec. 4): the diagonal part of HiPPO-LegS's DPLR form, ``Lambda``
      and ``V^H B`` of :func:`dplr` (the low-rank term is dropped), ``Im B`` clamped to
      ``[-B_clip, B_clip]`` as the S4 reference's ``nplr(..., B_clip=2.0)`` (None: exact), then
      halved if ``B_half`` (default; so ``|Im B| <= B_clip / 2``). The half is the S4D
      theorem's: ``(diag(Lambda), B/2)`` has S4-LegS's kernel as N grows, while
      ``(diag(Lambda), B)`` tends to twice it (measured: docs/reproductions.md, row 1a); it is
      the default so that S4D-LegS starts from S4-LegS's kernel. The reference code does not
      halve: state-spaces/s4 ``src/models/sequence/kernels/dplr.py`` lines 96-98 (commit
      e757cef), "theory (from S4D paper) says that B should be halved to match DPLR but we drop
      this 0.5 factor for simplicity"; ``B_half=False`` gives its B (clipped, not halved).
    - ``ptd`` (S4-PTD): :func:`ptd`'s ``Lambda`` and ``V^-1 B`` (all N modes).
    """
    if kind not in DIAGONAL_INITS:
        raise ValueError(
            f"unknown diagonal init {kind!r}; valid choices: {', '.join(DIAGONAL_INITS)}"
        )
    _check_even(N, f"diagonal_init({kind!r})")
    n = np.arange(N // 2, dtype=np.float64)
    if kind == "lin":
        return -0.5 + 1j * np.pi * n, np.ones(N // 2, np.complex128)
    if kind == "inv":
        return -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1), np.ones(N // 2, np.complex128)
    if kind == "legs":
        Lambda, _, B = dplr("legs", N, B_clip)
        return Lambda, (0.5 if B_half else 1.0) * B
    system = ptd(N)
    return system.Lambda, system.B
