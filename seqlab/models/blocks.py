"""Residual blocks around built mixers, and the backbone: a stack of blocks.

A block takes a *built* mixer, any ``nnx.Module`` obeying the mixer protocol of
``seqlab.layers`` (``y = mixer(x, mask=None)``, x and y [batch, length, d_model], and a boolean
attribute ``causal``); nothing here looks a mixer up by name (that is ``seqlab.models.builder``).
A hybrid is a list comprehension::

    rngs = nnx.Rngs(0)
    blocks = [Block(S4D(64, rngs=rngs) if i % 2 else MLA(64, n_heads=4, rngs=rngs), 64,
                    ffn="glu", rngs=rngs) for i in range(4)]
    backbone = Backbone(blocks, final_norm=Norm("layer", 64, rngs=rngs))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers.common import apply_mask

NORMS = ("layer", "rms", "rms_offset", "batch")
FFNS = ("none", "mlp", "glu")


class ModelBuildError(ValueError):
    """A model that cannot be built (unknown mixer or argument, a layer that breaks the task's
    causality, ...)."""


def mixer_is_causal(mixer: nnx.Module) -> bool:
    """The mixer's ``causal`` attribute (True: position t never sees positions > t)."""
    causal = getattr(mixer, "causal", None)
    if not isinstance(causal, bool):
        raise ModelBuildError(
            f"mixer {type(mixer).__name__} has no boolean attribute 'causal'; the mixer protocol "
            f"(seqlab.layers) requires one: set self.causal = True in __init__ when an output "
            f"never depends on later positions, else False."
        )
    return causal


class OffsetRMSNorm(nnx.Module):
    """RMSNorm with the scale stored as its offset from one: y = x / sqrt(mean(x^2) + eps) *
    (1 + w) over the last axis, w: [dim] initialised to 0, computed in float32 (Gemma;
    Qwen3-Next's ``Qwen3NextRMSNorm``). The same function as RMSNorm with scale 1 + w; weight
    decay pulls the scale towards 1 instead of 0."""

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.eps = eps
        self.scale = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return (h * (1.0 + self.scale[...])).astype(x.dtype)


