"""Multi-head softmax attention with grouped KV heads (MHA / GQA / MQA), RoPE and a KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from seqlab.layers.common import (
    GatedRMSNorm,
    apply_mask,
    check_input,
    choice,
    linear,
    reject_renamed,
)
from seqlab.layers.protocol import register_mixer
from seqlab.ops.attention import apply_rope, attention
from seqlab.ops.rope import frozen_scaling

ROPE_LAYOUTS = ("rotate_half", "interleaved")
QK_NORMS = ("rms", "rms_offset")


def rope(x: jax.Array, positions: jax.Array, base: float, layout: str = "rotate_half",
         scaling=None) -> jax.Array:
    """RoPE of x [b, t, heads, D] at positions [t] (RoFormer eq. 34), in either pair layout.

    ``rotate_half`` pairs dimension i with i + D/2 (GPT-NeoX, Hugging Face Llama);
    ``interleaved`` pairs 2i with 2i + 1 (RoFormer, Meta's Llama and DeepSeek checkpoints: a
    complex multiplication of ``(x_2i + i x_2i+1)`` by ``e^{i pos theta_i}``). Pair i turns by
    ``pos * base^(-2i/D)`` in both; the layouts differ by a fixed permutation of the dimensions,
    so a model trained from scratch is the same either way, but converted weights need theirs.
    ``scaling``: the frequencies' context-extension rescaling (``seqlab.ops.rope``).
    """
    if layout == "rotate_half":
        return apply_rope(x, positions, base, scaling)
    d = x.shape[-1]
    y = apply_rope(jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1), positions, base,
                   scaling)
    return jnp.stack([y[..., : d // 2], y[..., d // 2 :]], axis=-1).reshape(x.shape)


def cache_positions(cache: dict, t: int) -> jax.Array:
    """Absolute positions [t] of the next t tokens of a decode cache."""
    return cache["pos"] + jnp.arange(t)


def write_cache(buf: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
    """Write new [batch, t, ...] into buf [batch, max_length, ...] at time index pos.

    Writing past max_length is an error: raised when pos is known, and under jit (pos traced)
    the written entries become NaN, so the outputs turn NaN instead of silently attending to
    overwritten keys (``dynamic_update_slice`` would clamp the index)."""
    t, max_length = new.shape[1], buf.shape[1]
    if t > max_length or (not isinstance(pos, jax.core.Tracer) and int(pos) + t > max_length):
        raise ValueError(
            f"decode cache overflow: writing {t} tokens at position {pos} of a cache of "
            f"max_length={max_length}; create the cache with a larger max_length"
        )
    new = new.astype(buf.dtype)
    if jnp.issubdtype(buf.dtype, jnp.floating):
        new = jnp.where(pos + t > max_length, jnp.asarray(jnp.nan, buf.dtype), new)
    return lax.dynamic_update_slice(buf, new, (0, pos) + (0,) * (buf.ndim - 2))


@register_mixer("mha")
class MultiHeadAttention(nnx.Module):
    """Softmax attention (Vaswani et al. 2017) with ``n_kv_heads`` key/value heads.

    x: [batch, length, d_model] -> y: [batch, length, d_model].
    q = x W_Q: [b, t, n_heads, head_dim]; k, v = x W_K, x W_V: [b, t, n_kv_heads, head_dim];
    RoPE on the first ``rope_dim`` dimensions of every q and k head (``None``, the default: the
    whole head; ``0``: no RoPE; in between: partial rotary as GPT-NeoX's ``rotary_pct``, the
    frequencies spread over ``rope_dim`` dimensions); ``rope_layout`` ``rotate_half`` (default,
    GPT-NeoX / Hugging Face Llama) or ``interleaved`` (Meta Llama, DeepSeek checkpoints; see
    :func:`rope`); ``rope_scaling`` rescales the RoPE frequencies for context extension (a dict
    with the keys of transformers' ``rope_scaling``: types ``linear``, ``llama3``;
    ``seqlab.ops.rope``); y = attention(q, k, v) W_O. ``qkv_bias`` adds biases to the q, k, v
    projections (Qwen2), ``out_bias`` to W_O (Llama's ``attention_bias`` sets both).
    ``qk_norm`` ("rms" or "rms_offset", the latter y = x / rms(x) * (1 + w)) normalises every
    q and k head over head_dim before RoPE, with a weight [head_dim] shared by the heads and
    ``norm_eps`` (Qwen3; "rms_offset": Qwen3-Next). ``output_gate``: W_Q yields [q_h | gate_h]
    for every head h ([d_model, n_heads * 2 * head_dim], the head's query then its gate), and the
    attention output is o_h * sigmoid(gate_h) before W_O (Qwen3-Next's gated attention; Qiu
    et al. 2025, "Gated Attention for Large Language Models", the head-specific gate after
    SDPA).
    ``n_kv_heads`` divides ``n_heads``: equal is MHA, 1 is MQA (Shazeer 2019), in between GQA
    (Ainslie et al. 2023).
    ``causal=True`` (default) has a KV cache: ``init_cache`` / ``decode``; ``causal=False`` is
    bidirectional (padding keys masked out).
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        rope_dim: int | None = None,
        rope_base: float = 10000.0,
        rope_layout: str = "rotate_half",
        rope_scaling: dict | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        output_gate: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.rope_layout = choice("rope_layout", rope_layout, ROPE_LAYOUTS)
        self.rope_scaling = frozen_scaling(rope_scaling)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({n_kv_heads})"
            )
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        rope_dim = head_dim if rope_dim is None else rope_dim
        if not 0 <= rope_dim <= head_dim or rope_dim % 2:
            raise ValueError(
                f"rope_dim must be even and in 0..head_dim={head_dim} (None = head_dim, 0 = no "
                f"RoPE), got {rope_dim}"
            )
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            d_model, n_heads, n_kv_heads, head_dim,
        )
        self.causal, self.rope_dim, self.rope_base, self.dtype = causal, rope_dim, rope_base, dtype
        self.scale = head_dim**-0.5
        self.output_gate = output_gate
        self.wq = linear(d_model, n_heads * head_dim * (2 if output_gate else 1), dtype, rngs,
                         bias=qkv_bias)
        self.wk = linear(d_model, n_kv_heads * head_dim, dtype, rngs, bias=qkv_bias)
        self.wv = linear(d_model, n_kv_heads * head_dim, dtype, rngs, bias=qkv_bias)
        self.wo = linear(n_heads * head_dim, d_model, dtype, rngs, bias=out_bias)
        if qk_norm is None:
            self.q_norm = self.k_norm = None
        else:
            choice("qk_norm", qk_norm, QK_NORMS)
            from seqlab.models.blocks import OffsetRMSNorm  # models import layers: not at the top

            norm = OffsetRMSNorm if qk_norm == "rms_offset" else GatedRMSNorm
            self.q_norm, self.k_norm = norm(head_dim, eps=norm_eps), norm(head_dim, eps=norm_eps)

    def project(self, x: jax.Array, positions: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
        """x: [b, t, d_model], positions [t] -> q [b,t,Hq,D], k [b,t,H,D], v [b,t,H,D] (normed,
        RoPE'd) and the output gate's logits [b,t,Hq,D] (None without ``output_gate``)."""
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        q = self.wq(x).reshape(b, t, self.n_heads, -1)
        q, gate = (q[..., : self.head_dim], q[..., self.head_dim :]) if self.output_gate else (
            q, None)
        k = self.wk(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = self.wv(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self._rope(q, positions), self._rope(k, positions), v, gate

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [b, t, d_model], positions [t] -> q [b,t,Hq,D], k [b,t,H,D], v [b,t,H,D] (RoPE'd),
        for attention variants that finish with ``output(o)`` (no output gate)."""
        q, k, v, gate = self.project(x, positions)
        if gate is not None:
            raise ValueError(f"{type(self).__name__}: this attention path has no output gate; "
                             "build the layer with output_gate=False.")
        return q, k, v

    def _rope(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """RoPE on the first ``rope_dim`` dimensions of x: [b, t, heads, head_dim]."""
        r = self.rope_dim
        if r == 0:
            return x
        roped = rope(x[..., :r], positions, self.rope_base, self.rope_layout, self.rope_scaling)
        return roped if r == self.head_dim else jnp.concatenate([roped, x[..., r:]], -1)

    def output(self, o: jax.Array, gate: jax.Array | None = None) -> jax.Array:
        """o: [b, t, Hq, D] (times sigmoid(gate) [b, t, Hq, D] when given) -> [b, t, d_model]."""
        if gate is not None:
            o = o * jax.nn.sigmoid(gate.astype(jnp.float32)).astype(o.dtype)
        return self.wo(o.reshape(*o.shape[:2], -1))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_input(x, self.d_model, type(self).__name__)
        x = apply_mask(x, mask)
        q, k, v, gate = self.project(x, jnp.arange(x.shape[1]))
        return self.output(self.attend(q, k, v, mask=mask), gate)

    def attend(self, q, k, v, *, mask=None, q_offset=0) -> jax.Array:
        """The attention op of this layer (subclasses swap it: top-k)."""
        return attention(
            q, k, v, causal=self.causal, scale=self.scale, mask=mask, q_offset=q_offset
        )

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32) -> dict:
        """{"k", "v": [batch, max_length, n_kv_heads, head_dim], "pos": int32 scalar}."""
        if not self.causal:
            raise ValueError(f"{type(self).__name__} with causal=False has no decode")
        shape = (batch_size, max_length, self.n_kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "pos": jnp.zeros((), jnp.int32)}

    def _decode_project(self, x: jax.Array, cache: dict):
        if not self.causal:
            raise ValueError(f"{type(self).__name__} with causal=False has no decode")
        check_input(x, self.d_model, type(self).__name__)
        pos = cache["pos"]
        q, k, v, gate = self.project(x, cache_positions(cache, x.shape[1]))
        kc, vc = write_cache(cache["k"], k, pos), write_cache(cache["v"], v, pos)
        new = {"k": kc, "v": vc, "pos": pos + x.shape[1]}
        return q, kc.astype(q.dtype), vc.astype(q.dtype), gate, new

    def decode_qkv(self, x: jax.Array, cache: dict) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        """Project the new tokens, write them to the cache; return (q [b,t,Hq,D], the cached
        k, v [b, max_length, H, D], the new cache). Queries sit at positions pos..pos+t-1."""
        q, k, v, gate, new = self._decode_project(x, cache)
        if gate is not None:
            raise ValueError(f"{type(self).__name__}: this attention path has no output gate; "
                             "build the layer with output_gate=False.")
        return q, k, v, new

    def decode_output(self, o: jax.Array) -> jax.Array:
        return self.output(o)

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """x: [batch, t, d_model] new tokens (t > 1 = prefill) -> (y [batch, t, d_model], cache)."""
        q, k, v, gate, new = self._decode_project(x, cache)
        return self.output(self.attend(q, k, v, q_offset=cache["pos"]), gate), new
