"""Residual blocks and the backbone: n blocks of one registered mixer or of a pattern."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.common import apply_mask
from seqlab.utils import did_you_mean

NORMS = ("layer", "rms", "batch")
FFNS = ("none", "mlp", "glu")


class ModelBuildError(ValueError):
    """A model config that cannot be built (unknown mixer, unknown mixer argument, ...)."""


def get_mixer(name: str) -> type[nnx.Module]:
    if name not in MIXERS:
        raise ModelBuildError(
            f"unknown mixer {name!r}.{did_you_mean(name, MIXERS)} "
            f"Registered mixers: {', '.join(sorted(MIXERS))}."
        )
    return MIXERS[name]


def accepted_args(cls: type) -> list[str]:
    """Keyword arguments of a mixer class, following ``**options`` up its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for k, p in inspect.signature(init).parameters.items():
            skip = k in ("self", "d_model", "rngs", "dtype") or p.kind is p.VAR_KEYWORD
            if not skip and k not in names:
                names.append(k)
    return names


def check_mixer_args(name: str, args: dict) -> None:
    """Raise a clear error for a keyword the mixer class ``name`` does not accept."""
    params = inspect.signature(get_mixer(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items() if k not in ("self", "d_model", "rngs", "dtype")]
    for key in args:
        if key not in valid:
            raise ModelBuildError(
                f"mixer {name!r} has no argument {key!r}.{did_you_mean(key, valid)} "
                f"Valid arguments: {', '.join(valid)}."
            )


def is_causal(mixer: nnx.Module) -> bool:
    """True when the mixer has a recurrent decode mode (its outputs never see the future).
    Every bidirectional mixer raises ValueError from ``init_cache`` (the mixer protocol)."""
    if not hasattr(mixer, "init_cache"):
        return False
    try:
        jax.eval_shape(lambda: mixer.init_cache(1, 1))
    except ValueError:
        return False
    return True


class Norm(nnx.Module):
    """LayerNorm, RMSNorm or BatchNorm over the channel axis of x: [batch, length, d_model].
    BatchNorm statistics use real positions only (mask)."""

    def __init__(self, kind: str, d_model: int, *, rngs: nnx.Rngs):
        if kind not in NORMS:
            raise ModelBuildError(f"unknown norm {kind!r}; valid norms: {', '.join(NORMS)}.")
        self.kind = kind
        if kind == "layer":
            self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        elif kind == "rms":
            self.norm = nnx.RMSNorm(d_model, rngs=rngs)
        else:
            self.norm = nnx.BatchNorm(d_model, momentum=0.9, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.kind == "batch":
            m = None if mask is None else mask[..., None]
            return self.norm(x.astype(jnp.float32), mask=m).astype(x.dtype)
        return self.norm(x.astype(jnp.float32)).astype(x.dtype)


class FFN(nnx.Module):
    """Channel mixer: "mlp" = W2 gelu(W1 x); "glu" = W2 (silu(W1 x) * W3 x)."""

    def __init__(self, kind: str, d_model: int, expand: int, *, dtype, rngs: nnx.Rngs):
        hidden = expand * d_model
        self.kind = kind
        width = 2 * hidden if kind == "glu" else hidden
        self.w_in = nnx.Linear(d_model, width, dtype=dtype, rngs=rngs)
        self.w_out = nnx.Linear(hidden, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.w_in(x)
        if self.kind == "glu":
            a, b = jnp.split(h, 2, axis=-1)
            h = jax.nn.silu(a) * b
        else:
            h = jax.nn.gelu(h)
        return self.w_out(h)


class Block(nnx.Module):
    """One residual block. Pre-norm: x + drop(mixer(norm(x))); post-norm: norm(x + drop(mixer(x))).
    An optional FFN sub-block follows with its own norm and residual."""

    def __init__(
        self,
        mixer: str,
        d_model: int,
        mixer_args: dict,
        *,
        norm: str = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        ffn: str = "none",
        ffn_expand: int = 2,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if ffn not in FFNS:
            raise ModelBuildError(f"unknown ffn {ffn!r}; valid choices: {', '.join(FFNS)}.")
        check_mixer_args(mixer, mixer_args)
        self.prenorm = prenorm
        cls = get_mixer(mixer)
        try:
            self.mixer = cls(d_model=d_model, rngs=rngs, dtype=dtype, **mixer_args)
        except TypeError as e:  # an unknown keyword reaching a class that takes **options
            if "unexpected keyword argument" not in str(e):
                raise
            raise ModelBuildError(
                f"mixer {mixer!r}: {e}. Valid arguments: {', '.join(accepted_args(cls))}."
            ) from None
        self.causal = is_causal(self.mixer)
        self.norm = Norm(norm, d_model, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        if ffn != "none":
            self.ffn = FFN(ffn, d_model, ffn_expand, dtype=dtype, rngs=rngs)
            self.ffn_norm = Norm(norm, d_model, rngs=rngs)
        else:
            self.ffn = None

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
        """The mixer's decode cache (a pytree of arrays)."""
        if not hasattr(self.mixer, "init_cache"):
            raise ValueError(f"mixer {type(self.mixer).__name__} has no recurrent decode mode")
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


def layer_mixers(mixer: str, n_layers: int, pattern: tuple[str, ...] | None) -> list[str]:
    """The mixer name of each layer: ``mixer`` n times, or ``pattern`` repeated to n layers."""
    if pattern:
        return [pattern[i % len(pattern)] for i in range(n_layers)]
    return [mixer] * n_layers


def mixer_args_for(name: str, mixer_args: dict, pattern: tuple[str, ...] | None) -> dict:
    """With a pattern, ``mixer_args`` maps mixer name -> kwargs; otherwise it is the kwargs."""
    if not pattern:
        return dict(mixer_args)
    unknown = set(mixer_args) - set(pattern)
    if unknown:
        raise ModelBuildError(
            f"with model.pattern, model.mixer_args maps mixer names of the pattern to their "
            f"arguments; {sorted(unknown)} are not in the pattern {list(pattern)}."
        )
    return dict(mixer_args.get(name) or {})


class Backbone(nnx.Module):
    """``n_layers`` blocks; a final norm when pre-norm. x: [batch, length, d_model]."""

    def __init__(
        self,
        mixers: list[str],
        d_model: int,
        args: list[dict],
        *,
        norm: str,
        prenorm: bool,
        dropout: float,
        ffn: str,
        ffn_expand: int,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.blocks = nnx.List(
            [
                Block(
                    m,
                    d_model,
                    a,
                    norm=norm,
                    prenorm=prenorm,
                    dropout=dropout,
                    ffn=ffn,
                    ffn_expand=ffn_expand,
                    dtype=dtype,
                    rngs=rngs,
                )
                for m, a in zip(mixers, args, strict=True)
            ]
        )
        self.final_norm = Norm(norm, d_model, rngs=rngs) if prenorm else None

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
