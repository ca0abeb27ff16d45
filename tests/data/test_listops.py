"""ListOps generator: values checked by an independent recursive evaluator, bounds, determinism."""

import numpy as np
import pytest

from seqlab.data import load
from seqlab.data.listops import VOCAB, generate, listops

DEMO = dict(min_length=64, max_length=256, max_depth=4, max_args=10)


def parse(tokens: list[str]) -> tuple[int, int, int]:
    """Evaluate a token sequence by recursive descent: (value, depth, max args of any op)."""
    pos = 0

    def node() -> tuple[int, int, int]:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok.isdigit():
            return int(tok), 1, 0
        assert tok in ("[MIN", "[MAX", "[MED", "[SM"), tok
        args, depth, width = [], 0, 0
        while tokens[pos] != "]":
            v, d, w = node()
            args.append(v)
            depth, width = max(depth, d), max(width, w)
        pos += 1
        assert len(args) >= 2
        value = {"[MIN": min(args), "[MAX": max(args), "[SM": sum(args) % 10,
                 "[MED": int(np.median(args))}[tok]
        return value, depth + 1, max(width, len(args))

    result = node()
    assert pos == len(tokens), "trailing tokens after the expression"
    return result


@pytest.fixture(scope="module")
def demo_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("listops")
    sizes = {"train": 600, "val": 200, "test": 200}
    return root, {s: listops(s, str(root), size=n, **DEMO) for s, n in sizes.items()}


def rows(split):
    d = split.data.with_format("numpy")
    return [np.asarray(x) for x in d["inputs"]], np.asarray(d["label"])


def test_values_and_bounds(demo_splits):
    _, splits = demo_splits
    for split in splits.values():
        xs, ys = rows(split)
        assert split.info.n_classes == 10 and split.info.vocab_size == len(VOCAB) == 16
        for x, y in zip(xs, ys, strict=True):
            assert DEMO["min_length"] <= len(x) <= DEMO["max_length"]
            value, depth, width = parse([VOCAB[t] for t in x])
            assert value == y
            assert depth <= DEMO["max_depth"] and width <= DEMO["max_args"]


def test_full_size_recipe_values():
    """LRA sizes (lengths 500-2000, depth 10): values, bounds, and depth actually used."""
    flat, off, labels = generate("test", 60, min_length=500, max_length=2000, max_depth=10,
                                   max_args=10, seed=3)
    depths = []
    for i in range(60):
        x = flat[off[i]:off[i + 1]]
        assert 500 <= len(x) <= 2000
        value, depth, width = parse([VOCAB[t] for t in x])
        assert value == labels[i] and depth <= 10 and width <= 10
        depths.append(depth)
    assert max(depths) >= 6  # long expressions need deep nesting


def test_median_of_even_count_rounds_down():
    for seed in range(3):
        flat, off, labels = generate("train", 300, min_length=3, max_length=6, max_depth=2,
                                       max_args=4, seed=seed)
        for i in range(len(labels)):
            toks = [VOCAB[t] for t in flat[off[i]:off[i + 1]]]
            assert parse(toks)[0] == labels[i]


def test_deterministic_cached_and_prefix(demo_splits, tmp_path):
    root, splits = demo_splits
    again = listops("train", str(tmp_path), size=600, **DEMO)  # fresh cache, regenerated
    a, ya = rows(splits["train"])
    b, yb = rows(again)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert np.array_equal(ya, yb)
    small = listops("train", str(tmp_path), size=100, **DEMO)
    c, yc = rows(small)
    assert all(np.array_equal(u, v) for u, v in zip(a[:100], c, strict=True))
    other = listops("train", str(tmp_path), size=100, seed=1, **DEMO)
    assert not np.array_equal(rows(other)[1], yc)
    assert (root / "seqlab").is_dir() and len(list((root / "seqlab").iterdir())) == 3


def test_splits_disjoint_and_unique(demo_splits):
    _, splits = demo_splits
    keys = {s: [x.tobytes() for x in rows(sp)[0]] for s, sp in splits.items()}
    for s, k in keys.items():
        assert len(set(k)) == len(k), f"duplicates in {s}"
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])


def test_class_balance_sanity(demo_splits):
    _, splits = demo_splits
    counts = np.bincount(rows(splits["train"])[1], minlength=10)
    # Every class occurs; as in LRA's ListOps the extremes 0 and 9 are the most common
    # (MIN/MAX of many arguments), and no class dominates.
    assert counts.min() >= 0.02 * counts.sum()
    assert counts.max() <= 0.3 * counts.sum()
    assert set(np.argsort(counts)[-2:]) == {0, 9}


def test_load_registry_and_errors(tmp_path):
    s = load("listops", "val", root=str(tmp_path), size=5, **DEMO)
    assert len(s) == 5 and s.info.max_length == 256
    with pytest.raises(ValueError, match="min_length"):
        listops("train", str(tmp_path), size=5, min_length=10, max_length=5)
    with pytest.raises(ValueError, match="max_depth"):
        listops("train", str(tmp_path), size=5, max_depth=0)
    with pytest.raises(ValueError, match="widen the length range"):
        generate("train", 5, min_length=200, max_length=300, max_depth=2, max_args=3, seed=0)


def lra_recipe(rng: np.random.Generator, max_depth: int, max_args: int) -> list[str]:
    """LRA's generator written plainly: recursive, one node at a time (tokens, no parens)."""

    def tree(depth: int) -> list[str]:
        if depth < max_depth and rng.random() <= 0.25:
            n = int(rng.integers(2, max_args + 1))
            op = ["[MIN", "[MAX", "[MED", "[SM"][rng.integers(4)]
            return [op] + [t for _ in range(n) for t in tree(depth + 1)] + ["]"]
        return [str(rng.integers(10))]

    return tree(1)


def test_distribution_matches_recipe():
    """Length and label histograms agree with the plain recursive recipe (same conditioning)."""
    opts = dict(min_length=5, max_length=40, max_depth=4, max_args=5)
    rng = np.random.default_rng(0)
    ref_len, ref_lab = [], []
    while len(ref_len) < 4000:
        toks = lra_recipe(rng, opts["max_depth"], opts["max_args"])
        if opts["min_length"] <= len(toks) <= opts["max_length"]:
            ref_len.append(len(toks))
            ref_lab.append(parse(toks)[0])
    flat, off, labels = generate("train", 4000, seed=0, **opts)
    ours_len = np.diff(off)
    # LRA dedups; at these short lengths that removes some repeats, so compare moments loosely
    # but tightly enough that a wrong VALUE_P, arity range or operator set fails.
    assert abs(ours_len.mean() - np.mean(ref_len)) < 0.06 * np.mean(ref_len)
    p_ref = np.bincount(ref_lab, minlength=10) / len(ref_lab)
    p_ours = np.bincount(labels, minlength=10) / len(labels)
    assert np.abs(p_ref - p_ours).max() < 0.03
