"""References for ``seqlab.ops.attention``: every score formed, masks applied explicitly."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def visible(t: int, s: int, causal: bool, mask: jax.Array | None = None, q_offset: int = 0):
    """[batch|1, t, s] bool: key j is visible to query i when (not causal or j <= i + q_offset)
    and mask[j] (real key)."""
    vis = jnp.ones((1, t, s), bool)
    if causal:
        vis = vis & (jnp.arange(s)[None, None] <= jnp.arange(t)[None, :, None] + q_offset)
    if mask is not None:
        vis = vis & mask[:, None, :s]
    return vis


def attention_naive(q, k, v, *, causal: bool, scale=None, mask=None, q_offset: int = 0,
                    topk: int | None = None) -> jax.Array:
    """``o_{t,h} = sum_s softmax_s(scale q_{t,h} . k_{s,g(h)}) v_{s,g(h)}`` over visible keys
    (and only the ``topk`` largest scores per query and head when given; a row with no visible
    key gives 0). q: [B, T, Hq, D]; k: [B, S, H, D]; v: [B, S, H, Dv]; mask: [B, S] bool;
    Hq a multiple of H (grouped queries). -> [B, T, Hq, Dv]."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    vis = visible(q.shape[1], k.shape[1], causal, mask, q_offset)[:, None]
    if topk is not None:
        kth = jnp.sort(jnp.where(vis, s, -jnp.inf), axis=-1)[..., -topk][..., None]
        vis = vis & (s >= kth)
    s = jnp.where(vis, s, -jnp.inf)
    p = jnp.exp(s - jnp.max(jnp.where(vis, s, 0.0), axis=-1, keepdims=True))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-300)
    return jnp.einsum("bhts,bshd->bthd", p, v)


def dsa_naive(q, k, v, q_idx, k_idx, w_idx, *, topk: int, scale=None, index_scale=None,
              mask=None) -> jax.Array:
    """DeepSeek-V3.2 eq. (1)-(2): indexer scores ``I_{t,s} = sum_j w_{t,j}
    relu(index_scale q^I_{t,j} . k^I_s)``, each query's top-k causal visible keys by I (shared
    by all heads), softmax attention over them. Shapes as ``seqlab.ops.attention.dsa``."""
    index_scale = q_idx.shape[-1] ** -0.5 if index_scale is None else index_scale
    score = jnp.einsum("btjd,bsd->btjs", q_idx, k_idx) * index_scale
    score = jnp.einsum("btjs,btj->bts", jax.nn.relu(score), w_idx)
    t = q.shape[1]
    vis = visible(t, t, True, mask)
    kth = jnp.sort(jnp.where(vis, score, -jnp.inf), axis=-1)[..., -min(topk, t)][..., None]
    sel = vis & (score >= kth)
    group = q.shape[2] // k.shape[2]
    kr, vr = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = jnp.einsum("bthd,bshd->bhts", q, kr) * scale
    s = jnp.where(sel[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhts,bshd->bthd", p, vr)
