"""Discretisation, SSM convolution kernels and the FFT convolution (S4, S4D).

Conventions (DESIGN.md): complex diagonal SSMs keep N/2 modes of a conjugate-symmetric system and
the kernel is ``K[h, l] = 2 Re(sum_n C[h,n] dA[h,n]^l dB[h,n])``. Kernels are computed in float32
/ complex64 (or float64 / complex128 under ``jax.enable_x64`` with float64 inputs).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

DISCRETIZATIONS = ("zoh", "bilinear")


def discretize(
    A: jax.Array, B: jax.Array, dt: jax.Array, method: str = "zoh"
) -> tuple[jax.Array, jax.Array]:
    """Diagonal discretisation (S4D eq. (5)). A, B: [H, N] complex; dt: [H] -> (dA, dB) [H, N].

    ZOH: ``dA = exp(dt A)``, ``dB = (dA - 1) / A * B``.
    Bilinear: ``dA = (1 + dt A/2) / (1 - dt A/2)``, ``dB = dt B / (1 - dt A/2)``.
    """
    if method not in DISCRETIZATIONS:
        raise ValueError(
            f"unknown discretization {method!r}; valid choices: {', '.join(DISCRETIZATIONS)}"
        )
    dtA = dt[:, None] * A
    if method == "zoh":
        dA = jnp.exp(dtA)
        return dA, (dA - 1) / A * B
    denom = 1 - dtA / 2
    return (1 + dtA / 2) / denom, dt[:, None] * B / denom


def kernel_diag(
    A: jax.Array, B: jax.Array, C: jax.Array, dt: jax.Array, length: int, method: str = "zoh"
) -> jax.Array:
    """Diagonal SSM convolution kernel (S4D eq. (6), Vandermonde product) -> K [H, length].

    A, B, C: [H, N] complex (the N modes kept from conjugate pairs); dt: [H] (> 0).
    ``K[h, l] = 2 Re(sum_n C[h,n] dB[h,n] dA[h,n]^l)``, ``dA^l = exp(l log dA)``.

    The Vandermonde product is computed by :func:`vandermonde` (factored powers, a matmul).
    """
    if length < 1:
        raise ValueError(f"kernel length must be >= 1, got {length}")
    dA, dB = discretize(A, B, dt, method)
    log_dA = dt[:, None] * A if method == "zoh" else jnp.log(dA)
    return 2 * vandermonde(C * dB, log_dA, length, real=True)


def vandermonde(w: jax.Array, log_z: jax.Array, length: int, real: bool = False) -> jax.Array:
    """``V[..., l] = sum_n w[..., n] exp(l log_z[..., n])`` for l < length (complex, or its real
    part only with ``real=True``). w, log_z: [..., N] complex.

    ``z^(m a + b) = z^b (z^m)^a`` with ``m ~ sqrt(length)`` turns the ``N length`` complex
    exponentials into ``2 N sqrt(length)`` and one batched real matrix product
    ``[..., m, 2N] x [..., 2N, ceil(length/m)]`` per output part (re, im).
    """
    m = max(1, math.isqrt(length - 1) + 1)
    n_hi = -(-length // m)
    lo = w[..., None] * jnp.exp(log_z[..., None] * jnp.arange(m))  # [..., N, m]
    hi = jnp.exp(log_z[..., None] * (m * jnp.arange(n_hi)))  # [..., N, n_hi]
    # (lo hi) = (Re lo Re hi - Im lo Im hi) + i (Im lo Re hi + Re lo Im hi): real contractions
    hi_ri = jnp.concatenate([hi.real, hi.imag], axis=-2)  # [..., 2N, n_hi]
    lo_re = jnp.concatenate([lo.real, -lo.imag], axis=-2)
    hp = jax.lax.Precision.HIGHEST
    V = jnp.einsum("...nb,...na->...ab", lo_re, hi_ri, precision=hp)
    if not real:
        lo_im = jnp.concatenate([lo.imag, lo.real], axis=-2)
        V = jax.lax.complex(V, jnp.einsum("...nb,...na->...ab", lo_im, hi_ri, precision=hp))
    return V.reshape(*V.shape[:-2], m * n_hi)[..., :length]


def fft_conv(
    u: jax.Array,
    K: jax.Array,
    D: jax.Array | None = None,
    K_reverse: jax.Array | None = None,
) -> jax.Array:
    """Causal convolution by FFT (S4 eq. (4)). u: [batch, length, H]; K: [H, length]; D: [H].

    ``y_t = sum_{s<=t} K[t-s] u_s + D u_t``. With ``K_reverse`` [H, length] (bidirectional
    layers) the anti-causal term ``sum_{s>=t} K_reverse[s-t] u_s`` is added: the causal kernel
    run on the time-reversed input, read back in original order. One FFT of size ``2 length``
    serves both directions (circular convolution with ``K_reverse`` wrapped to the end).
    Computed in float32 (float64 for float64 inputs); returns y: [batch, length, H] in it.
    """
    length = u.shape[1]
    if K.shape[-1] != length or (K_reverse is not None and K_reverse.shape[-1] != length):
        raise ValueError(
            f"kernel length {K.shape[-1]} does not match the input length {length}"
        )
    n = 2 * length
    f = jnp.promote_types(u.dtype, jnp.float32)  # float32 (float64 under x64 with f64 inputs)
    u32 = u.astype(f)
    k = jnp.pad(K.astype(f), ((0, 0), (0, length)))
    if K_reverse is not None:
        kr = K_reverse.astype(f)
        # circular index -j (mod 2L) holds K_reverse[j]: lag 0 at index 0, lag j >= 1 at 2L - j
        k = k.at[:, 0].add(kr[:, 0])
        k = k.at[:, length + 1 :].add(kr[:, :0:-1])
    y = jnp.fft.irfft(jnp.fft.rfft(u32, n=n, axis=1) * jnp.fft.rfft(k, axis=-1).T, n=n, axis=1)
    y = y[:, :length]
    if D is not None:
        y = y + D.astype(f) * u32
    return y


def dplr_dense(Lambda: jax.Array, P: jax.Array) -> jax.Array:
    """``A = diag(Lambda) - sum_r P_r conj(P_r)^T``: Lambda [H, N], P [r, H, N] -> A [H, N, N]."""
    A = jnp.einsum("rhn,rhm->hnm", P, P.conj())
    return jax.vmap(jnp.diag)(Lambda) - A


def bilinear_dense(A: jax.Array, B: jax.Array, dt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bilinear discretisation of a dense system (S4 eq. (3)). A [H, N, N], B [H, N], dt [H].

    ``dA = (I - dt/2 A)^-1 (I + dt/2 A)``, ``dB = (I - dt/2 A)^-1 dt B``.
    """
    eye = jnp.eye(A.shape[-1], dtype=A.dtype)
    half = (dt / 2)[:, None, None] * A
    inv = jnp.linalg.inv(eye - half)
    return inv @ (eye + half), jnp.einsum("hnm,hm->hn", inv, dt[:, None] * B)


