"""Bench specs of the attention family (MHA, MLA, exact top-k, DeepSeek Sparse Attention):
``ops.attention`` against naive softmax attention / dense attention,
``jax.nn.dot_product_attention`` and flash-linear-attention's torch references."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp

from seqlab.bench import peers
from seqlab.bench.specs_base import F32, Call, Dims, _keys, _normal, _torch

# ----------------------------------------------------------------------------- attention family


def _attn_inputs(d: Dims, key: jax.Array):
    k1, k2, k3 = _keys(key, 3)
    shape = (d.batch, d.length, d.n_heads, d.head_dim)
    return _normal(k1, shape), _normal(k2, shape), _normal(k3, shape)


def _attn_cost(d: Dims) -> tuple[float, float]:
    # causal: QK^T and PV over L(L+1)/2 pairs, 2 D FLOPs each, + softmax (~5 per pair)
    b, t, h, dh = d.batch, d.length, d.n_heads, d.head_dim
    pairs = b * h * t * (t + 1) / 2
    return pairs * (4 * dh + 5), F32 * 4 * b * t * h * dh


def _topk_cost(d: Dims) -> tuple[float, float]:
    # exact top-k still scores every causal pair (2D + select), then attends to k keys
    b, t, h, dh = d.batch, d.length, d.n_heads, d.head_dim
    pairs = b * h * t * (t + 1) / 2
    k = min(d.topk, t)
    return pairs * (2 * dh + 2) + b * h * t * k * (2 * dh + 5), F32 * 4 * b * t * h * dh


def _dsa_cost(d: Dims) -> tuple[float, float]:
    # indexer: every causal pair, Hi heads of dim Di (+ ReLU, weights); attention on top-k keys
    b, t, h, dh = d.batch, d.length, d.n_heads, d.head_dim
    pairs = b * t * (t + 1) / 2
    k = min(d.topk, t)
    hi, di = d.index_heads, d.index_head_dim
    flops = pairs * hi * (2 * di + 3) + b * h * t * k * (4 * dh + 5)
    nbytes = F32 * (4 * b * t * h * dh + b * t * (hi * (di + 1) + di))
    return flops, nbytes


def naive_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(D) + causal mask) v with the [B, H, T, T] scores materialised."""
    t = q.shape[1]
    s = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)


def _naive_attn(d: Dims, key: jax.Array) -> Call:
    return Call("naive einsum softmax", naive_attention, _attn_inputs(d, key))


def _dense_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import attention

    return Call("ops.attention.attention", lambda q, k, v: attention(q, k, v, causal=True),
                _attn_inputs(d, key))


def _dense_ref(d: Dims, key: jax.Array) -> Call:
    call = _dense_op(d, key)
    return replace(call, name="dense ops.attention.attention")


def _topk_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import topk_attention

    k = min(d.topk, d.length)
    return Call(f"ops.attention.topk_attention (k={k})",
                lambda q, kk, v: topk_attention(q, kk, v, topk=k, causal=True),
                _attn_inputs(d, key))


def _dsa_inputs(d: Dims, key: jax.Array):
    q, k, v = _attn_inputs(d, key)
    k1, k2, k3 = _keys(jax.random.fold_in(key, 3), 3)
    # Shifted to mostly-positive index scores: with zero-mean inputs many ReLU scores are 0 and
    # tie, and implementations may then select different (equally valid) keys.
    q_idx = _normal(k1, (d.batch, d.length, d.index_heads, d.index_head_dim)) + 2.0
    k_idx = _normal(k2, (d.batch, d.length, d.index_head_dim)) + 2.0
    w_idx = jnp.abs(_normal(k3, (d.batch, d.length, d.index_heads))) + 0.1
    return q, k, v, q_idx, k_idx, w_idx


def _dsa_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import dsa

    k = min(d.topk, d.length)
    return Call(f"ops.attention.dsa (k={k})", lambda *a: dsa(*a, topk=k), _dsa_inputs(d, key))


def _jax_sdpa(d: Dims, key: jax.Array) -> Call:
    return Call("jax.nn.dot_product_attention",
                lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
                _attn_inputs(d, key))


def _fla_attn(d: Dims, key: jax.Array) -> Call | None:
    f = peers.fla_naive("attn", "naive_parallel_attn")
    if f is None:
        return None

    def run(q, k, v):
        out = f(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out

    return Call("fla naive_parallel_attn (torch)", run, _torch(*_attn_inputs(d, key)),
                backend="torch")


def _fla_dsa(d: Dims, key: jax.Array) -> Call | None:
    f = peers.fla_naive("dsa", "naive_dsa")
    if f is None:
        return None
    k = min(d.topk, d.length)
    return Call("fla naive_dsa (torch)", lambda *a: f(*a, topk=k),
                _torch(*_dsa_inputs(d, key)), backend="torch")
