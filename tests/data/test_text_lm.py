"""text_lm / stdlib_text: next-byte windows from a local file or the standard library's source,
disjoint splits, registry and options."""

import numpy as np
import pytest

from seqlab.data import load


@pytest.fixture
def text_file(tmp_path):
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))
    p = tmp_path / "corpus.txt"
    p.write_text(text)
    return p, text.encode()


def test_windows_are_next_byte_pairs(text_file):
    path, raw = text_file
    split = load("text_lm", "train", path=str(path), length=17)
    assert split.info.causal and split.info.task == "token" and split.info.vocab_size == 256
    rows = split.data.with_format("numpy")[:]
    x, y = rows["inputs"], rows["label"]
    assert x.shape[1] == 17 and len(split) == (len(raw) - 2 * int(len(raw) * 0.05) - 1) // 17
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x[0], np.frombuffer(raw[:17], np.uint8))
    np.testing.assert_array_equal(y[3], np.frombuffer(raw[3 * 17 + 1 : 4 * 17 + 1], np.uint8))


def test_splits_are_disjoint_and_sized(text_file):
    path, raw = text_file
    n_val = int(len(raw) * 0.1)
    val = load("text_lm", "val", root=str(path.parent), path=path.name, length=8,
               val_fraction=0.1, test_fraction=0.1)
    first = val.data.with_format("numpy")[0]["inputs"]
    n_train = len(raw) - 2 * n_val
    np.testing.assert_array_equal(first, np.frombuffer(raw[n_train : n_train + 8], np.uint8))
    test = load("text_lm", "test", path=str(path), length=8, size=50, seed=1)
    assert len(test) == 50
    again = load("text_lm", "test", path=str(path), length=8, size=50, seed=1)
    np.testing.assert_array_equal(test.data["inputs"], again.data["inputs"])


def test_errors(text_file):
    path, _ = text_file
    with pytest.raises(ValueError, match="no such file"):
        load("text_lm", "train", path=str(path) + ".missing")
    with pytest.raises(ValueError, match="fewer than"):
        load("text_lm", "val", path=str(path), length=4000)
    with pytest.raises(ValueError, match="no option"):
        load("text_lm", "train", path=str(path), lenght=3)


def test_stdlib_text_windows_come_from_the_corpus():
    from seqlab.data.stdlib_text import stdlib_bytes

    raw = stdlib_bytes(20_000)
    train = load("stdlib_text", "train", length=32, max_bytes=20_000)
    x, y = (np.asarray(train.data.with_format("numpy")[:][k]) for k in ("inputs", "label"))
    assert train.info.causal and train.info.vocab_size == 256 and x.shape[1] == 32
    np.testing.assert_array_equal(x[1], raw[32:64])
    np.testing.assert_array_equal(y[1], raw[33:65])
    test = load("stdlib_text", "test", length=32, max_bytes=20_000, size=5, seed=3)
    n_test = int(20_000 * 0.0625)
    rows = test.data.with_format("numpy")[:]["inputs"]
    assert len(test) == 5
    assert all(bytes(r.astype(np.uint8)) in bytes(raw[-n_test:]) for r in rows)
    with pytest.raises(ValueError, match="fewer than"):
        load("stdlib_text", "val", length=2000, max_bytes=20_000)
