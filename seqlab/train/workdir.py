"""The run directory: its config (a resumed run must keep it), its task description, and the
rollback of records that an interrupted timeline wrote after the step it resumes from.

A workdir holds ``config.yaml``, ``task.json`` (the TaskInfo the model was built for, so that
``seqlab.load`` needs no data), ``checkpoints/`` (latest steps), ``best/`` (best validation
accuracy), ``metrics.jsonl``, ``tensorboard/``, ``results.json`` and, after a resume,
``rolled_back/``. Workdirs are ``etils.epath`` paths: local folders, ``gs://`` buckets and
other fsspec locations. With many processes, process 0 alone writes here (``train``,
``Trainer``); the others only read.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import yaml
from etils import epath

from seqlab.config import (
    Config,
    ConfigError,
    TaskInfo,
    config_from_dict,
    config_to_dict,
    dump_config,
)

# Keys that may change between invocations on one workdir without changing the run.
RESUMABLE_KEYS = {("train", "stop_after"), ("train", "progress")}


def _diff(a: dict, b: dict, prefix=()) -> list[tuple[str, ...]]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and prefix == ():
            keys += _diff(va, vb, (k,))
        elif va != vb:
            keys.append(prefix + (k,))
    return keys


def prepare_workdir(cfg: Config, workdir: str | epath.PathLike) -> None:
    """Create ``workdir`` with ``cfg`` saved (by process 0), or check that ``cfg`` is the run
    it holds (every process)."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "config.yaml"
    if saved.exists():
        old = config_to_dict(config_from_dict(yaml.safe_load(saved.read_text())))
        changed = [k for k in _diff(old, config_to_dict(cfg)) if k not in RESUMABLE_KEYS]
        if changed:
            names = ", ".join(".".join(k) for k in changed)
            raise ConfigError(
                f"workdir {workdir} holds a run with a different config ({names} differ). "
                f"Resume it with its own config ({saved}) or train in a new --workdir."
            )
    elif jax.process_index() == 0:
        saved.write_text(dump_config(cfg))


def load_workdir_config(workdir: str | epath.PathLike) -> Config:
    """The config a workdir was trained with (its config.yaml)."""
    path = epath.Path(workdir) / "config.yaml"
    if not path.exists():
        raise ConfigError(
            f"{workdir} is not a seqlab workdir (no config.yaml). Train into it first."
        )
    return config_from_dict(yaml.safe_load(path.read_text()))


def save_task_info(workdir: str | epath.PathLike, info: TaskInfo) -> None:
    if jax.process_index() != 0:
        return
    (epath.Path(workdir) / "task.json").write_text(json.dumps(dataclasses.asdict(info), indent=2))


def read_task_info(workdir: str | epath.PathLike) -> TaskInfo | None:
    """The TaskInfo saved in ``workdir``, None for workdirs written before it was saved."""
    path = epath.Path(workdir) / "task.json"
    return TaskInfo(**json.loads(path.read_text())) if path.exists() else None


def set_aside_after(workdir: epath.Path, step: int) -> None:
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
            earlier = aside / "metrics.jsonl"  # read and rewritten: object stores cannot append
            earlier.write_text((earlier.read_text() if earlier.exists() else "") + "".join(later))
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(keep))
            tmp.replace(path)  # atomic: the file is never half written
    best = workdir / "best"
    for d in sorted(best.iterdir()) if best.exists() else []:
        if d.name.isdigit() and int(d.name) > step:
            aside.mkdir(exist_ok=True)
            d.rename(aside / f"best_{d.name}")
