"""DeepSeek Sparse Attention (DeepSeek-V3.2, 2025): the lightning indexer, attention over each
query's selected keys, the block-selection option and the indexer's training objective.

Layouts and conventions as in ``seqlab.ops.attention`` (``[batch, length, heads, dim]``, query
head ``h`` reads key/value head ``h // (Hq // H)``, float32 logits and softmax). All functions
are re-exported from ``seqlab.ops.attention``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from seqlab.ops.attention import (
    _acc_dtype,
    _attention_xla,
    _check_heads,
    _masked_softmax,
    _visible,
)

__all__ = ["dsa_indexer", "sparse_attention", "dsa", "dsa_indexer_loss"]


def _index_scores(q_idx, k_idx, w_idx, scale):
    """Lightning-indexer scores I[b,t,s] = sum_j w[t,j] relu(scale q_idx[t,j].k_idx[s]).

    DeepSeek-V3.2 (2025), eq. 1. q_idx: [B,T,Hi,Di]; k_idx: [B,S,Di]; w_idx: [B,T,Hi] or None.
    """
    acc = _acc_dtype(q_idx.dtype)
    # one [T, Di] x [Di, S] product per indexer head, the ReLU and weighted sum fused after
    # them: on CPU ~2x faster than one [T, Hi, S] product followed by a reduction over Hi
    score = jnp.zeros((), acc)
    for j in range(q_idx.shape[2]):
        sim = jax.nn.relu(
            jnp.einsum("btd,bsd->bts", q_idx[:, :, j], k_idx, preferred_element_type=acc) * scale
        )
        score = score + (sim if w_idx is None else sim * w_idx[:, :, j, None].astype(acc))
    return score


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
    (indices into the rows of k and v, -1 = empty) -> [n, H, G, Dv].

    Each query's K rows are gathered once and read by all of its H*G heads; with a shared KV
    (H = 1, MLA in MQA mode) the logits and the weighted sum are one [G, D] x [D, K] and one
    [G, K] x [K, Dv] product per query.
    """
    acc = _acc_dtype(q.dtype)
    valid = idx >= 0
    safe = jnp.where(valid, idx, 0)
    kg, vg = k[safe].astype(acc), v[safe].astype(acc)  # [n, K, H, D]: only the selected rows
    if q.shape[1] == 1:  # shared KV: [G, D] x [D, K] per query
        logits = jnp.einsum("ngd,nkd->ngk", q[:, 0].astype(acc), kg[:, :, 0]) * scale
        p = _masked_softmax(logits, valid[:, None, :])
        return jnp.einsum("ngk,nkd->ngd", p, vg[:, :, 0])[:, None]
    # several KV heads: multiply-and-reduce over the minor axis, which XLA fuses with the
    # gather (a matmul would first transpose the gathered rows)
    logits = jnp.sum(q.astype(acc)[:, None] * kg[:, :, :, None, :], axis=-1) * scale  # [n,K,H,G]
    p = _masked_softmax(logits, valid[:, :, None, None], axis=1)
    return jnp.sum(p[..., None] * vg[:, :, :, None, :], axis=1)


def _block_sparse(q, k, v, score, t0, topk, scale):
    """Block selection: one query block [B, n, Hq, D] against its own rows (causal) and the topk
    earlier rows with the highest block score (max over the block's queries of ``score``
    [B, n, t0]); the rows are gathered once for the block and attention is two matmuls."""
    b, n, hq, d = q.shape
    h = k.shape[2]
    acc = _acc_dtype(q.dtype)
    kk = min(topk, t0)
    _, sel = lax.top_k(jnp.max(score, axis=1), kk)  # [B, kk]: the block's shared rows
    rows = jnp.concatenate([sel, jnp.broadcast_to(jnp.arange(t0, t0 + n), (b, n))], -1)
    kg = jnp.take_along_axis(k, rows[:, :, None, None], axis=1).astype(acc)  # [B, kk+n, H, D]
    vg = jnp.take_along_axis(v, rows[:, :, None, None], axis=1).astype(acc)
    qg = q.reshape(b, n, h, hq // h, d).astype(acc)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kg) * scale
    vis = jnp.concatenate([jnp.ones((n, kk), bool), jnp.tri(n, dtype=bool)], -1)
    p = _masked_softmax(logits, vis)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p, vg)
    return o.reshape(b, n, hq, v.shape[-1])


def sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    indices: jax.Array,
    *,
    scale: float | None = None,
    query_block: int | None = None,
) -> jax.Array:
    """Attention of each query over its own gathered keys (all heads share the selection).

    q: [B, T, Hq, D]; k: [B, S, H, D]; v: [B, S, H, Dv]; indices: [B, T, K] int, -1 = empty.
    o_{t,h} = sum_{j: i_j >= 0} softmax_j(scale q_{t,h} . k_{i_j}) v_{i_j}   -> [B, T, Hq, Dv]
    (DeepSeek-V3.2 eq. 2). Only the K selected keys and values are read per query, gathered
    once for all heads (with a shared KV, H = 1, that is the whole cost: DeepSeek-V3.2 runs
    DSA on MLA in MQA mode); queries run ``query_block`` at a time under ``lax.map``, so the
    gathered rows ([query_block, K, H, D]) stay in cache and no [T, S] array exists (default
    ``query_block``: 16 with a shared KV, else 4, the fastest measured on CPU). Gradients flow
    to q, k, v (the gather transposes to a scatter-add), none to the integer indices.
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
    if query_block is None:
        query_block = 16 if h == 1 else 4
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
    select: str = "token",
    select_block: int = 64,
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

    ``select="token"`` (default) is DSA as published: every query its own top-k. With a shared
    KV (H = 1) that is the fast path (the selected rows are gathered once per query for all
    heads). ``select="block"`` is an option for several KV heads, where per-query gathers cost
    more than dense attention: each block of ``select_block`` queries attends causally to its
    own rows plus the ``topk`` earlier rows with the highest block score (the max over the
    block's queries of the indexer score), gathered once per block, with the attention as two
    matmuls. It is block-sparse attention driven by the indexer, not the paper's per-token
    selection; ``return_indices`` is not available with it.
    """
    _check_heads(q, k, v)
    if topk < 1 or block_size < 1 or select_block < 1:
        raise ValueError(f"topk, block_size and select_block must be >= 1, got {topk}, "
                         f"{block_size}, {select_block}")
    if select not in ("token", "block"):
        raise ValueError(f"dsa: select must be 'token' or 'block', got {select!r}")
    if select == "block":
        if return_indices or mask is not None:
            raise ValueError("dsa: select='block' supports neither return_indices nor mask; "
                             "use select='token'")
        return _dsa_blocks(q, k, v, q_idx, k_idx, w_idx, topk=topk, block=select_block,
                           scale=scale, index_scale=index_scale)
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


