"""Loader: padding and masks, eval completeness, exact resume, epoch reshuffle determinism."""

import datasets
import numpy as np
import pyarrow as pa
import pytest

from seqlab.data import Loader, Split, TaskInfo
from seqlab.data.loader import padded_length


def make_split(n: int = 37, max_length: int = 50, features: int | None = None,
               retrieval: bool = False, token_labels: bool = False, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, n)
    lengths[0] = max_length

    def seq(length):
        if features:
            return rng.normal(size=(length, features)).astype(np.float32).tolist()
        return rng.integers(1, 20, length).tolist()

    cols = {"inputs": [seq(int(k)) for k in lengths]}
    if token_labels:
        cols["label"] = [rng.integers(0, 5, len(x)).tolist() for x in cols["inputs"]]
    else:
        cols["label"] = list(range(n))  # label = example id: completeness checks use it
    if retrieval:
        cols["inputs2"] = [seq(int(k)) for k in rng.integers(1, max_length + 1, n)]
    info = TaskInfo(task="retrieval" if retrieval else ("token" if token_labels else "classify"),
                    n_classes=max(n, 5), vocab_size=None if features else 20,
                    input_dim=features, max_length=max_length)
    return Split(data=datasets.Dataset.from_dict(cols), info=info)


def check_batch(batch: dict, split: Split, key: str = "") -> None:
    """Each real row equals its example, padding is zero, the mask marks exactly the example."""
    raw = split.data[:]
    for b, w in enumerate(batch["weights"]):
        i = int(batch["labels"][b]) if batch["labels"].ndim == 1 else None
        if i is None:
            continue
        x = np.asarray(raw["inputs" + key][i], dtype=batch["inputs" + key].dtype)
        m = batch["mask" + key][b]
        assert m.sum() == len(x) and m[:len(x)].all()
        np.testing.assert_array_equal(batch["inputs" + key][b][:len(x)], x)
        assert not batch["inputs" + key][b][len(x):].any()
        assert w in (0.0, 1.0)


def test_padded_length_rule():
    assert padded_length(1, 2000, "pow2") == 8
    assert padded_length(9, 2000, "pow2") == 16
    assert padded_length(1024, 2000, "pow2") == 1024
    assert padded_length(1025, 2000, "pow2") == 2048
    assert padded_length(2000, 2000, "pow2") == 2048
    assert padded_length(5, 4, "pow2") == 8  # never beyond max_length rounded the same way
    assert padded_length(37, 50, "max") == 50
    assert padded_length(37, 50, "none") == 37
    with pytest.raises(ValueError, match="pad_to must be one of"):
        Loader(make_split(), 4, pad_to="pow3")


@pytest.mark.parametrize("pad_to", ["pow2", "max", "none"])
def test_padding_and_mask(pad_to):
    split = make_split()
    lengths = np.array([len(x) for x in split.data["inputs"]])
    loader = Loader(split, 8, pad_to=pad_to, shuffle=True, seed=3)
    for batch, _ in zip(loader, range(10), strict=False):
        longest = lengths[batch["labels"]].max()
        L = batch["inputs"].shape[1]
        assert L == {"pow2": padded_length(longest, 50, "pow2"), "max": 50, "none": longest}[pad_to]
        assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == bool
        assert batch["labels"].dtype == np.int32 and batch["weights"].dtype == np.float32
        check_batch(batch, split)


def test_features_retrieval_and_token_labels():
    split = make_split(features=3)
    batch = next(iter(Loader(split, 5, pad_to="none")))
    assert batch["inputs"].shape[2] == 3 and batch["inputs"].dtype == np.float32
    check_batch(batch, split)
    split = make_split(retrieval=True)
    batch = next(iter(Loader(split, 6)))
    check_batch(batch, split)
    check_batch(batch, split, key="2")
    split = make_split(token_labels=True)
    batch = next(iter(Loader(split, 4, shuffle=False, pad_to="max")))
    for b in range(4):
        y = np.asarray(split.data[b]["label"])
        np.testing.assert_array_equal(batch["labels"][b, :len(y)], y)
        assert (batch["labels"][b, len(y):] == -1).all()


