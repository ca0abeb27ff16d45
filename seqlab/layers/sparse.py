"""Sparse softmax attention layers: exact top-k attention and DeepSeek Sparse Attention (DSA).

Gradient flow through the selection (both layers): the chosen key set is a piecewise-constant
function of the scores, so it carries no gradient. The language-model loss reaches q, k, v (and
through them every projection of the base layer) via the selected keys only. In DSA the
indexer's input is detached from the main model (``stop_gradient``), so the language-model loss
never reaches the indexer's parameters; the indexer is trained only by DeepSeek-V3.2's KL
objective, whose target (the main attention distribution) is detached too, so the KL reaches
only the indexer. See :class:`DSA` for the training schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from seqlab.layers.attention import MultiHeadAttention, cache_positions, rope, write_cache
from seqlab.layers.common import apply_mask, check_input, choice, linear, reject_renamed
from seqlab.layers.mla import MLA
from seqlab.layers.protocol import register_mixer
from seqlab.ops.attention import (
    attention,
    dsa,
    dsa_indexer,
    dsa_indexer_loss,
    sparse_attention,
    topk_attention,
)

DSA_BASES = ("mha", "mla")
INDEX_DTYPES = ("float32", "bfloat16")


class _IndexKey(nnx.Module):
    """The indexer's key: ``LayerNorm(x W_k)`` [..., index_head_dim] (V3.2's ``wk``, ``k_norm``;
    LayerNorm with scale and bias, eps 1e-6)."""

    def __init__(self, d_model: int, dim: int, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.proj = linear(d_model, dim, dtype, rngs)
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


@register_mixer("topk")
class TopKAttention(MultiHeadAttention):
    """Multi-head attention where each (query, head) keeps its ``topk`` best visible keys
    (Gupta et al. 2021). All MultiHeadAttention options apply; ``topk >= length`` is dense."""

    @reject_renamed
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


@register_mixer("dsa")
class DSA(nnx.Module):
    """DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer on top of MHA or MLA.

    Indexer (eq. 1), as DeepSeek-V3.2's ``inference/model.py`` class ``Indexer``:
    q_idx = c W_qI [b,t,index_heads,index_head_dim] with c the query latent of an MLA base
    (``q_norm(x W_DQ)``, when it has ``q_lora_rank``) or x; one shared key
    k_idx = LayerNorm(x W_kI) [b,t,index_head_dim]; RoPE (rotate-half, the reference's
    indexer layout) on the first ``index_rope_dim`` dimensions of q_idx and k_idx only (default:
    the base's rope dims, at most index_head_dim; V3.2: MLA's 64 of 128); weights
    w = x W_w / sqrt(index_heads); score I[t,s] = sum_j w[t,j] relu(q_idx[t,j].k_idx[s] /
    sqrt(index_head_dim)); the top ``topk`` causal keys of each query are attended by every head
    of the base layer (eq. 2). The reference's Hadamard rotation of q and k before its FP8
    quantisation is orthogonal, so it leaves the float scores unchanged and is not applied.
    ``index_dtype`` ("float32" | "bfloat16"): the precision of q_idx, k_idx (and the k_idx
    cache); scores accumulate in float32 either way (V3.2 runs its indexer in FP8). Measured on
    a 2-core CPU (load 19; B=2, T=2048, d_model 256, 8 x 64 index heads, topk 64): 1.16 s per
    bf16 indexer call vs 1.23 s in float32 (the CPU has no faster bf16 matmul; the saving is
    the halved k_idx cache and accelerator throughput), the selected sets overlapping 99.8% on
    average (96.9% at worst).
    Options: base ("mha" | "mla"), topk, index_heads, index_head_dim, index_rope_dim,
    index_dtype, block_size (queries per indexer block), indexer_warmup_steps,
    indexer_loss_weight, and any option of the base layer (n_heads, n_kv_heads, kv_lora_rank,
    rope_layout, ...). The cache is the base layer's plus k_idx: index_head_dim more numbers
    per token.

    Training (``model.train()``, i.e. ``deterministic=False``; the trainer sets it), following
    DeepSeek-V3.2 section 2.1. Each training-mode call advances ``indexer_step`` (an int32
    ``nnx.Variable``, checkpointed with the model) and sows
    ``indexer_loss_weight * KL`` as ``aux_loss`` (``nnx.Intermediate``), which the train step adds
    to the task loss (outside the trainer, call a training-mode model through
    ``seqlab.train.steps.forward_with_aux``, which collects it under ``nnx.capture``: flax
    deprecates sowing outside a capture). One compiled step covers both stages (``lax.cond`` on
    the counter):

    1. Dense warm-up, the first ``indexer_warmup_steps`` calls: the layer's output is dense
       causal attention, and the KL is eq. 3, ``KL(p_t || softmax(I_t))`` over all causal keys,
       with p_t the main attention distribution summed over heads and L1-normalised.
    2. Sparse stage, afterwards: the layer attends only to the indexer's top-k keys, and the KL
       is eq. 4, both distributions restricted to the selected set S_t.

    Gradients: the task loss reaches the base layer (q, k, v and all its projections; in the
    sparse stage through the selected keys only) and never the indexer (its input x is detached
    and the selection is integer-valued). The KL reaches only the indexer's W_qI, W_kI, W_w (its
    target p_t and its input are detached). The paper's warm-up also freezes the rest of its
    pre-trained dense model: ``train.train_only: {steps: N, params: [wq_idx, wk_idx, w_idx]}``
    with ``indexer_warmup_steps: N`` does that in the trainer (``seqlab.train.optim``); without
    it, the task loss keeps training the base layer during warm-up. A model that calls the
    layer more than once per step (a retrieval pair encoder does not: it batches both inputs)
    advances the counter once per call. ``indexer_step`` counts calls, so resuming continues
    the schedule. Since the indexer's parameters receive only the KL gradient, Adam's
    per-parameter scaling makes ``indexer_loss_weight`` nearly irrelevant to their updates; it
    scales the reported loss and the KL's share of the global gradient norm
    (``train.grad_clip``).

    Inference (``model.eval()``, the default of a fresh layer, and ``decode``): always the sparse
    path, whatever the counter says; nothing is sown and the counter is unchanged.
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        base: str = "mha",
        topk: int = 64,
        index_heads: int = 4,
        index_head_dim: int = 32,
        index_rope_dim: int | None = None,
        index_dtype: str = "float32",
        block_size: int = 256,
        rope_base: float = 10000.0,
        indexer_warmup_steps: int = 0,
        indexer_loss_weight: float = 1.0,
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
        if indexer_warmup_steps < 0 or indexer_loss_weight < 0:
            raise ValueError(
                "DSA needs indexer_warmup_steps >= 0 and indexer_loss_weight >= 0; got "
                f"{indexer_warmup_steps}, {indexer_loss_weight}"
            )
        cls = MultiHeadAttention if base == "mha" else MLA
        self.causal = True
        self.attn = cls(d_model, rngs=rngs, dtype=dtype, rope_base=rope_base, **base_options)
        self.d_model, self.topk, self.block_size, self.dtype = d_model, topk, block_size, dtype
        self.index_heads, self.index_head_dim = index_heads, index_head_dim
        self.rope_base = rope_base
        self.indexer_warmup_steps = indexer_warmup_steps
        self.indexer_loss_weight = indexer_loss_weight
        if index_rope_dim is None:  # the base's rope dims (V3.2: qk_rope_head_dim, 64 of 128)
            index_rope_dim = min(self.attn.rope_dim, index_head_dim)
        if not 0 <= index_rope_dim <= index_head_dim or index_rope_dim % 2:
            raise ValueError(f"DSA needs an even index_rope_dim in 0..index_head_dim="
                             f"{index_head_dim}, got {index_rope_dim}")
        self.index_rope_dim = index_rope_dim
        self.index_dtype = jnp.dtype(choice("index_dtype", index_dtype, INDEX_DTYPES))
        q_in = getattr(self.attn, "q_lora_rank", None) or d_model
        self.wq_idx = linear(q_in, index_heads * index_head_dim, dtype, rngs)
        self.wk_idx = _IndexKey(d_model, index_head_dim, dtype, rngs)
        self.w_idx = linear(d_model, index_heads, dtype, rngs)
        self.indexer_step = nnx.Variable(jnp.zeros((), jnp.int32))
        self.deterministic = True  # inference mode; model.train() sets False

    def indexer_inputs(self, x: jax.Array, positions: jax.Array):
        """-> q_idx [b,t,Hi,Di], k_idx [b,t,Di] (``index_dtype``), w_idx [b,t,Hi].

        Callers detach x; the MLA query latent is detached too, so the indexer's KL never
        reaches the base layer's parameters."""
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        latent = self.attn.query_latent(x) if isinstance(self.attn, MLA) else None
        c = x if latent is None else lax.stop_gradient(latent)
        q_idx = self.wq_idx(c).reshape(b, t, self.index_heads, self.index_head_dim)
        k_idx = self.wk_idx(x).reshape(b, t, 1, self.index_head_dim)
        q_idx, k_idx = (self._rope(z, positions).astype(self.index_dtype) for z in (q_idx, k_idx))
        return q_idx, k_idx[:, :, 0], self.w_idx(x) * self.index_heads**-0.5

    def _rope(self, z: jax.Array, positions: jax.Array) -> jax.Array:
        """RoPE (rotate-half) on the first ``index_rope_dim`` dims of z [b, t, heads, Di]."""
        r = self.index_rope_dim
        if r == 0:
            return z
        return jnp.concatenate([rope(z[..., :r], positions, self.rope_base), z[..., r:]], -1)

    def _sparse_stage(self, q, k, v, index, mask) -> tuple[jax.Array, jax.Array]:
        """Top-k attention (eq. 2) and the KL on the selected keys (eq. 4)."""
        o, idx = dsa(
            q, k, v, *index, topk=self.topk, scale=self.attn.scale, mask=mask,
            block_size=self.block_size, return_indices=True,
        )
        # the KL on the keys the attention used: gathered, O(T topk), not [T, T]
        kl = dsa_indexer_loss(q, k, *index, indices=lax.stop_gradient(idx),
                              scale=self.attn.scale, mask=mask)
        return o, kl

    def _dense_stage(self, q, k, v, index, mask) -> tuple[jax.Array, jax.Array]:
        """Dense causal attention and the KL over all causal keys (eq. 3)."""
        o = attention(q, k, v, causal=True, scale=self.attn.scale, mask=mask)
        return o, dsa_indexer_loss(q, k, *index, scale=self.attn.scale, mask=mask)

    def _qkv(self, x: jax.Array, positions: jax.Array):
        """q, k, v to attend with. On MLA the shared-KV (MQA) layout DeepSeek-V3.2 runs DSA in:
        q [b,t,H,rank+R] = [q_nope W_UK^T, q_rope], k [b,t,1,rank+R] = [c_kv, k_rope],
        v [b,t,1,rank] = c_kv (the same logits as the per-head form; the selected rows are
        gathered once for all heads). On MHA the base layer's own q, k, v."""
        if not isinstance(self.attn, MLA):
            return self.attn.qkv(x, positions)
        mla = self.attn
        x = x.astype(mla.dtype)
        q_nope, q_rope = mla.queries(x, positions)
        c, kr = mla.latent(x, positions)
        q_lat = jnp.einsum("bthn,rhn->bthr", q_nope, mla.wk_b[...].astype(q_nope.dtype))
        k = jnp.concatenate([c, kr.reshape(*kr.shape[:2], -1).astype(c.dtype)], axis=-1)
        return jnp.concatenate([q_lat, q_rope], axis=-1), k[:, :, None], c[:, :, None]

    def _output(self, o: jax.Array) -> jax.Array:
        """The attention output -> y; on MLA o is in latent space and is multiplied by W_UV."""
        if isinstance(self.attn, MLA):
            o = jnp.einsum("bthr,rhv->bthv", o, self.attn.wv_b[...].astype(o.dtype))
        return self.attn.output(o)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_input(x, self.d_model, "DSA")
        x = apply_mask(x, mask)
        positions = jnp.arange(x.shape[1])
        q, k, v = self._qkv(x, positions)
        index = self.indexer_inputs(lax.stop_gradient(x), positions)
        if self.deterministic:
            o = dsa(
                q, k, v, *index, topk=self.topk, scale=self.attn.scale, mask=mask,
                block_size=self.block_size,
            )
            return self._output(o)
        step = self.indexer_step[...]
        self.indexer_step[...] = step + 1
        if self.indexer_warmup_steps == 0:
            o, kl = self._sparse_stage(q, k, v, index, mask)
        else:
            o, kl = lax.cond(
                step < self.indexer_warmup_steps, self._dense_stage, self._sparse_stage,
                q, k, v, index, mask,
            )
        self.sow(nnx.Intermediate, "aux_loss", self.indexer_loss_weight * kl)
        return self._output(o)

    def indexer_loss(
        self, x: jax.Array, mask: jax.Array | None = None, *, sparse: bool = False
    ) -> jax.Array:
        """DeepSeek-V3.2's indexer KL (eq. 3 dense warm-up, eq. 4 with ``sparse=True``): a scalar
        whose gradient reaches only the indexer's parameters (x is detached). The value sown by
        a training-mode call, without the weight; for custom training loops."""
        check_input(x, self.d_model, "DSA")
        x = lax.stop_gradient(apply_mask(x, mask))
        positions = jnp.arange(x.shape[1])
        q, k, _ = self.attn.qkv(x, positions)
        return dsa_indexer_loss(
            q, k, *self.indexer_inputs(x, positions), topk=self.topk if sparse else None,
            scale=self.attn.scale, mask=mask,
        )

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32) -> dict:
        """{"base": the base layer's cache, "k_idx": [batch, max_length, index_head_dim] in
        ``index_dtype``}."""
        return {
            "base": self.attn.init_cache(batch_size, max_length, dtype),
            "k_idx": jnp.zeros((batch_size, max_length, self.index_head_dim),
                               self.index_dtype),
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
