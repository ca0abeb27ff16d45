"""One library DeltaProduct layer with hand-set weights tracks S3 (n_h = 2) and A5 (n_h = 4)
exactly at any length (Siems et al. 2025, Sec. 4: n_h = n - 1 Householders per token suffice for
S_n), with the layer's own SiLU + L2-normalised keys, short convolutions, output gate and norm.
The construction lives in ``scripts/experiments/deltaproduct_s3.py``."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dp():
    sys.path.insert(0, str(ROOT))
    try:
        yield importlib.import_module("scripts.experiments.deltaproduct_s3")
    finally:
        sys.path.remove(str(ROOT))


def test_silu_inverse_reaches_negative_values_off_the_minimum(dp):
    y = np.array([-0.25, -0.1, 0.0, 0.25, 3.0])
    z = dp.silu_inverse(y)
    np.testing.assert_allclose(z / (1 + np.exp(-z)), y, atol=1e-12)
    assert np.all(z > -1.2784) and z[2] == 0.0  # the branch where SiLU' > 0 (not its minimum)
    with pytest.raises(ValueError):
        dp.silu_inverse(np.array([-0.3]))


def orbit(perm: tuple[int, ...], i: int) -> list[int]:
    out = [i]
    while perm[out[-1]] != i:
        out.append(perm[out[-1]])
    return out


@pytest.mark.parametrize("n", [3, 4, 5])
def test_transpositions_compose_to_the_permutation(n, dp):
    for perm in itertools.permutations(range(n)):
        ts = dp.transpositions(perm)
        m = np.eye(n)
        for a, b in ts:  # t_1 acts first
            swap = np.eye(n)
            swap[[a, b]] = swap[[b, a]]
            m = swap @ m
        target = np.zeros((n, n))
        target[list(perm), range(n)] = 1.0  # e_i -> e_perm(i)
        np.testing.assert_array_equal(m, target)
        cycles = len({frozenset(orbit(perm, i)) for i in range(n)})
        assert len(ts) == n - cycles <= n - 1


def test_s3_exact_at_32_256_1024(dp):
    res = dp.check_exact_layer("S3", (32, 256, 1024))
    for length, (acc, dev) in res.items():
        assert acc == 1.0, (length, acc)
        assert dev < 1e-2, (length, dev)  # class outputs are >= 1.4 apart
    assert res[32][1] < 1e-3


def test_a5_exact_with_four_householders(dp):
    acc, dev = dp.check_exact_layer("A5", (64,), n_seq=4)[64]
    assert acc == 1.0 and dev < 1e-2


def test_one_householder_cannot_hold_a_three_cycle(dp):
    with pytest.raises(ValueError, match="n_householder >= 2"):
        dp.exact_layer("S3", n_householder=1)
