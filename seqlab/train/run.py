"""The training loop: ``train(cfg, workdir)`` and ``evaluate(workdir, split)``.

A workdir holds ``config.yaml``, ``checkpoints/`` (latest steps), ``best/`` (best validation
accuracy), ``metrics.jsonl``, ``tensorboard/`` and ``results.json``. Re-running ``train`` on a
workdir resumes exactly: model, optimiser, RNG streams, step and data position are restored,
so the losses equal those of a run that never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import yaml
from flax import nnx
from tqdm.auto import tqdm

from seqlab import data as data_lib
from seqlab.config import Config, ConfigError, config_from_dict, config_to_dict, dump_config
from seqlab.data.loader import Loader
from seqlab.models import build_model
from seqlab.train.checkpoint import Checkpoints
from seqlab.train.metrics import MetricsWriter
from seqlab.train.optim import make_tx
from seqlab.train.sharding import (
    make_mesh,
    maybe_initialize_distributed,
    shard_batch,
    state_shardings,
)
from seqlab.train.steps import make_eval_step, make_train_step
from seqlab.utils import UserError


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# Keys that may change between invocations on one workdir without changing the run.
_RESUMABLE_KEYS = {("train", "stop_after"), ("train", "progress")}


def load_split(cfg: Config, split: str) -> data_lib.Split:
    options = dict(cfg.data.options)
    if split in cfg.data.sizes:
        options["size"] = cfg.data.sizes[split]
    unknown = set(cfg.data.sizes) - set(data_lib.SPLITS)
    if unknown:
        raise ConfigError(
            f"data.sizes has unknown splits {sorted(unknown)}; valid: train, val, test."
        )
    return data_lib.load(cfg.data.name, split, cfg.data.root, **options)


def check_labels(split: data_lib.Split, name: str) -> None:
    """Labels of sequence tasks must lie in [0, n_classes)."""
    if split.info.task == "token":
        return
    labels = np.asarray(split.data.with_format("numpy")["label"])
    bad = (labels < 0) | (labels >= split.info.n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} split: label {labels[i]} of example {i} is outside [0, "
            f"{split.info.n_classes}); {int(bad.sum())} labels are out of range. Fix the labels "
            f"or the number of classes of the data source."
        )


def _diff(a: dict, b: dict, prefix=()) -> list[tuple[str, ...]]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and prefix == ():
            keys += _diff(va, vb, (k,))
        elif va != vb:
            keys.append(prefix + (k,))
    return keys


def _prepare_workdir(cfg: Config, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "config.yaml"
    if saved.exists():
        old = config_to_dict(config_from_dict(yaml.safe_load(saved.read_text())))
        changed = [k for k in _diff(old, config_to_dict(cfg)) if k not in _RESUMABLE_KEYS]
        if changed:
            names = ", ".join(".".join(k) for k in changed)
            raise ConfigError(
                f"workdir {workdir} holds a run with a different config ({names} differ). "
                f"Resume it with its own config ({saved}) or train in a new --workdir."
            )
    else:
        saved.write_text(dump_config(cfg))


class Run:
    """Everything a train or eval invocation builds: mesh, model, optimiser, state, steps."""

    def __init__(self, cfg: Config, info: data_lib.TaskInfo):
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh)
        seed = cfg.train.seed
        model = build_model(cfg.model, info, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        optimizer = nnx.Optimizer(model, make_tx(model, cfg.train), wrt=nnx.Param)
        self.graphdef, state = nnx.split((model, optimizer))
        self.model_graphdef = nnx.split(model)[0]
        self.shardings = state_shardings(state, self.mesh)
        self.state = jax.device_put(state, self.shardings)
        self.train_step = make_train_step(self.graphdef, self.shardings)
        self.eval_step = make_eval_step(self.model_graphdef)

    def evaluate(self, split: data_lib.Split, model_state=None) -> dict:
        """Accuracy and loss over every example of ``split`` (weight-0 fillers complete the
        last batch; nothing is skipped)."""
        batch_size = self.cfg.train.eval_batch_size or self.cfg.train.batch_size
        loader = Loader(
            split,
            batch_size,
            shuffle=False,
            drop_remainder=False,
            repeat=False,
            pad_to=self.cfg.data.pad_to,
        )
        ms = self.state[0] if model_state is None else model_state
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        with jax.set_mesh(self.mesh):
            for batch in loader:
                sums = jax.device_get(self.eval_step(ms, shard_batch(batch, self.mesh)))
                for k in totals:
                    totals[k] += float(sums[k])
        n = max(totals["count"], 1.0)
        return {
            "loss": totals["loss_sum"] / n,
            "accuracy": totals["correct"] / n,
            "count": int(totals["count"]),
        }


def _set_aside_after(workdir: Path, step: int) -> None:
    """A run resumed from ``step`` recomputes what came after it: move the metrics records and
    best checkpoints of those later steps (an interrupted timeline) to WORKDIR/rolled_back/, so
    nothing is lost and nothing is counted twice."""
    aside = workdir / "rolled_back"
    path = workdir / "metrics.jsonl"
    if path.exists():
        keep, later = [], []
        for line in path.read_text().splitlines(keepends=True):
            if line.strip():
                (later if json.loads(line)["step"] > step else keep).append(line)
        if later:
            aside.mkdir(exist_ok=True)
            with (aside / "metrics.jsonl").open("a") as f:
                f.writelines(later)
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(keep))
            tmp.replace(path)  # atomic: the file is never half written
    best = workdir / "best"
    for d in sorted(best.iterdir()) if best.exists() else []:
        if d.name.isdigit() and int(d.name) > step:
            aside.mkdir(exist_ok=True)
            d.rename(aside / f"best_{d.name}")


def _check_batch_size(cfg: Config) -> None:
    for name in ("batch_size", "eval_batch_size"):
        b = getattr(cfg.train, name)
        if b is not None and b % cfg.mesh.data:
            raise ConfigError(
                f"train.{name}={b} must be divisible by mesh.data={cfg.mesh.data} "
                f"(each data-parallel device gets an equal share)."
            )


def train(cfg: Config, workdir: str | Path) -> dict:
    """Train (or resume) the run of ``cfg`` in ``workdir``; returns the last metrics.

    Stops after ``train.steps`` (then evaluates the best checkpoint on val and test and writes
    results.json) or after ``train.stop_after`` (a resumable pause)."""
    workdir = Path(workdir)
    tc = cfg.train
    _check_batch_size(cfg)
    maybe_initialize_distributed(cfg.mesh)
    train_split = load_split(cfg, "train")
    val_split = load_split(cfg, "val")
    check_labels(train_split, "train")
    check_labels(val_split, "val")
    _prepare_workdir(cfg, workdir)
    run = Run(cfg, train_split.info)
    loader = Loader(train_split, tc.batch_size, seed=tc.seed, pad_to=cfg.data.pad_to)
    ckpts = Checkpoints(workdir / "checkpoints", tc.keep_checkpoints)
    latest = ckpts.latest_step()
    _set_aside_after(workdir, latest or 0)
    best = Checkpoints(workdir / "best", 1)
    best_acc, best_step, step = -math.inf, None, 0
    if latest is not None:
        run.state, meta = ckpts.restore(latest, run.state)
        loader.set_state(meta["loader"])
        step, best_acc, best_step = latest, meta["best_accuracy"], meta["best_step"]
    metrics = MetricsWriter(workdir)
    end = tc.steps if tc.stop_after is None else min(tc.steps, tc.stop_after)

    def meta():
        return {
            "step": step,
            "loader": loader.get_state(),
            "best_accuracy": best_acc,
            "best_step": best_step,
        }

    bar = tqdm(
        total=tc.steps,
        initial=step,
        disable=not tc.progress,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    window: list[dict] = []
    last = {}
    it = iter(loader)
    try:
        with jax.set_mesh(run.mesh):
            while step < end:
                batch = shard_batch(next(it), run.mesh)
                run.state, m = run.train_step(run.state, batch)
                step += 1
                window.append(m)
                bar.update(1)
                boundary = step % tc.checkpoint_every == 0 or step == end
                if step % tc.log_every == 0 or boundary or step % tc.eval_every == 0:
                    host = jax.device_get(window)
                    window = []
                    if not all(math.isfinite(float(h["loss"])) for h in host):
                        raise TrainingDiverged(
                            f"the training loss became {float(host[-1]['loss'])} by step {step}. "
                            f"The last good checkpoint (step {ckpts.latest_step()}) is kept in "
                            f"{workdir / 'checkpoints'}. Lower train.lr / train.ssm_lr, set "
                            f"train.grad_clip, or check the inputs."
                        )
                    count = sum(float(h["count"]) for h in host)
                    last = {
                        "loss": sum(float(h["loss_sum"]) for h in host) / max(count, 1),
                        "accuracy": sum(float(h["correct"]) for h in host) / max(count, 1),
                        "grad_norm": float(host[-1]["grad_norm"]),
                        "aux_loss": sum(float(h["aux_loss"]) for h in host) / len(host),
                    }
                    metrics.write(step, "train", **last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
                if step % tc.eval_every == 0 or step == tc.steps:
                    val = run.evaluate(val_split)
                    metrics.write(step, "val", loss=val["loss"], accuracy=val["accuracy"])
                    bar.write(
                        f"step {step}: val accuracy {val['accuracy']:.4f} loss {val['loss']:.4f}"
                    )
                    if val["accuracy"] > best_acc:
                        best_acc, best_step = val["accuracy"], step
                        best.save(step, run.state[0], meta())
                if boundary:
                    ckpts.save(step, run.state, meta())
    finally:
        bar.close()
        ckpts.close()
        best.close()
        metrics.close()
    if step < tc.steps:
        return {"step": step, "train": last, "finished": False}
    results = final_results(workdir, run, cfg)
    return results


def final_results(workdir: Path, run: Run, cfg: Config) -> dict:
    """Evaluate the best checkpoint on val and test; write results.json."""
    best = Checkpoints(workdir / "best", 1)
    try:
        step = best.latest_step()
        model_state, _ = best.restore(step, run.state[0])
    finally:
        best.close()
    results = {"best_step": step, "finished": True}
    for split in ("val", "test"):
        results[split] = run.evaluate(load_split(cfg, split), model_state)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def load_workdir_config(workdir: str | Path) -> Config:
    """The config a workdir was trained with (its config.yaml)."""
    path = Path(workdir) / "config.yaml"
    if not path.exists():
        raise ConfigError(
            f"{workdir} is not a seqlab workdir (no config.yaml). Train into it first."
        )
    return config_from_dict(yaml.safe_load(path.read_text()))


def evaluate(workdir: str | Path, split: str = "val", checkpoint: str = "best") -> dict:
    """Accuracy and loss of the workdir's ``best`` (or ``latest``) checkpoint on ``split``."""
    workdir = Path(workdir)
    cfg = load_workdir_config(workdir)
    data = load_split(cfg, split)
    run = Run(cfg, data.info)
    if checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    directory = workdir / ("best" if checkpoint == "best" else "checkpoints")
    ckpts = Checkpoints(directory, 1 if checkpoint == "best" else cfg.train.keep_checkpoints)
    try:
        step = ckpts.latest_step()
        if step is None:
            raise FileNotFoundError(f"no {checkpoint} checkpoint in {directory}; train first.")
        if checkpoint == "best":
            model_state, _ = ckpts.restore(step, run.state[0])
        else:
            model_state = ckpts.restore(step, run.state)[0][0]
    finally:
        ckpts.close()
    out = run.evaluate(data, model_state)
    return {"split": split, "step": step, **out}


__all__ = ["Run", "TrainingDiverged", "evaluate", "load_split", "train"]