class Norm(nnx.Module):
    """LayerNorm, RMSNorm (``rms``; ``rms_offset``: scale stored as 1 + w, see
    ``OffsetRMSNorm``) or BatchNorm over the channel axis of x: [batch, length, d_model],
    computed in float32. BatchNorm statistics use real positions only (mask). ``eps``: None
    keeps each norm's default (1e-6; BatchNorm 1e-5)."""

    def __init__(self, kind: str, d_model: int, *, eps: float | None = None, rngs: nnx.Rngs):
        if kind not in NORMS:
            raise ModelBuildError(f"unknown norm {kind!r}; valid norms: {', '.join(NORMS)}.")
        self.kind = kind
        if eps is None:
            eps = 1e-5 if kind == "batch" else 1e-6
        if kind == "layer":
            self.norm = nnx.LayerNorm(d_model, epsilon=eps, rngs=rngs)
        elif kind == "rms":
            self.norm = nnx.RMSNorm(d_model, epsilon=eps, rngs=rngs)
        elif kind == "rms_offset":
            self.norm = OffsetRMSNorm(d_model, eps=eps)
        else:
            self.norm = nnx.BatchNorm(d_model, momentum=0.9, epsilon=eps, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.kind == "batch":
            m = None if mask is None else mask[..., None]
            return self.norm(x.astype(jnp.float32), mask=m).astype(x.dtype)
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


class FFN(nnx.Module):
    """Channel mixer: "mlp" = W2 gelu(W1 x); "glu" = W2 (silu(x W_gate) * x W_up) (Shazeer
    2020's SwiGLU; ``w_in.kernel`` = [W_gate | W_up], [d_model, 2 hidden]). hidden: the hidden
    width (None: expand * d_model); bias: biases in both linear maps."""

    def __init__(self, kind: str, d_model: int, expand: int, *, hidden: int | None = None,
                 bias: bool = True, dtype, rngs: nnx.Rngs):
        if kind not in FFNS[1:]:
            raise ModelBuildError(f"unknown ffn {kind!r}; valid choices: {', '.join(FFNS)}.")
        hidden = expand * d_model if hidden is None else hidden
        self.kind = kind
        width = 2 * hidden if kind == "glu" else hidden
        self.w_in = nnx.Linear(d_model, width, use_bias=bias, dtype=dtype, rngs=rngs)
        self.w_out = nnx.Linear(hidden, d_model, use_bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.w_in(x)
        if self.kind == "glu":
            a, b = jnp.split(h, 2, axis=-1)
            h = jax.nn.silu(a) * b
        else:
            h = jax.nn.gelu(h)
        return self.w_out(h)


class Block(nnx.Module):
    """One residual block around a built ``mixer``.

    Pre-norm: x + drop(mixer(norm(x))); post-norm: norm(x + drop(mixer(x))). An optional FFN
    sub-block ("mlp" or "glu", hidden width ``ffn_hidden`` or ffn_expand * d_model, biases
    if ``bias``) follows with its own norm and residual; ``moe`` (the arguments of
    ``seqlab.models.moe.MoE``) makes that FFN a routed mixture of experts instead;
    ``norm_eps`` is the norms' epsilon.
    x: [batch, length, d_model], mask: [batch, length] bool; masked positions of the output
    are zero. Parameters are drawn from ``rngs`` in the order norm, FFN, FFN norm (the
    mixer drew its own before).
    """

    def __init__(
        self,
        mixer: nnx.Module,
        d_model: int,
        *,
        norm: str = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        ffn: str = "none",
        ffn_expand: int = 2,
        ffn_hidden: int | None = None,
        bias: bool = True,
        norm_eps: float | None = None,
        moe: dict | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if ffn not in FFNS:
            raise ModelBuildError(f"unknown ffn {ffn!r}; valid choices: {', '.join(FFNS)}.")
        if isinstance(mixer, str):
            raise ModelBuildError(
                f"Block takes a built mixer module, got the name {mixer!r}; build it first "
                f"(e.g. seqlab.layers.S4D(d_model, rngs=rngs)) or use "
                f"seqlab.models.build_mixer({mixer!r}, d_model, args, rngs=rngs)."
            )
        mixer_is_causal(mixer)
        self.d_model, self.prenorm = d_model, prenorm
        self.mixer = mixer
        self.norm = Norm(norm, d_model, eps=norm_eps, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        if moe is not None:
            from seqlab.models.moe import MoE

            try:
                self.ffn = MoE(d_model, **moe, dtype=dtype, rngs=rngs)
            except TypeError as e:
                raise ModelBuildError(f"model.moe: {e}; see seqlab.models.moe.MoE for its "
                                      "arguments.") from None
            self.ffn_norm = Norm(norm, d_model, eps=norm_eps, rngs=rngs)
        elif ffn != "none":
            self.ffn = FFN(ffn, d_model, ffn_expand, hidden=ffn_hidden, bias=bias, dtype=dtype,
                           rngs=rngs)
            self.ffn_norm = Norm(norm, d_model, eps=norm_eps, rngs=rngs)
        else:
            self.ffn = None

    @property
    def causal(self) -> bool:
        return mixer_is_causal(self.mixer)

    def _residual(self, x, f, norm: Norm, mask):
        if self.prenorm:
            return x + self.drop(f(norm(x, mask)))
        return norm(x + self.drop(f(x)), mask)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = self._residual(x, lambda h: self.mixer(h, mask=mask), self.norm, mask)
        if self.ffn is not None:
            x = self._residual(x, self.ffn, self.ffn_norm, mask)
        return apply_mask(x, mask)

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> Any:
        """The mixer's decode cache (a pytree of arrays); causal mixers only."""
        if not self.causal:
            raise ValueError(f"mixer {type(self.mixer).__name__} is bidirectional: it has no "
                             f"recurrent decode mode")
        return self.mixer.init_cache(batch_size, max_length, dtype)

    def decode(self, x: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        """x: [batch, t, d_model] -> (y [batch, t, d_model], cache)."""
        new_cache = []

        def mix(h):
            y, c = self.mixer.decode(h, cache)
            new_cache.append(c)
            return y

        x = self._residual(x, mix, self.norm, None)
        if self.ffn is not None:
            x = self._residual(x, self.ffn, self.ffn_norm, None)
        return x, new_cache[0]


class Backbone(nnx.Module):
    """``blocks`` applied in order, then ``final_norm`` (usual after pre-norm blocks).
    x: [batch, length, d_model] -> [batch, length, d_model]."""

    def __init__(self, blocks: Sequence[Block], *, final_norm: Norm | None = None):
        if not blocks:
            raise ModelBuildError("a Backbone needs at least one block.")
        widths = {b.d_model for b in blocks}
        if len(widths) > 1:
            raise ModelBuildError(f"the blocks of a Backbone differ in d_model: {sorted(widths)}.")
        self.d_model = blocks[0].d_model
        self.blocks = nnx.List(list(blocks))
        self.final_norm = final_norm

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for block in self.blocks:
            x = block(x, mask)
        if self.final_norm is not None:
            x = self.final_norm(x, mask)
        return x

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list:
        """One decode cache per block."""
        return [b.init_cache(batch_size, max_length, dtype) for b in self.blocks]

    def decode(self, x: jax.Array, cache: list) -> tuple[jax.Array, list]:
        """x: [batch, t, d_model] -> (y [batch, t, d_model], new caches)."""
        new = []
        for block, c in zip(self.blocks, cache, strict=True):
            x, c = block.decode(x, c)
            new.append(c)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, new
