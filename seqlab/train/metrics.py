"""Metrics: one JSON object per line in WORKDIR/metrics.jsonl, plus TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Appends (never truncates) to ``metrics.jsonl``; mirrors scalars to TensorBoard. Without a
    workdir the records are only kept in ``records``."""

    def __init__(self, workdir: Path | None, tensorboard: bool = True):
        self.records: list[dict] = []
        self.path = None if workdir is None else Path(workdir) / "metrics.jsonl"
        self._tb = None
        if tensorboard and workdir is not None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, **values: float) -> dict:
        record = {"step": int(step), "split": split}
        record.update({k: (float(v) if v is not None else None) for k, v in values.items()})
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), step)
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
