"""The arrays source: user .npz files, validation carving, lengths, and every bad-input error."""

import numpy as np
import pytest
from _assert import assert_close

from seqlab.data import Loader, load


def write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def tokens(tmp_path):
    rng = np.random.default_rng(0)
    data = dict(x_train=rng.integers(0, 7, (50, 12)), y_train=rng.integers(0, 3, 50),
                x_test=rng.integers(0, 7, (10, 12)), y_test=rng.integers(0, 3, 10))
    return write(tmp_path / "tok.npz", **data), data


def col(split, name):
    return [np.asarray(v) for v in split.data.with_format("numpy")[name]]


def test_tokens_with_carved_validation(tokens):
    path, data = tokens
    train, val, test = (load("arrays", s, path=path, seed=1) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (45, 5, 10)
    assert train.info == val.info == test.info
    assert train.info.task == "classify" and train.info.max_length == 12
    assert train.info.vocab_size == data["x_train"].max() + 1
    assert train.info.n_classes == max(data["y_train"].max(), data["y_test"].max()) + 1
    assert train.info.input_dim is None
    # Val rows are a seeded draw from train, removed from train; together they are all of it.
    val_rows = np.sort(np.random.default_rng(1).permutation(50)[:5])
    np.testing.assert_array_equal(np.stack(col(val, "inputs")), data["x_train"][val_rows])
    rows = np.stack(col(train, "inputs")).tolist() + np.stack(col(val, "inputs")).tolist()
    assert sorted(map(tuple, rows)) == sorted(map(tuple, data["x_train"].tolist()))
    np.testing.assert_array_equal(np.stack(col(test, "inputs")), data["x_test"])
    np.testing.assert_array_equal(np.asarray(test.data["label"]), data["y_test"])
    other = load("arrays", "val", path=path, seed=2)
    assert not np.array_equal(np.stack(col(other, "inputs")), np.stack(col(val, "inputs")))
    assert len(load("arrays", "train", path=path, size=7)) == 7


def test_features_lengths_explicit_val_and_root(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 9, 2)).astype(np.float32)
    lengths = np.array([9, 1, 4, 9, 2, 5])
    y = rng.integers(0, 4, 6)
    write(tmp_path / "f.npz", x_train=x, y_train=y, x_val=x[:3], y_val=y[:3], x_test=x,
          y_test=y, lengths_train=lengths, lengths_test=lengths)
    train = load("arrays", "train", root=str(tmp_path), path="f.npz", n_classes=5)
    assert train.info.input_dim == 2 and train.info.vocab_size is None
    assert train.info.n_classes == 5 and len(load("arrays", "val", path=str(tmp_path / "f.npz")))
    for i, row in enumerate(col(train, "inputs")):
        assert_close(row, x[i, :lengths[i]])
    batch = next(iter(Loader(train, 6, shuffle=False, pad_to="none")))
    np.testing.assert_array_equal(batch["mask"].sum(1), lengths)
    assert_close(batch["inputs"][2, :4], x[2, :4])
    assert not batch["inputs"][2, 4:].any()


def test_per_position_labels(tmp_path):
    x = np.arange(24).reshape(4, 6) % 5
    y = np.where(x > 2, x, -1)
    path = write(tmp_path / "t.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    split = load("arrays", "test", path=path)
    assert split.info.task == "token" and split.info.n_classes == 5
    batch = next(iter(Loader(split, 4, shuffle=False)))
    np.testing.assert_array_equal(batch["labels"][:, :6], y)


def base(n=8, length=5):
    rng = np.random.default_rng(2)
    return dict(x_train=rng.integers(0, 4, (n, length)), y_train=rng.integers(0, 2, n),
                x_test=rng.integers(0, 4, (3, length)), y_test=rng.integers(0, 2, 3))


@pytest.mark.parametrize("change, match", [
    (dict(x_test=None), "missing key.*x_test"),
    (dict(x_val=np.zeros((2, 5), int)), "only one of x_val, y_val"),
    (dict(y_train=np.zeros(7, int)), "x_train has 8 examples but y_train has 7"),
    (dict(y_test=np.array([0, 1, 5]), n_classes=2), r"y_test has labels in \[0, 5\].*n_classes"),
    (dict(y_test=np.array([0, -1, 1])), r"outside \[0, 2\)"),
    (dict(x_train=np.full((8, 5, 1), np.nan)), "NaN or inf"),
    (dict(x_train=np.full((8, 5, 1), np.inf), x_test=np.zeros((3, 5, 1))), "NaN or inf"),
    (dict(x_train=np.zeros(8, int)), r"expected \[N, L\] integer tokens"),
    (dict(x_train=np.zeros((8, 5))), "must be integer tokens"),
    (dict(x_test=np.zeros((3, 6), int)), "splits differ in shape"),
    (dict(y_train=np.zeros(8)), "labels must be integers"),
    (dict(lengths_train=np.full(8, 6)), r"lengths_train must lie in \[1, 5\]"),
    (dict(x_test=-np.ones((3, 5), int)), "tokens in"),
])
def test_bad_input(tmp_path, change, match):
    data = base()
    opts = {k: change.pop(k) for k in list(change) if k == "n_classes"}
    for k, v in change.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    path = write(tmp_path / "bad.npz", **data)
    with pytest.raises(ValueError, match=match):
        load("arrays", "train", path=path, **opts)


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file .*set data.path|Set data.path"):
        load("arrays", "train", path=str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot be read"):
        load("arrays", "train", path=str(tmp_path / "junk.npz"))
    path = write(tmp_path / "ok.npz", **base())
    with pytest.raises(ValueError, match="vocab_size"):
        load("arrays", "train", path=path, vocab_size=2)
    with pytest.raises(ValueError, match="val_fraction"):
        load("arrays", "val", path=path, val_fraction=1.5)
