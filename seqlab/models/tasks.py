"""Task models: an embedding, a backbone and a head, for one kind of task.

- ``Classifier``: one label per sequence. inputs [batch, length] tokens or [batch, length,
  channels] features, mask [batch, length] -> logits [batch, n_classes].
- ``DualEncoder``: one label per pair of sequences (LRA retrieval). Both are encoded by the same
  backbone and pooled to u, v; the head reads [u, v, u*v, u-v] (Tay et al. 2021, the LRA dual
  encoder) -> logits [batch, n_classes].
- ``LanguageModel``: per-position logits [batch, length, vocab]; with ``causal=True`` (language
  modelling) every layer must be causal, and ``init_cache`` / ``decode`` drive
  ``seqlab.generate``. ``causal=False`` is per-position tagging with bidirectional layers.

Logits are float32 whatever the compute dtype. Any ``nnx.Module`` fits each slot: the embedding
maps inputs to [batch, length, d_model], the head maps [..., d_model] (DualEncoder:
[batch, 4 * d_model]) to logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.models.blocks import Backbone, ModelBuildError

POOLS = ("mean", "last", "cls")


def pool(h: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
    """h: [batch, length, d] -> [batch, d] over real positions (mask [batch, length])."""
    if kind == "mean":
        m = mask[..., None].astype(h.dtype)
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1)
    if kind == "last":  # the last real position, wherever the padding is (left, right, holes)
        positions = jnp.where(mask, jnp.arange(mask.shape[1]), -1)
        last = jnp.maximum(positions.max(1), 0)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return h[:, 0]  # "cls": the learned token prepended at position 0


class _Pooled(nnx.Module):
    """Embedding -> backbone -> pooled [batch, d_model]; with pool="cls" a learned token is
    prepended (drawn from ``rngs``: 0.02 * N(0, 1), as BERT's embeddings)."""

    def __init__(self, embed: nnx.Module, backbone: Backbone, *, pool: str, rngs):
        if pool not in POOLS:
            raise ModelBuildError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}.")
        self.embed, self.backbone, self.pool_kind = embed, backbone, pool
        if pool != "cls":
            self.cls = None
        else:
            causal = [type(b.mixer).__name__ for b in backbone.blocks if b.causal]
            if causal:
                raise ModelBuildError(
                    f"pool='cls' reads position 0, which causal layers ({', '.join(causal)}) "
                    f"compute from the CLS token alone; use pool 'last' or 'mean', or "
                    f"bidirectional mixers (causal=False where a mixer has that setting; in a "
                    f"config, mixer_args.causal: false)."
                )
            if rngs is None:
                raise ModelBuildError("pool='cls' learns a token: pass rngs=nnx.Rngs(...).")
            self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (backbone.d_model,)))

    def encode(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """inputs [batch, length(, channels)], mask [batch, length] (None: every position is
        real) -> [batch, d_model]."""
        if mask is None:
            mask = jnp.ones(inputs.shape[:2], bool)
        x = self.embed(inputs)
        if self.cls is not None:
            cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
            mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)
        return pool(self.backbone(x, mask), mask, self.pool_kind)


class Classifier(_Pooled):
    """One label per sequence: head(pool(backbone(embed(inputs)))) -> [batch, n_classes]."""

    def __init__(self, embed: nnx.Module, backbone: Backbone, head: nnx.Module, *,
                 pool: str = "mean", rngs: nnx.Rngs | None = None):
        super().__init__(embed, backbone, pool=pool, rngs=rngs)
        self.head = head

    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """inputs [batch, length(, channels)], mask [batch, length] (None: every position is
        real) -> [batch, n_classes] float32."""
        return self.head(self.encode(inputs, mask)).astype(jnp.float32)


