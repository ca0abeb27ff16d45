"""Sparse softmax attention layers: exact top-k attention and DeepSeek Sparse Attention (DSA).

Gradient flow through the selection (both layers): the chosen key set is a piecewise-constant
function of the scores, so it carries no gradient. The language-model loss reaches q, k, v (and
through them every projection of the base layer) via the selected keys only. In DSA the
indexer's parameters get no gradient from the language-model loss at all; they are trained by
``DSA.indexer_loss`` (DeepSeek-V3.2's KL objective), whose input is detached from the main
model (``stop_gradient``) and whose target is the main attention distribution, also detached.
Schedule (DeepSeek-V3.2, section 2.1): a dense warm-up (``indexer_loss(x, sparse=False)``, the
model attends densely or is frozen) and then sparse training (``sparse=True``, the KL restricted
to the selected keys) added to the language-model loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from seqlab.layers.attention import MultiHeadAttention, _linear, cache_positions, write_cache
from seqlab.layers.common import apply_mask, check_input
from seqlab.layers.mla import MLA
from seqlab.ops.attention import (
    apply_rope,
    dsa,
    dsa_indexer,
    dsa_indexer_loss,
    sparse_attention,
    topk_attention,
)

DSA_BASES = ("mha", "mla")


class TopKAttention(MultiHeadAttention):
    """Multi-head attention where each (query, head) keeps its ``topk`` best visible keys
    (Gupta et al. 2021). All MultiHeadAttention options apply; ``topk >= length`` is dense."""

    def __init__(self, d_model: int, *, topk: int = 32, rngs: nnx.Rngs, **options):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        super().__init__(d_model, rngs=rngs, **options)
        self.topk = topk

    def attend(self, q, k, v, *, mask=None, q_offset=0) -> jax.Array:
        return topk_attention(
            q, k, v, topk=self.topk, causal=self.causal, scale=self.scale, mask=mask,
            q_offset=q_offset,
        )


class DSA(nnx.Module):
    """DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer on top of MHA or MLA.

    Indexer (eq. 1): q_idx = RoPE(x W_qI) [b,t,index_heads,index_head_dim], one shared key
    k_idx = RoPE(x W_kI) [b,t,index_head_dim], weights w = x W_w / sqrt(index_heads); score
    I[t,s] = sum_j w[t,j] relu(q_idx[t,j].k_idx[s] / sqrt(index_head_dim)); the top ``topk``
    causal keys of each query are attended by every head of the base layer (eq. 2).
    Options: base ("mha" | "mla"), topk, index_heads, index_head_dim, block_size (queries per
    indexer block), and any option of the base layer (n_heads, n_kv_heads, kv_lora_rank, ...).
    The cache is the base layer's plus k_idx: index_head_dim more numbers per token.
    """

    def __init__(
        self,
        d_model: int,
        *,
        base: str = "mha",
        topk: int = 64,
        index_heads: int = 4,
        index_head_dim: int = 32,
        block_size: int = 256,
        rope_base: float = 10000.0,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        **base_options,
    ):
        if base not in DSA_BASES:
            raise ValueError(f"unknown DSA base {base!r}; valid: {', '.join(DSA_BASES)}")
        if base_options.get("causal", True) is False:
            raise ValueError("DSA is causal (its indexer scores past keys only)")
        if topk < 1 or index_heads < 1 or index_head_dim < 2 or index_head_dim % 2:
            raise ValueError(
                "DSA needs topk >= 1, index_heads >= 1 and an even index_head_dim >= 2; got "
                f"{topk}, {index_heads}, {index_head_dim}"
            )
        cls = MultiHeadAttention if base == "mha" else MLA
        self.attn = cls(d_model, rngs=rngs, dtype=dtype, rope_base=rope_base, **base_options)
        self.d_model, self.topk, self.block_size, self.dtype = d_model, topk, block_size, dtype
        self.index_heads, self.index_head_dim = index_heads, index_head_dim
        self.rope_base = rope_base
        self.wq_idx = _linear(d_model, index_heads * index_head_dim, dtype, rngs)
        self.wk_idx = _linear(d_model, index_head_dim, dtype, rngs)
        self.w_idx = _linear(d_model, index_heads, dtype, rngs)

    def indexer_inputs(self, x: jax.Array, positions: jax.Array):
        """-> q_idx [b,t,Hi,Di], k_idx [b,t,Di], w_idx [b,t,Hi]."""
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        q_idx = self.wq_idx(x).reshape(b, t, self.index_heads, self.index_head_dim)
        k_idx = self.wk_idx(x).reshape(b, t, 1, self.index_head_dim)
        q_idx = apply_rope(q_idx, positions, self.rope_base)
        k_idx = apply_rope(k_idx, positions, self.rope_base)[:, :, 0]
        return q_idx, k_idx, self.w_idx(x) * self.index_heads**-0.5

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_input(x, self.d_model, "DSA")
        x = apply_mask(x, mask)
        positions = jnp.arange(x.shape[1])
        q, k, v = self.attn.qkv(x, positions)
        o = dsa(
            q, k, v, *self.indexer_inputs(x, positions), topk=self.topk, scale=self.attn.scale,
            mask=mask, block_size=self.block_size,
        )
        return self.attn.output(o)

    def indexer_loss(
        self, x: jax.Array, mask: jax.Array | None = None, *, sparse: bool = False
    ) -> jax.Array:
        """DeepSeek-V3.2's indexer KL (eq. 3 dense warm-up, eq. 4 with ``sparse=True``): a scalar
        whose gradient reaches only the indexer's parameters (x is detached)."""
        check_input(x, self.d_model, "DSA")
        x = lax.stop_gradient(apply_mask(x, mask))
        positions = jnp.arange(x.shape[1])
        q, k, _ = self.attn.qkv(x, positions)
        return dsa_indexer_loss(
            q, k, *self.indexer_inputs(x, positions), topk=self.topk if sparse else None,
            scale=self.attn.scale, mask=mask,
        )

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32) -> dict:
        """{"base": the base layer's cache, "k_idx": [batch, max_length, index_head_dim]}."""
        return {
            "base": self.attn.init_cache(batch_size, max_length, dtype),
            "k_idx": jnp.zeros((batch_size, max_length, self.index_head_dim), dtype),
        }

    def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """x: [batch, t, d_model] -> (y, cache). The indexer scores every cached key, the top-k
        rows of the cache (for MLA: of the latent cache, attended in absorbed form) are gathered."""
        check_input(x, self.d_model, "DSA")
        pos = cache["base"]["pos"]
        q_idx, k_idx, w_idx = self.indexer_inputs(x, cache_positions(cache["base"], x.shape[1]))
        k_idx_cache = write_cache(cache["k_idx"], k_idx, pos)
        q, k, v, base = self.attn.decode_qkv(x, cache["base"])
        idx = dsa_indexer(
            q_idx, k_idx_cache.astype(q_idx.dtype), w_idx, topk=self.topk, q_offset=pos
        )
        o = sparse_attention(q, k, v, idx, scale=self.attn.scale)
        return self.attn.decode_output(o), {"base": base, "k_idx": k_idx_cache}
