"""What the trainer reads: seqlab splits (batched by ``seqlab.data.Loader``) or any iterable of
numpy batches, and the checks made before training (labels, batch sizes).

A batch is a dict of arrays (format at the bottom of seqlab/data/types.py): "inputs"
[batch, length] int or [batch, length, channels] float, "labels" [batch] or [batch, length]
(-1 = no target), optional "mask" [batch, length] bool (default: all True), optional "weights"
[batch] (default: 1), and "inputs2" / "mask2" for pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from seqlab.config import Config, ConfigError, MeshConfig

SPLITS = ("train", "val", "test")


def is_split(data: Any) -> bool:
    """A ``seqlab.data.Split`` (checked without importing the data sources)."""
    return hasattr(data, "data") and hasattr(data, "info") and hasattr(data.info, "n_classes")


def load_split(cfg: Config, split: str):
    """The ``split`` of the config's data source (``data.sizes[split]`` examples if set).

    Many processes: process 0 loads it first, generating or downloading it into ``data.root``
    (default: the HF datasets cache); the others load it after, so with a ``data.root`` that
    every host sees they memory-map process 0's copy instead of generating their own, and each
    reads only the pages of its own rows (``Loader(rows=...)``). With a per-host folder each
    host builds its own identical copy (the generators are deterministic)."""
    from seqlab import data as data_lib
    from seqlab.train.sharding import process_zero_first

    options = dict(cfg.data.options)
    if split in cfg.data.sizes:
        options["size"] = cfg.data.sizes[split]
    unknown = set(cfg.data.sizes) - set(SPLITS)
    if unknown:
        raise ConfigError(
            f"data.sizes has unknown splits {sorted(unknown)}; valid: train, val, test."
        )
    return process_zero_first(
        f"the {split} split of data source {cfg.data.name!r}",
        lambda: data_lib.load(cfg.data.name, split, cfg.data.root, **options))


def check_labels(split, name: str) -> None:
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


def check_batch_size(batch_size: int, eval_batch_size: int | None, mesh: MeshConfig) -> None:
    """Every data-parallel device gets an equal share of a batch."""
    for name, b in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if b is not None and b % mesh.data:
            raise ConfigError(
                f"train.{name}={b} must be divisible by mesh.data={mesh.data} "
                f"(each data-parallel device gets an equal share)."
            )


def complete(batch: dict) -> dict[str, np.ndarray]:
    """A batch as numpy with the optional keys filled in: "mask" all True, "weights" 1."""
    out = {k: np.asarray(v) for k, v in batch.items()}
    for key in ("inputs", "labels"):
        if key not in out:
            raise ValueError(f"a training batch needs {key!r}; it has {sorted(out)}.")
    b, length = out["inputs"].shape[:2]
    out.setdefault("mask", np.ones((b, length), bool))
    out.setdefault("weights", np.ones((b,), np.float32))
    if "inputs2" in out:
        out.setdefault("mask2", np.ones(out["inputs2"].shape[:2], bool))
    return out


class TrainStream:
    """Training batches, forever, with a restorable position.

    A ``Split`` is read through a shuffling ``Loader`` (its state is the exact position).
    Another iterable with ``get_state`` / ``set_state`` keeps its own position; any other
    iterable is re-iterated when it runs out (one epoch after another) and, on resume, the
    batches already consumed are skipped (exact when it yields the same batches each time).

    rows: ``(start, stop)``, the rows of each global batch this process feeds (many processes):
    a Split's Loader materialises only those; other iterables yield global batches, sliced.
    """

    def __init__(self, data: Any, batch_size: int, *, seed: int, pad_to: str,
                 rows: tuple[int, int] | None = None):
        if is_split(data):
            from seqlab.data.loader import Loader

            data = Loader(data, batch_size, seed=seed, pad_to=pad_to, rows=rows)
            rows = None  # already this process's rows
        self.data, self.consumed, self._it, self.rows = data, 0, None, rows

    def get_state(self) -> dict:
        if hasattr(self.data, "get_state"):
            return {"data": self.data.get_state()}
        return {"consumed": self.consumed}

    def set_state(self, state: dict) -> None:
        if "data" in state:
            self.data.set_state(state["data"])
            return
        self._it = None
        for _ in range(state["consumed"]):
            next(self)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.data)
        try:
            batch = next(self._it)
        except StopIteration:
            if iter(self.data) is self.data:  # a one-shot iterator: nothing to start again
                raise ValueError(
                    f"the training data ran out after {self.consumed} batches; pass a "
                    f"re-iterable (a list, a seqlab Split) or an endless iterator."
                ) from None
            self._it = iter(self.data)
            batch = next(self._it)
        self.consumed += 1
        return take_rows(complete(batch), self.rows)


def check_curriculum(data: Any, curriculum: tuple) -> None:
    """A length curriculum crops sequences, which keeps the labels of causal token tasks only."""
    if curriculum and is_split(data) and not (data.info.task == "token" and data.info.causal):
        raise ValueError(
            f"train.curriculum trains on prefixes of the sequences, which keep their labels "
            f"only in causal token tasks; this data is a {data.info.task!r} task"
            f"{'' if data.info.task != 'token' else ' that is not causal'}. Remove "
            f"train.curriculum."
        )


def prefix(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The first ``length`` positions of every sequence of a token batch (a stage of a length
    curriculum: ``TrainConfig.curriculum``); shorter batches are returned whole."""
    if batch["labels"].ndim != 2 or "inputs2" in batch:
        raise ValueError(
            "train.curriculum needs batches with one label per position (a token task; labels "
            f"[batch, length]); this batch has labels of shape {batch['labels'].shape}"
            f"{' and a second sequence' if 'inputs2' in batch else ''}. Remove train.curriculum."
        )
    if batch["inputs"].shape[1] <= length:
        return batch
    return {k: v[:, :length] if k in ("inputs", "labels", "mask") else v
            for k, v in batch.items()}


