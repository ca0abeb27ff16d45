"""seqlab.load / seqlab.export: a workdir and its export give bit-identical logits, the export
loads without the training data, and the loaded model samples."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqlab
from seqlab.cli import main
from seqlab.config import config_from_dict
from seqlab.saving import flat_variables
from seqlab.train.run import train


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    text = root / "text.txt"
    # one repeated byte: the model predicts it everywhere after 2 steps (val accuracy 1), so
    # the best checkpoint is step 2 and the latest (step 4) holds different parameters
    text.write_bytes(b"a" * 4000)
    cfg = config_from_dict({
        "model": {"mixer": "s4d", "d_model": 16, "n_layers": 2, "pattern": ["s4d", "mha"],
                  "mixer_args": {"s4d": {"d_state": 4}, "mha": {"n_heads": 2}}, "ffn": "mlp"},
        "data": {"name": "text_lm", "path": str(text), "length": 16, "pad_to": "max",
                 "sizes": {"train": 32, "val": 8, "test": 8}},
        "train": {"steps": 4, "batch_size": 8, "lr": 0.05, "eval_every": 2,
                  "checkpoint_every": 2, "progress": False},
    })
    result = train(cfg, root / "run")
    assert result["best_step"] == 2, result
    return root


def untrained(cfg):
    """The run's model before training: parameters drawn from the run's own seed."""
    seed = cfg.train.seed
    return seqlab.build_model(cfg.model, seqlab.TaskInfo("token", 256, 256, None, 16, True),
                              rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def test_export_load_bit_identical_and_without_data(workdir, tmp_path):
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    mask = jnp.ones((2, 12), bool)
    model, cfg = seqlab.load(workdir / "run")
    assert cfg.model.pattern == ("s4d", "mha")
    want = np.asarray(model(tokens, mask))
    assert main(["export", str(workdir / "run"), str(tmp_path / "e"), "--safetensors"]) == 0
    assert not (tmp_path / "e" / "checkpoints").exists()
    data = workdir / "text.txt"
    moved = shutil.move(data, tmp_path / "elsewhere.txt")  # the export needs no data
    try:
        loaded, _ = seqlab.load(tmp_path / "e")
        np.testing.assert_array_equal(np.asarray(loaded(tokens, mask)), want)
        shutil.rmtree(tmp_path / "e" / "params")  # the safetensors file alone
        alone, _ = seqlab.load(tmp_path / "e")
        np.testing.assert_array_equal(np.asarray(alone(tokens, mask)), want)
    finally:
        shutil.move(moved, data)
    sampled = seqlab.generate(loaded, tokens[:, :3], 4, temperature=0)
    assert sampled.shape == (2, 7) and np.array_equal(sampled[:, :3], tokens[:, :3])
    # export refuses to overwrite; a restore that did nothing would give the run's initial model
    assert main(["export", str(workdir / "run"), str(tmp_path / "e")]) == 2
    assert not np.array_equal(np.asarray(untrained(cfg)(tokens, mask)), want)


def test_latest_checkpoint_and_python_model(workdir, tmp_path):
    latest, cfg = seqlab.load(workdir / "run", checkpoint="latest")
    best, _ = seqlab.load(workdir / "run")
    a, b = flat_variables(latest), flat_variables(best)  # best = step 2, latest = step 4
    assert a.keys() == b.keys() and not all(np.array_equal(a[k], b[k]) for k in a)
    init = flat_variables(untrained(cfg))
    assert not all(np.array_equal(a[k], init[k]) for k in a)  # both restored, not initial
    assert not all(np.array_equal(b[k], init[k]) for k in b)
    # a model exported from Python loads into a model of the same structure
    seqlab.export(best, tmp_path / "py")
    template = seqlab.build_model(cfg.model, seqlab.TaskInfo("token", 256, 256, None, 16, True),
                                  rngs=nnx.Rngs(7))
    loaded, none = seqlab.load(tmp_path / "py", model=template)
    assert none is None
    c = flat_variables(loaded)
    assert all(np.array_equal(b[k], c[k]) for k in b)
    with pytest.raises(ValueError, match="model="):
        seqlab.load(tmp_path / "py")
