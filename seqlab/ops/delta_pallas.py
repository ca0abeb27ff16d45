"""Pallas kernels for the two sequential passes of the chunked delta rule (``ops.delta``).

In the chunkwise-parallel delta rule (Yang et al. 2024a, sec. 3.2; gates as in Yang et al.
2024b, sec. 3.3) everything is a batched matmul over chunks except two passes that walk the
chunks in order. With ``S_j`` the state entering chunk j (``[K, V]``), ``Kd_j = exp(G_c - G) * K``
(``[c, K]``), ``U_j, W_j`` the chunk's UT-transformed values and keys and ``e_j = exp(G_c)``:

    forward:   S_{j+1} = e_j S_j + Kd_j^T (U_j - W_j S_j)
    backward:  dS_j    = e_j dS_{j+1} + R_j - W_j^T (Kd_j dS_{j+1})

(``R_j`` is the part of ``dS_j`` that comes from chunk j's outputs). Under XLA each chunk is
one ``lax.scan`` step, i.e. a few kernel launches of tiny matmuls on a GPU. Here one program per
(sequence x head, block of ``block_v`` value columns) keeps its ``[K, block_v]`` slice of the
state on chip and walks every chunk in one launch. The value columns of the state evolve
independently (every product above mixes key rows only), so the blocks need no communication;
this is the layout of flash-linear-attention's ``chunk_gated_delta_rule_fwd_h`` and
``chunk_gated_delta_rule_bwd_dhu`` kernels (read for the layout; written here from the equations).

The kernels target Triton (``jax.experimental.pallas.triton``); on any other backend they run in
Pallas interpret mode (exact, slow: for tests). Shapes: ``nc`` chunks, ``nb`` = batch x heads,
``c`` steps per chunk, ``K`` key and ``V`` value dims. Everything is float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

__all__ = ["unsupported", "state_pass", "state_pass_bwd"]


def _pow2(x: int) -> bool:
    return x >= 16 and x & (x - 1) == 0


def unsupported(c: int, dk: int, dv: int, dtype) -> str | None:
    """Why the kernels cannot run these sizes (None if they can): Triton's ``dot`` needs every
    matrix dimension a power of two >= 16, and the kernels are written for float32."""
    if jnp.dtype(dtype) != jnp.float32:
        return f"the Pallas state pass computes in float32, got {jnp.dtype(dtype).name}"
    bad = [f"{name}={x}" for name, x in (("chunk steps", c), ("K", dk), ("V", dv)) if not _pow2(x)]
    if bad:
        return ("the Pallas state pass needs the chunk's micro-steps, K and V to be powers of two "
                ">= 16, got " + ", ".join(bad))
    return None


def _call(kernel, ins, out_shapes, in_blocks, out_blocks, nb, dv, block_v, interpret):
    """The pallas_call over the grid (nb, V / block_v); ``interpret=None`` picks Triton when
    lowering for CUDA and interpret mode for every other platform (decided at lowering, so an
    export for CUDA from a CPU-only host gets the kernel)."""
    def run(*xs, interpret):
        return pl.pallas_call(
            kernel,
            grid=(nb, dv // block_v),
            in_specs=[pl.BlockSpec(*x) for x in in_blocks],
            out_specs=[pl.BlockSpec(*x) for x in out_blocks],
            out_shape=[jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes],
            interpret=interpret,
            compiler_params=pltr.CompilerParams(num_warps=4, num_stages=2),
        )(*xs)

    if interpret is not None:
        return run(*ins, interpret=interpret)
    return lax.platform_dependent(*ins, cuda=functools.partial(run, interpret=False),
                                  default=functools.partial(run, interpret=True))


def _fwd_kernel(u_ref, w_ref, kt_ref, e_ref, s0_ref, s_in_ref, s_last_ref, *, nc):
    def chunk(j, s):  # s: [K, bv], the state entering chunk j
        s_in_ref[j] = s
        d = u_ref[j] - jnp.dot(w_ref[j], s)  # U - W S: [c, bv]
        return e_ref[j] * s + jnp.dot(kt_ref[j], d)  # e S + Kd^T D

    s_last_ref[...] = lax.fori_loop(0, nc, chunk, s0_ref[...])


def state_pass(
    u: jax.Array,
    w: jax.Array,
    k_dec_t: jax.Array,
    e_last: jax.Array,
    s0: jax.Array,
    *,
    block_v: int = 32,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The forward state pass ``S_{j+1} = e_j S_j + Kd_j^T (U_j - W_j S_j)``.

    u: [nc, nb, c, V]; w: [nc, nb, c, K]; k_dec_t: [nc, nb, K, c] (``Kd^T``); e_last: [nc, nb];
    s0: [nb, K, V]. Returns (the state entering each chunk [nc, nb, K, V], the final state
    [nb, K, V]). ``interpret=None``: Triton when lowered for CUDA, interpret mode elsewhere.
    """
    nc, nb, c, dv = u.shape
    dk = w.shape[-1]
    block_v = min(block_v, dv)
    every = lambda i, j: (0, i, 0, 0)  # noqa: E731
    cols = lambda i, j: (0, i, 0, j)  # noqa: E731
    state = ((None, dk, block_v), lambda i, j: (i, 0, j))
    return _call(
        functools.partial(_fwd_kernel, nc=nc),
        (u, w, k_dec_t, e_last, s0),
        [(nc, nb, dk, dv), (nb, dk, dv)],
        [((nc, None, c, block_v), cols), ((nc, None, c, dk), every),
         ((nc, None, dk, c), every), ((nc, None), lambda i, j: (0, i)), state],
        [((nc, None, dk, block_v), cols), state],
        nb, dv, block_v, interpret,
    )