def _matrix_power(M: jax.Array, n: int) -> jax.Array:
    """M^n for a static n >= 1 by repeated squaring. M: [..., N, N]."""
    result, base = None, M
    while True:
        if n & 1:
            result = base if result is None else result @ base
        n >>= 1
        if not n:
            return result
        base = base @ base


CAUCHY_METHODS = ("direct", "fft")


def _solve_small(M: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``M x = b`` for many tiny systems: M [..., r, r], b [..., r] (Cramer for r <= 2;
    a batched LU of millions of 1x1 / 2x2 systems is far slower on CPU)."""
    r = M.shape[-1]
    if r == 1:
        return b / M[..., 0]
    if r == 2:
        det = M[..., 0, 0] * M[..., 1, 1] - M[..., 0, 1] * M[..., 1, 0]
        x0 = (M[..., 1, 1] * b[..., 0] - M[..., 0, 1] * b[..., 1]) / det
        x1 = (M[..., 0, 0] * b[..., 1] - M[..., 1, 0] * b[..., 0]) / det
        return jnp.stack([x0, x1], axis=-1)
    return jnp.linalg.solve(M, b[..., None])[..., 0]


def kernel_dplr(
    Lambda: jax.Array,
    P: jax.Array,
    B: jax.Array,
    C: jax.Array,
    dt: jax.Array,
    length: int,
    cauchy: str = "direct",
) -> jax.Array:
    """Bilinear S4 kernel of a DPLR system (S4, Alg. 1 and Lemma C.3) -> K [H, length].

    Lambda, B, C: [H, N] complex; P: [r, H, N] complex; dt: [H]. The system is
    ``A = diag(Lambda) - sum_r P_r P_r^H`` and the kernel ``K_l = 2 Re(C dA^l dB)``, l < length.

    1. ``C~ = C (I - dA^length)`` (dense ``dA^length`` by repeated squaring), so the truncated
       generating function ``K^(z) = sum_{l<L} K_l z^l = C~ (I - dA z)^-1 dB`` is exact.
    2. At the roots of unity ``z_k = exp(-2 pi i k / L)``, using
       ``(I - dA z)^-1 dB = [(1 - z) I - (dt/2)(1 + z) A]^-1 dt B`` and the Woodbury identity
       with ``a = (dt/2)(1 + z)``, ``R = diag(1 / ((1 - z) - a Lambda))`` (the Cauchy kernel):
       ``K^(z) = dt [C~ R B - a (C~ R P)(I_r + a P^H R P)^-1 (P^H R B)]``.
       (This scaling of S4's ``2/(1+z) (g(z) - A)^-1`` stays finite at z = -1.)
    3. ``k = ifft(K^)`` (the truncated generating function is the DFT of k) and ``K = 2 Re k``.

    ``cauchy`` chooses how the Cauchy sums ``sum_n u_n v_n R_n(z_k)`` are evaluated:
    ``direct`` forms ``R`` on all [H, N, L] nodes (S4's algorithm, O(H N L) divisions);
    ``fft`` uses ``R_n(z) = 1 / ((1 - dt Lambda_n/2)(1 - z dA_n))`` and ``z^L = 1``:
    ``sum_n q_n R_n(z_k) = DFT_l(sum_n q_n dA_n^l / ((1 - dt Lambda_n/2)(1 - dA_n^L)))``, a
    Vandermonde product and an FFT: ~2.5x faster on CPU but less accurate in float32 (each node
    value comes out of a length-L DFT: relative error ~2e-3 vs ~3e-6 for ``direct`` on
    HiPPO-LegS at L=16384, scripts/bench/bench_ssm.py; worse on modes with ``|1 - dA_n^L| << 1``).
    """
    if length < 1:
        raise ValueError(f"kernel length must be >= 1, got {length}")
    if cauchy not in CAUCHY_METHODS:
        raise ValueError(
            f"unknown Cauchy evaluation {cauchy!r}; valid choices: {', '.join(CAUCHY_METHODS)}"
        )
    r = P.shape[0]
    dA, _ = bilinear_dense(dplr_dense(Lambda, P), B, dt)
    C_t = C - jnp.einsum("hm,hmn->hn", C, _matrix_power(dA, length))
    z = jnp.exp(-2j * jnp.pi * jnp.arange(length) / length).astype(Lambda.dtype)  # [L]
    a = (dt / 2)[:, None] * (1 + z)  # [H, L]
    # Cauchy sums k(u, v)[h, l] = sum_n u[h,n] v[h,n] R[h,n,l] for u in {C~, P^H}, v in {B, P}
    left = jnp.concatenate([C_t[None], P.conj()], axis=0)  # [1 + r, H, N]
    right = jnp.concatenate([B[None], P], axis=0)  # [1 + r, H, N]
    w = jnp.einsum("ihn,jhn->hijn", left, right)  # [H, 1+r, 1+r, N]
    if cauchy == "direct":
        R = 1 / ((1 - z)[None, None, :] - a[:, None, :] * Lambda[:, :, None])  # [H, N, L]
        k = jnp.einsum("hijn,hnl->hlij", w, R, precision=jax.lax.Precision.HIGHEST)
    else:
        half = 1 - (dt / 2)[:, None] * Lambda  # [H, N]
        log_dA = jnp.log((2 - half) / half)  # log of the diagonal bilinear dA_n
        q = w / (half * (1 - jnp.exp(length * log_dA)))[:, None, None, :]
        s = vandermonde(q, jnp.broadcast_to(log_dA[:, None, None, :], q.shape), length)
        k = jnp.moveaxis(jnp.fft.fft(s, axis=-1), -1, 1)  # [H, L, 1+r, 1+r]
    k00, k01, k10, k11 = k[..., 0, 0], k[..., 0, 1:], k[..., 1:, 0], k[..., 1:, 1:]
    corr = _solve_small(jnp.eye(r, dtype=k.dtype) + a[..., None, None] * k11, k10)  # [H, L, r]
    K_hat = dt[:, None] * (k00 - a * jnp.einsum("hlr,hlr->hl", k01, corr))
    return 2 * jnp.fft.ifft(K_hat, axis=-1).real
