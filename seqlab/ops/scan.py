"""Linear recurrences ``h_t = a_t * h_{t-1} + b_t`` via ``lax.associative_scan`` (S5, Sec. 3.3;
a sequential ``lax.scan`` when lowered for the CPU), and ``on_cpu`` / ``chunks_per_group``, how
the chunked scans' XLA forms walk their chunks.

The pairs ``(a, b)`` compose associatively, ``(a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2)``, so
all prefix states are computed in O(log length) parallel depth (Blelloch 1990; Smith et al. 2023).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _compose(first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]):
    a1, b1 = first
    a2, b2 = second
    return a2 * a1, a2 * b1 + b2


def linear_scan(
    a: jax.Array, b: jax.Array, h0: jax.Array | None = None, reverse: bool = False
) -> jax.Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` along axis 1 (S5 eq. (7)).

    a: broadcastable to b; b: [batch, length, ...]; h0: [batch, ...] the state before the first
    step (zeros if None). ``reverse=True`` runs from the end: ``h_t = a_t h_{t+1} + b_t`` with
    h0 the state after the last step. Returns h: [batch, length, ...] (dtype of a * b).
    Associative scan on GPU/TPU; a sequential ``lax.scan`` on the CPU (``on_cpu``), where it is
    faster (docs/performance.md, the JAX peers).
    """
    if b.ndim < 2:
        raise ValueError(f"linear_scan expects b of shape [batch, length, ...], got {b.shape}")
    a = jnp.broadcast_to(a, b.shape).astype(jnp.result_type(a, b))
    if h0 is not None:
        edge = -1 if reverse else 0
        b = b.at[:, edge].add(a[:, edge] * h0)
    return on_cpu(functools.partial(_sequential, reverse=reverse),
                  lambda a, b: jax.lax.associative_scan(_compose, (a, b), reverse=reverse,
                                                        axis=1)[1], a, b)


def _sequential(a: jax.Array, b: jax.Array, reverse: bool) -> jax.Array:
    """The same states by ``lax.scan``, one step at a time: on a CPU this streams the sequence
    once and is 2-7x faster than the associative form's O(log length) passes (measured against
    recurrentgemma's scan, docs/performance.md)."""
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    a_t, b_t = jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)
    _, h = jax.lax.scan(step, jnp.zeros_like(b_t[0]), (a_t, b_t), reverse=reverse)
    return jnp.swapaxes(h, 0, 1)


def on_cpu(cpu_fn, other_fn, *args):
    """``cpu_fn(*args)`` when lowered for the CPU, ``other_fn(*args)`` for any other platform
    (``lax.platform_dependent``: decided at lowering, so an export for CUDA from a CPU host gets
    ``other_fn``). The chunked delta rule and SSD walk cache-sized groups of chunks on the CPU,
    where that is fastest; a GPU would pay kernel launches per group, so there they batch the
    chunk-local work over all chunks around one pass."""
    return jax.lax.platform_dependent(*args, cpu=cpu_fn, default=other_fn)


def chunks_per_group(nc: int, per_chunk: int, elements: int) -> int:
    """Chunks per group of a chunked scan's CPU form: as many as keep a group's intermediate
    (``per_chunk`` elements per chunk) within ``elements``, spread evenly over the groups. The
    caller pads the chunks to a multiple of it (less than one chunk per group); on the padded
    count it returns the same number."""
    groups = -(-nc // max(1, elements // per_chunk))
    return -(-nc // groups)
