"""Encoder -> backbone -> task head, built from a ModelConfig and the data's TaskInfo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.config import ModelConfig, TaskInfo
from seqlab.models.blocks import Backbone, ModelBuildError, layer_mixers, mixer_args_for

POOLS = ("mean", "last", "cls")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def pool(h: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
    """h: [batch, length, d] -> [batch, d] over real positions (mask [batch, length])."""
    if kind == "mean":
        m = mask[..., None].astype(h.dtype)
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1)
    if kind == "last":
        last = jnp.maximum(mask.sum(1) - 1, 0)
        return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return h[:, 0]  # "cls": the learned token prepended at position 0


class SequenceModel(nnx.Module):
    """A sequence model for one task.

    classify:  inputs [B, L] tokens or [B, L, C] features, mask [B, L] -> logits [B, n_classes]
    retrieval: two sequences encoded by the same backbone, pooled to u, v; the head reads
               [u, v, u*v, u-v] (LRA's dual encoder) -> logits [B, n_classes]
    token:     per-position logits [B, L, n_classes] (language modelling when info.causal)
    """

    def __init__(self, cfg: ModelConfig, info: TaskInfo, *, rngs: nnx.Rngs):
        if cfg.pool not in POOLS:
            raise ModelBuildError(f"unknown pool {cfg.pool!r}; valid: {', '.join(POOLS)}.")
        self.task, self.pool_kind = info.task, cfg.pool
        self.dtype = DTYPES[cfg.dtype]
        d = cfg.d_model
        if info.vocab_size is not None:
            self.embed = nnx.Embed(info.vocab_size, d, dtype=self.dtype, rngs=rngs)
        elif info.input_dim is not None:
            self.embed = nnx.Linear(info.input_dim, d, dtype=self.dtype, rngs=rngs)
        else:
            raise ModelBuildError("TaskInfo has neither vocab_size nor input_dim.")
        mixers = layer_mixers(cfg.mixer, cfg.n_layers, cfg.pattern)
        args = [mixer_args_for(m, cfg.mixer_args, cfg.pattern) for m in mixers]
        self.backbone = Backbone(
            mixers,
            d,
            args,
            norm=cfg.norm,
            prenorm=cfg.prenorm,
            dropout=cfg.dropout,
            ffn=cfg.ffn,
            ffn_expand=cfg.ffn_expand,
            dtype=self.dtype,
            rngs=rngs,
        )
        self._check_causality(cfg, info, mixers)
        self.cls = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (d,)))
            if cfg.pool == "cls" and info.task != "token"
            else None
        )
        if info.task == "retrieval":
            self.head_hidden = nnx.Linear(4 * d, d, dtype=self.dtype, rngs=rngs)
        self.head = nnx.Linear(d, info.n_classes, dtype=self.dtype, rngs=rngs)

    def _check_causality(self, cfg: ModelConfig, info: TaskInfo, mixers: list[str]) -> None:
        """Language modelling needs causal layers (a bidirectional one sees the labels); CLS
        pooling needs bidirectional ones (a causal layer's first position sees only itself)."""
        blocks = list(self.backbone.blocks)
        if info.causal:
            for i, (block, name) in enumerate(zip(blocks, mixers, strict=True)):
                if not block.causal:
                    raise ModelBuildError(
                        f"this task is causal (language modelling) but layer {i} ({name!r}) is "
                        f"bidirectional and would see the tokens it predicts. Use a causal "
                        f"mixer or its causal setting (e.g. bidirectional: false, causal: true)."
                    )
            if cfg.norm == "batch":
                raise ModelBuildError(
                    "norm: batch mixes statistics across positions, which leaks future tokens "
                    "in a causal task; use norm: layer or rms."
                )
        if cfg.pool == "cls" and info.task != "token" and any(b.causal for b in blocks):
            causal = sorted({n for b, n in zip(blocks, mixers, strict=True) if b.causal})
            raise ModelBuildError(
                f"pool: cls reads position 0, which causal layers ({', '.join(causal)}) compute "
                f"from the CLS token alone; use pool: last or mean, or bidirectional mixers."
            )

    def _encode(self, inputs: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.embed(inputs).astype(self.dtype)
        if self.cls is not None:
            cls = jnp.broadcast_to(self.cls[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
            mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)
        h = self.backbone(x, mask)
        return h if self.task == "token" else pool(h, mask, self.pool_kind)

    def __call__(
        self,
        inputs: jax.Array,
        mask: jax.Array,
        inputs2: jax.Array | None = None,
        mask2: jax.Array | None = None,
    ) -> jax.Array:
        if self.task == "retrieval":
            if inputs2 is None or mask2 is None:
                raise ValueError("a retrieval model needs inputs2 and mask2")
            length = max(inputs.shape[1], inputs2.shape[1])

            def pad(a):
                return jnp.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

            both = self._encode(
                jnp.concatenate([pad(inputs), pad(inputs2)]),
                jnp.concatenate([pad(mask), pad(mask2)]),
            )
            u, v = jnp.split(both, 2)
            feats = jnp.concatenate([u, v, u * v, u - v], axis=-1)
            return self.head(jax.nn.gelu(self.head_hidden(feats))).astype(jnp.float32)
        return self.head(self._encode(inputs, mask)).astype(jnp.float32)

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list:
        """Decode caches of every layer (causal token models only)."""
        if self.task != "token":
            raise ValueError("recurrent decode is for token (language-modelling) models")
        return self.backbone.init_cache(batch_size, max_length, dtype)

    def decode(self, tokens: jax.Array, cache: list) -> tuple[jax.Array, list]:
        """tokens: [batch, t] -> (logits [batch, t, n_classes] float32, new cache)."""
        x = self.embed(tokens).astype(self.dtype)
        h, cache = self.backbone.decode(x, cache)
        return self.head(h).astype(jnp.float32), cache


def build_model(cfg: ModelConfig, info: TaskInfo, *, rngs: nnx.Rngs) -> SequenceModel:
    """The model of ``cfg`` for the task ``info``."""
    return SequenceModel(cfg, info, rngs=rngs)
