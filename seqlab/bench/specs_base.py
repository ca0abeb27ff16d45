"""The types every benchmark spec is made of (:class:`Dims`, :class:`Call`, :class:`MixerSpec`),
:func:`dims_of` (a case's sizes read from the mixer), and the small input helpers the per-family
spec modules (``specs_ssm``, ``specs_delta``, ``specs_attention``) share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["F32", "Dims", "Call", "Builder", "MixerSpec", "dims_of"]

F32 = 4  # bytes


@dataclass(frozen=True)
class Dims:
    """Sizes of one benchmark case. heads * head_dim need not equal d_model (the mixer's own)."""

    batch: int
    length: int
    d_model: int
    heads: int = 4
    head_dim: int = 64
    state: int = 64
    topk: int = 512
    num_householder: int = 2
    chunk: int = 64
    idx_heads: int = 4
    idx_dim: int = 32


@dataclass(frozen=True)
class Call:
    """One timed call: ``fn(*args)``. backend "jax" (jitted) or "torch" (timed as is)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    backend: str = "jax"


Builder = Callable[[Dims, jax.Array], Call | None]


@dataclass(frozen=True)
class MixerSpec:
    complexity: str  # "L", "L log L" or "L^2"
    core_cost: Callable[[Dims], tuple[float, float]]
    op: Builder | None = None
    reference: Builder | None = None
    peers: tuple[Builder, ...] = ()
    defaults: dict[str, int] = field(default_factory=dict)


_ATTRS = {
    "heads": ("num_heads", "n_heads", "heads", "nheads"),
    "head_dim": ("head_dim", "d_head", "head_k_dim", "headdim", "head_qk_dim"),
    "state": ("d_state", "state_size", "n_state", "state_dim", "N", "P"),
    "topk": ("topk", "top_k", "index_topk"),
    "num_householder": ("num_householder", "n_householder"),
    "chunk": ("chunk_size",),
    "idx_heads": ("index_heads", "n_index_heads", "idx_heads"),
    "idx_dim": ("index_dim", "index_head_dim", "idx_dim"),
}


def dims_of(mixer: Any, spec: MixerSpec, batch: int, length: int, d_model: int) -> Dims:
    """Dims of a case: spec defaults, overridden by the mixer's own attributes where it has them."""
    d = replace(Dims(batch, length, d_model), **spec.defaults)
    found: dict[str, int] = {}
    for field_name, names in _ATTRS.items():
        for n in names:
            value = getattr(mixer, n, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found[field_name] = value
                break
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
