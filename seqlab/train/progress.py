"""The progress bar and the training metrics between log points: averaged over the window,
written to the metrics file, shown on the bar; a NaN or infinite loss stops training."""

from __future__ import annotations

import math

import jax
from tqdm.auto import tqdm

from seqlab.train.metrics import MetricsWriter
from seqlab.utils import UserError


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Progress:
    """Collects the per-step metrics (device arrays, fetched only at ``flush``)."""

    def __init__(self, total: int, initial: int, metrics: MetricsWriter, enabled: bool,
                 main: bool = True):
        """enabled: show the bar. main: this process prints (process 0 of many): the bar, if
        enabled, and the validation lines."""
        self.metrics, self.window, self.main = metrics, [], main
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and main), desc="train",
                        unit="step", dynamic_ncols=True)

    def update(self, step_metrics: dict) -> None:
        self.window.append(step_metrics)
        self.bar.update(1)

    def flush(self, step: int, kept: str) -> dict:
        """Average the window; raise TrainingDiverged (naming what is ``kept``) on NaN/inf."""
        host, self.window = jax.device_get(self.window), []
        if not all(math.isfinite(float(h["loss"])) for h in host):
            raise TrainingDiverged(
                f"the training loss became {float(host[-1]['loss'])} by step {step}. {kept} "
                f"Lower train.lr / train.ssm_lr, set train.grad_clip, or check the inputs."
            )
        count = sum(float(h["count"]) for h in host)
        last = {
            "loss": sum(float(h["loss_sum"]) for h in host) / max(count, 1),
            "accuracy": sum(float(h["correct"]) for h in host) / max(count, 1),
            "grad_norm": float(host[-1]["grad_norm"]),
            "aux_loss": sum(float(h["aux_loss"]) for h in host) / len(host),
        }
        self.metrics.write(step, "train", **last)
        self.bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
        return last

    def validation(self, step: int, val: dict) -> None:
        self.metrics.write(step, "val", loss=val["loss"], accuracy=val["accuracy"])
        if self.main:
            self.bar.write(
                f"step {step}: val accuracy {val['accuracy']:.4f} loss {val['loss']:.4f}")

    def close(self) -> None:
        self.bar.close()
