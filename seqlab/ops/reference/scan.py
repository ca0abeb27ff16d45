"""Sequential reference for ``seqlab.ops.scan.linear_scan`` (S5, Smith et al. 2023, eq. (7))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array | None = None) -> jax.Array:
    """All states of ``h_t = a_t h_{t-1} + b_t``, one step at a time (``lax.scan`` over time).

    a, b: [batch, length, ...] (a broadcasts against b); h0: [batch, ...] or None (zeros).
    Returns h: [batch, length, ...].
    """
    a = jnp.broadcast_to(a, b.shape)

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    h0 = jnp.zeros_like(b[:, 0]) if h0 is None else h0
    _, hs = lax.scan(step, h0, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
    return jnp.swapaxes(hs, 0, 1)
