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

import jax
import jax.numpy as jnp


def segsum(a: jax.Array) -> jax.Array:
    """Stable segment sums: out[..., i, j] = sum_{k=j+1..i} a[..., k] (i >= j), -inf (i < j).

    a: [..., T] -> [..., T, T]. Built by a masked cumulative sum rather than as the
    difference of two prefix sums, which would cancel catastrophically for long segments
    (Mamba-2 Sec. 6, ``segsum``). ``exp(segsum(a))`` is the 1-semiseparable decay matrix.
    """
    t = a.shape[-1]
    k_idx = jnp.arange(t)[:, None]
    j_idx = jnp.arange(t)[None, :]
    terms = jnp.where(k_idx > j_idx, a[..., :, None], 0.0)  # terms[..., k, j] = a_k for k > j
    sums = jnp.cumsum(terms, axis=-2)  # sums[..., i, j] = sum_{j<k<=i} a_k
    return jnp.where(k_idx >= j_idx, sums, -jnp.inf)


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


def ssd(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    chunk_size: int = 64,
    initial_state: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Chunked SSD scan (Mamba-2 eq. (1), algorithm of Sec. 6).

    x: [batch, length, heads, headdim]; dt: [batch, length, heads] (>= 0, already
    softplus-ed); A: [heads] (negative); B, C: [batch, length, groups, d_state], groups
    dividing heads (head i reads group i // (heads // groups)); initial_state:
    [batch, heads, headdim, d_state] or None (zeros).
    Returns (y [batch, length, heads, headdim] in x's dtype, final_state [batch, heads,
    headdim, d_state]). Any length: the tail is padded with dt = 0, which neither decays nor
    feeds the state, so the final state is exact. Computes in float32 (float64 if given).
    """
    _check_ssd_args(x, dt, A, B, C, chunk_size, initial_state)
    out_dtype = x.dtype
    f = jnp.promote_types(x.dtype, jnp.float32)
    b, length, h, p = x.shape
    reps = h // B.shape[2]
    B, C, dt = B.astype(f), C.astype(f), dt.astype(f)
    X = x.astype(f) * dt[..., None]  # discretised input dt_t x_t
    a = dt * A.astype(f)  # log of the discretised decay exp(dt_t A)

    l = min(chunk_size, length)  # noqa: E741  (the paper's chunk length)
    pad = -length % l
    c = (length + pad) // l

    def chunk(t: jax.Array) -> jax.Array:
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        return t.reshape((b, c, l) + t.shape[2:])

    def per_head(t: jax.Array, axis: int) -> jax.Array:  # group g -> heads [g*reps, (g+1)*reps)
        return jnp.repeat(t, reps, axis=axis)

    X, a, B, C = chunk(X), chunk(a), chunk(B), chunk(C)
    a = jnp.swapaxes(a, 2, 3)  # [b, c, h, l]
    a_cum = jnp.cumsum(a, axis=-1)

    # 1. diagonal blocks: y_l = sum_{s<=l} C_l . B_s exp(a_{s+1} + ... + a_l) X_s
    decay = jnp.exp(segsum(a))  # [b, c, h, l, s]
    CB = per_head(jnp.einsum("bclgn,bcsgn->bcgls", C, B), axis=2)  # [b, c, h, l, s]
    y_diag = jnp.einsum("bchls,bcshp->bclhp", CB * decay, X)

    # 2. chunk states: the state each chunk ends in, started from zero (last row of `decay`)
    decay_to_end = jnp.swapaxes(decay[..., -1, :], 2, 3)  # [b, c, s, h]: exp(a_{s+1..last})
    B, C = per_head(B, axis=3), per_head(C, axis=3)  # [b, c, l, h, n]
    states = jnp.einsum("bcshn,bcshp->bchpn", B, X * decay_to_end[..., None])

    # 3. inter-chunk recurrence: S_c = exp(sum of a over chunk c) S_{c-1} + states_c
    chunk_decay = jnp.exp(a_cum[..., -1])[..., None, None]  # [b, c, h, 1, 1]
    if initial_state is not None:
        h0 = initial_state.astype(f)
    else:
        h0 = jnp.zeros((b, h, p, states.shape[-1]), f)

    def step(state, inp):  # one chunk: returns (its end state, the state entering it)
        decay_c, states_c = inp
        return decay_c * state + states_c, state

    final_state, entering = jax.lax.scan(
        step, h0, (jnp.moveaxis(chunk_decay, 1, 0), jnp.moveaxis(states, 1, 0)))
    entering = jnp.moveaxis(entering, 0, 1)  # [b, c, h, p, n]

    # 4. state -> output: y_l += exp(a_1 + ... + a_l) C_l . S_{c-1}
    decay_in = jnp.swapaxes(jnp.exp(a_cum), 2, 3)[..., None]  # [b, c, l, h, 1]
    y_off = jnp.einsum("bclhn,bchpn->bclhp", C, entering) * decay_in

    y = (y_diag + y_off).reshape(b, c * l, h, p)[:, :length]
    return y.astype(out_dtype), final_state


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
) -> jax.Array:
    """Hydra's quasiseparable mixer QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + D X.

    x: [batch, length, heads, headdim]; dt_fw, dt_bw, diag: [batch, length, heads];
    A: [heads]; B_*, C_*: [batch, length, groups, d_state]. All arguments in original time
    order (the backward ones are flipped here). Both directions run as one SSD call with the
    flipped sequence stacked along the batch axis. Returns y: [batch, length, heads, headdim].
    """
    if diag.shape != dt_fw.shape or dt_bw.shape != dt_fw.shape:
        raise ValueError(f"quasiseparable expects dt_fw, dt_bw and diag of one shape "
                         f"[batch, length, heads], got {dt_fw.shape}, {dt_bw.shape}, {diag.shape}")
    b = x.shape[0]

    def both(fw: jax.Array, bw: jax.Array) -> jax.Array:
        return jnp.concatenate([fw, jnp.flip(bw, axis=1)], axis=0)

    y, _ = ssd(both(x, x), both(dt_fw, dt_bw), A, both(B_fw, B_bw), both(C_fw, C_bw),
               chunk_size=chunk_size)
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
