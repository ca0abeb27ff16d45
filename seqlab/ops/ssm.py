"""Discretisation, SSM convolution kernels and the FFT convolution (S4, S4D).

Conventions (docs/architecture.md): complex diagonal SSMs keep N/2 modes of a conjugate-symmetric
system and the kernel is ``K[h, l] = 2 Re(sum_n C[h,n] dA[h,n]^l dB[h,n])``. Kernels are computed
in float32 / complex64 (or float64 / complex128 under ``jax.enable_x64`` with float64 inputs).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
    return 2 * vandermonde(C * dB, log_dA, length)


def vandermonde(w: jax.Array, log_z: jax.Array, length: int) -> jax.Array:
    """``V[..., l] = Re sum_n w[..., n] exp(l log_z[..., n])`` for l < length (the real part:
    the kernels need no more). w, log_z: [..., N] complex.

    ``z^(m a + b) = z^b (z^m)^a`` with ``m ~ sqrt(length)`` turns the ``N length`` complex
    exponentials into ``2 N sqrt(length)`` and one batched real matrix product
    ``[..., m, 2N] x [..., 2N, ceil(length/m)]`` for the real part.
    """
    m = max(1, math.isqrt(length - 1) + 1)
    n_hi = -(-length // m)
    lo = w[..., None] * jnp.exp(log_z[..., None] * jnp.arange(m))  # [..., N, m]
    hi = jnp.exp(log_z[..., None] * (m * jnp.arange(n_hi)))  # [..., N, n_hi]
    # Re(lo hi) = Re lo Re hi - Im lo Im hi: one real contraction
    hi_ri = jnp.concatenate([hi.real, hi.imag], axis=-2)  # [..., 2N, n_hi]
    lo_re = jnp.concatenate([lo.real, -lo.imag], axis=-2)
    hp = jax.lax.Precision.HIGHEST
    V = jnp.einsum("...nb,...na->...ab", lo_re, hi_ri, precision=hp)
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


# ---- S4: diagonal plus low-rank (DPLR) systems ----------------------------------------------
#
# Lambda, B, C [H, M] and P [r, H, M] hold one mode of each conjugate pair of a real system of
# N = 2M states (docs/architecture.md): its state matrix is
#     A = diag(Lambda, conj Lambda) - sum_r p_r p_r^H,   p_r = [P_r; conj P_r],
# with B_full = [B; conj B] and C_full = [C; conj C], so that ``2 Re(C x)`` is its output when
# the state is the conjugate-symmetric ``[x; conj x]``. This is the HiPPO matrix itself when
# (Lambda, P, B) come from ``hippo.dplr`` (S4, Thm. 1; the low-rank term couples the two halves).
# Its bilinear discretisation needs ``(I - dt/2 A)^-1``, applied in O(M r) by Woodbury.


class DPLRInverse(NamedTuple):
    """``(I - dt/2 A)^-1`` of a conjugate-symmetric DPLR system, in Woodbury form.

    D = 1 / (1 - dt Lambda / 2) [H, M] complex; Q = D P [r, H, M] complex;
    S = (2/dt I_r + p^H diag(D, conj D) p)^-1 [H, r, r], real (the two halves add conjugates).
    """

    D: jax.Array
    Q: jax.Array
    S: jax.Array


def dplr_inverse(Lambda: jax.Array, P: jax.Array, dt: jax.Array) -> DPLRInverse:
    """Woodbury form of ``(I - dt/2 A)^-1`` (S4 eq. (3) and Appendix C.2). Lambda [H, M],
    P [r, H, M] complex, dt [H]. ``I - dt/2 A = diag(1 - dt Lambda/2, conj) + (dt/2) p p^H``."""
    D = 1 / (1 - (dt / 2)[:, None] * Lambda)
    Q = D * P
    core = 2 * jnp.einsum("shm,thm->hst", P.conj(), Q).real  # p^H diag(D, conj D) p: [H, r, r]
    eye = jnp.eye(P.shape[0], dtype=core.dtype)
    return DPLRInverse(D, Q, _inv_small((2 / dt)[:, None, None] * eye + core))


def dplr_apply_inverse(inv: DPLRInverse, P: jax.Array, v: jax.Array) -> jax.Array:
    """Top half of ``(I - dt/2 A)^-1 [v; conj v]``: v [..., H, M] complex -> [..., H, M].

    Woodbury: ``D v - Q S p^H [D v; conj(D v)]`` with ``p^H [u; conj u] = 2 Re(P^H u)``.
    """
    Dv = inv.D * v
    proj = 2 * jnp.einsum("rhm,...hm->...hr", P.conj(), Dv).real
    return Dv - jnp.einsum("rhm,hrs,...hs->...hm", inv.Q, inv.S.astype(inv.Q.dtype), proj)


def dplr_step(
    inv: DPLRInverse, P: jax.Array, B: jax.Array, dt: jax.Array, x: jax.Array, u: jax.Array
) -> jax.Array:
    """One step of the bilinear recurrence ``x_k = dA x_{k-1} + dB u_k`` (S4 eq. (3)) in
    O(H M r): with ``M = I - dt/2 A``, ``dA = 2 M^-1 - I`` and ``dB = M^-1 dt B``, so
    ``x_k = M^-1 (2 x_{k-1} + dt B u_k) - x_{k-1}``. x: [..., H, M] complex (top half of the
    conjugate-symmetric state); u: [..., H] real; B [H, M]; dt [H]."""
    w = 2 * x + (dt[:, None] * B) * u[..., None]
    return dplr_apply_inverse(inv, P, w) - x


def _dA_real(Lambda: jax.Array, P: jax.Array, dt: jax.Array) -> jax.Array:
    """dA as a real [H, 2M, 2M] matrix T acting on ``(Re x, Im x)`` (row vectors on the left).

    dA is real-linear on the conjugate-symmetric states; T's columns are dA applied to ``e_j``
    and ``i e_j``. The readout ``2 Re(C x) = c . (Re x, Im x)`` with ``c = 2 (Re C, -Im C)``.
    """
    H, M = Lambda.shape
    inv = dplr_inverse(Lambda, P, dt)
    eye = jnp.eye(M, dtype=Lambda.dtype)
    basis = jnp.broadcast_to(jnp.concatenate([eye, 1j * eye])[:, None], (2 * M, H, M))
    cols = dplr_apply_inverse(inv, P, 2 * basis) - basis  # dA e_j, dA (i e_j): [2M, H, M]
    return jnp.concatenate([cols.real, cols.imag], axis=-1).transpose(1, 2, 0)  # [H, 2M, 2M]


def _readout_real(C: jax.Array) -> jax.Array:
    """``c = 2 (Re C, -Im C)`` [H, 2M], so that ``2 Re(C x) = c . (Re x, Im x)``."""
    return 2 * jnp.concatenate([C.real, -C.imag], axis=-1)


def _readout_complex(c: jax.Array) -> jax.Array:
    M = c.shape[-1] // 2
    return jax.lax.complex(c[:, :M], -c[:, M:]) / 2


def _dA_power_readout(
    Lambda: jax.Array, P: jax.Array, C: jax.Array, dt: jax.Array, length: int
) -> jax.Array:
    """``C dA^length`` [H, M] (top half of the conjugate-symmetric row vector), for S4's
    ``C~ = C (I - dA^L)``: ``c T^L`` by repeated squaring (``floor(log2 L)`` real [2M, 2M]
    products per channel), the readout carried along."""
    c, n, base = _readout_real(C), length, _dA_real(Lambda, P, dt)
    while True:
        if n & 1:
            c = jnp.einsum("hi,hij->hj", c, base)
        n >>= 1
        if not n:
            return _readout_complex(c)
        base = base @ base


def c_from_c_tilde(
    Lambda: jax.Array, P: jax.Array, C_tilde: jax.Array, dt: jax.Array, length: int
) -> jax.Array:
    """The true readout C [H, M] of a learned ``C~ = C (I - dA^L)`` (S4's reference code learns
    C~ and converts it for the recurrent mode): solves ``c (I - T^L) = c~`` per channel in the
    real ``(Re x, Im x)`` representation (``_dA_real``)."""
    T = _dA_real(Lambda, P, dt)
    TL, n, base = None, length, T
    while True:  # T^L by repeated squaring
        if n & 1:
            TL = base if TL is None else TL @ base
        n >>= 1
        if not n:
            break
        base = base @ base
    eye = jnp.eye(T.shape[-1], dtype=T.dtype)
    c = jnp.linalg.solve(jnp.swapaxes(eye - TL, -1, -2), _readout_real(C_tilde)[..., None])
    return _readout_complex(c[..., 0])


_BLOCK = 8192  # (channels x points) per block of _cauchy_sums: the working set stays in cache


def _cauchy_sums(w: jax.Array, mu: jax.Array, t: jax.Array) -> jax.Array:
    """Cauchy sums over conjugate pairs (S4, Sec. 3.3 / Alg. 1 step 2) at points ``i t``:

        k[h, l, j] = sum_m w[h,j,m] / (i t_l - mu[h,m]) + conj(w[h,j,m]) / (i t_l - conj mu[h,m])

    w: [H, J, M] complex, mu: [H, M] complex, t: [K] real -> k [H, J, K] complex.

    With ``mu = a + i b``, ``y_-+ = t -+ b`` and ``q_-+ = 1 / (a^2 + y_-+^2)`` one pair adds
    ``Re = -a Re(w) (q_- + q_+) + Im(w) (y_- q_- - y_+ q_+)`` and
    ``Im = -a Im(w) (q_- - q_+) - Re(w) (y_- q_- + y_+ q_+)``: two real matrix products per
    block of points over 2M basis functions each; the divisions are computed once per (h, m, l).
    Blocks of ``_BLOCK`` (channels x points) keep the working set in cache (one channel and up
    to 8192 points: L <= 16384 at a time); they are recomputed in the backward pass
    (``jax.checkpoint``) instead of stored.
    """
    H, J, M = w.shape
    K = t.shape[0]
    a, b = mu.real, mu.imag
    W_re = jnp.concatenate([-a[:, None] * w.real, w.imag], axis=-1)  # on (q_- + q_+, Y_1)
    W_im = jnp.concatenate([-a[:, None] * w.imag, -w.real], axis=-1)  # on (q_- - q_+, Y_2)
    tb = min(_BLOCK, K)
    hb = min(H, _BLOCK // tb)
    nh, nt = -(-H // hb), -(-t.shape[0] // tb)
    pad_h = nh * hb - H
    # padded channels: a^2 = 1 (no division by zero), zero weights
    a2 = jnp.pad(a * a, ((0, pad_h), (0, 0)), constant_values=1).reshape(nh, hb, M, 1)
    b = jnp.pad(b, ((0, pad_h), (0, 0))).reshape(nh, hb, M, 1)
    Wr = jnp.pad(W_re, ((0, pad_h), (0, 0), (0, 0))).reshape(nh, hb, J, 2 * M)
    Wi = jnp.pad(W_im, ((0, pad_h), (0, 0), (0, 0))).reshape(nh, hb, J, 2 * M)
    t = jnp.pad(t, (0, nt * tb - t.shape[0])).reshape(nt, 1, tb)

    @jax.checkpoint
    def block(a2, b, Wr, Wi, tl):  # [hb, M, 1] x2, [hb, J, 2M] x2, [1, tb] -> [hb, J, tb] x2
        ym, yp = tl - b, tl + b  # [hb, M, tb]
        qm, qp = 1 / (a2 + ym * ym), 1 / (a2 + yp * yp)
        ym, yp = ym * qm, yp * qp
        re = jnp.einsum("hml,hjm->hjl", jnp.concatenate([qm + qp, ym - yp], 1), Wr)
        im = jnp.einsum("hml,hjm->hjl", jnp.concatenate([qm - qp, ym + yp], 1), Wi)
        return re, im

    def channels(args):
        a2, b, Wr, Wi = args
        if nt == 1:
            return jax.tree.map(lambda x: x[None], block(a2, b, Wr, Wi, t[0]))
        return jax.lax.map(lambda tl: block(a2, b, Wr, Wi, tl), t)  # [nt, hb, J, tb] x2

    if nh == 1:
        re, im = jax.tree.map(lambda x: x[None], channels((a2[0], b[0], Wr[0], Wi[0])))
    else:
        re, im = jax.lax.map(channels, (a2, b, Wr, Wi))  # [nh, nt, hb, J, tb]
    k = jax.lax.complex(re, im).transpose(0, 2, 3, 1, 4).reshape(nh * hb, J, nt * tb)
    return k[:H, :, :K]


def _inv_small(M: jax.Array) -> jax.Array:
    """Inverse of many tiny matrices M [..., r, r] (closed form for r <= 2, as _solve_small)."""
    r = M.shape[-1]
    if r == 1:
        return 1 / M
    if r == 2:
        det = M[..., 0, 0] * M[..., 1, 1] - M[..., 0, 1] * M[..., 1, 0]
        adj = jnp.stack([jnp.stack([M[..., 1, 1], -M[..., 0, 1]], -1),
                         jnp.stack([-M[..., 1, 0], M[..., 0, 0]], -1)], -2)
        return adj / det[..., None, None]
    return jnp.linalg.inv(M)


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
    *,
    c_tilde: bool = False,
) -> jax.Array:
    """Bilinear S4 kernel of a conjugate-symmetric DPLR system (S4, Alg. 1, Lemma C.3)
    -> K [H, length].

    Lambda, B, C: [H, M] complex; P: [r, H, M] complex; dt: [H]. The system (see the comment
    above :class:`DPLRInverse`) has N = 2M states, ``A = diag(Lambda, conj Lambda) - p p^H``,
    and its real kernel is ``K_l = C_full dA^l dB_full = 2 Re(C (dA^l dB_full)_top)``, l < L.

    1. ``C~ = C (I - dA^L)`` (``dA^L`` by repeated squaring), so that the truncated generating
       function ``K^(z) = sum_{l<L} K_l z^l = C~ (I - dA z)^-1 dB`` is exact at ``z^L = 1``.
    2. At ``z_k = exp(-2 pi i k / L)``: ``(I - dA z)^-1 dB = 2/(1+z) (g - A)^-1 B`` with
       ``g = (2/dt)(1-z)/(1+z) = (2/dt) i tan(pi k / L)``, ``2/(1+z) = 1 + i tan(pi k / L)``, and
       Woodbury with the Cauchy kernel ``R = (g - Lambda)^-1`` (both halves of every pair):
       ``K^ = (1 + i t) [k00 - k01 (I + k11)^-1 k10]``, ``k_ij = (dt/2) u_i^T R v_j`` for
       ``u = (C~, p^H)``, ``v = (B, p)``. K is real, so ``K^(z_{L-k}) = conj K^(z_k)``: only
       k <= L/2 is evaluated and ``K = irfft(K^)``. At z = -1 (k = L/2, t = inf) the limit is
       ``K^ = dt Re(sum C~ B)``.

    ``c_tilde=True``: C is already ``C~`` for this length (learned directly, as S4's reference
    implementation does), so step 1 and its ``dA^L`` are skipped.
    """
    if length < 1:
        raise ValueError(f"kernel length must be >= 1, got {length}")
    r = P.shape[0]
    C_t = C if c_tilde else C - _dA_power_readout(Lambda, P, C, dt, length)
    n_points = length // 2 + 1
    k_idx = np.arange(n_points)
    finite = k_idx[2 * k_idx != length]  # drop z = -1 (even length)
    t = jnp.asarray(np.tan(np.pi * finite / length), dtype=dt.dtype)  # [K]
    left = jnp.concatenate([C_t[None], P.conj()], axis=0)  # [1 + r, H, M]
    right = jnp.concatenate([B[None], P], axis=0)
    w = jnp.einsum("ihm,jhm->hijm", left, right) * (dt / 2)[:, None, None, None]
    k = _cauchy_sums(w.reshape(w.shape[0], (1 + r) ** 2, -1), (dt / 2)[:, None] * Lambda, t)
    k = jnp.moveaxis(k.reshape(k.shape[0], 1 + r, 1 + r, -1), -1, 1)  # [H, K, 1+r, 1+r]
    k00, k01, k10, k11 = k[..., 0, 0], k[..., 0, 1:], k[..., 1:, 0], k[..., 1:, 1:]
    corr = _solve_small(jnp.eye(r, dtype=k.dtype) + k11, k10)  # [H, K, r]
    K_hat = jax.lax.complex(jnp.ones_like(t), t) * (k00 - jnp.einsum("hkr,hkr->hk", k01, corr))
    if n_points > t.shape[0]:  # z = -1
        nyquist = dt * jnp.sum(C_t * B, axis=-1).real
        K_hat = jnp.concatenate([K_hat, nyquist[:, None].astype(K_hat.dtype)], axis=-1)
    return jnp.fft.irfft(K_hat, n=length, axis=-1)
