"""Bench specs of the state-space mixers: S4 / S4D / S4-PTD (kernel + FFT convolution), S5
(linear scan), Mamba-2 (chunked SSD) and Hydra (quasiseparable, two SSD directions).

Each builder returns a :class:`~seqlab.bench.specs_base.Call` of the op, its naive reference or a
peer at a case's :class:`~seqlab.bench.specs_base.Dims`; each ``*_cost`` the FLOPs and bytes the
core must do (for the physical bound)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqlab.bench import peers, peers_jax
from seqlab.bench.specs_base import F32, Call, Dims, _keys, _log2, _normal
from seqlab.ops.reference import scan as reference_scan
from seqlab.ops.reference import ssd as reference_ssd

# ----------------------------------------------------------------------------- S4 / S4D (conv)


def _s4d_params(d: Dims, key: jax.Array):
    h, n = d.d_model, max(d.d_state // 2, 1)
    k1, k2, k3, k4 = _keys(key, 4)
    A = -0.5 + 1j * jnp.pi * jnp.broadcast_to(jnp.arange(n), (h, n))  # S4D-Lin
    C = (_normal(k1, (h, n)) + 1j * _normal(k2, (h, n))) * 0.5**0.5
    log_dt = jax.random.uniform(k3, (h,), minval=math.log(1e-3), maxval=math.log(1e-1))
    u = _normal(k4, (d.batch, d.length, h))
    return u, A.astype(jnp.complex64), C.astype(jnp.complex64), log_dt, jnp.ones((h,))


def _conv_cost(d: Dims, kernel_flops: float) -> tuple[float, float]:
    """Kernel generation + 3 real FFTs of size 2L per channel + pointwise product + D u."""
    b, h, length = d.batch, d.d_model, d.length
    fft = 2.5 * 2 * length * _log2(2 * length)  # one real FFT of size 2L
    flops = kernel_flops + (2 * b * h + h) * fft + 6 * b * h * (length + 1) + 2 * b * length * h
    nbytes = F32 * (2 * b * length * h + h * length)
    return flops, nbytes


def _s4d_cost(d: Dims) -> tuple[float, float]:
    return _conv_cost(d, 8.0 * d.d_model * max(d.d_state // 2, 1) * d.length)


def _s4_cost(d: Dims) -> tuple[float, float]:
    # Cauchy kernel at L roots of unity: 4 Cauchy sums (rank 1 Woodbury) of N/2 complex terms,
    # plus an inverse FFT of the L generating-function values per channel.
    n, h, length = max(d.d_state // 2, 1), d.d_model, d.length
    return _conv_cost(d, 4 * 8.0 * h * n * length + h * 5 * length * _log2(length))


def _s4d_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssm import fft_conv, kernel_diag

    u, A, C, log_dt, D = _s4d_params(d, key)
    B = jnp.ones_like(A)

    def core(u, A, B, C, log_dt, D):
        return fft_conv(u, kernel_diag(A, B, C, jnp.exp(log_dt), u.shape[1]), D)

    return Call("ops.ssm kernel_diag + fft_conv", core, (u, A, B, C, log_dt, D))


def _s4_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssm import fft_conv, kernel_dplr

    u, A, C, log_dt, D = _s4d_params(d, key)
    P = 0.1 * jnp.ones((1,) + A.shape, jnp.complex64)
    B = jnp.ones_like(A)

    def core(u, A, P, B, C, log_dt, D):
        return fft_conv(u, kernel_dplr(A, P, B, C, jnp.exp(log_dt), u.shape[1]), D)

    return Call("ops.ssm kernel_dplr + fft_conv", core, (u, A, P, B, C, log_dt, D))


def _bare_fft_conv(d: Dims, key: jax.Array) -> Call:
    u, *_ = _s4d_params(d, key)
    K = _normal(jax.random.fold_in(key, 7), (d.d_model, d.length))
    return Call("bare FFT conv (kernel given)", peers.fft_conv_bare, (u, K))


def _s4d_tutorial(d: Dims, key: jax.Array) -> Call:
    return Call("tutorial S4D (Vandermonde + jnp.fft)", peers.s4d_tutorial, _s4d_params(d, key))


# ----------------------------------------------------------------------------- S5 (scan)


def _s5_inputs(d: Dims, key: jax.Array):
    k1, k2, k3 = _keys(key, 3)
    p = max(d.d_state // 2, 1)  # complex modes (conjugate pairs implied), as S5 keeps them
    lam = jnp.exp(-jax.random.uniform(k1, (p,), minval=1e-3, maxval=1e-1))
    a = jnp.broadcast_to(lam * jnp.exp(1j * 0.1), (d.batch, d.length, p)).astype(jnp.complex64)
    b = (_normal(k2, (d.batch, d.length, p)) + 1j * _normal(k3, (d.batch, d.length, p)))
    return a, b.astype(jnp.complex64)


def _s5_cost(d: Dims) -> tuple[float, float]:
    # h_t = a h_{t-1} + B u_t ; y_t = Re(C h_t): complex B [P, H] and C [H, P] products + the scan.
    b, length, h, p = d.batch, d.length, d.d_model, max(d.d_state // 2, 1)
    flops = b * length * (2 * 8 * h * p + 8 * p)
    return flops, F32 * 2 * b * length * h


def _s5_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.scan import linear_scan

    return Call("ops.scan.linear_scan", linear_scan, _s5_inputs(d, key))


def _s5_ref(d: Dims, key: jax.Array) -> Call:
    return Call("sequential lax.scan", reference_scan.linear_recurrence, _s5_inputs(d, key))


def _s5_recurrentgemma(d: Dims, key: jax.Array) -> Call | None:
    f = peers_jax.recurrentgemma_scan()
    return None if f is None else Call("recurrentgemma linear_scan (JAX)", f, _s5_inputs(d, key),
                                       same_as_op=True)


def _s5_lindermanlab(d: Dims, key: jax.Array) -> Call | None:
    f = peers_jax.s5_scan()
    return None if f is None else Call("lindermanlab/S5 apply_ssm scan (JAX)", f,
                                       _s5_inputs(d, key), same_as_op=True)


# ----------------------------------------------------------------------------- SSD (Mamba-2, Hydra)


def _ssd_inputs(d: Dims, key: jax.Array):
    b, t, h, p, n = d.batch, d.length, d.n_heads, d.head_dim, d.d_state
    k1, k2, k3, k4 = _keys(key, 4)
    x = _normal(k1, (b, t, h, p))
    dt = jax.nn.softplus(_normal(k2, (b, t, h)) - 2.0)
    A = -jnp.exp(jnp.linspace(0.0, 1.0, h))
    B = _normal(k3, (b, t, 1, n))
    C = _normal(k4, (b, t, 1, n))
    return x, dt, A, B, C


def _ssd_cost(sides: int) -> Callable[[Dims], tuple[float, float]]:
    def cost(d: Dims) -> tuple[float, float]:
        # per token and head: decay N P, dt x B^T outer 2 N P, read h C: 2 N P
        b, t, h, p, n = d.batch, d.length, d.n_heads, d.head_dim, d.d_state
        flops = sides * b * t * h * 5 * n * p
        nbytes = F32 * b * t * (2 * h * p + sides * (h + 2 * n))
        return flops, nbytes

    return cost


def ssd_sequential(x, dt, A, B, C):
    """y of the shared sequential reference ``seqlab.ops.reference.ssd.ssd_sequential`` (Mamba-2
    eq. (1), one step at a time); the bench times the output only."""
    return reference_ssd.ssd_sequential(x, dt, A, B, C)[0]


def _ssd_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssd import ssd

    return Call("ops.ssd.ssd (chunked)", lambda *a: ssd(*a, chunk_size=d.chunk_size)[0],
                _ssd_inputs(d, key))


def _ssd_ref(d: Dims, key: jax.Array) -> Call:
    return Call("sequential lax.scan", ssd_sequential, _ssd_inputs(d, key))


def _ssd_mamba2_jax(d: Dims, key: jax.Array) -> Call | None:
    f = peers_jax.mamba2_jax_ssd(d.chunk_size)
    return None if f is None else Call("mamba2-jax ssd_forward (JAX)", f, _ssd_inputs(d, key),
                                       same_as_op=True)


def _hydra_inputs(d: Dims, key: jax.Array):
    x, dt, A, B, C = _ssd_inputs(d, key)
    _, dt2, _, B2, C2 = _ssd_inputs(d, jax.random.fold_in(key, 1))
    diag = _normal(jax.random.fold_in(key, 2), dt.shape)
    return x, dt, dt2, A, B, C, B2, C2, diag


def _hydra_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssd import quasiseparable

    return Call("ops.ssd.quasiseparable (chunked)",
                lambda *a: quasiseparable(*a, chunk_size=d.chunk_size), _hydra_inputs(d, key))


def _hydra_ref(d: Dims, key: jax.Array) -> Call:
    return Call("two sequential lax.scans", reference_ssd.quasiseparable_sequential,
                _hydra_inputs(d, key))