def test_eval_pass_complete_with_filler():
    split = make_split(n=37)
    loader = Loader(split, 8, shuffle=False, drop_remainder=False, repeat=False)
    assert len(loader) == 5
    for _ in range(2):  # every pass visits every example exactly once, in order
        batches = list(loader)
        assert len(batches) == 5
        w = np.concatenate([b["weights"] for b in batches])
        ids = np.concatenate([b["labels"] for b in batches])
        assert w.sum() == 37 and (w[:37] == 1).all() and (w[37:] == 0).all()
        np.testing.assert_array_equal(ids[:37], np.arange(37))
        last = batches[-1]
        assert last["mask"][5:].any(axis=1).all()  # filler rows are real (non-empty) rows
        for b in batches:
            check_batch(b, split)


def test_train_drops_remainder_and_reshuffles_each_epoch():
    split = make_split(n=37)
    loader = Loader(split, 8, seed=5)
    assert len(loader) == 4
    it = iter(loader)
    epochs = [np.concatenate([next(it)["labels"] for _ in range(4)]) for _ in range(3)]
    for e, ids in enumerate(epochs):
        assert len(set(ids)) == 32  # no repeats inside an epoch
        expected = np.random.default_rng((5, e)).permutation(37)[:32]
        np.testing.assert_array_equal(ids, expected)
    assert not np.array_equal(epochs[0], epochs[1])
    again = Loader(split, 8, seed=5)
    first = np.concatenate([b["labels"] for b, _ in zip(again, range(4), strict=False)])
    np.testing.assert_array_equal(first, epochs[0])  # same seed, same order


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_exact_resume(drop_remainder):
    split = make_split(n=23)
    ref = Loader(split, 5, seed=1, drop_remainder=drop_remainder)
    it = iter(ref)
    for _ in range(7):  # past an epoch boundary
        next(it)
    state = ref.get_state()
    assert set(state) == {"seed", "epoch", "position"}
    expected = [next(it) for _ in range(9)]
    restored = Loader(split, 5, seed=1, drop_remainder=drop_remainder)
    restored.set_state(dict(state))
    got = [b for b, _ in zip(restored, range(9), strict=False)]
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="seed"):
        restored.set_state({**state, "seed": 2})
    with pytest.raises(ValueError, match="lacks"):
        restored.set_state({"epoch": 0})


def test_bad_arguments():
    with pytest.raises(ValueError, match="exceeds"):
        Loader(make_split(n=5), 8)
    with pytest.raises(ValueError, match="batch_size"):
        Loader(make_split(n=5), 0)
    too_long = Split(datasets.Dataset(pa.table({"inputs": [[1] * 9], "label": [0]})),
                     TaskInfo("classify", 2, 4, None, max_length=8))
    with pytest.raises(ValueError, match="longer than the task's max_length"):
        Loader(too_long, 1)


@pytest.mark.parametrize("kind", ["tokens", "features", "retrieval", "token_labels"])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_rows_concatenate_to_the_global_batch(kind, drop_remainder):
    """Each process materialises its rows of every global batch; together they are the
    one-process batches (same padded length everywhere), and the state is the same."""
    split = make_split(features=3 if kind == "features" else None,
                       retrieval=kind == "retrieval", token_labels=kind == "token_labels")
    opts = dict(seed=4, drop_remainder=drop_remainder, repeat=False, pad_to="pow2")
    whole = list(Loader(split, 8, **opts))
    parts = [Loader(split, 8, rows=(r, r + 2), **opts) for r in range(0, 8, 2)]
    per_process = [list(p) for p in parts]
    assert len(whole) == len(per_process[0]) == len(Loader(split, 8, **opts))
    for i, batch in enumerate(whole):
        for key, value in batch.items():
            glued = np.concatenate([p[i][key] for p in per_process])
            np.testing.assert_array_equal(glued, value, err_msg=f"batch {i}, {key}")
    assert all(p.get_state() == parts[0].get_state() for p in parts)


def test_process_rows_must_lie_in_the_batch():
    for rows in [(0, 0), (2, 9), (-1, 3)]:
        with pytest.raises(ValueError, match="rows"):
            Loader(make_split(), 8, rows=rows)
