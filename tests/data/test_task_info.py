"""``task_info``: a source's TaskInfo from its options alone (``seqlab check --no-data``), with
nothing read, downloaded, generated or cached; equal to the info of the loaded split."""

import numpy as np
import pytest

from seqlab.data import SOURCES, load, task_info

OPTIONS = {
    "listops": dict(size=8, min_length=8, max_length=32, max_depth=3),
    "pathfinder": dict(size=4, resolution=32),
    "parity": dict(size=4, length=8), "modular": dict(size=4, length=8),
    "permutation": dict(size=4, length=8), "mqar": dict(size=4),
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name", sorted(set(SOURCES) - {"arrays"}))
def test_info_without_data(cache, tmp_path, name):
    options = dict(OPTIONS.get(name, {}))
    if name == "text_lm":
        options["path"] = str(tmp_path / "absent.txt")
    info = task_info(name, str(tmp_path / "absent"), **options)
    assert info.n_classes >= 2 and info.max_length >= 1
    assert not cache.exists() or not any(cache.rglob("*")), "something was cached"
    if name in OPTIONS and name != "pathfinder":  # cheap to build: the same info as loading
        assert load(name, "train", str(tmp_path), **options).info == info


def test_text_lm_info_equals_loaded(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(np.random.default_rng(0).integers(32, 127, 4000, dtype=np.uint8)))
    assert task_info("text_lm", path=str(path), length=16) == \
        load("text_lm", "train", path=str(path), length=16).info


def test_arrays_needs_its_file(tmp_path):
    with pytest.raises(ValueError, match="come from the file"):
        task_info("arrays", path=str(tmp_path / "x.npz"))
