"""seqlab: structured sequence mixers (S4, S4D, S5, Hydra, DeltaProduct, MLA, sparse attention)
as Flax NNX modules on pure JAX ops, models composed from them, one trainer, LRA data and a CLI.

    import seqlab
    seqlab.layers.S4D(64, rngs=nnx.Rngs(0))          # a mixer
    seqlab.models.Block, Backbone, LanguageModel      # models from modules
    seqlab.Trainer(model, data, TrainConfig()).fit()  # train any model
    model, cfg = seqlab.load("runs/lm")               # a workdir or an export
    seqlab.generate(model, prompt, 100)

Submodules and entry points load on first use, so ``import seqlab`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ATTRS = {
    "layers": ("seqlab.layers", None),
    "models": ("seqlab.models", None),
    "config": ("seqlab.config", None),
    "data": ("seqlab.data", None),
    "train": ("seqlab.train", None),
    "Trainer": ("seqlab.train.trainer", "Trainer"),
    "TrainConfig": ("seqlab.config", "TrainConfig"),
    "ModelConfig": ("seqlab.config", "ModelConfig"),
    "TaskInfo": ("seqlab.config", "TaskInfo"),
    "load_config": ("seqlab.config", "load_config"),
    "build_model": ("seqlab.models", "build_model"),
    "load": ("seqlab.saving", "load"),
    "export": ("seqlab.saving", "export"),
    "generate": ("seqlab.sampling", "generate"),
}

__all__ = [
    "ModelConfig",
    "TaskInfo",
    "TrainConfig",
    "Trainer",
    "build_model",
    "config",
    "data",
    "export",
    "generate",
    "layers",
    "load",
    "load_config",
    "models",
    "train",
]

if TYPE_CHECKING:
    from seqlab import config, data, layers, models, train
    from seqlab.config import ModelConfig, TaskInfo, TrainConfig, load_config
    from seqlab.models import build_model
    from seqlab.sampling import generate
    from seqlab.saving import export, load
    from seqlab.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name not in _ATTRS:
        raise AttributeError(f"module 'seqlab' has no attribute {name!r}")
    module, attr = _ATTRS[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
