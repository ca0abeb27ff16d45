"""Mamba-2's SSD (structured state-space duality) scan and Hydra's quasiseparable mixer.

SSD (Dao & Gu 2024, 'Transformers are SSMs', eq. (1)): per head, with a scalar decay,

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,      y_t = h_t C_t,

x_t: [p], B_t, C_t: [n], h_t: [p, n]. Unrolled, y = M x with the semiseparable matrix
(eq. (3)) ``M[i, j] = C_i . B_j dt_j exp(A sum_{k=j+1..i} dt_k)`` for i >= j, 0 above.
The chunked algorithm (Sec. 6, 'ssd_minimal') cuts time into chunks of l steps and computes
(1) the diagonal blocks of M directly (quadratic in l), (2) each chunk's final state,
(3) the states entering every chunk by a recurrence over chunks, (4) their contribution to
the outputs. Einsum letters: b batch, c chunk, l / s target / source step inside a chunk,
h head, n state, p head dimension, g group of heads sharing B and C.

Hydra (Hwang, Lahoti, Dao, Gu 2024, Sec. 3): the quasiseparable mixer

    QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + D X

whose matrix has ``C_fw[i-1] . B_fw[j] dt_fw[j] exp(A sum_{j<k<i} dt_fw[k])`` below the
diagonal, ``C_bw[i+1] . B_bw[j] dt_bw[j] exp(A sum_{i<k<j} dt_bw[k])`` above it, and
``D[i]`` on it (see ``materialize``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seqlab.ops import state_passes
from seqlab.ops.scan import chunks_per_group, on_cpu


def segsum(a: jax.Array) -> jax.Array:
    """Stable segment sums: out[..., i, j] = sum_{k=j+1..i} a[..., k] (i >= j), -inf (i < j).

    a: [..., T] -> [..., T, T]. Each entry sums its own segment (never the difference of two
    prefix sums, which would cancel catastrophically for long segments; Mamba-2 Sec. 6,
    ``segsum``): for T <= 128 as one product with the 0/1 tensor ``[i, j, k] = j < k <= i``
    (the fastest form on CPU), beyond as a masked cumulative sum. ``exp(segsum(a))`` is the
    1-semiseparable decay matrix.
    """
    t = a.shape[-1]
    i = jnp.arange(t)
    if t <= 128:
        seg = (i[None, :, None] < i[None, None, :]) & (i[None, None, :] <= i[:, None, None])
        sums = jnp.einsum("ijk,...k->...ij", seg.astype(a.dtype), a)
    else:
        terms = jnp.where(i[:, None] > i[None, :], a[..., :, None], 0.0)  # [k, j] = a_k, k > j
        sums = jnp.cumsum(terms, axis=-2)  # sums[..., i, j] = sum_{j<k<=i} a_k
    return jnp.where(i[:, None] >= i[None, :], sums, -jnp.inf)


def _check_ssd_args(x, dt, A, B, C, chunk_size, initial_state) -> None:
    if x.ndim != 4:
        raise ValueError(f"ssd expects x of shape [batch, length, heads, headdim], got {x.shape}")
    b, length, h, p = x.shape
    if dt.shape != (b, length, h):
        raise ValueError(f"ssd expects dt of shape [batch, length, heads]={(b, length, h)}, "
                         f"got {dt.shape}")
    if A.shape != (h,):
        raise ValueError(f"ssd expects A of shape [heads]=({h},), got {A.shape}")
    if B.ndim != 4 or B.shape[:2] != (b, length) or B.shape != C.shape:
        raise ValueError(f"ssd expects B and C of the same shape [batch={b}, length={length}, "
                         f"groups, d_state], got B {B.shape}, C {C.shape}")
    if h % B.shape[2]:
        raise ValueError(f"ssd: the number of groups ({B.shape[2]}) must divide heads ({h})")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be a positive int, got {chunk_size!r}")
    if initial_state is not None and initial_state.shape != (b, h, p, B.shape[3]):
        raise ValueError(f"ssd expects initial_state of shape [batch, heads, headdim, d_state]="
                         f"{(b, h, p, B.shape[3])}, got {initial_state.shape}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ssd_chunked(X, a, B, C, h0, pallas):
    """The chunked scan in the flat layout z = (chunk, batch, group), r = head in its group.

    X: [z, r, l, p] (dt-scaled input); a: [z, r, l] (dt A); B, C: [z, l, n];
    h0: [b*g, n, r*p] (the states of a group's heads side by side, transposed).
    Returns y: [z, r, l, p] and the final state [b*g, n, r*p]. ``pallas``: the passes over the
    chunks run as ``ops.state_passes.decay_pass`` instead of ``lax.scan``.
    """
    if pallas:
        return _ssd_batched(X, a, B, C, h0, pallas)[0]
    return on_cpu(_ssd_grouped, lambda *xs: _ssd_batched(*xs, False)[0], X, a, B, C, h0)


_CACHE_ELEMENTS = 2**17  # one [chunks x heads, l, max(l, p)] intermediate of a group (512 KiB)


def _group_size(nb: int, X: jax.Array) -> int:
    """``ops.scan.chunks_per_group`` for [group x heads, l, max(l, p)] intermediates (``ssd``
    pads the chunks to a multiple of it)."""
    r, l, p = X.shape[1:]  # noqa: E741
    return chunks_per_group(X.shape[0] // nb, nb * r * l * max(l, p), _CACHE_ELEMENTS)


def _grouped(nb: int, gc: int, *ts):
    """[z, ...] -> [groups, gc * nb, ...] for a scan over groups of gc chunks."""
    return [t.reshape(-1, gc * nb, *t.shape[1:]) for t in ts]


def _ssd_grouped(X, a, B, C, h0, residuals=False):
    """The CPU's forward: one scan over groups of chunks small enough to stay in cache, each
    step the batched forward (``_ssd_batched``) of its group. On the CPU this beats batching
    over all chunks, whose [z, r, l, l] arrays leave the cache (docs/performance.md). With
    ``residuals`` it also returns the state entering each chunk, for the backward pass."""
    nb = h0.shape[0]

    def group(s, xs):  # gc chunks x nb
        (y, s), s_in = _ssd_batched(*xs, s, False)
        return s, (y, s_in) if residuals else y

    final, out = jax.lax.scan(group, h0, _grouped(nb, _group_size(nb, X), X, a, B, C))
    if not residuals:
        return out.reshape(X.shape), final
    y, s_in = out
    return (y.reshape(X.shape), final), s_in.reshape(-1, *s_in.shape[2:])


def _decay_pass(e, x, s0, pallas, reverse=False):
    """``s_{j+1} = e_j * s_j + x_j`` over chunks: e: [nc, nb, Q]; x: [nc, nb, N, Q] ->
    (states entering (leaving, if reverse) each chunk [nc, nb, N, Q], final state [nb, N, Q])."""
    if pallas:
        return state_passes.decay_pass(e, x, s0, reverse=reverse)

    def step(s, xs):
        e_j, x_j = xs
        return e_j[:, None, :] * s + x_j, s

    final, s_in = jax.lax.scan(step, s0, (e, x), reverse=reverse)
    return s_in, final


def _heads_last(t: jax.Array) -> jax.Array:
    """[z, r, l, p] -> [z, l, r*p]: a group's heads side by side, for products with B or C."""
    z, r, l, p = t.shape  # noqa: E741
    return jnp.swapaxes(t, 1, 2).reshape(z, l, r * p)


def _heads_first(t: jax.Array, r: int) -> jax.Array:
    """[z, l, r*p] -> [z, r, l, p]."""
    z, l, rp = t.shape  # noqa: E741
    return jnp.swapaxes(t.reshape(z, l, r, rp // r), 1, 2)


def _ssd_fwd(X, a, B, C, h0, pallas):
    if pallas:
        out, s_in = _ssd_batched(X, a, B, C, h0, pallas)
    else:
        out, s_in = on_cpu(lambda *xs: _ssd_grouped(*xs, residuals=True),
                           lambda *xs: _ssd_batched(*xs, False), X, a, B, C, h0)
    return out, (X, a, B, C, s_in)


def _ssd_batched(X, a, B, C, h0, pallas):
    """The forward for GPUs and TPUs: each step batched over all chunks, one pass over the
    chunks (``_decay_pass``: the Pallas kernel or ``lax.scan``). Returns ((y, final state),
    the state entering each chunk)."""
    r = X.shape[1]
    cum = jnp.cumsum(a, axis=-1)
    decay = jnp.exp(segsum(a))  # [z, r, l, s]
    cb = jnp.einsum("zln,zsn->zls", C, B)  # shared by the heads of a group
    y = (cb[:, None] * decay) @ X  # 1. diagonal blocks
    xe = _heads_last(X * decay[..., -1, :, None])  # X_s exp(a_{s+1} + ... + a_last)
    states = jnp.einsum("zsn,zsq->znq", B, xe)  # 2. chunk states (transposed): [z, n, r*p]
    e_last = jnp.repeat(jnp.exp(cum[..., -1]), X.shape[-1], axis=-1)  # [z, r*p]
    nb = h0.shape[0]
    xs = [t.reshape(-1, nb, *t.shape[1:]) for t in (e_last, states)]
    s_in, final = _decay_pass(*xs, h0, pallas)  # 3. S_j = exp(sum of a over j) S_{j-1} + states_j
    s_in = s_in.reshape(states.shape)
    y = y + jnp.exp(cum)[..., None] * _heads_first(C @ s_in, r)  # 4. state -> output
    return (y, final), s_in


def _bwd_local(X, a, B, C, dy):
    """The chunk-local terms of the backward pass (no state needed), and the inputs of the
    reverse state pass: exp(cum_last) per state column and (e^{cum} dy)^T C per chunk."""
    p = X.shape[-1]
    cum = jnp.cumsum(a, axis=-1)
    decay = jnp.exp(segsum(a))
    dy_e = _heads_last(jnp.exp(cum)[..., None] * dy)  # cotangent of C S_in: [z, l, r*p]
    loc = dict(decay=decay, m=jnp.einsum("zln,zsn->zls", C, B)[:, None] * decay,
               e_last=jnp.exp(cum[..., -1]), dy_e=dy_e)
    return loc, jnp.repeat(loc["e_last"], p, axis=-1), jnp.einsum("zln,zlq->znq", C, dy_e)


def _bwd_grads(loc, X, B, C, s_in, dy, ds_out):
    """dX, da, dB, dC of a set of chunks, given the cotangent of the state leaving each."""
    r, p = X.shape[1], X.shape[-1]
    decay, m, e_last, dy_e = loc["decay"], loc["m"], loc["e_last"], loc["dy_e"]
    e_end = decay[..., -1, :]
    dm = jnp.where(jnp.tri(X.shape[2], dtype=bool), dy @ jnp.swapaxes(X, -1, -2), 0.0)
    e = dm * m  # [z, r, l, s]
    dcb = jnp.sum(dm * decay, axis=1)  # [z, l, s]
    bs = B @ ds_out  # cotangent of X e_end: [z, l, r*p]
    xe = _heads_last(X * e_end[..., None])
    dX = jnp.swapaxes(m, -1, -2) @ dy + e_end[..., None] * _heads_first(bs, r)
    dB = jnp.einsum("zls,zln->zsn", dcb, C) + jnp.einsum("zlq,znq->zln", xe, ds_out)
    dC = dcb @ B + jnp.einsum("zlq,znq->zln", dy_e, s_in)
    y_off = jnp.sum((dy_e * (C @ s_in)).reshape(*dy_e.shape[:2], r, p), -1)  # d/dcum_l: [z, l, r]
    g_end = jnp.sum((bs * xe).reshape(*bs.shape[:2], r, p), -1)  # d/d(cum_last - cum_s)
    dcum = jnp.sum(e, -1) - jnp.sum(e, -2) + jnp.swapaxes(y_off - g_end, 1, 2)
    last = jnp.sum(g_end, 1) + e_last * jnp.sum((ds_out * s_in).reshape(
        *ds_out.shape[:2], r, p), (1, 3))
    dcum = dcum.at[..., -1].add(last)
    da = jnp.flip(jnp.cumsum(jnp.flip(dcum, -1), -1), -1)
    return dX, da, dB, dC


def _ssd_bwd(pallas, res, cts):
    """Recomputes the decay masks and C B^T per chunk from the inputs and the saved states
    entering each chunk; one reverse pass (elementwise) carries dS between chunks.
    With y = (CB * L) X + e^{cum} C S_in^T and S_j = e^{cum_last} S_{j-1} + (X e_end)^T B:
    dS_in = e^{cum_last} dS_out + (e^{cum} dy)^T C, and every decay exp(cum_l - cum_s) passes
    +E to cum_l and -E to cum_s (E = its cotangent times itself). On the CPU one reverse scan
    over the forward's cache-sized groups (local terms, state pass and gradients per group);
    elsewhere, and with Pallas, batched over all chunks around one pass."""
    if pallas:
        return _ssd_batched_bwd(True, *res, *cts)
    return on_cpu(_ssd_grouped_bwd, lambda *xs: _ssd_batched_bwd(False, *xs), *res, *cts)


def _ssd_grouped_bwd(X, a, B, C, s_in, dy, d_final):
    """One reverse scan over the forward's groups, each step the batched backward of its group."""
    nb = d_final.shape[0]

    def group(ds, xs):  # last group first
        *grads, ds = _ssd_batched_bwd(False, *xs, ds)
        return ds, grads

    dh0, grads = jax.lax.scan(group, d_final,
                              _grouped(nb, _group_size(nb, X), X, a, B, C, s_in, dy),
                              reverse=True)
    return (*(g.reshape(-1, *g.shape[2:]) for g in grads), dh0)


def _ssd_batched_bwd(pallas, X, a, B, C, s_in, dy, d_final):
    nb = d_final.shape[0]
    loc, e_rep, from_out = _bwd_local(X, a, B, C, dy)
    xs = [t.reshape(-1, nb, *t.shape[1:]) for t in (e_rep, from_out)]
    ds_out, dh0 = _decay_pass(*xs, d_final, pallas, reverse=True)  # dS carried back
    ds_out = ds_out.reshape(s_in.shape)  # [z, n, r*p]: cotangent of the state leaving chunk j
    return (*_bwd_grads(loc, X, B, C, s_in, dy, ds_out), dh0)


_ssd_chunked.defvjp(_ssd_fwd, _ssd_bwd)


def ssd(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    chunk_size: int = 64,
    initial_state: jax.Array | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Chunked SSD scan (Mamba-2 eq. (1), algorithm of Sec. 6).

    x: [batch, length, heads, headdim]; dt: [batch, length, heads] (>= 0, already
    softplus-ed); A: [heads] (negative); B, C: [batch, length, groups, d_state], groups
    dividing heads (head i reads group i // (heads // groups)); initial_state:
    [batch, heads, headdim, d_state] or None (zeros).
    Returns (y [batch, length, heads, headdim] in x's dtype, final_state [batch, heads,
    headdim, d_state]). Any length: the tail is padded with dt = 0, which neither decays nor
    feeds the state, so the final state is exact. Computes in float32 (float64 if given).
    Chunks are batched along one flat axis (chunk, batch, group) and C B^T is computed once per
    group; the backward pass is written for the algorithm (``jax.custom_vjp``): it keeps the
    inputs and the state entering each chunk and recomputes the decay masks and C B^T.
    ``implementation="pallas"``: the passes over the chunks (forward states, backward state
    gradients) run as the Pallas kernel ``ops.state_passes.decay_pass`` (Triton on a GPU,
    interpret mode elsewhere) instead of ``lax.scan``; it needs float32, d_state a power of
    two >= 16 and headdim a multiple of 16.
    """
    _check_ssd_args(x, dt, A, B, C, chunk_size, initial_state)
    out_dtype = x.dtype
    f = jnp.promote_types(x.dtype, jnp.float32)
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    reps = h // g
    if implementation not in ("xla", "pallas"):
        raise ValueError(f"ssd: implementation must be 'xla' or 'pallas', got {implementation!r}")
    if implementation == "pallas":
        why = state_passes.unsupported(f, d_state=n) or (
            f"headdim must be a multiple of 16, got {p}" if p % 16 else None)
        if why:
            raise ValueError(f"ssd: implementation='pallas': {why}; use implementation='xla'")
    B, C, dt = B.astype(f), C.astype(f), dt.astype(f)
    X = x.astype(f) * dt[..., None]  # discretised input dt_t x_t
    a = dt * A.astype(f)  # log of the discretised decay exp(dt_t A)

    l = min(chunk_size, length)  # noqa: E741  (the paper's chunk length)
    nc = -(-length // l)  # padded to whole groups of the CPU form (less than one per group)
    nc = -(-nc // (gc := chunks_per_group(nc, b * h * l * max(l, p), _CACHE_ELEMENTS))) * gc
    pad = nc * l - length

    def chunk(t: jax.Array, heads: bool) -> jax.Array:  # [b, L, ...] -> [z, (r,) l, ...]
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        if heads:  # [b, L, h, ...] -> [b, nc, l, g, r, ...] -> [nc, b, g, r, l, ...]
            t = t.reshape(b, nc, l, g, reps, *t.shape[3:])
            t = jnp.moveaxis(t, (1, 2), (0, 4))
            return t.reshape(nc * b * g, reps, l, *t.shape[5:])
        t = jnp.moveaxis(t.reshape(b, nc, l, g, n), (1, 2), (0, 3))  # [nc, b, g, l, n]
        return t.reshape(nc * b * g, l, n)

    h0 = jnp.zeros((b, h, p, n), f) if initial_state is None else initial_state.astype(f)
    h0 = jnp.moveaxis(h0.reshape(b * g, reps * p, n), -1, -2)  # [b*g, n, r*p]
    y, final = _ssd_chunked(chunk(X, True), chunk(a, True), chunk(B, False), chunk(C, False), h0,
                            implementation == "pallas")
    y = jnp.moveaxis(y.reshape(nc, b, g, reps, l, p), (0, 4), (1, 2))  # [b, nc, l, g, r, p]
    y = y.reshape(b, nc * l, h, p)[:, :length]
    return y.astype(out_dtype), jnp.moveaxis(final, -1, -2).reshape(b, h, p, n)


def quasiseparable(
    x: jax.Array,
    dt_fw: jax.Array,
    dt_bw: jax.Array,
    A: jax.Array,
    B_fw: jax.Array,
    C_fw: jax.Array,
    B_bw: jax.Array,
    C_bw: jax.Array,
    diag: jax.Array,
    *,
    chunk_size: int = 64,
    implementation: str = "xla",
) -> jax.Array:
    """Hydra's quasiseparable mixer QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + D X.

    x: [batch, length, heads, headdim]; dt_fw, dt_bw, diag: [batch, length, heads];
    A: [heads]; B_*, C_*: [batch, length, groups, d_state]. All arguments in original time
    order (the backward ones are flipped here). Both directions run as one SSD call with the
    flipped sequence stacked along the batch axis (``implementation`` as in ``ssd``).
    Returns y: [batch, length, heads, headdim].
    """
    if diag.shape != dt_fw.shape or dt_bw.shape != dt_fw.shape:
        raise ValueError(f"quasiseparable expects dt_fw, dt_bw and diag of one shape "
                         f"[batch, length, heads], got {dt_fw.shape}, {dt_bw.shape}, {diag.shape}")
    b = x.shape[0]

    def both(fw: jax.Array, bw: jax.Array) -> jax.Array:
        return jnp.concatenate([fw, jnp.flip(bw, axis=1)], axis=0)

    y, _ = ssd(both(x, x), both(dt_fw, dt_bw), A, both(B_fw, B_bw), both(C_fw, C_bw),
               chunk_size=chunk_size, implementation=implementation)
    no_pad = [(0, 0), (0, 0)]
    y_fw = jnp.pad(y[:b, :-1], [(0, 0), (1, 0)] + no_pad)  # shift: row t reads t-1, row 0 = 0
    y_bw = jnp.pad(jnp.flip(y[b:, :-1], axis=1), [(0, 0), (0, 1)] + no_pad)  # flip(shift(.))
    return y_fw + y_bw + (diag[..., None] * x).astype(y.dtype)


def materialize(
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    dt_bw: jax.Array | None = None,
    B_bw: jax.Array | None = None,
    C_bw: jax.Array | None = None,
    diag: jax.Array | None = None,
) -> jax.Array:
    """The mixing matrix per head, M: [batch, heads, length, length], with y = M x per head.

    Causal SSD (forward arguments only; Mamba-2 eq. (3)):
    ``M[i, j] = C_i . B_j dt_j exp(A sum_{k=j+1..i} dt_k)`` for i >= j, else 0.
    Quasiseparable (``dt_bw, B_bw, C_bw, diag`` all given; Hydra Sec. 3): the forward matrix
    shifted down one row below the diagonal, the backward one above it
    (``C_bw[i+1] . B_bw[j] dt_bw[j] exp(A sum_{i<k<j} dt_bw[k])``), ``diag`` on it.
    dt, diag: [batch, length, heads]; A: [heads]; B, C: [batch, length, groups, d_state].
    O(length^2) memory: for tests and teaching, not for training.
    """
    backward = (dt_bw, B_bw, C_bw, diag)
    if any(t is None for t in backward) and any(t is not None for t in backward):
        raise ValueError("materialize: give all of dt_bw, B_bw, C_bw, diag (quasiseparable) "
                         "or none of them (causal SSD)")

    def semiseparable(dt, B, C):
        reps = dt.shape[-1] // B.shape[2]
        B, C = jnp.repeat(B, reps, axis=2), jnp.repeat(C, reps, axis=2)
        decay = jnp.exp(segsum(jnp.moveaxis(dt * A, -1, 1)))  # [b, h, i, j]
        return jnp.einsum("bihn,bjhn,bhij,bjh->bhij", C, B, decay, dt)

    M = semiseparable(dt, B, C)
    if diag is None:
        return M
    lower = jnp.pad(M[:, :, :-1], [(0, 0), (0, 0), (1, 0), (0, 0)])  # row i <- row i-1
    flip = lambda t: jnp.flip(t, axis=1)  # noqa: E731
    M_bw = semiseparable(flip(dt_bw), flip(B_bw), flip(C_bw))
    M_bw = jnp.pad(M_bw[:, :, :-1], [(0, 0), (0, 0), (1, 0), (0, 0)])
    upper = jnp.flip(M_bw, axis=(2, 3))
    eye = jnp.eye(dt.shape[1], dtype=M.dtype)
    return lower + upper + jnp.moveaxis(diag, -1, 1)[..., None] * eye
