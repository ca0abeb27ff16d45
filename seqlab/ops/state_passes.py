"""Pallas kernels for the sequential passes over chunks of the chunked ops (delta rule, SSD).

A chunked scan does its work as batched matmuls over all chunks, except one pass that walks the
chunks in order, carrying the state (and, in the backward pass, one that carries its gradient
back). Under XLA each chunk is one ``lax.scan`` step, i.e. a few kernel launches of tiny
products on a GPU. Here one program per (sequence x head or group, block of state columns) keeps
its slice of the state on chip and walks every chunk in one launch; the columns of the state
evolve independently (every product below mixes rows only), so the blocks never communicate.

Delta rule (``ops.delta``; Yang et al. 2024a, sec. 3.2, gates of Yang et al. 2024b, sec. 3.3).
With ``S_j`` the state entering chunk j (``[K, V]``), ``Kd_j = exp(G_c - G) * K`` (``[c, K]``),
``U_j, W_j`` the chunk's UT-transformed values and keys and ``e_j = exp(G_c)``:

    forward:   S_{j+1} = e_j S_j + Kd_j^T (U_j - W_j S_j)               (``state_pass``)
    backward:  dS_j    = e_j dS_{j+1} + R_j - W_j^T (Kd_j dS_{j+1})      (``state_pass_bwd``)

(``R_j`` is the part of ``dS_j`` that comes from chunk j's outputs). This is the layout of
flash-linear-attention's ``chunk_gated_delta_rule_fwd_h`` / ``_bwd_dhu`` kernels.

SSD (``ops.ssd``; Mamba-2, Dao & Gu 2024, sec. 6, step 3 "state passing"): the state of a chunk
decays by one scalar per head, ``s_{j+1} = e_j * s_j + x_j`` (``decay_pass``; forward with the
chunk states as ``x``, backward in reverse with the output cotangents), the layout of Mamba-2's
``_state_passing_fwd_kernel``. (Both references were read for the layout; these kernels are
written from the equations.)

The kernels target Triton (``jax.experimental.pallas.triton``); on any other platform they run
in Pallas interpret mode (exact, slow: for tests). Shapes: ``nc`` chunks, ``nb`` independent
states, ``c`` steps per chunk. Everything is float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

__all__ = ["unsupported", "state_pass", "state_pass_bwd", "decay_pass"]


def _pow2(x: int) -> bool:
    return x >= 16 and x & (x - 1) == 0


def unsupported(dtype, **sizes: int) -> str | None:
    """Why the kernels cannot run these sizes (None if they can): Triton's blocks and ``dot``
    need every matrix dimension a power of two >= 16, and the kernels compute in float32.
    ``sizes`` names each dimension for the message, e.g. ``unsupported(f32, K=64, V=64)``."""
    if jnp.dtype(dtype) != jnp.float32:
        return f"the Pallas state passes compute in float32, got {jnp.dtype(dtype).name}"
    bad = [f"{name}={x}" for name, x in sizes.items() if not _pow2(x)]
    if bad:
        return ("the Pallas state passes need " + ", ".join(sizes) + " to be powers of two "
                ">= 16, got " + ", ".join(bad))
    return None


def _every(i, j):  # index maps of the grid (sequence i, column block j): all columns
    return 0, i, 0, 0


def _cols(i, j):  # [nc, nb, rows, cols] arrays: column block j
    return 0, i, 0, j


def _state(i, j):  # [nb, rows, cols] states: column block j
    return i, 0, j


def _per_chunk(i, j):  # [nc, nb] scalars
    return 0, i


def _call(kernel, ins, in_blocks, block, interpret):
    """One pass over the chunks: ``ins`` ends with the initial state ``[nb, R, Q]``; the grid is
    (nb, Q / block); the outputs are the state at every chunk ``[nc, nb, R, Q]`` and the final
    state ``[nb, R, Q]``. ``interpret=None`` picks Triton when lowering for CUDA and interpret
    mode for every other platform (decided at lowering, so an export for CUDA from a CPU-only
    host gets the kernel)."""
    nc, (nb, rows, q) = ins[0].shape[0], ins[-1].shape
    state = pl.BlockSpec((None, rows, block), _state)

    def run(*xs, interpret):
        return pl.pallas_call(
            functools.partial(kernel, nc=nc),
            grid=(nb, q // block),
            in_specs=[pl.BlockSpec(*x) for x in in_blocks] + [state],
            out_specs=[pl.BlockSpec((nc, None, rows, block), _cols), state],
            out_shape=[jax.ShapeDtypeStruct(x, jnp.float32) for x in ((nc, nb, rows, q),
                                                                      (nb, rows, q))],
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
    dk, block_v = w.shape[-1], min(block_v, dv)
    return _call(_fwd_kernel, (u, w, k_dec_t, e_last, s0),
                 [((nc, None, c, block_v), _cols), ((nc, None, c, dk), _every),
                  ((nc, None, dk, c), _every), ((nc, None), _per_chunk)], block_v, interpret)


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
    block_v = min(block_v, r.shape[-1])
    return _call(_bwd_kernel, (w, kd, e_last, r, ds_last),
                 [((nc, None, c, dk), _every), ((nc, None, c, dk), _every),
                  ((nc, None), _per_chunk), ((nc, None, dk, block_v), _cols)], block_v,
                 interpret)


def _decay_kernel(e_ref, x_ref, s0_ref, s_in_ref, s_last_ref, *, nc, reverse):
    def chunk(i, s):  # s: [N, bq], the state entering chunk j (leaving it, if reverse)
        j = nc - 1 - i if reverse else i
        s_in_ref[j] = s
        return e_ref[j][None, :] * s + x_ref[j]

    s_last_ref[...] = lax.fori_loop(0, nc, chunk, s0_ref[...])


def decay_pass(
    e: jax.Array,
    x: jax.Array,
    s0: jax.Array,
    *,
    reverse: bool = False,
    block: int = 32,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``s_{j+1} = e_j * s_j + x_j`` over the chunks j (last chunk first if ``reverse``), with
    the decay ``e_j`` broadcast over the rows of the state.

    e: [nc, nb, Q]; x: [nc, nb, N, Q]; s0: [nb, N, Q]; ``block`` (a power of two) columns per
    program, fewer where it does not divide Q. Returns (the state entering each chunk
    [nc, nb, N, Q] (leaving it, if ``reverse``), the final state [nb, N, Q]).
    """
    nc, nb, n, q = x.shape
    block = math.gcd(q, block)  # a power of two dividing Q
    return _call(functools.partial(_decay_kernel, reverse=reverse), (e, x, s0),
                 [((nc, None, block), lambda i, j: (0, i, j)), ((nc, None, n, block), _cols)],
                 block, interpret)
