"""HiPPO transition matrices, their NPLR/DPLR forms and diagonal initialisations (numpy float64).

Init-time only: every function returns float64 / complex128 numpy arrays.

Conventions: the continuous system is ``x'(t) = A x(t) + B u(t)`` with A stable. References:
HiPPO (Gu et al. 2020, 'HiPPO: Recurrent Memory with Optimal Polynomial Projections'), S4 (Gu et
al. 2022, 'Efficiently Modeling Long Sequences with Structured State Spaces'), S4D (Gu et al.
2022, 'On the Parameterization and Initialization of Diagonal State Space Models'), 'How to
Train Your HiPPO' (Gu et al. 2022) and S4-PTD (Yu et al. 2023, 'Robustifying State-space Models
for Long Sequences via Approximate Diagonalization').
"""

from __future__ import annotations

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


def dplr(measure: str, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diagonal plus low-rank form in the eigenbasis, conjugate-symmetric half (S4, Sec. 3.3).

    Returns ``Lambda [N//2]``, ``P [r, N//2]``, ``B [N//2]`` (complex): the rows of
    ``V^H P^T`` and ``V^H B`` for the kept column ``v`` of each conjugate pair of :func:`nplr`'s
    V (``Im Lambda > 0``, and one of each ``(u_1 +- i u_2)/sqrt2`` of the real block; real
    eigenvalues stay in the half as such pairs, B not halved). Because V is exactly
    ``[V_half, conj V_half]`` up to order and P, B are real, the real N-state system is
    ``A = diag(Lambda, conj Lambda) - p p^H``, ``p = [P^T; conj P^T]``, ``B = [B; conj B]``,
    output ``2 Re(C x)`` (``ops.ssm.kernel_dplr``); it equals the HiPPO system up to the unitary
    change of basis V.
    """
    _check_even(N, f"dplr({measure!r})")
    Lambda, P, B, V = nplr(measure, N)
    idx = _positive_half(Lambda)
    Vh = V.conj().T
    return Lambda[idx], (Vh @ P.T).T[:, idx], (Vh @ B)[idx]


def conjugate_reduce(
    Lambda: np.ndarray, B: np.ndarray, V: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep one mode per conjugate pair of a real system's eigendecomposition.

    ``Lambda [N]``, ``B = V^-1 B [N]``, ``V [N, N]`` -> the modes with ``Im Lambda > 0`` and every
    real mode with its B halved, so that ``2 Re(sum_kept C V B / (z - Lambda))`` equals the full
    sum over all N modes for real C (exactly). Returns M = N/2 + (number of real modes)/2 modes.
    """
    tol = 1e-9 * max(1.0, np.abs(Lambda).max())
    real = np.abs(Lambda.imag) <= tol
    keep = real | (Lambda.imag > tol)
    B = np.where(real, B.real / 2, B)
    V = np.where(real[None], V.real, V)
    return np.where(real, Lambda.real, Lambda)[keep], B[keep], V[:, keep]


def ptd(
    N: int, eps: float = 1e-3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Perturb-then-diagonalise HiPPO-LegS (Yu et al. 2023, Sec. 3): ``A + E = V Lambda V^-1``.

    E is a real Gaussian matrix scaled to ``||E||_2 = eps ||A||_2`` (deterministic given
    ``seed``). Returns the conjugate-reduced system (:func:`conjugate_reduce`):
    ``Lambda [M]``, ``Bt = V^-1 B [M]``, ``V [N, M]`` (unit-norm eigenvectors; a diagonal layer
    initialises ``C~ = C V``), M = N/2 plus half the number of real eigenvalues of A + E
    (usually 0 to 3), and the condition number ``kappa(V)`` of the full eigenvector matrix.
    """
    _check_even(N, "ptd")
    if not eps > 0:
        raise ValueError(f"the PTD perturbation size eps must be > 0, got {eps}")
    A, B = transition("legs", N)
    E = np.random.default_rng(seed).standard_normal((N, N))
    E *= eps * np.linalg.norm(A, 2) / np.linalg.norm(E, 2)
    Lambda, V = np.linalg.eig(A + E)
    V = V / np.linalg.norm(V, axis=0, keepdims=True)
    cond = float(np.linalg.cond(V))
    return (*conjugate_reduce(Lambda, np.linalg.solve(V, B), V), cond)


def diagonal_init(kind: str, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal SSM initialisation ``(Lambda [N//2], B [N//2])`` (complex128), N = state size.

    (For ``ptd``, ``N//2 + k/2`` modes when A + E has k real eigenvalues: see :func:`ptd`.)

    - ``lin`` (S4D-Lin, S4D eq. (8)): ``Lambda_n = -1/2 + i pi n``, ``B_n = 1``.
    - ``inv`` (S4D-Inv, S4D eq. (9)): ``Lambda_n = -1/2 + i (N/pi) (N/(2n+1) - 1)``, ``B_n = 1``.
    - ``legs`` (S4D-LegS, S4D Sec. 4): the diagonal part of HiPPO-LegS's DPLR form,
      ``Lambda`` and ``V^H B`` of :func:`dplr` (the low-rank term is dropped).
    - ``ptd`` (S4-PTD): :func:`ptd` with its default perturbation size.
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
        Lambda, _, B = dplr("legs", N)
        return Lambda, B
    Lambda, B, _, _ = ptd(N)
    return Lambda, B
