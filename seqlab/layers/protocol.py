"""The mixer protocol (typed) and the registry that configs and the CLI reach mixers through
(docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp


@runtime_checkable
class Mixer(Protocol):
    """A sequence mixer: ``y = mixer(x, mask=None)``, x, y: [batch, length, d_model], mask:
    [batch, length] bool (True = real position; outputs at real positions never depend on
    padded ones). ``causal``: True when output t depends on inputs 0..t only.

    Built as ``Cls(d_model, *, rngs, dtype=jnp.float32, **named_args)``."""

    causal: bool

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array: ...


@runtime_checkable
class CausalMixer(Mixer, Protocol):
    """A mixer with a recurrent (token-by-token) mode: ``cache = init_cache(batch_size,
    max_length, dtype)``; ``y, cache = decode(x, cache)`` with x, y: [batch, t, d_model] continuing
    the cached sequence (t > 1 is a prefill). Decoding a sequence in any split equals ``mixer(x)``.

    ``isinstance`` checks only that the methods exist: a mixer whose ``causal`` is False (a
    bidirectional setting of a class that decodes when causal) raises ValueError from them, so
    read ``mixer.causal`` to decide."""

    def init_cache(
        self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32
    ) -> Any: ...

    def decode(self, x: jax.Array, cache: Any) -> tuple[jax.Array, Any]: ...


MIXERS: dict[str, type] = {}
"""Registered mixer classes by name (the ``mixer:`` of a config)."""

_T = TypeVar("_T", bound=type)


def register_mixer(name: str, *, override: bool = False) -> Callable[[_T], _T]:
    """Class decorator: ``@register_mixer("my-mixer")`` adds the class to ``MIXERS``.

    A name that is already registered raises ValueError unless ``override=True`` (which replaces
    the registered class)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_mixer needs a non-empty name, got {name!r}")

    def add(cls: _T) -> _T:
        if not isinstance(cls, type):
            raise ValueError(f"register_mixer({name!r}) decorates a class, got {cls!r}")
        if name in MIXERS and MIXERS[name] is not cls and not override:
            raise ValueError(
                f"mixer name {name!r} is already registered to {MIXERS[name].__qualname__}; "
                f"choose another name or pass register_mixer({name!r}, override=True)"
            )
        MIXERS[name] = cls
        return cls

    return add
