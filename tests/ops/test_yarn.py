"""YaRN RoPE frequencies: a per-pair float64 loop written from the formulas (YaRN section 3.2
as its released code and transformers' ``_compute_yarn_parameters`` ramp it, in the pair
index), the attention factors, and the dispatch through ``rope_frequencies``."""

import math

import numpy as np
import pytest

from seqlab.ops.rope import rope_frequencies
from seqlab.ops.yarn import attention_factor, softmax_factor, yarn_frequencies


def loop_reference(dim, base, factor, original, beta_fast=32, beta_slow=1, truncate=True):
    """theta'_i one pair at a time: the pair index at which a pair makes ``beta`` turns over
    ``original`` positions bounds the ramp; fast pairs (few indices) keep theta_i, slow ones
    get theta_i / factor, and the blend is linear in the index between the bounds."""
    def index(turns):  # solve original * theta_i / (2 pi) = turns for i
        return dim * math.log(original / (2 * math.pi * turns)) / (2 * math.log(base))

    lo, hi = index(beta_fast), index(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    out = []
    for i in range(dim // 2):
        theta = base ** (-2.0 * i / dim)
        ramp = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep, 1: interpolate
        out.append(ramp * theta / factor + (1 - ramp) * theta)
    return np.array(out)


CASES = [  # dim, base, factor, original, extra keys
    (64, 10000.0, 40.0, 4096, {"beta_fast": 32, "beta_slow": 1}),  # DeepSeek-V3's
    (16, 500.0, 4.0, 64, {"truncate": False}),
    (8, 10000.0, 8.0, 32, {}),  # the lower bound clipped to 0
    (6, 100.0, 2.0, 200, {"beta_fast": 3, "beta_slow": 3, "truncate": False}),  # low == high
]


@pytest.mark.parametrize("case", CASES)
def test_yarn_frequencies_match_loop(case):
    dim, base, factor, original, extra = case
    scaling = {"rope_type": "yarn", "factor": factor,
               "original_max_position_embeddings": original, **extra}
    theta, _ = yarn_frequencies(dim, base, scaling)
    ref = loop_reference(dim, base, factor, original, **extra)
    np.testing.assert_allclose(theta, ref, rtol=1e-13)
    assert theta.dtype == np.float64
    # the scaling changes something, and only towards slower rotation
    plain = base ** (-np.arange(0, dim, 2) / dim)
    assert np.all(theta <= plain * (1 + 1e-15)) and np.any(theta < plain * 0.99)
    got, factor_out = rope_frequencies(dim, base, scaling)
    np.testing.assert_array_equal(got, theta)
    assert factor_out == attention_factor(scaling)


def test_attention_and_softmax_factors():
    s = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
    assert attention_factor(s) == pytest.approx(0.1 * math.log(40) + 1)
    ds = {**s, "mscale": 1.0, "mscale_all_dim": 1.0}  # DeepSeek-V3: the two cancel on cos/sin
    assert attention_factor(ds) == pytest.approx(1.0)
    assert softmax_factor(ds) == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    odd = {**s, "mscale": 0.5, "mscale_all_dim": 2.0}
    m = lambda c: 0.1 * c * math.log(40) + 1  # noqa: E731
    assert attention_factor(odd) == pytest.approx(m(0.5) / m(2.0))
    assert softmax_factor(odd) == pytest.approx(m(2.0) ** 2)
    assert attention_factor({**s, "attention_factor": 0.7}) == 0.7
    assert attention_factor({**s, "factor": 0.5}) == 1.0  # no extension: no factor
    assert softmax_factor(s) == 1.0 and softmax_factor(None) == 1.0
    assert softmax_factor({"rope_type": "linear", "factor": 2.0, "mscale_all_dim": 1.0}) == 1.0


def test_yarn_needs_factor_and_original_length():
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        rope_frequencies(8, 10000.0, {"rope_type": "yarn", "factor": 4.0})


def test_yarn_matches_transformers():
    """transformers computes in float32: agreement to float32 rounding."""
    transformers = pytest.importorskip("transformers", reason="needs the test extra")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
              "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
              "mscale": 0.8, "mscale_all_dim": 0.6}
    config = transformers.DeepseekV3Config(
        hidden_size=64, num_attention_heads=4, qk_rope_head_dim=16, qk_nope_head_dim=8,
        max_position_embeddings=2560, rope_parameters=dict(params))
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    theta, ours = yarn_frequencies(16, 10000.0, params)
    np.testing.assert_allclose(theta, inv_freq.double().numpy(), rtol=2e-7)
    assert ours == pytest.approx(factor, rel=1e-12)
