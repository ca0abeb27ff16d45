"""Softmax attention: dense (MHA / GQA / MQA), RoPE, exact top-k, DeepSeek Sparse Attention.

Every tensor is laid out ``[batch, length, heads, dim]`` (flash-linear-attention's ``b t h d``).
Query heads ``Hq`` are a multiple of key/value heads ``H``; query head ``h`` reads key/value head
``h // (Hq // H)`` (grouped-query attention, Ainslie et al. 2023; ``H = 1`` is MQA).

Positions: query ``t`` sits at absolute position ``t + q_offset`` and key ``s`` at ``s``; with
``causal=True`` key ``s`` is visible to query ``t`` iff ``s <= t + q_offset``. ``q_offset`` may be
a traced scalar, which is how a decode step attends to a fixed-size KV cache.
``mask: [batch, S]`` bool marks real keys (False = padding, never attended).
Logits, softmax and its reductions run in float32 (float64 when the inputs are float64).
DeepSeek Sparse Attention (``dsa``, its indexer, ``sparse_attention``) lives in
``seqlab.ops.dsa`` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqlab.ops.rope import rope_frequencies

__all__ = [
    "attention",
    "rope_angles",
    "apply_rope",
    "topk_attention",
    "dsa_indexer",  # noqa: F822 - resolved by __getattr__ from seqlab.ops.dsa
    "sparse_attention",  # noqa: F822
    "dsa",  # noqa: F822
    "dsa_indexer_loss",  # noqa: F822
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
    positions: jax.Array, dim: int, base: float = 10000.0,
    scaling: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """cos, sin of the rotary angles: positions [...] -> [..., dim // 2] each (float32).

    theta_i = base^(-2i / dim), angle = position * theta_i (RoFormer, Su et al. 2021, eq. 15);
    ``scaling`` rescales the theta_i for context extension (``seqlab.ops.rope``).
    """
    theta, factor = rope_frequencies(dim, base, None if scaling is None else dict(scaling))
    ang = positions.astype(jnp.float32)[..., None] * jnp.asarray(theta, jnp.float32)
    return factor * jnp.cos(ang), factor * jnp.sin(ang)


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0,
               scaling: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None
               ) -> jax.Array:
    """Rotary position embedding of x: [batch, T, heads, D] at positions [batch, T] or [T].

    Pairs dimension i with i + D/2 (the "rotate-half" layout of GPT-NeoX / Llama) and rotates
    each pair by angle position * theta_i (RoFormer eq. 34):
    ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``; ``scaling`` as in ``rope_angles``.
    """
    cos, sin = rope_angles(positions, x.shape[-1], base, scaling)
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


_DSA_NAMES = ("dsa", "dsa_indexer", "dsa_indexer_loss", "sparse_attention")


def __getattr__(name: str):
    """``seqlab.ops.attention.dsa`` and friends live in ``seqlab.ops.dsa`` (built on the helpers
    above); resolving them on first use avoids a circular import."""
    if name in _DSA_NAMES:
        from seqlab.ops import dsa as dsa_module

        return getattr(dsa_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
