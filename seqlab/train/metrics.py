"""Metrics: one JSON object per line in WORKDIR/metrics.jsonl, plus TensorBoard scalars."""

from __future__ import annotations

import json
import math

from etils import epath


def _appendable(path: epath.Path) -> bool:
    """Local files are appended to; object stores (gs://, s3://) have no append."""
    return "://" not in str(path)


class MetricsWriter:
    """Appends (never truncates) to ``metrics.jsonl``; mirrors scalars to TensorBoard. Without a
    workdir (and on every process but process 0) the records are only kept in ``records``.

    On an object store (``gs://...``), which cannot append, the file is rewritten whole with
    the earlier lines and the new record at each write."""

    def __init__(self, workdir: str | epath.PathLike | None, tensorboard: bool = True):
        self.records: list[dict] = []
        self.path = None if workdir is None else epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._lines: list[str] | None = None  # the file's lines, kept for object stores
        if self.path is not None and not _appendable(self.path):
            self._lines = self.path.read_text().splitlines(True) if self.path.exists() else []
        if tensorboard and workdir is not None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, **values: float) -> dict:
        record = {"step": int(step), "split": split}
        record.update({k: (float(v) if v is not None else None) for k, v in values.items()})
        self.records.append(record)
        line = json.dumps(record) + "\n"
        if self._lines is not None:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        elif self.path is not None:
            with self.path.open("a") as f:
                f.write(line)
        if self._tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), step)
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | epath.PathLike) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
