"""RoPE frequencies, with the context-extension rescalings of pretrained checkpoints.

Rotary embedding (Su et al. 2021, RoFormer eq. 15) turns pair i of a head of ``dim`` rotary
dimensions by ``position * theta_i`` with ``theta_i = base^(-2i / dim)``, i = 0 .. dim/2 - 1.
Checkpoints trained for long contexts rescale the theta_i; ``scaling`` names how, with the keys
of transformers' ``rope_scaling`` / ``rope_parameters``:

- ``default``: theta_i as above.
- ``linear`` (position interpolation, Chen et al. 2023): theta_i / factor.
- ``llama3`` (Llama 3.1): wavelengths ``2 pi / theta_i`` longer than
  ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``, those
  shorter than ``original / high_freq_factor`` kept, and the band between interpolated:
  ``(1 - s) theta_i / factor + s theta_i`` with ``s = (original / wavelength - low) /
  (high - low)``.

``rope_frequencies`` returns the theta_i and the factor the cos and sin are multiplied by
(1 for these types).

- ``yarn`` (Peng et al. 2023): NTK-by-parts interpolation with an attention factor on cos and
  sin (``seqlab.ops.yarn``).

Other types (``dynamic``, ``longrope``, ...) raise ValueError naming them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqlab.ops.yarn import yarn_frequencies

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# keys of a transformers rope dict that carry no scaling information
_NEUTRAL_KEYS = ("rope_theta", "partial_rotary_factor")


def rope_type(scaling: Mapping[str, Any] | None) -> str:
    """The scaling's type ("default" for None), checked against ``ROPE_TYPES``."""
    if not scaling:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"RoPE scaling type {kind!r} is not implemented in seqlab (supported: "
            f"{', '.join(ROPE_TYPES)}); its rotation angles would differ from the checkpoint's, "
            f"so the model cannot be used as trained."
        )
    return kind


def _need(scaling: Mapping[str, Any], kind: str, *keys: str) -> list:
    missing = [k for k in keys if scaling.get(k) is None]
    if missing:
        raise ValueError(f"RoPE scaling of type {kind!r} needs the keys {missing}; got "
                         f"{dict(scaling)}.")
    return [scaling[k] for k in keys]


def rope_frequencies(dim: int, base: float, scaling: Mapping[str, Any] | None = None
                     ) -> tuple[np.ndarray, float]:
    """(theta [dim // 2] float64, cos/sin factor) for ``dim`` rotary dimensions (even)."""
    if dim % 2 or dim < 2:
        raise ValueError(f"RoPE needs an even dimension >= 2, got {dim}")
    theta = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    kind = rope_type(scaling)
    if kind == "default":
        return theta, 1.0
    if kind == "yarn":
        return yarn_frequencies(dim, base, scaling)
    if kind == "linear":
        (factor,) = _need(scaling, kind, "factor")
        return theta / factor, 1.0
    factor, low, high, original = _need(  # llama3
        scaling, kind, "factor", "low_freq_factor", "high_freq_factor",
        "original_max_position_embeddings")
    wavelength = 2 * math.pi / theta
    s = (original / wavelength - low) / (high - low)
    out = np.where(wavelength > original / low, theta / factor, theta)
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return np.where(medium, (1 - s) * theta / factor + s * theta, out), 1.0


def frozen_scaling(scaling: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    """A hashable copy of a scaling dict (None for no scaling), its type checked; the layers
    keep this form. Keys that carry no scaling (``rope_theta``, ...) are dropped."""
    if rope_type(scaling) == "default":
        return None
    return tuple(sorted((k, v) for k, v in scaling.items() if k not in _NEUTRAL_KEYS))
