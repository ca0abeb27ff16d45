"""The public API of ``import seqlab``: pinned, lazy, and the package ships its configs."""

import subprocess
import sys

import seqlab

API = ["ModelConfig", "TaskInfo", "TrainConfig", "Trainer", "build_model", "config", "data",
       "export", "generate", "layers", "load", "load_config", "models", "train"]


def test_public_api_is_pinned():
    assert sorted(seqlab.__all__) == API
    for name in API:
        assert getattr(seqlab, name) is not None, name
    assert callable(seqlab.load) and callable(seqlab.generate) and callable(seqlab.export)
    assert seqlab.Trainer.__module__ == "seqlab.train.trainer"
    assert {"Block", "Backbone", "Classifier", "DualEncoder", "LanguageModel"} <= set(
        seqlab.models.__all__)


def test_import_seqlab_is_light():
    code = ("import sys, seqlab\n"
            "print(sorted(m for m in ('jax', 'flax', 'datasets', 'seqlab.train') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_shipped_configs_load_by_name():
    cfg = seqlab.load_config("lra/listops/s4d")
    assert cfg.data.name == "listops"
    assert seqlab.load_config("demo") == seqlab.load_config(
        seqlab.config.CONFIGS / "demo.yaml")
