"""Trainer on a model built in Python and on plain numpy batches: learns, resumes exactly from
a workdir (the batch position of a re-iterable is restored), keeps the best state in memory
without a workdir, and says when a one-shot iterator runs out."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.config import TrainConfig
from seqlab.train.trainer import Trainer


class Bag(nnx.Module):
    """Masked mean of token embeddings -> linear: enough for "count token 3 vs token 2"."""

    def __init__(self, *, rngs):
        self.embed = nnx.Embed(4, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, inputs, mask):
        m = mask[..., None].astype(jnp.float32)
        return self.head(self.drop((self.embed(inputs) * m).sum(1) / m.sum(1)))


def batches(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, 4, size=(8, 12))
        out.append({"inputs": x, "labels": ((x == 3).sum(1) > (x == 2).sum(1)).astype(int)})
    return out


CFG = TrainConfig(steps=12, batch_size=8, lr=0.05, ssm_lr=None, eval_every=4,
                  checkpoint_every=4, log_every=2, progress=False)


def losses(trainer):
    return {r["step"]: r["loss"] for r in trainer.history if r["split"] == "train"}


def test_python_model_numpy_batches_exact_resume(tmp_path):
    train, val = batches(5, 0), batches(2, 1)  # 5 batches: steps 6.. start a second epoch

    def model():
        return Bag(rngs=nnx.Rngs(params=0, dropout=1))

    straight = Trainer(model, train, CFG, val_data=val, workdir=tmp_path / "a")
    assert straight.fit()["finished"]
    first = Trainer(model, train, dataclasses.replace(CFG, stop_after=6), val_data=val,
                    workdir=tmp_path / "b")
    paused = first.fit()
    assert paused["step"] == 6 and not paused["finished"]
    resumed = Trainer(model, train, CFG, val_data=val, workdir=tmp_path / "b")
    resumed.fit()
    a, b = losses(straight), {**losses(first), **losses(resumed)}
    assert sorted(a) == sorted(b) == list(range(2, 13, 2))
    assert all(a[s] == b[s] for s in a), (a, b)  # bitwise: params, optimiser, dropout, data
    assert a[12] < a[2]
    assert straight.best_step == resumed.best_step
    # the best model scores its recorded best validation accuracy
    best = straight.evaluate(val, straight.best_model_state())
    assert best["accuracy"] == straight.best_accuracy and best["count"] == 16


def test_in_memory_best_and_one_shot_iterator():
    trainer = Trainer(Bag(rngs=nnx.Rngs(0)), batches(3, 0), CFG, val_data=batches(1, 1))
    trainer.fit()
    assert trainer.best_step in (4, 8, 12) and trainer.workdir is None
    best = trainer.evaluate(batches(1, 1), trainer.best_model_state())
    assert best["accuracy"] == trainer.best_accuracy
    once = Trainer(Bag(rngs=nnx.Rngs(0)), iter(batches(3, 0)), CFG)
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        once.fit()


def test_evaluation_refuses_one_shot_and_empty_data():
    trainer = Trainer(Bag(rngs=nnx.Rngs(0)), batches(1, 0), CFG)
    with pytest.raises(ValueError, match="one-shot iterator"):  # would score 0 from then on
        trainer.evaluate(b for b in batches(1, 1))
    with pytest.raises(ValueError, match="no example to count"):
        trainer.evaluate([])
    assert trainer.evaluate(lambda: iter(batches(1, 1)))["count"] == 8  # a fresh iterator
    with pytest.raises(ValueError, match="one-shot iterator"):  # at construction, not mid-run
        Trainer(Bag(rngs=nnx.Rngs(0)), batches(1, 0), CFG, val_data=iter(batches(1, 1)))


class PrefixXor(nnx.Module):
    """A causal token model: a running sum of embeddings -> logits per position."""

    def __init__(self, *, rngs):
        self.embed = nnx.Embed(3, 8, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, inputs, mask):
        return self.head(jnp.tanh(jnp.cumsum(self.embed(inputs), axis=1)))


def token_batches(n, seed, length=12):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, 2, size=(4, length))
        out.append({"inputs": x, "labels": np.cumsum(x, 1) % 2})
    return out


def test_length_curriculum_trains_on_prefixes_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(CFG, steps=7, batch_size=4, curriculum=[[3, 2], [5, 3]],
                              log_every=1)
    assert [cfg.curriculum_length(s) for s in range(7)] == [3, 3, 5, 5, 5, None, None]
    train = token_batches(4, 0)

    def run(config, workdir):
        trainer = Trainer(lambda: PrefixXor(rngs=nnx.Rngs(0)), train, config, workdir=workdir)
        step, shapes = trainer.train_step, []

        def recording(state, batch):
            shapes.append(batch["inputs"].shape[1])
            assert batch["labels"].shape[1] == batch["mask"].shape[1] == shapes[-1]
            return step(state, batch)

        trainer.train_step = recording
        trainer.fit()
        return trainer, shapes

    straight, shapes = run(cfg, tmp_path / "a")
    assert shapes == [3, 3, 5, 5, 5, 12, 12]
    first, before = run(dataclasses.replace(cfg, stop_after=3), tmp_path / "b")
    resumed, after = run(cfg, tmp_path / "b")  # resumes inside the second stage
    assert before + after == shapes
    a, b = losses(straight), {**losses(first), **losses(resumed)}
    assert sorted(a) == sorted(b) == list(range(1, 8)) and a == b


def test_length_curriculum_is_refused_where_a_prefix_loses_its_label():
    with pytest.raises(ValueError, match=r"curriculum\[0\]' must be a pair"):
        TrainConfig(curriculum=[[4]])
    with pytest.raises(ValueError, match=r"curriculum\[1\]' must be a pair"):
        TrainConfig(curriculum=[[4, 10], [8, 0]])
    cfg = dataclasses.replace(CFG, curriculum=[[4, 2]])
    with pytest.raises(ValueError, match="one label per position"):  # labels [batch]
        Trainer(Bag(rngs=nnx.Rngs(0)), batches(2, 0), cfg).fit()
    from seqlab.data import load
    from seqlab.data.types import Split

    parity = load("parity", "train", size=8, length=6)
    non_causal = Split(parity.data, dataclasses.replace(parity.info, causal=False))
    with pytest.raises(ValueError, match="token' task that is not causal"):
        Trainer(Bag(rngs=nnx.Rngs(0)), non_causal, cfg)
