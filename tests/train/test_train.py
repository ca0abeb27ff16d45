"""The training loop end to end: learning, exact resume, divergence, sharding, bad input."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from _assert import assert_close

from seqlab.config import ConfigError, config_from_dict
from seqlab.train import run as run_lib
from seqlab.train import trainer as trainer_lib
from seqlab.train.checkpoint import CheckpointError
from seqlab.train.metrics import read_metrics
from seqlab.train.sharding import shard_batch


def _task(path, n=384, length=24, seed=0):
    """label = 1 iff token 3 occurs more often than token 2: needs the whole sequence."""
    rng = np.random.default_rng(seed)

    def make(m):
        x = rng.integers(0, 4, size=(m, length))
        y = ((x == 3).sum(1) > (x == 2).sum(1)).astype(np.int64)
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = make(n), make(64), make(64)
    np.savez(path, x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys)
    return str(path)


def _cfg(npz, **train):
    t = dict(steps=12, batch_size=16, lr=0.01, ssm_lr=0.005, warmup_steps=2, eval_every=6,
             checkpoint_every=4, log_every=2, seed=0, progress=False)
    t.update(train)
    return config_from_dict({
        "model": {"mixer": "s4d", "d_model": 16, "n_layers": 1, "norm": "layer",
                  "mixer_args": {"d_state": 8, "init": "inv", "causal": False}},
        "data": {"name": "arrays", "path": npz, "pad_to": "max"},
        "train": t,
    })


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return _task(tmp_path_factory.mktemp("data") / "count.npz")


def _losses(workdir, split="train"):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == split}


@pytest.fixture(scope="module")
def runs(npz, tmp_path_factory):
    """One run straight through, and the same run preempted at step 20 and resumed."""
    root = tmp_path_factory.mktemp("runs")
    cfg = _cfg(npz, steps=40, eval_every=15, checkpoint_every=10, log_every=5, lr=0.02)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.1))
    straight = run_lib.train(cfg, root / "straight")
    # killed during step 16 (after logging and evaluating step 15; last checkpoint: 10), ...
    with pytest.MonkeyPatch.context() as mp:
        real = trainer_lib.make_train_step

        def dies_at_16(graphdef, shardings):
            step_fn, calls = real(graphdef, shardings), [0]

            def wrapped(state, batch):
                calls[0] += 1
                if calls[0] == 16:
                    raise KeyboardInterrupt("preempted")
                return step_fn(state, batch)

            return wrapped

        mp.setattr(trainer_lib, "make_train_step", dies_at_16)
        with pytest.raises(KeyboardInterrupt):
            run_lib.train(cfg, root / "resumed")
    # ... resumed and paused at step 20, then resumed to the end
    paused = run_lib.train(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, stop_after=20)), root / "resumed")
    resumed = run_lib.train(cfg, root / "resumed")
    return cfg, root, straight, paused, resumed


def test_learns_and_writes_everything(runs):
    cfg, root, result, _, _ = runs
    losses = _losses(root / "straight")
    assert losses[40] < 0.8 * losses[5], losses
    assert result["finished"] and result["test"]["accuracy"] > 0.7, result
    assert result["test"]["count"] == 64
    for name in ("config.yaml", "metrics.jsonl", "results.json", "checkpoints", "best",
                 "tensorboard"):
        assert (root / "straight" / name).exists(), name
    evaluated = run_lib.evaluate(root / "straight", "test")
    assert evaluated["accuracy"] == pytest.approx(result["test"]["accuracy"])
    best_step = json.loads((root / "straight" / "results.json").read_text())["best_step"]
    assert evaluated["step"] == best_step


def test_exact_resume_after_preemption(runs):
    _, root, straight, paused, resumed = runs
    assert paused["finished"] is False and paused["step"] == 20
    a, b = _losses(root / "straight"), _losses(root / "resumed")
    assert sorted(a) == list(range(5, 41, 5)) and sorted(a) == sorted(b)
    for step, loss in a.items():
        assert b[step] == loss, (step, loss, b[step])  # bitwise equal, dropout included
    assert resumed["test"] == straight["test"]
    # the interrupted timeline's records (steps 15 train and val) were set aside, not repeated
    steps = [(r["step"], r["split"]) for r in read_metrics(root / "resumed")]
    assert len(steps) == len(set(steps)) == len(read_metrics(root / "straight"))
    aside = read_metrics(root / "resumed" / "rolled_back")
    assert {(r["step"], r["split"]) for r in aside} == {(15, "train"), (15, "val")}
    assert (root / "resumed" / "rolled_back" / "best_15").is_dir()


def test_config_change_on_existing_workdir_is_refused(runs):
    cfg, root, *_ = runs
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.5))
    with pytest.raises(ConfigError, match="train.lr"):
        run_lib.train(changed, root / "straight")


def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_deleted(runs, tmp_path):
    cfg, root, *_ = runs
    shutil.copytree(root / "straight", tmp_path / "w")
    step_dir = tmp_path / "w" / "checkpoints" / "40"
    corrupted = 0
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f.relative_to(step_dir)):
            f.write_bytes(b"garbage")
            corrupted += 1
    assert corrupted
    with pytest.raises(CheckpointError, match="cannot be restored"):
        run_lib.train(cfg, tmp_path / "w")
    assert step_dir.exists() and (tmp_path / "w" / "metrics.jsonl").exists()


def test_nan_stops_and_keeps_last_good_checkpoint(npz, tmp_path, monkeypatch):
    real = trainer_lib.make_train_step

    def poisoned(graphdef, shardings):
        step_fn, calls = real(graphdef, shardings), [0]

        def wrapped(state, batch):
            calls[0] += 1
            state, m = step_fn(state, batch)
            if calls[0] >= 5:
                m = dict(m, loss=m["loss"] * np.nan)
            return state, m

        return wrapped

    monkeypatch.setattr(trainer_lib, "make_train_step", poisoned)
    with pytest.raises(run_lib.TrainingDiverged, match="last good checkpoint"):
        run_lib.train(_cfg(npz), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
    assert max(_losses(tmp_path)) == 4


def test_labels_out_of_range(tmp_path):
    x = np.zeros((8, 5), np.int64)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(8), x_test=x,
             y_test=np.zeros(8, np.int64))
    cfg = config_from_dict({"data": {"name": "arrays", "path": str(tmp_path / "bad.npz"),
                                     "n_classes": 3}})
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        run_lib.train(cfg, tmp_path / "w")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_training_matches_single_device(npz):
    """The same steps on 1 device, on 8 data-parallel devices and on 4 x 2 (data x fsdp)."""
    from seqlab.data.loader import Loader

    base = _cfg(npz)
    split = run_lib.load_split(base, "train")
    batches = [b for b, _ in zip(Loader(split, 16, seed=0, pad_to="max"), range(3), strict=False)]
    losses = {}
    for data, fsdp in ((1, 1), (8, 1), (4, 2)):
        cfg = dataclasses.replace(base, mesh=dataclasses.replace(base.mesh, data=data, fsdp=fsdp))
        r = run_lib.make_trainer(cfg, split.info)
        out = []
        with jax.set_mesh(r.mesh):
            for b in batches:
                sharded = shard_batch(b, r.mesh)
                assert sharded["inputs"].sharding.spec[0] == "data"
                r.state, m = r.train_step(r.state, sharded)
                out.append(float(m["loss"]))
        specs = {str(x.sharding.spec) for x in jax.tree.leaves(r.state)}
        assert any("fsdp" in sp for sp in specs) == (fsdp > 1), specs
        losses[(data, fsdp)] = out
    assert_close(losses[(8, 1)], losses[(1, 1)], rtol=2e-5)
    assert_close(losses[(4, 2)], losses[(1, 1)], rtol=2e-5)
    assert losses[(1, 1)][2] != losses[(1, 1)][0]  # the steps did train
