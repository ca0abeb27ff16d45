"""Every example runs, at tiny size: your own optax loop over seqlab layers; a mixer of your own
registered from your module and trained through the CLI (--import and imports:); a hybrid
byte-level LM composed from modules, trained, exported, loaded and sampled."""

import json
import runpy
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import seqlab
from seqlab.cli import main
from seqlab.layers import MIXERS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOOP = ["--set", "train.steps=3", "--set", "train.eval_every=3", "--set", "train.batch_size=8",
        "--set", "train.progress=false", "--set", "data.sizes={train: 32, val: 8, test: 8}"]
TINY = [*LOOP, "--set", "model.d_model=8"]


def example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name))


def test_optax_loop():
    out = example("optax_loop.py")["main"](steps=40, d_model=16, length=16, batch=16)
    assert out["last_loss"] < out["first_loss"], out


@pytest.fixture
def own_mixer_module(monkeypatch):
    """Forget the example's module and its registration afterwards."""
    yield
    MIXERS.pop("ema", None)
    sys.modules.pop("my_mixers", None)


def test_own_mixer_through_the_cli(own_mixer_module, tmp_path, monkeypatch, capsys):
    # imports: in the config (a .py path beside the config file)
    config = str(EXAMPLES / "custom_mixer" / "train.yaml")
    assert main(["train", config, *TINY, "--workdir", str(tmp_path / "a")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["finished"]
    model, cfg = seqlab.load(tmp_path / "a")
    assert type(model.backbone.blocks[0].mixer).__name__ == "EMA"
    # --import of a dotted module name, found from the current directory
    MIXERS.pop("ema")
    sys.modules.pop("my_mixers")
    monkeypatch.chdir(EXAMPLES / "custom_mixer")
    argv = ["check", "demo", "--import", "my_mixers", "--set", "model.mixer=ema", "--set",
            "model.mixer_args={}", *TINY]
    assert main(argv) == 0
    assert "imports:\n- my_mixers" in capsys.readouterr().out
    # the LRA runner trains it: a --configs directory holding its config, --import
    MIXERS.pop("ema")
    sys.modules.pop("my_mixers")
    (tmp_path / "lra" / "listops").mkdir(parents=True)
    (tmp_path / "lra" / "listops" / "ema.yaml").write_text(
        "model: {mixer: ema, d_model: 8, n_layers: 1}\n"
        "data: {name: listops, max_length: 64, min_length: 16}\n")
    argv = ["lra", "--tasks", "listops", "--models", "ema", "--configs", str(tmp_path / "lra"),
            "--import", "my_mixers", "--workdir", str(tmp_path / "grid"), *LOOP]
    assert main(argv) == 0
    assert (tmp_path / "grid" / "listops" / "ema" / "results.json").exists()
    # without the import the name is unknown, and the error says how to register one
    MIXERS.pop("ema")
    assert main(["check", "demo", "--set", "model.mixer=ema"]) == 2
    assert "--import" in capsys.readouterr().err


def test_hybrid_lm(tmp_path):
    readme = Path(__file__).resolve().parents[1] / "README.md"
    out = example("hybrid_lm.py")["main"](text=str(readme), out=str(tmp_path), steps=3,
                                          d_model=16, n_layers=2, length=16, batch_size=4,
                                          new_tokens=5)
    assert out["tokens"].shape == (1, 4 + 5) and out["sample"].startswith("The ")
    tokens = jnp.asarray(np.frombuffer(readme.read_bytes()[:24], np.uint8).astype(np.int32))
    tokens = tokens.reshape(2, 12)
    trained = out["trained"]
    trained.eval()
    np.testing.assert_array_equal(np.asarray(out["model"](tokens)), np.asarray(trained(tokens)))
    # re-runnable: the finished run resumes, its export is reused (no FileExistsError)
    again = example("hybrid_lm.py")["main"](text=str(readme), out=str(tmp_path), steps=3,
                                            d_model=16, n_layers=2, length=16, batch_size=4,
                                            new_tokens=5)
    assert again["export"] == out["export"] and again["best_val_accuracy"] == out[
        "best_val_accuracy"]