def _bwd_kernel(w_ref, kd_ref, e_ref, r_ref, ds_last_ref, ds_out_ref, ds0_ref, *, nc):
    def chunk(i, ds):  # ds: [K, bv], the gradient of the state leaving chunk j
        j = nc - 1 - i
        ds_out_ref[j] = ds
        x = jnp.dot(kd_ref[j], ds)  # Kd dS: [c, bv]
        w_t_x = lax.dot_general(w_ref[j], x, (((0,), (0,)), ((), ())))  # W^T (Kd dS)
        return e_ref[j] * ds + r_ref[j] - w_t_x

    ds0_ref[...] = lax.fori_loop(0, nc, chunk, ds_last_ref[...])


def state_pass_bwd(
    w: jax.Array,
    kd: jax.Array,
    e_last: jax.Array,
    r: jax.Array,
    ds_last: jax.Array,
    *,
    block_v: int = 32,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The backward state pass ``dS_j = e_j dS_{j+1} + R_j - W_j^T (Kd_j dS_{j+1})``, last
    chunk first.

    w, kd: [nc, nb, c, K]; e_last: [nc, nb]; r: [nc, nb, K, V]; ds_last: [nb, K, V] (the
    gradient of the final state). Returns (the gradient of the state leaving each chunk
    [nc, nb, K, V], the gradient of the initial state [nb, K, V]).
    """
    nc, nb, c, dk = w.shape
    dv = r.shape[-1]
    block_v = min(block_v, dv)
    every = lambda i, j: (0, i, 0, 0)  # noqa: E731
    cols = lambda i, j: (0, i, 0, j)  # noqa: E731
    state = ((None, dk, block_v), lambda i, j: (i, 0, j))
    return _call(
        functools.partial(_bwd_kernel, nc=nc),
        (w, kd, e_last, r, ds_last),
        [(nc, nb, dk, dv), (nb, dk, dv)],
        [((nc, None, c, dk), every), ((nc, None, c, dk), every),
         ((nc, None), lambda i, j: (0, i)), ((nc, None, dk, block_v), cols), state],
        [((nc, None, dk, block_v), cols), state],
        nb, dv, block_v, interpret,
    )
