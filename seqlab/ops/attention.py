"""Softmax attention: dense (MHA / GQA / MQA), RoPE, exact top-k, DeepSeek Sparse Attention.

Every tensor is laid out ``[batch, length, heads, dim]`` (flash-linear-attention's ``b t h d``).
Query heads ``Hq`` are a multiple of key/value heads ``H``; query head ``h`` reads key/value head
``h // (Hq // H)`` (grouped-query attention, Ainslie et al. 2023; ``H = 1`` is MQA).

Positions: query ``t`` sits at absolute position ``t + q_offset`` and key ``s`` at ``s``; with
``causal=True`` key ``s`` is visible to query ``t`` iff ``s <= t + q_offset``. ``q_offset`` may be
a traced scalar, which is how a decode step attends to a fixed-size KV cache.
``mask: [batch, S]`` bool marks real keys (False = padding, never attended).
Logits, softmax and its reductions run in float32 (float64 when the inputs are float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "attention",
    "rope_angles",
    "apply_rope",
    "topk_attention",
    "dsa_indexer",
    "sparse_attention",
    "dsa",
    "dsa_indexer_loss",
]


def _check_heads(q: jax.Array, k: jax.Array, v: jax.Array) -> int:
    """Validate [B,T,Hq,D] / [B,S,H,D] / [B,S,H,Dv]; return the group size G = Hq // H."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "attention expects q [batch, length, heads, dim], k and v [batch, length, kv_heads, "
            f"dim]; got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
    hq, h = q.shape[2], k.shape[2]
    if h == 0 or hq % h:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({h})")
    return hq // h


def _acc_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _visible(
    t: int, s: int, *, causal: bool, q_offset, mask: jax.Array | None, t0: int = 0
) -> jax.Array:
    """Visibility [batch or 1, t, s] of key s to query t0 + t (bool)."""
    vis = jnp.ones((1, t, s), bool)
    if causal:
        qpos = jnp.arange(t0, t0 + t) + q_offset
        vis = vis & (jnp.arange(s)[None, :] <= qpos[:, None])[None]
    if mask is not None:
        vis = vis & mask[:, None, :]
    return vis


def _masked_softmax(logits: jax.Array, vis: jax.Array, axis: int = -1) -> jax.Array:
    """softmax over visible entries; a row with no visible entry gives zeros (not NaN)."""
    p = jax.nn.softmax(jnp.where(vis, logits, jnp.finfo(logits.dtype).min), axis=axis)
    return jnp.where(vis, p, 0.0)


def _attention_xla(q, k, v, *, causal, scale, mask, q_offset, t0=0):
    """Dense attention as einsums; K/V are never repeated (the group axis g is explicit).

    o_{t,h} = sum_s softmax_s(scale * q_{t,h} . k_{s,h//G}) v_{s,h//G}   (Vaswani et al. eq. 1)
    """
    b, t, hq, d = q.shape
    g = hq // k.shape[2]
    acc = _acc_dtype(q.dtype)
    qg = q.reshape(b, t, k.shape[2], g, d)
    logits = jnp.einsum("bthgd,bshd->bhgts", qg, k, preferred_element_type=acc) * scale
    vis = _visible(t, k.shape[1], causal=causal, q_offset=q_offset, mask=mask, t0=t0)
    p = _masked_softmax(logits, vis[:, None, None])
    o = jnp.einsum("bhgts,bshd->bthgd", p.astype(v.dtype), v, preferred_element_type=acc)
    return o.reshape(b, t, hq, v.shape[-1]).astype(q.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    scale: float | None = None,
    mask: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array:
    """Dense softmax attention with grouped KV heads.

    q: [batch, T, Hq, D]; k: [batch, S, H, D]; v: [batch, S, H, Dv]; mask: [batch, S] bool or None.
    Returns o: [batch, T, Hq, Dv], ``o = softmax(scale q k^T + M) v`` (Vaswani et al. 2017, eq. 1),
    scale defaults to 1/sqrt(D). A query that sees no key (a padded position) returns a finite
    value of no meaning.

    Path: ``jax.nn.dot_product_attention`` when it applies (``D == Dv``, ``q_offset == 0``):
    cuDNN's fused kernel for half precision on a GPU (no padding mask), else its XLA form, which
    on CPU is faster than our einsum form (scripts/bench/bench_attention.py). Every other input
    (MLA's ``D != Dv``, a traced decode offset, float64) takes the einsum form
    ``_attention_xla``.
    """
    _check_heads(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    use_cudnn = (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] == v.shape[-1]
        and mask is None
        and isinstance(q_offset, int)
        and q_offset == 0
        and (not causal or q.shape[1] == k.shape[1])
    )
    if use_cudnn:
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=causal, implementation="cudnn"
        )
    if (
        q.dtype != jnp.float64
        and q.shape[-1] == v.shape[-1]
        and isinstance(q_offset, int)
        and q_offset == 0
    ):
        m = None if mask is None else mask[:, None, None, :]
        return jax.nn.dot_product_attention(
            q, k, v, mask=m, scale=scale, is_causal=causal, implementation="xla"
        )
    return _attention_xla(q, k, v, causal=causal, scale=scale, mask=mask, q_offset=q_offset)


