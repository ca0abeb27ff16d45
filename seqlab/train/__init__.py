"""The trainer: ``Trainer`` (any model, seqlab splits or any batches) and the config front end
``train(cfg, workdir)`` / ``evaluate(workdir, split)`` that ``seqlab train`` / ``seqlab eval``
call. Loaded on first use, so ``seqlab.train.lra`` and the metrics readers stay light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_ATTRS = {"Trainer": "seqlab.train.trainer", "train": "seqlab.train.run",
          "evaluate": "seqlab.train.run", "make_trainer": "seqlab.train.run"}

__all__ = ["Trainer", "evaluate", "make_trainer", "train"]

if TYPE_CHECKING:
    from seqlab.train.run import evaluate, make_trainer, train
    from seqlab.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name not in _ATTRS:
        raise AttributeError(f"module 'seqlab.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_ATTRS[name]), name)
