"""Every shipped YAML config is valid: keys, types, data source options, mixer arguments."""

from pathlib import Path

import pytest
from flax import nnx

from seqlab.config import TaskInfo, load_config
from seqlab.data import source_options
from seqlab.models import build_model
from seqlab.models.builder import check_mixer_args, layer_mixers, mixer_args_for

CONFIGS = sorted(str(p) for p in Path("seqlab/configs").rglob("*.yaml"))


def test_there_are_configs():
    assert "seqlab/configs/demo.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_is_valid_and_its_model_builds(path):
    cfg = load_config(path)
    valid = source_options(cfg.data.name)
    assert not set(cfg.data.options) - set(valid), f"{path}: unknown data options"
    if cfg.data.sizes:
        assert "size" in valid and set(cfg.data.sizes) <= {"train", "val", "test"}
    m = cfg.model
    for name in set(layer_mixers(m.mixer, m.n_layers, m.pattern)):
        check_mixer_args(name, mixer_args_for(name, m.mixer_args, m.pattern))
    assert cfg.train.batch_size % cfg.mesh.data == 0
    # the model builds (shapes only: nnx.eval_shape, no memory, no compile)
    task = "retrieval" if cfg.data.name == "retrieval" else "classify"
    info = TaskInfo(task, n_classes=10, vocab_size=256, input_dim=None, max_length=4096)
    if cfg.data.name in ("text_lm", "stdlib_text"):
        info = TaskInfo("token", 256, 256, None, 4096, causal=True)
    model = nnx.eval_shape(lambda: build_model(cfg.model, info, rngs=nnx.Rngs(0)))
    assert len(model.backbone.blocks) == cfg.model.n_layers
