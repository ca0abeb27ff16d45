"""Sequential references for ``seqlab.ops.ssd`` (Mamba-2 / SSD, Dao & Gu 2024; Hydra, Hwang et
al. 2024)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def ssd_sequential(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    initial_state: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mamba-2 eq. (1), one token at a time (``lax.scan``):

        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t

    x: [batch, length, heads, head_dim]; dt: [batch, length, heads]; A: [heads];
    B, C: [batch, length, groups, d_state] (heads split evenly over groups);
    initial_state: [batch, heads, head_dim, d_state] or None (zeros).
    Returns (y [batch, length, heads, head_dim], final state [batch, heads, head_dim, d_state]).
    """
    rep = x.shape[2] // B.shape[2]
    Bh, Ch = jnp.repeat(B, rep, axis=2), jnp.repeat(C, rep, axis=2)
    if initial_state is None:
        initial_state = jnp.zeros(x.shape[:1] + x.shape[2:] + B.shape[-1:], x.dtype)

    def step(h, xs):
        x_t, dt_t, b_t, c_t = xs  # [b,h,p], [b,h], [b,h,n], [b,h,n]
        h = jnp.exp(dt_t * A)[..., None, None] * h + jnp.einsum(
            "bh,bhp,bhn->bhpn", dt_t, x_t, b_t
        )
        return h, jnp.einsum("bhpn,bhn->bhp", h, c_t)

    final, y = lax.scan(step, initial_state, tuple(jnp.swapaxes(a, 0, 1) for a in (x, dt, Bh, Ch)))
    return jnp.swapaxes(y, 0, 1), final


def quasiseparable_sequential(
    x: jax.Array,
    dt_fw: jax.Array,
    dt_bw: jax.Array,
    A: jax.Array,
    B_fw: jax.Array,
    C_fw: jax.Array,
    B_bw: jax.Array,
    C_bw: jax.Array,
    diag: jax.Array,
) -> jax.Array:
    """Hydra's mixer (Hwang et al. 2024, eq. (8)) from two sequential scans:
    ``shift(SS_fw(x)) + flip(shift(SS_bw(flip(x)))) + diag x``, where shift moves one step later
    (zero first row) and SS is :func:`ssd_sequential`. Shapes as ``ssd_sequential``; the
    backward direction's dt, B, C are indexed in original time; diag: [batch, length, heads].
    Returns y [batch, length, heads, head_dim].
    """

    def shift(y):
        return jnp.pad(y[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0)])

    def flip(a):
        return jnp.flip(a, axis=1)

    fw = shift(ssd_sequential(x, dt_fw, A, B_fw, C_fw)[0])
    bw = flip(shift(ssd_sequential(flip(x), flip(dt_bw), A, flip(B_bw), flip(C_bw))[0]))
    return fw + bw + diag[..., None] * x