def _dsa_blocks(q, k, v, q_idx, k_idx, w_idx, *, topk, block, scale, index_scale):
    """``dsa(select="block")``: dense causal attention while the prefix fits in topk + block,
    then one :func:`_block_sparse` call per query block."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    index_scale = q_idx.shape[-1] ** -0.5 if index_scale is None else index_scale
    t = q.shape[1]
    outs = []
    t_dense = min(t, max(block, (topk // block + 1) * block))
    outs.append(_attention_xla(q[:, :t_dense], k[:, :t_dense], v[:, :t_dense], causal=True,
                               scale=scale, mask=None, q_offset=0))
    for t0 in range(t_dense, t, block):
        t1 = min(t0 + block, t)
        w = None if w_idx is None else w_idx[:, t0:t1]
        score = _index_scores(q_idx[:, t0:t1], k_idx[:, :t0], w, index_scale)
        outs.append(_block_sparse(q[:, t0:t1], k[:, :t1], v[:, :t1], score, t0, topk, scale))
    return jnp.concatenate(outs, axis=1).astype(q.dtype)


def dsa_indexer_loss(
    q: jax.Array,
    k: jax.Array,
    q_idx: jax.Array,
    k_idx: jax.Array,
    w_idx: jax.Array | None = None,
    *,
    topk: int | None = None,
    indices: jax.Array | None = None,
    scale: float | None = None,
    index_scale: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """The indexer's KL objective of DeepSeek-V3.2 (2025), averaged over real queries.

    Target p_t: the main attention distribution ``softmax(scale q_{t,h} . k_s)`` summed over the
    Hq heads and L1-normalised over keys; it is held fixed (``stop_gradient``). Prediction:
    ``softmax_s(I_{t,s})`` of the indexer scores. Dense warm-up (``topk=None``, eq. 3):
    ``KL(p_t || softmax(I_t))`` over all causal keys; this forms [B, T, T] arrays, as the
    paper's warm-up does. Sparse stage (eq. 4): both distributions restricted to the
    indexer's own top-k set S_t, given as ``indices`` [B, T, K] (-1 = empty; what
    ``dsa(..., return_indices=True)`` used, so the selection is not computed twice) or found
    here from ``topk``; only the K selected keys of each query are gathered
    (:func:`_selected_kl`), so the sparse stage costs O(T K) beyond the indexer's scores, like
    the attention itself. Gradients reach only q_idx, k_idx, w_idx. Shapes as :func:`dsa`
    (q: [B,T,Hq,D], k: [B,T,H,D]).
    """
    b, t, hq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    index_scale = q_idx.shape[-1] ** -0.5 if index_scale is None else index_scale
    real = jnp.ones((b, t), bool) if mask is None else mask
    if indices is None and topk is not None:
        indices = dsa_indexer(
            lax.stop_gradient(q_idx), lax.stop_gradient(k_idx),
            None if w_idx is None else lax.stop_gradient(w_idx), topk=topk, scale=index_scale,
            mask=mask,
        )
    if indices is not None:
        kl = _selected_kl(q, k, q_idx, k_idx, w_idx, indices, scale, index_scale)
        return jnp.sum(jnp.where(real, kl, 0.0)) / jnp.maximum(real.sum(), 1)
    acc = _acc_dtype(q.dtype)
    vis = _visible(t, t, causal=True, q_offset=0, mask=mask)  # [B|1, T, T]
    h = k.shape[2]
    qg = lax.stop_gradient(q).reshape(b, t, h, hq // h, d)
    logits = jnp.einsum("bthgd,bshd->bhgts", qg, lax.stop_gradient(k), preferred_element_type=acc)
    p = _masked_softmax(logits * scale, vis[:, None, None]).sum((1, 2))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    score = _index_scores(q_idx, k_idx, w_idx, index_scale)
    logq = jax.nn.log_softmax(jnp.where(vis, score, -1e30), axis=-1)
    kl = jnp.where(vis & (p > 0), p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq), 0.0).sum(-1)
    return jnp.sum(jnp.where(real, kl, 0.0)) / jnp.maximum(real.sum(), 1)


_KL_BLOCK = 64  # queries per lax.map step of _selected_kl


def _selected_kl(q, k, q_idx, k_idx, w_idx, indices, scale, index_scale) -> jax.Array:
    """Eq. 4's KL of every query over its selected keys: [B, T] (0 where nothing is selected).

    Per query, the K selected rows of k and k_idx are gathered (row ``b * S + i`` of flat
    tables, as :func:`sparse_attention`), once for all heads; ``_KL_BLOCK`` queries run per
    ``lax.map`` step under ``jax.checkpoint``, so neither pass holds more than
    [_KL_BLOCK, K, H, D] gathered keys and no [T, S] array exists.
    """
    b, t, hq, d = q.shape
    s, h = k.shape[1], k.shape[2]
    hi, di = q_idx.shape[2], q_idx.shape[3]
    acc = _acc_dtype(q.dtype)
    flat = jnp.where(indices >= 0, indices + s * jnp.arange(b)[:, None, None], -1)
    kf = lax.stop_gradient(k).reshape(b * s, h, d)
    kif = k_idx.reshape(b * s, di)
    w = jnp.ones((b, t, hi), acc) if w_idx is None else w_idx
    n = min(_KL_BLOCK, b * t)
    pad = -(b * t) % n

    def rows(x, fill=0):  # [B, T, ...] -> [blocks, n, ...]
        x = x.reshape(b * t, *x.shape[2:])
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
        return x.reshape(-1, n, *x.shape[1:])

    @jax.checkpoint
    def block(args):
        qb, qib, wb, ib = args  # [n, H, G, D], [n, Hi, Di], [n, Hi], [n, K]
        valid = ib >= 0
        safe = jnp.where(valid, ib, 0)
        logits = jnp.einsum("nhgd,nkhd->nhgk", qb.astype(acc), kf[safe].astype(acc)) * scale
        p = _masked_softmax(logits, valid[:, None, None, :]).sum((1, 2))  # [n, K]
        p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
        sim = jax.nn.relu(jnp.einsum("njd,nkd->njk", qib.astype(acc), kif[safe].astype(acc))
                          * index_scale)
        score = jnp.einsum("njk,nj->nk", sim, wb.astype(acc))  # eq. 1 on the selected keys
        logq = jax.nn.log_softmax(jnp.where(valid, score, -1e30), axis=-1)
        return jnp.where(valid & (p > 0), p * (jnp.log(jnp.where(p > 0, p, 1.0)) - logq),
                         0.0).sum(-1)

    qg = lax.stop_gradient(q).reshape(b, t, h, hq // h, d)
    kl = lax.map(block, (rows(qg), rows(q_idx), rows(w), rows(flat, -1)))
    return kl.reshape(-1)[: b * t].reshape(b, t)
