"""``Trainer``: train any model on seqlab splits or on any iterable of numpy batches.

    trainer = Trainer(model, train_data, TrainConfig(steps=1000, lr=1e-3), val_data=val,
                      workdir="runs/mine")
    trainer.fit()                      # resumes exactly when the workdir holds a checkpoint
    trainer.evaluate(test)             # {"loss", "accuracy", "count"}

The model is any ``nnx.Module`` called as ``model(inputs, mask)`` (``model(inputs, mask,
inputs2, mask2)`` for pairs) that returns logits, or a zero-argument callable that builds one.
One compiled step per batch shape (``seqlab.train.steps``), AdamW with parameter groups
(``seqlab.train.optim``), parameters and batches sharded on a ``data`` x ``fsdp`` mesh
(``seqlab.train.sharding``). With a workdir: checkpoints every ``checkpoint_every`` steps,
the best validation accuracy in ``best/``, metrics in ``metrics.jsonl`` and TensorBoard, and
exact resume (model, optimiser, RNG streams, step and data position are restored, so the
losses equal those of a run that never stopped). A NaN or infinite loss stops training with the
last good checkpoint kept. SIGTERM or SIGINT during ``fit`` ends it after the current step with
a checkpoint and the metrics written (``seqlab.train.preemption``).

Many processes (``mesh.distributed``): every process runs the same Trainer; each feeds its own
rows of every global batch; process 0 alone writes metrics and moves rolled-back records, while
orbax writes checkpoints from all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from seqlab.config import MeshConfig, TrainConfig
from seqlab.train.checkpoint import Checkpoints
from seqlab.train.inputs import (
    TrainStream,
    check_batch_size,
    check_curriculum,
    check_labels,
    check_reiterable,
    eval_batches,
    is_split,
    prefix,
)
from seqlab.train.metrics import MetricsWriter
from seqlab.train.optim import make_tx
from seqlab.train.preemption import StopRequests
from seqlab.train.progress import Progress
from seqlab.train.sharding import (
    batch_rows,
    is_main_process,
    make_mesh,
    maybe_initialize_distributed,
    place,
    shard_batch,
    state_shardings,
)
from seqlab.train.steps import make_eval_step, make_train_step
from seqlab.train.workdir import set_aside_after

CHECKPOINTS = ("best", "latest")


class Trainer:
    """The training loop around one model (see the module docstring).

    model: an nnx.Module, or a callable returning one (built here, after the mesh).
    train_data: a seqlab ``Split`` (shuffled by a seeded Loader), or an iterable of batch dicts
      (re-iterated when it runs out; see ``seqlab.train.inputs``). Needed by ``fit`` only.
    config: the optimiser and loop settings (``TrainConfig``: lr, groups, schedule, steps,
      eval/checkpoint/log intervals, seed, stop_after, progress bar).
    val_data: a Split, an iterable of batches or a callable returning one; evaluated every
      ``eval_every`` steps and at the end; the best accuracy is kept.
    workdir: where checkpoints and metrics go; None keeps everything in memory.
    mesh: data x fsdp devices. pad_to: the Loader's per-batch padding for splits.
    """

    def __init__(
        self,
        model: nnx.Module | Callable[[], nnx.Module],
        train_data: Any = None,
        config: TrainConfig | None = None,
        *,
        val_data: Any = None,
        workdir: str | epath.PathLike | None = None,
        mesh: MeshConfig | None = None,
        pad_to: str = "pow2",
    ):
        self.config, self.mesh_config = config or TrainConfig(), mesh or MeshConfig()
        check_batch_size(self.config.batch_size, self.config.eval_batch_size, self.mesh_config)
        for data, name in ((train_data, "train"), (val_data, "val")):
            if is_split(data):
                check_labels(data, name)
        check_curriculum(train_data, self.config.curriculum)
        if val_data is not None:
            check_reiterable(val_data)  # before any step is trained, not at the first validation
        maybe_initialize_distributed(self.mesh_config)
        self.mesh = make_mesh(self.mesh_config)
        if not isinstance(model, nnx.Module):
            model = model()
        optimizer = nnx.Optimizer(model, make_tx(model, self.config), wrt=nnx.Param)
        self.graphdef, state = nnx.split((model, optimizer))
        self.model_graphdef = nnx.split(model)[0]
        self.shardings = state_shardings(state, self.mesh)
        self.state = place(state, self.shardings)
        self.train_step = make_train_step(self.graphdef, self.shardings)
        self.eval_step = make_eval_step(self.model_graphdef)
        self.train_data, self.val_data, self.pad_to = train_data, val_data, pad_to
        self.workdir = None if workdir is None else epath.Path(workdir)
        self.step, self.best_accuracy, self.best_step = 0, -math.inf, None
        self.history: list[dict] = []  # the metrics records of this process
        self._stream: TrainStream | None = None
        self._best_state = None  # the best model state, when there is no workdir

    @property
    def model(self) -> nnx.Module:
        """The model with the current parameters (a new module object; training is
        functional). Its arrays are the trainer's: a further ``fit`` donates them to the next
        step, so take the model after training (or ``best_model()``, read from disk)."""
        return nnx.merge(self.model_graphdef, self.state[0])

    def best_model(self) -> nnx.Module:
        """The model with the parameters of the best validation accuracy (the current ones when
        nothing was validated)."""
        return nnx.merge(self.model_graphdef, self.best_model_state())

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, data: Any, model_state: Any = None) -> dict:
        """Accuracy and loss over every example of ``data`` (a Split: weight-0 fillers complete
        the last batch; nothing is skipped), with the current or the given model state."""
        batch_size = self.config.eval_batch_size or self.config.batch_size
        ms = self.state[0] if model_state is None else model_state
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        rows = batch_rows(self.mesh, batch_size)
        with jax.set_mesh(self.mesh):
            for batch in eval_batches(data, batch_size, self.pad_to, rows):
                sums = jax.device_get(
                    self.eval_step(ms, shard_batch(batch, self.mesh, batch_size)))
                for k in totals:
                    totals[k] += float(sums[k])
        n = max(totals["count"], 1.0)
        return {
            "loss": totals["loss_sum"] / n,
            "accuracy": totals["correct"] / n,
            "count": int(totals["count"]),
        }

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoints(self, which: str) -> Checkpoints:
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
        if which == "best":
            return Checkpoints(self.workdir / "best", 1, "best")
        return Checkpoints(self.workdir / "checkpoints", self.config.keep_checkpoints, "latest")

    def _meta(self) -> dict:
        return {
            "step": self.step,
            "loader": self._stream.get_state(),
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
        }

    def restore(self, checkpoint: str = "best") -> int:
        """Load the workdir's ``best`` model or ``latest`` training state; returns its step."""
        if self.workdir is None:
            raise ValueError("this Trainer has no workdir to restore from")
        ckpts = self._checkpoints(checkpoint)
        try:
            step = ckpts.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"no {checkpoint} checkpoint in {ckpts.directory}; train first."
                )
            if checkpoint == "best":
                model_state, _ = ckpts.restore(step, self.state[0])
                self.state[0] = model_state
            else:
                self.state, _ = ckpts.restore(step, self.state)
        finally:
            ckpts.close()
        return step

    def best_model_state(self) -> Any:
        """The model state of the best validation accuracy (from ``best/`` with a workdir)."""
        if self.workdir is not None and (self.workdir / "best").exists():
            best = self._checkpoints("best")
            try:
                step = best.latest_step()
                if step is not None:
                    return best.restore(step, self.state[0])[0]
            finally:
                best.close()
        return self.state[0] if self._best_state is None else self._best_state

    def _resume(self, ckpts: Checkpoints) -> None:
        """Continue from the latest checkpoint (exactly: state, data position, best so far);
        set aside what an interrupted timeline recorded after it."""
        latest = ckpts.latest_step()
        if is_main_process():
            set_aside_after(self.workdir, latest or 0)
        if jax.process_count() > 1:  # nobody opens best/ before process 0 has set steps aside
            multihost_utils.sync_global_devices("seqlab: rollback done")
        if latest is not None and latest > self.step:
            self.state, meta = ckpts.restore(latest, self.state)
            self._stream.set_state(meta["loader"])
            self.step, self.best_accuracy = latest, meta["best_accuracy"]
            self.best_step = meta["best_step"]

    # -- the loop --------------------------------------------------------------------------

    def _validate(self, progress: Progress, best: Checkpoints | None) -> None:
        val = self.evaluate(self.val_data)
        progress.validation(self.step, val)
        if val["accuracy"] > self.best_accuracy:
            self.best_accuracy, self.best_step = val["accuracy"], self.step
            if best is not None:
                best.save(self.step, self.state[0], self._meta())
            else:
                self._best_state = jax.tree.map(lambda x: x.copy(), self.state[0])

    def _kept(self, ckpts: Checkpoints | None) -> str:
        if ckpts is None:
            return "Nothing was saved (no workdir)."
        return (f"The last good checkpoint (step {ckpts.latest_step()}) is kept in "
                f"{ckpts.directory}.")

    def fit(self) -> dict:
        """Train up to ``config.steps`` (or ``config.stop_after``, a resumable pause).
        Returns {"step", "train": the last logged metrics, "finished"} and, after a SIGTERM or
        SIGINT, "preempted": the signal's name (see ``seqlab.train.preemption``)."""
        tc = self.config
        if self.train_data is None:
            raise ValueError("Trainer.fit needs train_data")
        if self._stream is None:
            self._stream = TrainStream(self.train_data, tc.batch_size, seed=tc.seed,
                                       pad_to=self.pad_to,
                                       rows=batch_rows(self.mesh, tc.batch_size))
        ckpts = best = progress = None
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            ckpts = self._checkpoints("latest")
        main = is_main_process()
        metrics = MetricsWriter(self.workdir if main else None)
        last: dict = {}
        stops = StopRequests()
        try:
            if ckpts is not None:
                self._resume(ckpts)  # before best/ is opened: it may set best steps aside
                best = self._checkpoints("best")
            end = tc.steps if tc.stop_after is None else min(tc.steps, tc.stop_after)
            progress = Progress(tc.steps, self.step, metrics, tc.progress, main)
            with jax.set_mesh(self.mesh), stops:
                while self.step < end:
                    batch = next(self._stream)
                    length = tc.curriculum_length(self.step)
                    if length is not None:
                        batch = prefix(batch, length)
                    batch = shard_batch(batch, self.mesh, tc.batch_size)
                    self.state, m = self.train_step(self.state, batch)
                    self.step += 1
                    progress.update(m)
                    step = self.step
                    stop = stops.stop()  # a signal: finish this step, checkpoint, flush, exit
                    boundary = step % tc.checkpoint_every == 0 or step == end or stop
                    if step % tc.log_every == 0 or boundary or step % tc.eval_every == 0:
                        last = progress.flush(step, self._kept(ckpts))
                    if self.val_data is not None and (step % tc.eval_every == 0
                                                      or step == tc.steps):
                        self._validate(progress, best)
                    if boundary and ckpts is not None:
                        ckpts.save(step, self.state, self._meta())
                    if stop:
                        break
        finally:
            for closable in (progress, ckpts, best, metrics):
                if closable is not None:
                    closable.close()
            self.history += metrics.records
        result = {"step": self.step, "train": last, "finished": self.step >= tc.steps}
        if stops.received is not None:
            result.update(finished=False, preempted=stops.received)
        return result

