"""Synthetic sources: labels recomputed independently, determinism, lengths, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqlab.data import load
from seqlab.data.synthetic import group_table


def rows(split):
    return [np.array(x) for x in split.data["inputs"]], [np.array(y) for y in split.data["label"]]


def test_parity_labels_are_prefix_xor_and_lengths_follow_the_split():
    train = load("parity", "train", size=20, length=12, test_length=30, seed=3)
    test = load("parity", "test", size=5, length=12, test_length=30, seed=3)
    assert train.info.task == "token" and train.info.causal and train.info.max_length == 30
    xs, ys = rows(train)
    for x, y in zip(xs, ys, strict=True):
        assert len(x) == 12
        acc = 0
        for t in range(12):
            acc ^= int(x[t])
            assert y[t] == acc
    assert all(len(x) == 30 for x in rows(test)[0])


def test_modular_labels():
    xs, ys = rows(load("modular", "val", size=10, length=15, modulus=7, seed=1))
    for x, y in zip(xs, ys, strict=True):
        assert x.max() < 7
        np.testing.assert_array_equal(y, [sum(x[: t + 1]) % 7 for t in range(15)])


@pytest.mark.parametrize("name,options,n_classes", [
    ("parity", {}, 2), ("modular", {"modulus": 3}, 3), ("permutation", {"group": "A5"}, 60)])
def test_start_token_is_a_new_token_with_no_target_before_the_same_sequences(
        name, options, n_classes):
    plain = load(name, "test", size=6, length=5, test_length=9, seed=2, **options)
    start = load(name, "test", size=6, length=5, test_length=9, seed=2, start_token=True,
                 **options)
    assert start.info.vocab_size == n_classes + 1 == plain.info.vocab_size + 1
    assert start.info.n_classes == n_classes and start.info.max_length == 10
    pairs = zip(zip(*rows(plain), strict=True), zip(*rows(start), strict=True), strict=True)
    for (x0, y0), (x1, y1) in pairs:
        assert len(x1) == 10 and x1[0] == n_classes and y1[0] == -1
        np.testing.assert_array_equal(x1[1:], x0)
        np.testing.assert_array_equal(y1[1:], y0)


@pytest.mark.parametrize("group,order", [("S3", 6), ("A5", 60), ("S5", 120)])
def test_group_tables_are_groups_with_the_right_order(group, order):
    table = group_table(group)
    assert table.shape == (order, order)
    assert (table[0] == np.arange(order)).all() and (table[:, 0] == np.arange(order)).all()
    for row in table:  # Latin square: every element has an inverse, products are closed
        assert sorted(row) == list(range(order))
    a, b, c = np.random.default_rng(0).integers(0, order, (3, 50))
    np.testing.assert_array_equal(table[table[a, b], c], table[a, table[b, c]])  # associative


def test_permutation_labels_compose_actual_permutations():
    perms = list(itertools.permutations(range(3)))
    xs, ys = rows(load("permutation", "train", size=10, length=9, group="S3", seed=0))
    for x, y in zip(xs, ys, strict=True):
        acc = tuple(range(3))
        for t in range(9):
            p = perms[x[t]]
            acc = tuple(p[acc[i]] for i in range(3))  # x_t o (x_{t-1} o ... o x_1)
            assert perms[y[t]] == acc


def test_mqar_queries_ask_for_the_paired_value():
    split = load("mqar", "train", size=10, length=40, num_pairs=6, vocab_size=32)
    xs, ys = rows(split)
    assert split.info.n_classes == 16
    for x, y in zip(xs, ys, strict=True):
        pairs = {int(x[2 * i]): int(x[2 * i + 1]) - 16 for i in range(6)}
        assert len(pairs) == 6
        queries = np.flatnonzero(y >= 0)
        assert len(queries) == 6 and queries.min() >= 12
        for pos in queries:
            assert y[pos] == pairs[int(x[pos])]


def test_deterministic_by_seed_and_split():
    a = load("permutation", "train", size=5, length=8, group="S5", seed=4)
    b = load("permutation", "train", size=5, length=8, group="S5", seed=4)
    c = load("permutation", "train", size=5, length=8, group="S5", seed=5)
    d = load("permutation", "val", size=5, length=8, group="S5", seed=4)
    assert a.data["inputs"] == b.data["inputs"]
    assert a.data["inputs"] != c.data["inputs"] and a.data["inputs"] != d.data["inputs"]


def test_bad_options_raise():
    with pytest.raises(ValueError, match="valid groups"):
        load("permutation", "train", size=2, group="S4")
    with pytest.raises(ValueError, match="modulus"):
        load("modular", "train", size=2, modulus=1)
    with pytest.raises(ValueError, match="too short"):
        load("mqar", "train", size=2, length=10, num_pairs=8)
