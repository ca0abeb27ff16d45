"""The config front end of the trainer: ``train(cfg, workdir)`` and ``evaluate(workdir, split)``
(what ``seqlab train`` / ``seqlab eval`` call).

``train`` loads the config's data, builds its model (``seqlab.models.build_model``), checks the
workdir holds the same run (or saves the config there), trains with ``Trainer`` and, once
``train.steps`` are done, evaluates the best checkpoint on val and test into results.json.
"""

from __future__ import annotations

import json

import jax
from etils import epath
from flax import nnx

from seqlab.config import Config, TaskInfo, import_modules
from seqlab.models import build_model
from seqlab.train.inputs import check_batch_size, load_split
from seqlab.train.progress import TrainingDiverged
from seqlab.train.sharding import maybe_initialize_distributed
from seqlab.train.trainer import Trainer
from seqlab.train.workdir import load_workdir_config, prepare_workdir, save_task_info


def make_trainer(cfg: Config, info: TaskInfo,
                 workdir: str | epath.PathLike | None = None, train_data=None,
                 val_data=None) -> Trainer:
    """The Trainer of ``cfg``: its model (parameters from ``train.seed``, dropout from
    ``seed + 1``), optimiser, mesh and padding."""
    import_modules(cfg.imports)
    seed = cfg.train.seed

    def model() -> nnx.Module:
        return build_model(cfg.model, info, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    return Trainer(model, train_data, cfg.train, val_data=val_data, workdir=workdir,
                   mesh=cfg.mesh, pad_to=cfg.data.pad_to)


def train(cfg: Config, workdir: str | epath.PathLike) -> dict:
    """Train (or resume) the run of ``cfg`` in ``workdir``; returns the last metrics.

    Stops after ``train.steps`` (then evaluates the best checkpoint on val and test and writes
    results.json) or after ``train.stop_after`` (a resumable pause)."""
    workdir = epath.Path(workdir)
    check_batch_size(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.mesh)
    maybe_initialize_distributed(cfg.mesh)  # before the data: process 0 prepares it first
    train_split, val_split = load_split(cfg, "train"), load_split(cfg, "val")
    trainer = make_trainer(cfg, train_split.info, workdir, train_split, val_split)
    prepare_workdir(cfg, workdir)
    save_task_info(workdir, train_split.info)
    result = trainer.fit()
    if not result["finished"]:
        return result
    return final_results(trainer, cfg)


def final_results(trainer: Trainer, cfg: Config) -> dict:
    """Evaluate the best checkpoint on val and test; write results.json."""
    model_state = trainer.best_model_state()
    results = {"best_step": trainer.best_step, "finished": True}
    for split in ("val", "test"):
        results[split] = trainer.evaluate(load_split(cfg, split), model_state)
    if jax.process_index() == 0:
        (trainer.workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def evaluate(workdir: str | epath.PathLike, split: str = "val",
             checkpoint: str = "best") -> dict:
    """Accuracy and loss of the workdir's ``best`` (or ``latest``) checkpoint on ``split``."""
    cfg = load_workdir_config(workdir)
    maybe_initialize_distributed(cfg.mesh)
    data = load_split(cfg, split)
    trainer = make_trainer(cfg, data.info, workdir)
    step = trainer.restore(checkpoint)
    return {"split": split, "step": step, **trainer.evaluate(data)}


__all__ = ["Trainer", "TrainingDiverged", "evaluate", "load_split", "make_trainer", "train"]