class DualEncoder(_Pooled):
    """One label per pair: u = enc(inputs), v = enc(inputs2) with shared weights, then
    head([u, v, u*v, u-v]) -> [batch, n_classes]. The two sequences run as one batch (padded
    to the longer length, masked)."""

    def __init__(self, embed: nnx.Module, backbone: Backbone, head: nnx.Module, *,
                 pool: str = "mean", rngs: nnx.Rngs | None = None):
        super().__init__(embed, backbone, pool=pool, rngs=rngs)
        self.head = head

    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None,
                 inputs2: jax.Array | None = None, mask2: jax.Array | None = None) -> jax.Array:
        """inputs, inputs2 [batch, length(2)(, channels)], masks [batch, length(2)] (None: every
        position is real) -> [batch, n_classes] float32."""
        if inputs2 is None:
            raise ValueError("a retrieval model needs inputs2 (the second sequence of each pair)")
        if mask is None:
            mask = jnp.ones(inputs.shape[:2], bool)
        if mask2 is None:
            mask2 = jnp.ones(inputs2.shape[:2], bool)
        length = max(inputs.shape[1], inputs2.shape[1])

        def pad(a):
            return jnp.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

        both = self.encode(jnp.concatenate([pad(inputs), pad(inputs2)]),
                           jnp.concatenate([pad(mask), pad(mask2)]))
        u, v = jnp.split(both, 2)
        return self.head(jnp.concatenate([u, v, u * v, u - v], axis=-1)).astype(jnp.float32)


class MLPHead(nnx.Module):
    """W2 gelu(W1 x): [..., d_in] -> [..., d_out] (the dual encoder's head)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, d_hidden, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_hidden, d_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.gelu(self.hidden(x)))


class LanguageModel(nnx.Module):
    """Per-position logits: head(backbone(embed(tokens))) -> [batch, length, vocab].

    head=None ties the output layer to the embedding (``embed.attend``: logits = h E^T, Press &
    Wolf 2017), which needs an ``nnx.Embed``.
    causal=True (language modelling): every layer must be causal (a bidirectional one sees the
    tokens it predicts) and no BatchNorm may mix statistics across positions."""

    def __init__(self, embed: nnx.Module, backbone: Backbone, head: nnx.Module | None, *,
                 causal: bool = True):
        if head is None and not isinstance(embed, nnx.Embed):
            raise ModelBuildError(
                f"a tied output layer (head=None) reuses an nnx.Embed token embedding, got "
                f"{type(embed).__name__}; pass a head module."
            )
        if causal:
            for i, block in enumerate(backbone.blocks):
                if not block.causal:
                    raise ModelBuildError(
                        f"this model is causal (language modelling) but layer {i} "
                        f"({type(block.mixer).__name__}) is bidirectional and would see the "
                        f"tokens it predicts. Use a causal mixer or its causal setting "
                        f"(causal=True; in a config, mixer_args.causal: true)."
                    )
            if any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_modules(backbone)):
                raise ModelBuildError(
                    "BatchNorm (norm 'batch') mixes statistics across positions, which leaks "
                    "future tokens in a causal model; use norm 'layer' or 'rms'."
                )
        self.embed, self.backbone, self.head, self.causal = embed, backbone, head, causal

    def __call__(self, inputs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """inputs [batch, length] int, mask [batch, length] -> [batch, length, vocab] float32."""
        return self.logits(self.backbone(self.embed(inputs), mask))

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [batch, length, d_model] -> [batch, length, vocab] float32 (head or tied)."""
        out = self.embed.attend(h) if self.head is None else self.head(h)
        return out.astype(jnp.float32)

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list:
        """Decode caches of every layer (causal models only)."""
        if not self.causal:
            raise ValueError("recurrent decode is for causal language models")
        return self.backbone.init_cache(batch_size, max_length, dtype)

    def decode(self, tokens: jax.Array, cache: list) -> tuple[jax.Array, list]:
        """tokens: [batch, t] -> (logits [batch, t, vocab] float32, new cache)."""
        h, cache = self.backbone.decode(self.embed(tokens), cache)
        return self.logits(h), cache


__all__ = ["POOLS", "Classifier", "DualEncoder", "LanguageModel", "MLPHead", "pool"]