def rope_angles(
    positions: jax.Array, dim: int, base: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
    """cos, sin of the rotary angles: positions [...] -> [..., dim // 2] each (float32).

    theta_i = base^(-2i / dim), angle = position * theta_i (RoFormer, Su et al. 2021, eq. 15).
    """
    if dim % 2:
        raise ValueError(f"RoPE needs an even dimension, got {dim}")
    inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    ang = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding of x: [batch, T, heads, D] at positions [batch, T] or [T].

    Pairs dimension i with i + D/2 (the "rotate-half" layout of GPT-NeoX / Llama) and rotates
    each pair by angle position * theta_i (RoFormer eq. 34):
    ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``.
    """
    cos, sin = rope_angles(positions, x.shape[-1], base)
    if positions.ndim == 1:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = jnp.split(x.astype(_acc_dtype(x.dtype)), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


_TOPK_BLOCK = 256  # queries per block of topk_attention (measured best on CPU at T = 1k-4k)
_TOPK_GROUPS = 8  # causal key-length groups, compiled separately (bounds compile time)


def _topk_softmax_block(qg, k, v, vis, topk, scale):
    """Top-k attention of one query block against the keys it may see, normalised at the end.

    qg: [b, t, H, G, D]; k: [b, s, H, D]; v: [b, s, H, Dv]; vis: [b or 1, t, s] bool.
    Returns o: [b, t, H, G, Dv] in the accumulation dtype; a row with no visible key gives 0.

    The threshold is the k-th largest visible score of each row (``lax.top_k`` on scores where
    the invisible ones are -inf, under ``stop_gradient``: the selection is piecewise constant);
    keys scoring ``>=`` it are kept, so ties with the k-th score are all kept. The whole top-k
    value block is reduced (min -> threshold, max -> softmax shift) on purpose: XLA:CPU rewrites
    a sort into its fast TopK kernel only when the top-k output is used from element 0, and a
    lone ``vals[..., -1]`` compiles to a full-row sort (~15x slower at T = 1024).
    """
    acc = _acc_dtype(qg.dtype)
    vis = vis[:, None, None]
    logits = jnp.einsum("bthgd,bshd->bhgts", qg, k, preferred_element_type=acc) * scale
    masked = jnp.where(vis, logits, -jnp.inf)
    if topk < k.shape[1]:
        top = lax.top_k(lax.stop_gradient(masked), topk)[0]
        keep = vis & (masked >= jnp.min(top, axis=-1, keepdims=True))
        m = jnp.max(top, axis=-1, keepdims=True)
    else:
        keep = vis
        m = lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True))
    # softmax over the kept keys, exp(x - max) / sum; the shift needs no gradient (it cancels)
    e = jnp.exp(jnp.where(keep, logits - jnp.where(jnp.isfinite(m), m, 0.0), -jnp.inf))
    denom = jnp.sum(e, axis=-1)
    o = jnp.einsum("bhgts,bshd->bthgd", e.astype(v.dtype), v, preferred_element_type=acc)
    denom = jnp.where(denom > 0, denom, 1.0).transpose(0, 3, 1, 2)[..., None]
    return o / denom


def topk_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    topk: int,
    causal: bool = True,
    scale: float | None = None,
    mask: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array:
    """Top-k attention (Gupta et al. 2021, 'Memory-efficient Transformers via Top-k Attention').

    Shapes as :func:`attention`. Each (query, head) keeps the ``topk`` visible keys of highest
    score ``scale q.k`` and takes the softmax over those only; keys whose score ties the k-th
    score are all kept. ``topk >= S`` is dense attention. A query that sees no key returns 0.
    Gradients reach q, k, v through the kept keys; the selection itself carries none.

    Queries run in blocks of at most 256 (``lax.map``; scores held per block: ``[b, Hq, 256,
    S]``). With ``causal`` and a static ``q_offset`` the blocks form up to 8 groups of
    consecutive queries, and a group scores only the keys its last query can see, which skips
    about half of the causal work at long T.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    _check_heads(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, t, hq, d = q.shape
    s, h = k.shape[1], k.shape[2]
    static_causal = causal and isinstance(q_offset, int)
    n_blocks = -(-t // _TOPK_BLOCK)
    block = -(-t // n_blocks)  # pads fewer than n_blocks queries
    per_group = -(-n_blocks // min(n_blocks, _TOPK_GROUPS)) if static_causal else n_blocks
    tp = n_blocks * block
    qg = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0))).reshape(b, tp, h, hq // h, d)
    groups = []
    for t0 in range(0, tp, per_group * block):
        t1 = min(tp, t0 + per_group * block)
        n = (t1 - t0) // block
        # keys past the group's last query position are invisible to the whole group
        s1 = min(s, max(t1 + q_offset, 1)) if static_causal else s
        vis = _visible(
            t1 - t0, s1, causal=causal, q_offset=q_offset,
            mask=None if mask is None else mask[:, :s1], t0=t0,
        )
        kg, vg = k[:, :s1], v[:, :s1]
        o = lax.map(
            lambda qv, kg=kg, vg=vg: _topk_softmax_block(qv[0], kg, vg, qv[1], topk, scale),
            (
                qg[:, t0:t1].reshape(b, n, block, h, hq // h, d).swapaxes(0, 1),
                vis.reshape(vis.shape[0], n, block, s1).swapaxes(0, 1),
            ),
        )
        groups.append(o.swapaxes(0, 1).reshape(b, t1 - t0, h, hq // h, v.shape[-1]))
    o = groups[0] if len(groups) == 1 else jnp.concatenate(groups, axis=1)
    return o[:, :t].reshape(b, t, hq, v.shape[-1]).astype(q.dtype)


def _index_scores(q_idx, k_idx, w_idx, scale):
    """Lightning-indexer scores I[b,t,s] = sum_j w[t,j] relu(scale q_idx[t,j].k_idx[s]).

    DeepSeek-V3.2 (2025), eq. 1. q_idx: [B,T,Hi,Di]; k_idx: [B,S,Di]; w_idx: [B,T,Hi] or None.
    """
    acc = _acc_dtype(q_idx.dtype)
    sim = jnp.einsum("btjd,bsd->btjs", q_idx, k_idx, preferred_element_type=acc)
    sim = jax.nn.relu(sim * scale)
    if w_idx is None:
        return sim.sum(2)
    return jnp.einsum("btjs,btj->bts", sim, w_idx.astype(acc))


def dsa_indexer(
    q_idx: jax.Array,
    k_idx: jax.Array,
    w_idx: jax.Array | None = None,
    *,
    topk: int,
    scale: float | None = None,
    mask: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array:
    """The lightning indexer's causal top-k: indices [batch, T, topk] int32, -1 = empty slot.

    q_idx: [B, T, Hi, Di]; k_idx: [B, S, Di] (one index key per token, shared by the Hi heads);
    w_idx: [B, T, Hi] or None (equal weights). scale defaults to 1/sqrt(Di). Keys invisible to a
    query (future, padding) are never selected; a query seeing fewer than topk keys pads with -1.
    Indices come in decreasing score order (ties in any order).
    """
    scale = q_idx.shape[-1] ** -0.5 if scale is None else scale
    t, s = q_idx.shape[1], k_idx.shape[1]
    score = _index_scores(q_idx, k_idx, w_idx, scale)
    vis = _visible(t, s, causal=True, q_offset=q_offset, mask=mask)
    score = jnp.where(vis, score, -jnp.inf)
    kk = min(topk, s)
    vals, idx = lax.top_k(score, kk)
    idx = jnp.where(jnp.isneginf(vals), -1, idx).astype(jnp.int32)
    if topk > kk:
        idx = jnp.pad(idx, ((0, 0), (0, 0), (0, topk - kk)), constant_values=-1)
    return idx


def _gathered_block(q, k, v, idx, scale):
    """A few queries against their own keys: q [n, H, G, D], k [S, H, D], v [S, H, Dv], idx [n, K]
    (indices into the rows of k and v, -1 = empty) -> [n, H, G, Dv]."""
    acc = _acc_dtype(q.dtype)
    valid = idx >= 0
    safe = jnp.where(valid, idx, 0)
    kg, vg = k[safe].astype(acc), v[safe].astype(acc)  # [n, K, H, D]: only the selected rows
    if q.shape[2] == 1:  # no group axis: XLA:CPU loops badly over a broadcast size-1 axis
        qs = q[:, :, 0].astype(acc)
        logits = jnp.sum(qs[:, None] * kg, axis=-1) * scale  # [n, K, H]
        p = _masked_softmax(logits, valid[:, :, None], axis=1)
        return jnp.sum(p[..., None] * vg, axis=1)[:, :, None]
    # multiply-and-reduce over the minor axis: XLA fuses the gather into it (no transpose)
    logits = jnp.sum(q.astype(acc)[:, None] * kg[:, :, :, None, :], axis=-1) * scale  # [n,K,H,G]
    p = _masked_softmax(logits, valid[:, :, None, None], axis=1)
    return jnp.sum(p[..., None] * vg[:, :, :, None, :], axis=1)


def sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    *,
    scale: float | None = None,
    query_block: int = 4,
) -> jax.Array:
    """Attention of each query over its own gathered keys (all heads share the selection).

    q: [B, T, Hq, D]; k: [B, S, H, D]; v: [B, S, H, Dv]; indices: [B, T, K] int, -1 = empty.
    o_{t,h} = sum_{j: i_j >= 0} softmax_j(scale q_{t,h} . k_{i_j}) v_{i_j}   -> [B, T, Hq, Dv]
    (DeepSeek-V3.2 eq. 2). Only the K selected keys and values are read per query: queries run
    ``query_block`` at a time under ``lax.map``, so the gathered rows ([query_block, K, H, D])
    stay in cache and no [T, S] array exists. Gradients flow to q, k, v (the gather transposes
    to a scatter-add), none to the integer indices.
    """
    q, k, v, indices = map(jnp.asarray, (q, k, v, indices))
    g = _check_heads(q, k, v)
    if indices.shape[:2] != q.shape[:2] or indices.ndim != 3:
        raise ValueError(f"indices must be [batch, T, K] with q {q.shape}, got {indices.shape}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, t, hq, d = q.shape
    s, h, kk = k.shape[1], k.shape[2], indices.shape[-1]
    # one flat key table [B*S, H, D]: row b*S + i holds key i of batch row b
    flat = jnp.where(indices >= 0, indices + s * jnp.arange(b)[:, None, None], -1)
    n = min(query_block, b * t)
    pad = -(b * t) % n
    qb = jnp.pad(q.reshape(b * t, h, g, d), ((0, pad), (0, 0), (0, 0), (0, 0)))
    ib = jnp.pad(flat.reshape(b * t, kk), ((0, pad), (0, 0)), constant_values=-1)
    kf, vf = k.reshape(b * s, h, d), v.reshape(b * s, h, v.shape[-1])
    o = lax.map(
        lambda a: _gathered_block(a[0], kf, vf, a[1], scale),
        (qb.reshape(-1, n, h, g, d), ib.reshape(-1, n, kk)),
    )
    return o.reshape(-1, hq, v.shape[-1])[: b * t].reshape(b, t, hq, -1).astype(q.dtype)


def dsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_idx: jax.Array,
    k_idx: jax.Array,
    w_idx: jax.Array | None = None,
    *,
    topk: int,
    scale: float | None = None,
    index_scale: float | None = None,
    mask: jax.Array | None = None,
    block_size: int = 256,
    return_indices: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DeepSeek Sparse Attention (DeepSeek-V3.2, 2025), causal, over one whole sequence.

    q: [B, T, Hq, D]; k: [B, T, H, D]; v: [B, T, H, Dv]; q_idx: [B, T, Hi, Di]; k_idx: [B, T, Di];
    w_idx: [B, T, Hi] or None; mask: [B, T] bool (real tokens) or None.
    The ReLU lightning indexer (:func:`dsa_indexer`, eq. 1) picks the top-k causal keys of each
    query, shared by all heads, and attention runs over those keys only (eq. 2,
    :func:`sparse_attention`). Same conventions as flash-linear-attention's ``naive_dsa``:
    attention scale 1/sqrt(D), indexer scale 1/sqrt(Di), -1 padding of the indices.

    Work is done per block of ``block_size`` queries, each against its causal key prefix only:
    memory stays O(block T) for the indexer and O(block topk H D) for the gathered keys. Blocks
    whose whole prefix fits in topk select every visible key, so they run dense causal attention
    (same value, no indexer). Returns o [B, T, Hq, Dv] (and indices [B, T, topk] when asked).
    """
    _check_heads(q, k, v)
    if topk < 1 or block_size < 1:
        raise ValueError(f"topk and block_size must be >= 1, got {topk}, {block_size}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t = q.shape[1]
    outs, idxs = [], []
    for t0 in range(0, t, block_size):
        t1 = min(t0 + block_size, t)
        km = None if mask is None else mask[:, :t1]
        if t1 <= topk:
            o = _attention_xla(
                q[:, t0:t1], k[:, :t1], v[:, :t1], causal=True, scale=scale, mask=km, q_offset=0,
                t0=t0,
            )
            if return_indices:
                vis = _visible(t1 - t0, t1, causal=True, q_offset=0, mask=km, t0=t0)
                ar = jnp.broadcast_to(jnp.arange(t1, dtype=jnp.int32), vis.shape)
                # visible keys first, in index order; the empty slots -1 after them
                order = jnp.argsort(~vis, axis=-1, stable=True).astype(jnp.int32)
                sel = jnp.take_along_axis(jnp.where(vis, ar, -1), order, axis=-1)
                sel = jnp.pad(sel, ((0, 0), (0, 0), (0, topk - t1)), constant_values=-1)
                idxs.append(jnp.broadcast_to(sel, (q.shape[0], t1 - t0, topk)))
        else:
            w = None if w_idx is None else w_idx[:, t0:t1]
            idx = dsa_indexer(
                q_idx[:, t0:t1], k_idx[:, :t1], w, topk=topk, scale=index_scale, mask=km,
                q_offset=t0,
            )
            o = sparse_attention(q[:, t0:t1], k[:, :t1], v[:, :t1], idx, scale=scale)
            idxs.append(idx)
        outs.append(o)
    o = jnp.concatenate(outs, axis=1)
    if return_indices:
        return o, jnp.concatenate(idxs, axis=1)
    return o


def dsa_indexer_loss(
    q: jax.Array,
    k: jax.Array,
    q_idx: jax.Array,
    k_idx: jax.Array,
    w_idx: jax.Array | None = None,
    *,
    topk: int | None = None,
    scale: float | None = None,
    index_scale: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """The indexer's KL objective of DeepSeek-V3.2 (2025), averaged over real queries.

    Target p_t: the main attention distribution ``softmax(scale q_{t,h} . k_s)`` summed over the
    Hq heads and L1-normalised over keys; it is held fixed (``stop_gradient``). Prediction:
    ``softmax_s(I_{t,s})`` of the indexer scores. Dense warm-up (``topk=None``, eq. 3):
    ``KL(p_t || softmax(I_t))`` over all causal keys. Sparse stage (``topk`` given, eq. 4): both
    distributions restricted to the indexer's own top-k set S_t. Gradients reach only q_idx,
    k_idx, w_idx. Shapes as :func:`dsa` (q: [B,T,Hq,D], k: [B,T,H,D]). This is a training
    objective, so it forms [B, T, T] arrays (as the paper's warm-up does).
    """
    b, t, hq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    index_scale = q_idx.shape[-1] ** -0.5 if index_scale is None else index_scale
    acc = _acc_dtype(q.dtype)
    vis = _visible(t, t, causal=True, q_offset=0, mask=mask)  # [B|1, T, T]
    if topk is not None:
        idx = dsa_indexer(
            lax.stop_gradient(q_idx), lax.stop_gradient(k_idx),
            None if w_idx is None else lax.stop_gradient(w_idx), topk=topk, scale=index_scale,
            mask=mask,
        )
        sel = jnp.zeros((b, t, t + 1), bool)
        put = jax.vmap(jax.vmap(lambda row, i: row.at[i].set(True)))
        sel = put(sel, jnp.where(idx < 0, t, idx))
        vis = vis & sel[..., :t]
    h = k.shape[2]
    qg = lax.stop_gradient(q).reshape(b, t, h, hq // h, d)
    logits = jnp.einsum("bthgd,bshd->bhgts", qg, lax.stop_gradient(k), preferred_element_type=acc)
    p = _masked_softmax(logits * scale, vis[:, None, None]).sum((1, 2))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    score = _index_scores(q_idx, k_idx, w_idx, index_scale)
    logq = jax.nn.log_softmax(jnp.where(vis, score, -1e30), axis=-1)
    kl = jnp.where(vis & (p > 0), p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0).sum(-1)
    real = jnp.ones((b, t), bool) if mask is None else mask
    return jnp.sum(jnp.where(real, kl, 0.0)) / jnp.maximum(real.sum(), 1)
