"""Property-based tests over bad user data: random ``.npz`` files for the ``arrays`` source.

Each file either gets one clear error (a ``ValueError``/``UserError`` whose message is one
paragraph naming the file) before anything is written to the workdir, or it is accepted and
the loader then yields batches with finite features, tokens inside the vocabulary and labels
inside ``[0, n_classes)`` (``-1`` = no target for per-position labels). Few examples, bounded
time: these guard the error paths, not throughput.
"""

import datetime
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seqlab.config import config_from_dict
from seqlab.data import Loader, load
from seqlab.train import run as run_lib
from seqlab.train.inputs import check_labels
from seqlab.train.trainer import Trainer
from seqlab.utils import UserError

CLEAR = (ValueError, UserError)
SETTINGS = settings(max_examples=25, deadline=datetime.timedelta(seconds=20),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow], derandomize=True)


MUTATIONS = ("none", "none", "x-dtype", "x-ndim", "nan", "inf", "empty", "single-class",
             "label-range", "y-shape", "y-dtype", "missing-key", "lengths", "one-row")


@st.composite
def npz_contents(draw):
    """A well-formed file (token or feature inputs; with or without x_val) with at most one
    thing wrong: a dtype, a shape, NaN/inf, an empty or single-class split, labels out of range,
    a missing key, bad lengths."""
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    tokens = draw(st.booleans())
    length, channels, n_classes = draw(st.integers(1, 5)), draw(st.integers(1, 2)), 3
    out = {}
    for s in ("train", "val", "test"):
        n = draw(st.integers(2, 6))
        out[f"x_{s}"] = (rng.integers(0, 5, (n, length)) if tokens
                         else rng.normal(size=(n, length, channels)).astype(np.float32))
        out[f"y_{s}"] = rng.integers(0, n_classes, n)
    if draw(st.booleans()):
        del out["x_val"], out["y_val"]  # carved from train with val_fraction
    mutation = draw(st.sampled_from(MUTATIONS))
    split = draw(st.sampled_from([k[2:] for k in out if k.startswith("x_")]))
    x, y = out[f"x_{split}"], out[f"y_{split}"]
    n = len(x)
    if mutation == "x-dtype":
        out[f"x_{split}"] = x.astype(draw(st.sampled_from([np.float64, np.bool_, np.uint8,
                                                           np.int16, np.complex64])))
    elif mutation == "x-ndim":
        out[f"x_{split}"] = x.reshape(-1) if draw(st.booleans()) else x[..., None, None]
    elif mutation in ("nan", "inf"):
        x = x.astype(np.float32).reshape(n, length, -1)
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan if mutation == "nan" else -np.inf
        out[f"x_{split}"] = x
    elif mutation == "empty":
        out[f"x_{split}"], out[f"y_{split}"] = x[:0], y[:0]
    elif mutation == "single-class":
        for k in out:
            if k.startswith("y_"):
                out[k] = np.zeros_like(out[k])
    elif mutation == "label-range":
        y = y.copy()
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-3, -1, 10**9]))
        out[f"y_{split}"] = y
    elif mutation == "y-shape":
        out[f"y_{split}"] = draw(st.sampled_from([y[:-1], y[:, None, None], np.tile(y, 2)]))
    elif mutation == "y-dtype":
        out[f"y_{split}"] = y.astype(draw(st.sampled_from([np.float32, np.bool_, np.str_])))
    elif mutation == "missing-key":
        del out[draw(st.sampled_from(sorted(out)))]
    elif mutation == "lengths":
        out[f"lengths_{split}"] = np.asarray(draw(st.lists(st.integers(-1, length + 1),
                                                           min_size=n, max_size=n)))
    elif mutation == "one-row":
        out[f"x_{split}"], out[f"y_{split}"] = x[:1], y[:1]
    return out


def _one_paragraph(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message.strip() and "Traceback" not in message, message
    return message


def _check_batches(path) -> None:
    """The arrays source accepted the file: its batches must be usable as they are."""
    for split in ("train", "val", "test"):
        data = load("arrays", split, path=str(path), val_fraction=0.5)
        check_labels(data, split)
        info = data.info
        batch = next(iter(Loader(data, 2, shuffle=False, drop_remainder=False, repeat=False)))
        inputs, mask, labels = batch["inputs"], batch["mask"], batch["labels"]
        assert np.isfinite(inputs).all()
        if info.vocab_size is not None:
            assert ((inputs >= 0) & (inputs < info.vocab_size)).all()
        real = labels[mask] if labels.ndim == 2 else labels
        low = -1 if labels.ndim == 2 else 0
        assert ((real >= low) & (real < info.n_classes)).all()
        assert info.n_classes >= 1


class _WouldTrain(Exception):
    pass


@SETTINGS
@given(contents=npz_contents())
def test_random_npz_clear_error_or_usable(tmp_path_factory, contents, monkeypatch):
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "data.npz"
    np.savez(path, **contents)
    workdir = folder / "run"
    cfg = config_from_dict({
        "model": {"mixer": "s4d", "d_model": 8, "n_layers": 1,
                  "mixer_args": {"d_state": 4}},
        "data": {"name": "arrays", "path": str(path), "val_fraction": 0.5},
        "train": {"steps": 1, "batch_size": 1, "progress": False},
    })

    def would_train(*args, **kwargs):
        raise _WouldTrain

    monkeypatch.setattr(Trainer, "fit", would_train)  # stop where training would start
    try:
        run_lib.train(cfg, workdir)
    except CLEAR as e:
        event("clear error")
        assert str(path) in _one_paragraph(e) or "split" in str(e)
        assert not workdir.exists(), "a data error left files in the workdir"
        return
    except _WouldTrain:
        event("accepted")
    assert sorted(os.listdir(workdir)) == ["config.yaml", "task.json"]
    _check_batches(path)


@pytest.mark.parametrize("bad", ["nan", "inf", "empty-test", "single-class", "label-range"])
def test_named_bad_inputs(tmp_path, bad):
    """The cases the issue names, each once without randomness."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 2)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y)
    if bad == "nan":
        arrays["x_train"] = x.copy()
        arrays["x_train"][2, 1, 0] = np.nan
    elif bad == "inf":
        arrays["x_test"] = x.copy()
        arrays["x_test"][0, 0, 1] = -np.inf
    elif bad == "empty-test":
        arrays["x_test"], arrays["y_test"] = x[:0], y[:0]
    elif bad == "single-class":
        arrays["y_train"] = np.zeros(6, np.int64)
        arrays["y_test"] = np.zeros(6, np.int64)
    elif bad == "label-range":
        arrays["y_test"] = y + 5
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    if bad == "single-class":  # legal: one class, n_classes = 1
        _check_batches(path)
        return
    with pytest.raises(ValueError, match={"nan": "NaN or inf", "inf": "NaN or inf",
                                          "empty-test": "x_test is empty",
                                          "label-range": "outside"}[bad]) as err:
        for split in ("train", "val", "test"):
            load("arrays", split, path=str(path), n_classes=2)
    assert str(path) in _one_paragraph(err.value)
