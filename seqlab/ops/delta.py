"""The delta rule with gates and products of Householders (DeltaNet, Gated DeltaNet, DeltaProduct).

One recurrence covers the family. Per token t, with state ``S: [K, V]``:

    S <- exp(g_t) S                                     (Gated DeltaNet, Yang et al. 2024b, eq. 10)
    for j in 0..n-1:                                    (DeltaProduct, Siems et al. 2025, eq. 3)
        S <- S + beta_tj k_tj (v_tj - S^T k_tj)^T        = (I - beta k k^T) S + beta k v^T
    o_t = S^T (scale q_t)

n = 1 is DeltaNet (Schlag et al. 2021; Yang et al. 2024a, eq. 1) or Gated DeltaNet. The keys,
values and betas of the n steps of token t sit at rows ``t*n + j`` of ``k, v, beta`` (the layout of
flash-linear-attention's ``naive_recurrent_gated_delta_product``, whose conventions we share:
``scale`` defaults to ``K ** -0.5``, the gate is in log space and applied once per token, before
its n steps; the output is cast to ``q.dtype``, the final state is float32).

``delta_product_recurrent`` is the sequential reference (``lax.scan`` over tokens).
``delta_product`` is the chunkwise-parallel form. It views the n steps per token as one
sequence of ``T*n`` micro-steps whose gate is ``g_t`` at the first step of each token and 0 at
the others, and whose queries sit at the last step of each token. Within a chunk of ``c``
micro-steps, with ``G_r`` the cumulative gate from the chunk start and ``S_0`` the state entering
the chunk, the updates ``d_r = S_r - exp(g_r) S_{r-1}`` (written ``k_r d_r^T``) satisfy
(Yang et al. 2024a, sec. 3.2, the UT transform, with the gates of Yang et al. 2024b, sec. 3.3):

    (I + diag(beta) A) D = diag(beta) V - diag(beta exp(G)) K S_0,
    A_rs = exp(G_r - G_s) k_r . k_s  (s < r),

so ``D = U - W S_0`` with ``U = T diag(beta) V``, ``W = T diag(beta exp(G)) K`` and
``T = (I + diag(beta) A)^{-1}`` (a unit lower-triangular solve). Then

    O = diag(exp(G_q)) Q S_0 + (M * Q K^T) D,       M_qs = exp(G_q - G_s) (s <= q)
    S_c = exp(G_c) S_0 + (exp(G_c - G) * K)^T D.

Only ``S_c`` needs a sequential pass over chunks (two ``[c, K] x [K, V]`` products per
chunk, which in the XLA form also give ``D``, and ``O = diag(exp(G_q)) Q S_0 + P D`` with
``P = M * Q K^T``);
everything else is batched matmuls over chunks. The UT inverse ``T`` is ``ops.triangular``'s
batched blocked inverse (with its own VJP). On the CPU the XLA form walks the chunks in groups
small enough to stay in cache: one ``lax.scan`` over groups, each step batching its group's local
terms and then scanning its chunks (on the CPU the forward runs 1.4-1.8x faster this way than
batching the local terms over all chunks first, docs/performance.md); lowered for a GPU or TPU
it batches over all chunks around one ``lax.scan`` (``ops.scan.on_cpu``). The Pallas form
(``implementation="pallas"``) batches the local terms over all chunks and walks the chunks in
one kernel (``ops.state_passes``). The chunk-local algebra (both directions) is in
``ops.delta_chunks``; this module arranges the layout and the passes.

The backward pass is written for the algorithm (``jax.custom_vjp``), after the backward of
flash-linear-attention's ``chunk_gated_delta_rule``: the forward keeps only its inputs, the
UT inverses ``T`` and the state entering each chunk; the backward recomputes the decay masks,
``A``, ``P`` and ``D`` chunk by chunk, carries ``dS`` between chunks in one reverse pass
(grouped the same way) and forms the gradients with batched matmuls. Plain reverse-mode
autodiff would store (and re-read) every ``[c, c]`` intermediate instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqlab.ops import delta_chunks, state_passes
from seqlab.ops.scan import on_cpu


def _check(q, k, v, beta, g, num_householder, initial_state, chunk_size=None):
    if num_householder < 1:
        raise ValueError(f"num_householder must be >= 1, got {num_householder}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if q.ndim != 4:
        raise ValueError(f"q must be [batch, length, heads, key_dim], got shape {q.shape}")
    b, t, h, dk = q.shape
    n = num_householder
    if k.shape != (b, t * n, h, dk):
        raise ValueError(f"k must be [B, T*n, H, K] = {(b, t * n, h, dk)}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != (b, t * n, h):
        raise ValueError(f"v must be [B, T*n, H, V] with B,T*n,H = {(b, t * n, h)}, got {v.shape}")
    if beta.shape != (b, t * n, h):
        raise ValueError(f"beta must be [B, T*n, H] = {(b, t * n, h)}, got {beta.shape}")
    if g is not None and g.shape != (b, t, h):
        raise ValueError(f"g must be [B, T, H] = {(b, t, h)} or None, got {g.shape}")
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(b, h, dk, v.shape[-1])}, "
            f"got {initial_state.shape}"
        )


def _acc_dtype(*xs) -> jnp.dtype:
    """float32 accumulation, or float64 when the inputs are float64."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def delta_product_recurrent(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    g: jax.Array | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    chunk_size: int | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Sequential gated delta product (the reference form; ``chunk_size`` and
    ``implementation`` are ignored).

    q: [B, T, H, K]; k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H];
    g: [B, T, H] log-space decay or None; initial_state: [B, H, K, V] or None.
    Returns o: [B, T, H, V] (dtype of q) and the final state [B, H, K, V] (float32/float64).
    Per token: ``S <- exp(g_t) S``, then n steps ``S <- S + beta k (v - S^T k)^T``,
    then ``o_t = S^T (scale q_t)`` (Siems et al. 2025, eq. 3).
    """
    del chunk_size, implementation
    _check(q, k, v, beta, g, num_householder, initial_state)
    b, t, h, dk = q.shape
    n, dv = num_householder, v.shape[-1]
    acc = _acc_dtype(q, k, v, beta)
    scale = dk**-0.5 if scale is None else scale
    qs = (q.astype(acc) * scale).swapaxes(0, 1)  # [T, B, H, K]
    ks = k.astype(acc).reshape(b, t, n, h, dk).transpose(1, 2, 0, 3, 4)  # [T, n, B, H, K]
    vs = v.astype(acc).reshape(b, t, n, h, dv).transpose(1, 2, 0, 3, 4)
    bs = beta.astype(acc).reshape(b, t, n, h).transpose(1, 2, 0, 3)  # [T, n, B, H]
    gs = jnp.zeros((t, b, h), acc) if g is None else g.astype(acc).swapaxes(0, 1)
    s0 = jnp.zeros((b, h, dk, dv), acc) if initial_state is None else initial_state.astype(acc)

    def step(s, xs):
        q_t, k_t, v_t, b_t, g_t = xs
        s = s * jnp.exp(g_t)[..., None, None]
        for j in range(n):
            err = v_t[j] - jnp.einsum("bhkv,bhk->bhv", s, k_t[j])
            s = s + jnp.einsum("bhk,bhv->bhkv", b_t[j][..., None] * k_t[j], err)
        return s, jnp.einsum("bhkv,bhk->bhv", s, q_t)

    s, o = lax.scan(step, s0, (qs, ks, vs, bs, gs))
    return o.swapaxes(0, 1).astype(q.dtype), s


_CACHE_ELEMENTS = 2**15  # one [chunks, cn, max(cn, K, V)] array of a CPU group (128 KiB: in L2)


def _layout(x, chunks):
    """[B, chunks * m, H, ...] -> [chunks * B * H, m, ...]: the chunked layout z = (chunk, B, H)."""
    b, t, h = x.shape[:3]
    x = x.reshape(b, chunks, t // chunks, h, *x.shape[3:])
    return jnp.moveaxis(x, (1, 3), (0, 2)).reshape(chunks * b * h, t // chunks, *x.shape[4:])


def _unlayout(x, b, h):
    """The inverse of ``_layout``: [chunks * B * H, m, ...] -> [B, chunks * m, H, ...]."""
    x = x.reshape(-1, b, h, *x.shape[1:])
    return jnp.moveaxis(x, (0, 2), (1, 3)).reshape(b, -1, h, *x.shape[4:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _chunked(q, k, v, beta, g, s0, n, c, scale, pallas):
    """(o [B, T, H, V], final state [nb, K, V]) for T a whole number of chunks (of whole CPU
    groups); see ``delta_product``. q: [B, T, H, K] (unscaled); k: [B, T*n, H, K];
    v: [B, T*n, H, V]; beta: [B, T*n, H]; g: [B, T*n, H], each token's gate at its first
    micro-step; s0: [nb, K, V]; all in the accumulation dtype. ``pallas``: run the two passes
    over the chunks as the kernels of ``ops.state_passes`` instead of ``lax.scan``.

    Without a gradient the CPU form takes each group's slice of the inputs into the chunked
    layout inside its step and writes its outputs back in place (the rearranging stays in
    cache: 5-24% faster at T = 2k-16k than rearranging whole arrays); with one, the inputs are
    rearranged once, since the backward pass reads them again (``_chunked_fwd``).
    """
    (b, t, h, _), nc = q.shape, q.shape[1] // c
    if pallas:
        return _batched_forward(*_to_chunks(q, k, v, beta, g, c, scale), s0, n, True, b, h)[0]

    def grouped(q, k, v, beta, g, s0):
        gc = _group_size(t // c, s0.shape, c * n)
        span = gc * c  # tokens per group

        def group(carry, i):
            s, o_all = carry
            xs = [_layout(lax.dynamic_slice_in_dim(x, i * span * m, span * m, axis=1), gc)
                  for x, m in ((q, 1), (k, n), (v, n), (beta, n), (g, n))]
            s, (o,), _ = _group_forward(s, xs[0] * scale, *xs[1:], n, residuals=False)
            o_all = lax.dynamic_update_slice_in_dim(o_all, _unlayout(o, b, h), i * span, axis=1)
            return (s, o_all), None

        o_all = jnp.zeros((b, t, h, s0.shape[-1]), q.dtype)
        (s, o), _ = lax.scan(group, (s0, o_all), jnp.arange(nc // gc))
        return o, s

    def batched(*args):
        return _batched_forward(*_to_chunks(*args[:5], c, scale), args[5], n, False, b, h)[0]

    return on_cpu(grouped, batched, q, k, v, beta, g, s0)


def _to_chunks(q, k, v, beta, g, c, scale):
    """The inputs in the chunked layout (``_layout``), q scaled."""
    nc = q.shape[1] // c
    return (_layout(q, nc) * scale, *(_layout(x, nc) for x in (k, v, beta, g)))


def _group_size(nc, state_shape, cn):
    """Chunks per CPU group (``_CACHE_ELEMENTS``); ``delta_product`` pads to whole groups."""
    nb, dk, dv = state_shape
    return delta_chunks.group_size(nc, nb, cn, max(dk, dv), _CACHE_ELEMENTS)


def _group_forward(s, q_c, k_c, v_c, b_c, g_c, n, residuals):
    """One CPU group of chunks [gc * nb, ...]: its local terms batched, then a scan over its
    chunks emitting each chunk's output (5-12% faster than batching the outputs after the
    scan). Returns (the state leaving the group, (o [gc * nb, c, V], and with ``residuals``
    the state entering each chunk [gc, nb, K, V]), the UT inverses T [gc * nb, cn, cn])."""
    nb = s.shape[0]
    t_inv, u, w, q_g, p, k_dec, e_last = delta_chunks.forward_terms(q_c, k_c, v_c, b_c, g_c, n)

    def step(s, xs):  # one chunk: D = U - W S, O = Q_g S + P D, S' = exp(G_last) S + Kd^T D
        u_j, w_j, k_j, e_j, q_j, p_j = xs
        d = u_j - w_j @ s
        o = q_j @ s + p_j @ d
        return e_j[:, None, None] * s + k_j @ d, (o, s) if residuals else (o,)

    xs = [x.reshape(-1, nb, *x.shape[1:]) for x in (u, w, k_dec, e_last, q_g, p)]
    s, (o, *s_in) = lax.scan(step, s, xs, unroll=4)
    return s, (o.reshape(-1, *o.shape[2:]), *s_in), t_inv


def _batched_forward(q_c, k_c, v_c, b_c, g_c, s0, n, pallas, b, h):
    """``delta_chunks.batched_forward`` with its output back in the [B, T, H, V] layout."""
    (o, s), saved = delta_chunks.batched_forward(q_c, k_c, v_c, b_c, g_c, s0, n, pallas)
    return (_unlayout(o, b, h), s), saved


def _chunked_fwd(q, k, v, beta, g, s0, n, c, scale, pallas):
    """The forward with residuals: the inputs rearranged once into the chunked layout (kept
    for the backward pass), then one scan over the CPU's cache-sized groups of chunks
    (``_group_forward``), or ``delta_chunks.batched_forward`` elsewhere."""
    b, h = q.shape[0], q.shape[2]
    chunked = _to_chunks(q, k, v, beta, g, c, scale)
    if pallas:
        out, saved = _batched_forward(*chunked, s0, n, True, b, h)
        return out, (*chunked, *saved)

    def grouped(q_c, k_c, v_c, b_c, g_c, s0):
        gc = _group_size(q_c.shape[0] // s0.shape[0], s0.shape, k_c.shape[1])

        def group(s, xs):
            s, (o, s_in), t_inv = _group_forward(s, *xs, n, residuals=True)
            return s, (o, s_in, t_inv)

        s, out = lax.scan(group, s0, [x.reshape(-1, gc * s0.shape[0], *x.shape[1:])
                                      for x in (q_c, k_c, v_c, b_c, g_c)])
        o, s_in, t_inv = (x.reshape(-1, *x.shape[3 if i == 1 else 2:]) for i, x in enumerate(out))
        return (_unlayout(o, b, h), s), (t_inv, s_in)

    out, saved = on_cpu(grouped, lambda *a: _batched_forward(*a, n, False, b, h), *chunked, s0)
    return out, (*chunked, *saved)


def _chunked_bwd(n, c, scale, pallas, res, cts):
    """Backward pass from the saved chunk-entering states S_in and UT inverses T (as fla's
    chunk_gated_delta_rule keeps T): the decay masks, A, P and D are recomputed chunk by
    chunk and one reverse pass carries dS between chunks (``delta_chunks.batched_backward``;
    its ``bwd_grads`` has the algebra). On the CPU, one reverse scan over the forward's
    cache-sized groups of chunks, each step the batched backward of its group; batched over all
    chunks elsewhere (``ops.scan.on_cpu``)."""
    do, ds_last = cts
    b, h = do.shape[0], do.shape[2]
    do_c = _layout(do, do.shape[1] // c)
    if pallas:
        grads = delta_chunks.batched_backward(n, True, res, do_c, ds_last)
    else:
        def grouped(res, do_c, ds_last):
            nb = ds_last.shape[0]
            gc = _group_size(res[1].shape[0] // nb, ds_last.shape, res[1].shape[1])

            def group(ds, xs):  # gc chunks x nb sequences, last group first
                *grads, ds = delta_chunks.batched_backward(n, False, xs[:-1], xs[-1], ds)
                return ds, grads

            ds0, grads = lax.scan(group, ds_last, [x.reshape(-1, gc * nb, *x.shape[1:])
                                                   for x in (*res, do_c)], reverse=True)
            return (*(x.reshape(-1, *x.shape[2:]) for x in grads), ds0)

        grads = on_cpu(grouped, lambda *a: delta_chunks.batched_backward(n, False, *a),
                       res, do_c, ds_last)
    dq, *rest, ds0 = grads
    return (*(_unlayout(x, b, h) for x in (dq * scale, *rest)), ds0)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


AUTO_CHUNK_STEPS = 32  # Householder micro-steps per chunk when chunk_size=None


def auto_chunk_size(length: int, num_householder: int = 1) -> int:
    """Tokens per chunk when ``chunk_size=None``: 32 micro-steps per chunk (at most ``length``).

    On the 2-core CPU (B=2, H=4, K=V=64, n=1, T=2048) chunks of 32 were the fastest of
    8/16/32/64/128 for the forward and for forward+backward (docs/performance.md); for n > 1 the
    chunk keeps the same number of Householder micro-steps.
    """
    return max(1, min(length, AUTO_CHUNK_STEPS // num_householder))


def delta_product(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    g: jax.Array | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    chunk_size: int | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Chunkwise-parallel gated delta product (WY/UT form; see the module docstring).

    Same arguments and results as ``delta_product_recurrent``: q: [B, T, H, K];
    k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H]; g: [B, T, H] or None;
    initial_state: [B, H, K, V] or None -> (o [B, T, H, V], final_state [B, H, K, V]).
    ``chunk_size`` counts tokens, so a chunk holds ``chunk_size * n`` Householder steps; None
    picks it from the length (``auto_chunk_size``). Any T: the tail is padded with
    beta = g = 0 steps, which leave the state unchanged. The backward pass is written for the
    algorithm (``jax.custom_vjp``): it keeps only the inputs, the UT inverses and the state
    entering each chunk and recomputes the other intra-chunk terms. ``implementation="pallas"``
    runs the two passes over the chunks (forward state, backward state gradient) as the Pallas
    kernels of ``ops.state_passes`` (Triton on a GPU, interpret mode elsewhere) instead of
    ``lax.scan``; it needs float32 accumulation and chunk micro-steps, K and V that are powers
    of two >= 16 (``chunk_size=None`` then means 32 micro-steps at every length; shorter inputs
    are padded). ``scale`` may be a traced value (then applied to q outside the custom VJP).
    """
    _check(q, k, v, beta, g, num_householder, initial_state, chunk_size)
    b, t, h, dk = q.shape
    n, dv = num_householder, v.shape[-1]
    acc = _acc_dtype(q, k, v, beta)
    scale = dk**-0.5 if scale is None else scale
    if implementation not in ("xla", "pallas"):
        raise ValueError(f"implementation must be 'xla' or 'pallas', got {implementation!r}")
    if implementation == "xla":
        c = min(auto_chunk_size(t, n) if chunk_size is None else chunk_size, t)
    else:  # the kernels' chunk sizes are fixed powers of two; a short sequence is padded
        c = max(1, AUTO_CHUNK_STEPS // n) if chunk_size is None else chunk_size
        if why := state_passes.unsupported(acc, **{"chunk steps": c * n, "K": dk, "V": dv}):
            raise ValueError(f"implementation='pallas': {why}; use implementation='xla'")
    cn = c * n  # micro-steps per chunk
    nc = -(-t // c)
    budget = delta_chunks.GROUP_ELEMENTS if implementation == "pallas" else _CACHE_ELEMENTS
    nc = -(-nc // (gc := delta_chunks.group_size(nc, b * h, cn, max(dk, dv), budget))) * gc
    pad = nc * c - t

    def padded(x, steps):  # [B, T*steps, H, ...] -> [B, nc*c*steps, H, ...], zeros at the end
        return jnp.pad(x.astype(acc), [(0, 0), (0, pad * steps)] + [(0, 0)] * (x.ndim - 2))

    if g is None:
        g_steps = jnp.zeros((b, nc * cn, h), acc)
    else:  # the token's gate sits at its first micro-step
        g_steps = jnp.zeros((b, nc * c, n, h), acc).at[:, :, 0].set(padded(g, 1))
        g_steps = g_steps.reshape(b, nc * cn, h)
    s0 = jnp.zeros((b * h, dk, dv), acc)
    if initial_state is not None:
        s0 = initial_state.astype(acc).reshape(b * h, dk, dv)
    out_dtype = q.dtype
    if not isinstance(scale, (int, float)):  # a traced scale: applied (and differentiated) here
        q, scale = q * scale, 1.0
    o, s = _chunked(padded(q, 1), padded(k, n), padded(v, n), padded(beta, n), g_steps, s0,
                    n, c, float(scale), implementation == "pallas")
    return o[:, :t].astype(out_dtype), s.reshape(b, h, dk, dv)
