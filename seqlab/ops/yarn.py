"""YaRN RoPE scaling (Peng et al. 2023, 'YaRN: Efficient Context Window Extension of Large
Language Models'), as DeepSeek-V2/V3 checkpoints use it.

For ``dim`` rotary dimensions (pairs i = 0 .. dim/2 - 1, theta_i = base^(-2i / dim)) and a
context extension by ``factor`` s of a model pretrained on ``original_max_position_embeddings``
L positions, "NTK-by-parts" interpolation (section 3.2) keeps the fast pairs, divides the slow
ones by s, and blends in between:

    theta'_i = (1 - g_i) theta_i / s + g_i theta_i,  g_i = clip((high - i) / (high - low), 0, 1)

where ``low`` and ``high`` are the (fractional) pair indices at which a pair makes
``beta_fast`` and ``beta_slow`` turns over L positions,
``i(beta) = dim ln(L / (2 pi beta)) / (2 ln base)``, floored and ceiled when ``truncate``
(default true), clipped to [0, dim - 1]. The paper's eq. 18 writes the blend as linear in the
number of turns r = L / wavelength; the released YaRN code, DeepSeek's and transformers'
(``_compute_yarn_parameters``, transformers/modeling_rope_utils.py lines 368-500) ramp linearly
in the pair index i (i.e. in log r) between the rounded bounds, and that is what the checkpoints
were trained with, so it is what is implemented here.

The cos and sin are multiplied by the attention factor (the paper's sqrt(1/t), eq. 22):
``attention_factor`` if given, else ``m(s, mscale) / m(s, mscale_all_dim)`` when both are set
(DeepSeek), else ``m(s, 1)``, with ``m(s, c) = 0.1 c ln(s) + 1`` (1 for s <= 1). DeepSeek's MLA
additionally multiplies its softmax scale by ``m(s, mscale_all_dim)^2``
(``softmax_factor``; transformers' ``yarn_apply_mscale``, modeling_rope_utils.py line 353).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """m(s, c) = 0.1 c ln(s) + 1 for s > 1, else 1 (YaRN eq. 22's sqrt(1/t))."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _factor(scaling: Mapping[str, Any]) -> float:
    if scaling.get("factor") is None or scaling.get("original_max_position_embeddings") is None:
        raise ValueError(
            "RoPE scaling of type 'yarn' needs the keys 'factor' and "
            f"'original_max_position_embeddings'; got {dict(scaling)}. (transformers derives a "
            "missing factor as max_position_embeddings / original_max_position_embeddings: put "
            "that value in 'factor'.)"
        )
    return float(scaling["factor"])


def yarn_frequencies(dim: int, base: float, scaling: Mapping[str, Any]
                     ) -> tuple[np.ndarray, float]:
    """(theta' [dim // 2] float64, attention factor) of YaRN for ``dim`` rotary dimensions.

    ``scaling`` keys (transformers' ``rope_parameters``): factor, original_max_position_embeddings
    (required); beta_fast (32), beta_slow (1), truncate (true), attention_factor, mscale,
    mscale_all_dim (optional).
    """
    factor = _factor(scaling)
    original = float(scaling["original_max_position_embeddings"])
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    theta = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)

    def pair_index(turns: float) -> float:
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as the reference code: avoids a division by zero
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    theta = theta / factor * ramp + theta * (1 - ramp)
    return theta, attention_factor(scaling)


def attention_factor(scaling: Mapping[str, Any]) -> float:
    """The factor YaRN multiplies cos and sin by (module docstring)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = _factor(scaling)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def softmax_factor(scaling: Mapping[str, Any] | None) -> float:
    """What DeepSeek's MLA multiplies its softmax scale 1/sqrt(d_qk) by under YaRN:
    ``m(factor, mscale_all_dim)^2`` (1 without ``mscale_all_dim`` or without YaRN)."""
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "yarn":
        return 1.0
    mscale_all_dim = scaling.get("mscale_all_dim")
    return yarn_mscale(_factor(scaling), mscale_all_dim) ** 2 if mscale_all_dim else 1.0
