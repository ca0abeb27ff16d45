"""Property-based tests over bad configs: a valid config with one to three keys replaced by
values of random (mostly wrong) types, or by unknown keys.

Each either fails with one clear paragraph (a ``ValueError``/``UserError``, never a
``TypeError`` or ``AttributeError`` from deep inside), or validates; a validated config builds
its model (shapes only), and training it into a workdir that holds a different run is refused
without touching that workdir.
"""

import copy
import datetime

import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seqlab.config import config_from_dict, dump_config
from seqlab.models import build_model
from seqlab.train import run as run_lib
from seqlab.train.inputs import check_batch_size, load_split
from seqlab.utils import UserError

CLEAR = (ValueError, UserError)

BASE = {
    "model": {"mixer": "s4d", "d_model": 8, "n_layers": 1, "mixer_args": {"d_state": 4},
              "norm": "layer", "pool": "mean", "ffn": "none"},
    "data": {"name": "arrays", "path": None, "pad_to": "max"},
    "train": {"steps": 2, "batch_size": 2, "lr": 0.01, "eval_every": 1, "checkpoint_every": 1,
              "log_every": 1, "seed": 0, "progress": False},
    "mesh": {"data": 1, "fsdp": 1},
}
KEYS = [(section, key) for section, keys in BASE.items() for key in keys
        if (section, key) != ("data", "path")]
KEYS += [("model", "dropout"), ("model", "dtype"), ("model", "pattern"), ("train", "warmup_steps"),
         ("train", "grad_clip"), ("train", "eval_batch_size"), ("train", "keep_checkpoints"),
         ("model", "unknown_key"), ("train", "lr_typo"), ("data", "sizes"), ("data", "root")]

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-1, 3), st.sampled_from([1.5, -0.5, 0.0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.sampled_from(["s4d", "mha", "layer", "batch", "last", "glu", "1e-3", "bfloat16"]),
    st.lists(st.integers(0, 2), max_size=2), st.dictionaries(st.text(max_size=3),
                                                             st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (8, 6)), rng.integers(0, 2, 8)
    path = tmp_path_factory.mktemp("cfg") / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y)
    return str(path)


@pytest.fixture(scope="module")
def other_run(npz, tmp_path_factory):
    """A workdir holding another run's config (seed 99) and a file of its own."""
    raw = copy.deepcopy(BASE)
    raw["data"]["path"], raw["train"]["seed"] = npz, 99
    workdir = tmp_path_factory.mktemp("other")
    (workdir / "config.yaml").write_text(dump_config(config_from_dict(raw)))
    (workdir / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    return workdir


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@settings(max_examples=30, deadline=datetime.timedelta(seconds=20), derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_random_config_clear_error_or_valid(npz, other_run, changes):
    raw = copy.deepcopy(BASE)
    raw["data"]["path"] = npz
    for (section, key), value in changes:
        raw[section][key] = value
    before = _snapshot(other_run)
    try:
        cfg = config_from_dict(raw)
        check_batch_size(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.mesh)
        data = load_split(cfg, "train")
        nnx.eval_shape(lambda: build_model(cfg.model, data.info, rngs=nnx.Rngs(0)))
    except CLEAR as e:
        event("clear error")
        assert str(e) and "\n" not in str(e).strip(), str(e)
        return
    event("valid")
    with pytest.raises(CLEAR, match="different config"):
        run_lib.train(cfg, other_run)
    assert _snapshot(other_run) == before


# Out-of-range values that type-check and would fail deep inside (ZeroDivisionError,
# MemoryError) or be silently accepted without the config's range checks.
OUT_OF_RANGE = [
    (("model", "d_model"), 0), (("model", "d_model"), 10**12), (("model", "n_layers"), 0),
    (("model", "n_layers"), 10**12), (("model", "dropout"), 1.5), (("train", "batch_size"), 0),
    (("train", "steps"), -1), (("train", "log_every"), 0), (("train", "eval_every"), 0),
    (("train", "checkpoint_every"), 0), (("train", "keep_checkpoints"), 0),
    (("train", "lr"), float("nan")), (("mesh", "data"), 0),
]


@pytest.mark.parametrize("where, value", OUT_OF_RANGE, ids=lambda v: str(v))
def test_out_of_range_values_are_refused(npz, where, value):
    raw = copy.deepcopy(BASE)
    raw["data"]["path"] = npz
    raw[where[0]][where[1]] = value
    with pytest.raises(CLEAR, match=where[1]):
        cfg = config_from_dict(raw)
        check_batch_size(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.mesh)