def take_rows(batch: dict[str, np.ndarray], rows: tuple[int, int] | None) -> dict:
    """Rows ``start:stop`` of every array of a global batch (all of it for None)."""
    return batch if rows is None else {k: v[rows[0]:rows[1]] for k, v in batch.items()}


def check_reiterable(data: Any) -> None:
    """Evaluation data must give its batches again on every evaluation: a Split, a callable or a
    re-iterable; a one-shot iterator (``iter(data) is data``, a generator) is refused."""
    if is_split(data) or isinstance(data, Callable):
        return
    if iter(data) is data:
        raise ValueError(
            "evaluation data is a one-shot iterator (a generator?), which is empty after the "
            "first evaluation; pass a re-iterable (a list of batches, a seqlab Split) or a "
            "callable that returns a fresh iterator."
        )


def eval_batches(data: Any, batch_size: int, pad_to: str,
                 rows: tuple[int, int] | None = None) -> Iterable[dict]:
    """Every example of ``data`` once, in order: a Split through a non-repeating Loader (weight-0
    fillers complete the last batch), an iterable as it comes, a callable by calling it.
    rows: this process's rows of each batch (see ``TrainStream``).

    Validation runs many times, so a one-shot iterator (a generator; ``iter(data) is data``) is
    refused: it would be empty from the second evaluation on. An iterable or callable that
    yields no counted example (over whole batches, before ``rows``) raises a ValueError when it
    runs out."""
    if is_split(data):
        from seqlab.data.loader import Loader

        return Loader(data, batch_size, shuffle=False, drop_remainder=False, repeat=False,
                      pad_to=pad_to, rows=rows)
    check_reiterable(data)
    if isinstance(data, Callable):
        data = data()
    return (take_rows(b, rows) for b in _counted(complete(b) for b in data))


def _n_counted(batch: dict[str, np.ndarray]) -> float:
    """The examples (token tasks: labelled real positions) a batch counts, as the loss does."""
    weights, labels = batch["weights"].astype(np.float64), batch["labels"]
    if labels.ndim == 2:
        return float((weights[:, None] * ((labels >= 0) & batch["mask"])).sum())
    return float(weights.sum())


def _counted(batches: Iterable[dict]) -> Iterator[dict]:
    n = 0.0
    for batch in batches:
        n += _n_counted(batch)
        yield batch
    if n == 0:
        raise ValueError(
            "the evaluation data has no example to count (no batches, or all weights 0 / "
            "labels < 0); an accuracy of 0 over nothing would be meaningless. Pass data with "
            "at least one weighted example."
        )
