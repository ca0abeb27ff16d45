"""The types every benchmark spec is made of (:class:`Dims`, :class:`Call`, :class:`MixerSpec`),
:func:`dims_of` (a case's sizes read from the mixer), and the small input helpers the per-family
spec modules (``specs_ssm``, ``specs_delta``, ``specs_attention``) share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["F32", "Dims", "Call", "Builder", "MixerSpec", "dims_of"]

F32 = 4  # bytes


@dataclass(frozen=True)
class Dims:
    """Sizes of one benchmark case, named as the mixers' arguments (docs/architecture.md).
    n_heads * head_dim need not equal d_model (the mixer's own)."""

    batch: int
    length: int
    d_model: int
    n_heads: int = 4
    head_dim: int = 64
    d_state: int = 64
    topk: int = 512
    n_householder: int = 2
    chunk_size: int = 64
    index_heads: int = 4
    index_head_dim: int = 32


@dataclass(frozen=True)
class Call:
    """One timed call: ``fn(*args)``. backend "jax" (jitted) or "torch" (timed as is).
    ``same_as_op``: a peer that takes the op's own inputs and returns its output; the bench
    compares the two before timing (``rel_err`` of the row's peer entry)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    backend: str = "jax"
    same_as_op: bool = False


Builder = Callable[[Dims, jax.Array], Call | None]


@dataclass(frozen=True)
class MixerSpec:
    complexity: str  # "L", "L log L" or "L^2"
    core_cost: Callable[[Dims], tuple[float, float]]
    op: Builder | None = None
    reference: Builder | None = None
    peers: tuple[Builder, ...] = ()
    defaults: dict[str, int] = field(default_factory=dict)


def dims_of(mixer: Any, spec: MixerSpec, batch: int, length: int, d_model: int) -> Dims:
    """Dims of a case: spec defaults, overridden by the mixer's attributes of the same names
    (``n_heads``, ``head_dim``, ``d_state``, ...) where it has them."""
    d = replace(Dims(batch, length, d_model), **spec.defaults)
    found: dict[str, int] = {}
    for f in fields(Dims)[3:]:  # after batch, length, d_model
        value = getattr(mixer, f.name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            found[f.name] = value
    return replace(d, **found)


def _keys(key: jax.Array, n: int) -> list[jax.Array]:
    return list(jax.random.split(key, n))


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32)


def _torch(*xs: Any) -> tuple[Any, ...]:
    import torch

    return tuple(None if x is None else torch.from_numpy(np.array(x)) for x in xs)


def _log2(n: float) -> float:
    return math.log2(max(n, 2))
