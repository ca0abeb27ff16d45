"""Multi-head Latent Attention (DeepSeek-AI 2024, 'DeepSeek-V2', section 2.1).

Per token t (eq. numbers of DeepSeek-V2):
  c_q = RMSNorm(x W_DQ)              (37)   [q_lora_rank], or no query compression
  q_nope = c_q W_UQ, q_rope = RoPE(c_q W_QR)   (38, 39)   [heads, nope], [heads, rope_heads, rope]
  c_kv = RMSNorm(x W_DKV)            (41)   [kv_lora_rank]       <- cached
  k_rope = RoPE(x W_KR)              (43)   [rope_heads, rope]   <- cached, shared by all heads
  k_nope = c_kv W_UK, v = c_kv W_UV  (42, 45)
  o_h = softmax(scale (q_nope.k_nope + q_rope.k_rope)) v,  y = [o_1..o_H] W_O   (46, 47)
The cache holds c_kv and k_rope only: ``kv_lora_rank + rope_heads * rope_dim`` numbers
per token. ``rope_heads`` > 1 (several decoupled RoPE keys, each shared by all query heads) is
our generalisation used by the TransMLA conversion (seqlab.layers.convert); DeepSeek-V2 has 1.

Two decode paths, equal in value:
  naive:  up-project every cached c_kv to k_nope, v [max_length, heads, dim], then attend.
  absorb: fold W_UK into the query (q_lat = q_nope W_UK^T, [heads, kv_lora_rank]) and W_UV into
          the output; attend in latent space against the cache itself (MQA with one KV head).
The default is ``absorb``: per step it reads the cache once (kv_lora_rank + rope numbers per
token) and does O(heads (kv_lora_rank + rope)) work per cached token, while ``naive`` multiplies
every cached token by W_UK and W_UV (O(kv_lora_rank heads (nope + v))), ~2x-3x more bytes and
flops at DeepSeek-V2 shapes (measured in scripts/bench/bench_attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers.attention import ROPE_LAYOUTS, cache_positions, rope, write_cache
from seqlab.layers.common import apply_mask, check_input, choice, linear, reject_renamed
from seqlab.layers.protocol import register_mixer
from seqlab.ops.attention import attention
from seqlab.ops.rope import frozen_scaling
from seqlab.ops.yarn import softmax_factor

DECODE_MODES = ("absorb", "naive")


@register_mixer("mla")
class MLA(nnx.Module):
    """Multi-head Latent Attention. x: [batch, length, d_model] -> [batch, length, d_model].

    Options (defaults scale with d_model like DeepSeek-V2's ratios): n_heads, q_lora_rank (None =
    no query compression), kv_lora_rank (4 head dims), qk_nope_head_dim (d_model / n_heads),
    rope_dim (DeepSeek-V2's qk_rope_head_dim; half of it), v_head_dim (d_model / n_heads),
    rope_heads (1), kv_norm
    (RMSNorm on c_kv; the TransMLA conversion turns it off), softmax_scale (default
    1/sqrt(nope + rope_heads rope), times ``seqlab.ops.yarn.softmax_factor`` under YaRN with
    ``mscale_all_dim``, as DeepSeek's MLA), decode_mode ("absorb" | "naive"), causal,
    rope_scaling (the RoPE frequencies' context-extension rescaling, a dict with the keys of
    transformers' ``rope_scaling``: ``seqlab.ops.rope``, including DeepSeek's ``yarn``),
    qkv_bias (biases of the projections that read x: wq_a and wkv_a, or wq without
    q_lora_rank; DeepSeek's ``attention_bias``), out_bias (bias of wo), rope_layout
    ("rotate_half" default | "interleaved": DeepSeek's checkpoints rotate interleaved pairs, so
    converted DeepSeek weights need it; rotate-half is kept as the default because it is the
    same function up to a fixed permutation of the rope dimensions and matches seqlab's MHA,
    from which ``seqlab.layers.convert`` builds MLA layers). The query latent (``q_lora_rank``)
    is RMS-normalised (DeepSeek-V2's ``q_norm``) when present.
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 4,
        q_lora_rank: int | None = None,
        kv_lora_rank: int | None = None,
        qk_nope_head_dim: int | None = None,
        rope_dim: int | None = None,
        v_head_dim: int | None = None,
        rope_heads: int = 1,
        kv_norm: bool = True,
        softmax_scale: float | None = None,
        decode_mode: str = "absorb",
        causal: bool = True,
        rope_base: float = 10000.0,
        rope_layout: str = "rotate_half",
        rope_scaling: dict | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.rope_layout = choice("rope_layout", rope_layout, ROPE_LAYOUTS)
        self.rope_scaling = frozen_scaling(rope_scaling)
        if decode_mode not in DECODE_MODES:
            raise ValueError(
                f"unknown decode_mode {decode_mode!r}; valid: {', '.join(DECODE_MODES)}"
            )
        hd = d_model // n_heads
        self.nope = hd if qk_nope_head_dim is None else qk_nope_head_dim
        self.rope_dim = max(2, hd // 2) if rope_dim is None else rope_dim
        self.dv = hd if v_head_dim is None else v_head_dim
        self.rank = 4 * hd if kv_lora_rank is None else kv_lora_rank
        r = self.rope_dim
        if r % 2 or r < 2 or min(self.dv, self.rank, rope_heads, n_heads) < 1:
            raise ValueError(
                "MLA needs an even rope_dim >= 2 and positive v_head_dim, kv_lora_rank, "
                f"rope_heads, n_heads; got {self.rope_dim}, {self.dv}, {self.rank}, {rope_heads}, "
                f"{n_heads}"
            )
        self.d_model, self.n_heads, self.rope_heads = d_model, n_heads, rope_heads
        self.q_lora_rank, self.decode_mode, self.causal = q_lora_rank, decode_mode, causal
        self.rope_base, self.dtype = rope_base, dtype
        self.qk_dim = self.nope + rope_heads * self.rope_dim
        if softmax_scale is None:
            softmax_scale = self.qk_dim**-0.5 * softmax_factor(rope_scaling)
        self.scale = softmax_scale
        if q_lora_rank is None:
            self.wq = linear(d_model, n_heads * self.qk_dim, dtype, rngs, bias=qkv_bias)
        else:
            self.wq_a = linear(d_model, q_lora_rank, dtype, rngs, bias=qkv_bias)
            self.q_norm = nnx.RMSNorm(q_lora_rank, dtype=dtype, rngs=rngs)
            self.wq = linear(q_lora_rank, n_heads * self.qk_dim, dtype, rngs)
        self.wkv_a = linear(d_model, self.rank + rope_heads * self.rope_dim, dtype, rngs,
                            bias=qkv_bias)
        self.kv_norm = nnx.RMSNorm(self.rank, dtype=dtype, rngs=rngs) if kv_norm else None
        init = nnx.initializers.normal(self.rank**-0.5)
        self.wk_b = nnx.Param(init(rngs.params(), (self.rank, n_heads, self.nope)))  # W_UK
        self.wv_b = nnx.Param(init(rngs.params(), (self.rank, n_heads, self.dv)))  # W_UV
        self.wo = linear(n_heads * self.dv, d_model, dtype, rngs, bias=out_bias)

    def query_latent(self, x: jax.Array) -> jax.Array | None:
        """c_q = q_norm(x W_DQ) [b, t, q_lora_rank] (DeepSeek-V2 eq. 37), None without
        ``q_lora_rank``; DeepSeek-V3.2's indexer reads its queries from it."""
        return None if self.q_lora_rank is None else self.q_norm(self.wq_a(x))

    def queries(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> q_nope [b, t, H, nope], q_rope [b, t, H, rope_heads * rope] (RoPE'd)."""
        b, t, _ = x.shape
        cq = self.query_latent(x)
        cq = x if cq is None else cq
        q = self.wq(cq).reshape(b, t, self.n_heads, self.qk_dim)
        q_rope = q[..., self.nope :].reshape(b, t, self.n_heads * self.rope_heads, self.rope_dim)
        q_rope = rope(q_rope, positions, self.rope_base, self.rope_layout, self.rope_scaling)
        return q[..., : self.nope], q_rope.reshape(b, t, self.n_heads, -1)

    def latent(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> c_kv [b, t, kv_lora_rank], k_rope [b, t, rope_heads, rope] (RoPE'd): the cache."""
        b, t, _ = x.shape
        ckv = self.wkv_a(x)
        c = ckv[..., : self.rank]
        c = c if self.kv_norm is None else self.kv_norm(c)
        kr = ckv[..., self.rank :].reshape(b, t, self.rope_heads, self.rope_dim)
        return c, rope(kr, positions, self.rope_base, self.rope_layout, self.rope_scaling)

    def up(self, c: jax.Array, kr: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Naive keys and values from the latent: k [b,s,H,nope+rope_heads rope], v [b,s,H,dv]."""
        k_nope = jnp.einsum("bsr,rhn->bshn", c, self.wk_b[...].astype(c.dtype))
        v = jnp.einsum("bsr,rhv->bshv", c, self.wv_b[...].astype(c.dtype))
        kr = jnp.broadcast_to(kr.reshape(*kr.shape[:2], 1, -1),
                              (*kr.shape[:2], self.n_heads, self.rope_heads * self.rope_dim))
        return jnp.concatenate([k_nope, kr.astype(c.dtype)], axis=-1), v

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-head (naive) q, k: [b, t, H, nope + rope_heads rope], v: [b, t, H, dv]."""
        x = x.astype(self.dtype)
        q_nope, q_rope = self.queries(x, positions)
        k, v = self.up(*self.latent(x, positions))
        return jnp.concatenate([q_nope, q_rope], axis=-1), k, v

    def output(self, o: jax.Array) -> jax.Array:
        """o: [b, t, H, dv] -> [b, t, d_model]."""
        return self.wo(o.reshape(*o.shape[:2], -1))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_input(x, self.d_model, "MLA")
        x = apply_mask(x, mask)
        q, k, v = self.qkv(x, jnp.arange(x.shape[1]))
        return self.output(attention(q, k, v, causal=self.causal, scale=self.scale, mask=mask))

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32) -> dict:
        """{"c": [batch, max_length, kv_lora_rank], "kr": [batch, max_length, rope_heads, rope],
        "pos": int32 scalar}."""
        if not self.causal:
            raise ValueError("MLA with causal=False has no decode")
        return {
            "c": jnp.zeros((batch_size, max_length, self.rank), dtype),
            "kr": jnp.zeros((batch_size, max_length, self.rope_heads, self.rope_dim), dtype),
            "pos": jnp.zeros((), jnp.int32),
        }

    def decode_qkv(self, x: jax.Array, cache: dict) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
        """Write the new tokens' latents; return (q, k, v, new cache) to attend with.

        naive:  q [b,t,H,nope+R], k [b,S,H,nope+R], v [b,S,H,dv] (S = max_length, R = rope part)
        absorb: q [b,t,H,rank+R] = [q_nope W_UK^T, q_rope], k [b,S,1,rank+R] = [c_kv, k_rope],
                v [b,S,1,rank] = c_kv (MQA in latent space; finish with ``decode_output``).
        """
        if not self.causal:
            raise ValueError("MLA with causal=False has no decode")
        check_input(x, self.d_model, "MLA")
        pos, positions = cache["pos"], cache_positions(cache, x.shape[1])
        x = x.astype(self.dtype)
        q_nope, q_rope = self.queries(x, positions)
        c, kr = self.latent(x, positions)
        cc, krc = write_cache(cache["c"], c, pos), write_cache(cache["kr"], kr, pos)
        new = {"c": cc, "kr": krc, "pos": pos + x.shape[1]}
        cc, krc = cc.astype(q_nope.dtype), krc.astype(q_nope.dtype)
        if self.decode_mode == "naive":
            k, v = self.up(cc, krc)
            return jnp.concatenate([q_nope, q_rope], axis=-1), k, v, new
        q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, self.wk_b[...].astype(q_nope.dtype))
        q = jnp.concatenate([q_lat, q_rope], axis=-1)
        k = jnp.concatenate([cc, krc.reshape(*krc.shape[:2], -1)], axis=-1)[:, :, None]
        return q, k, cc[:, :, None], new

    def decode_output(self, o: jax.Array) -> jax.Array:
        """o: [b, t, H, dv] (naive) or [b, t, H, kv_lora_rank] (absorb: times W_UV) -> y."""
        if self.decode_mode == "absorb":
            o = jnp.einsum("bthr,rhv->bthv", o, self.wv_b[...].astype(o.dtype))
        return self.output(o)

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """x: [batch, t, d_model] new tokens (t > 1 = prefill) -> (y [batch, t, d_model], cache)."""
        q, k, v, new = self.decode_qkv(x, cache)
        o = attention(q, k, v, causal=True, scale=self.scale, q_offset=cache["pos"])
        return self.decode_output(o), new
