"""Sequential and dense references for ``seqlab.ops.ssm`` (S4D, Gu et al. 2022; S4, Gu et al.
2022 ICLR): the recurrence step by step and the kernel from powers of the dense matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def discretize_diag(A: jax.Array, B: jax.Array, dt: jax.Array, method: str = "zoh"):
    """S4D eq. (5), per mode. A, B: [H, N] complex; dt: [H] -> (dA, dB) [H, N].
    ZOH: dA = exp(dt A), dB = A^-1 (exp(dt A) - 1) B; bilinear: dA = (1 + dt A/2)/(1 - dt A/2),
    dB = dt B / (1 - dt A/2)."""
    d = dt[:, None]
    if method == "zoh":
        return jnp.exp(d * A), (jnp.exp(d * A) - 1) / A * B
    return (1 + d * A / 2) / (1 - d * A / 2), d * B / (1 - d * A / 2)


def diag_ssm_sequential(
    u: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    dt: jax.Array,
    method: str = "zoh",
    state: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``x_k = dA x_{k-1} + dB u_k``, ``y_k = 2 Re(C x_k)`` one step at a time (N modes kept of
    conjugate pairs). u: [batch, length, H] real; A, B, C: [H, N] complex; dt: [H];
    state: [batch, H, N] complex or None. Returns (y [batch, length, H], last state)."""
    dA, dB = discretize_diag(A, B, dt, method)
    if state is None:
        state = jnp.zeros((u.shape[0],) + A.shape, dA.dtype)

    def step(x, u_k):  # u_k: [batch, H]
        x = dA * x + dB * u_k[..., None]
        return x, 2 * jnp.sum(C * x, axis=-1).real

    last, y = lax.scan(step, state, jnp.swapaxes(u, 0, 1))
    return jnp.swapaxes(y, 0, 1), last


def kernel_diag_powers(A, B, C, dt, length: int, method: str = "zoh") -> jax.Array:
    """``K[h, l] = 2 Re sum_n C dA^l dB`` by repeated multiplication -> [H, length]."""
    dA, dB = discretize_diag(A, B, dt, method)

    def step(p, _):
        return p * dA, 2 * jnp.sum(C * p * dB, axis=-1).real

    _, K = lax.scan(step, jnp.ones_like(dA), None, length=length)
    return K.T


def dplr_dense(Lambda: jax.Array, P: jax.Array) -> jax.Array:
    """The full complex state matrix [H, 2M, 2M] of a conjugate-symmetric DPLR system:
    ``A = diag(Lambda, conj Lambda) - sum_r p_r p_r^H`` with ``p_r = [P_r; conj P_r]``.
    Lambda [H, M], P [r, H, M] complex."""
    lam = jnp.concatenate([Lambda, Lambda.conj()], axis=-1)
    p = jnp.concatenate([P, P.conj()], axis=-1)  # [r, H, 2M]
    return jax.vmap(jnp.diag)(lam) - jnp.einsum("rhi,rhj->hij", p, p.conj())


def kernel_dplr_dense(Lambda, P, B, C, dt, length: int) -> jax.Array:
    """S4's bilinear kernel from the dense matrix (S4 eq. (3)-(5)), no Woodbury, no Cauchy:
    ``dA = (I - dt/2 A)^-1 (I + dt/2 A)``, ``dB = (I - dt/2 A)^-1 dt B``,
    ``K_l = Re(C_full dA^l dB_full)`` with the conjugate halves stacked. -> [H, length]."""
    A = dplr_dense(Lambda, P)
    n = A.shape[-1]
    eye = jnp.eye(n, dtype=A.dtype)
    half = (dt / 2)[:, None, None] * A
    inv = jnp.linalg.inv(eye - half)
    dA = inv @ (eye + half)
    dB = jnp.einsum("hij,hj->hi", inv, dt[:, None] * jnp.concatenate([B, B.conj()], -1))
    c = jnp.concatenate([C, C.conj()], -1)

    def step(v, _):
        return jnp.einsum("hij,hj->hi", dA, v), jnp.sum(c * v, -1).real

    _, K = lax.scan(step, dB, None, length=length)
    return K.T
