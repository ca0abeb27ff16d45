"""LRA loaders parse tiny fixture files written here in the public release formats."""

import pickle
import re

import numpy as np
import pytest

from seqlab.data import Loader, load
from seqlab.data.lra import grayscale


@pytest.fixture
def cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_text_imdb_folders(cache):
    root = cache / "imdb"
    reviews = {}
    for part in ("train", "test"):
        for label, name in ((0, "neg"), (1, "pos")):
            folder = root / "aclImdb" / part / name
            folder.mkdir(parents=True)
            for i in range(5):
                body = f"{name} review {i} of {part} caf\u00e9 " * (1 + i * 3)
                (folder / f"{i}_{7 + i}.txt").write_text(body, encoding="utf-8")
                reviews[body.encode("utf-8")[:64]] = label
    train = load("text", "train", root=str(root), max_length=64)
    val = load("text", "val", root=str(root), max_length=64)  # val_fraction 0: the test set
    test = load("text", "test", root=str(root), max_length=64)
    assert (len(train), len(val), len(test)) == (10, 10, 10)
    assert train.info.vocab_size == 256 and train.info.max_length == 64
    for split in (train, test):
        d = split.data.with_format("numpy")
        for x, y in zip(d["inputs"], d["label"], strict=True):
            assert len(x) <= 64 and reviews[bytes(np.asarray(x, np.uint8))] == y
    carved = [load("text", s, root=str(root), max_length=64, val_fraction=0.2)
              for s in ("train", "val")]
    assert [len(c) for c in carved] == [8, 2]
    small = load("text", "train", root=str(root), size=4, max_length=64)
    assert len(small) == 4 and len(set(small.data["label"])) == 2  # shuffled before the cut
    batch = next(iter(Loader(train, 4)))
    assert batch["inputs"].shape == (4, 64)


def test_retrieval_aan_tsv(cache):
    root = cache / "aan"
    folder = root / "lra_release" / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    rows = {}
    for split, name in (("train", "train"), ("val", "eval"), ("test", "test")):
        lines = []
        for i in range(6):
            a, b = f"paper {i} text " * (i + 1), f"other {i} body " * (6 - i)
            label = float(i % 2)
            lines.append(f"{label}\t{split}{i}a\t{split}{i}b\t{a}\t{b}")
            rows[a.encode()[:40]] = (b.encode()[:40], int(label))
        (folder / f"new_aan_pairs.{name}.tsv").write_text("\n".join(lines) + "\n")
    split = load("retrieval", "val", root=str(root), max_length=40)
    assert len(split) == 6 and split.info.task == "retrieval"
    d = split.data.with_format("numpy")
    for x, x2, y in zip(d["inputs"], d["inputs2"], d["label"], strict=True):
        assert rows[bytes(np.asarray(x, np.uint8))] == (bytes(np.asarray(x2, np.uint8)), y)
    batch = next(iter(Loader(split, 3, pad_to="none", shuffle=False)))
    for b in range(3):
        x2 = np.asarray(split.data[b]["inputs2"])
        assert batch["mask2"][b].sum() == len(x2)
        np.testing.assert_array_equal(batch["inputs2"][b, :len(x2)], x2)
    (folder / "new_aan_pairs.test.tsv").write_text("1\tonly\tthree\n")
    with pytest.raises(ValueError, match="5 tab-separated fields"):
        load("retrieval", "test", root=str(root), size=2)


def test_image_cifar_batches(cache):
    root = cache / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches[name] = (data, labels)
    test = load("image", "test", root=str(root))
    data, labels = batches["test_batch"]
    rgb = data.reshape(4, 3, 32, 32).astype(float)
    expected = np.rint(0.2989 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2])
    d = test.data.with_format("numpy")
    pixels = {bytes(np.asarray(x, np.uint8)): int(y) for x, y in zip(d["inputs"], d["label"],
                                                                     strict=True)}
    for img, y in zip(expected.reshape(4, -1).astype(np.uint8), labels, strict=True):
        assert pixels[img.tobytes()] == y
    assert test.info.max_length == 1024 and test.info.n_classes == 10
    train, val = (load("image", s, root=str(root)) for s in ("train", "val"))
    assert (len(train), len(val)) == (18, 2)  # val_fraction 0.1 of 20
    np.testing.assert_array_equal(grayscale(np.full((1, 3, 32, 32), 255, np.uint8)), 255)


def test_missing_files_say_what_to_place(cache, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"aclImdb/\{train,test\}"):
        load("text", "train")
    with pytest.raises(FileNotFoundError, match=f"aclImdb.*under {re.escape(str(cache))}"):
        load("text", "train", root=str(cache))
    with pytest.raises(FileNotFoundError, match="new_aan_pairs.train.tsv"):
        load("retrieval", "train", root=str(cache))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load("image", "test", root=str(cache))
    with pytest.raises(FileNotFoundError, match="offline"):
        load("image", "test")
