"""What every data source returns, and the batch format the trainer consumes."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import datasets

from seqlab.config import Task, TaskInfo  # noqa: F401  (re-exported: defined with the config)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a task.

    data: a HF ``datasets.Dataset`` with columns
      "inputs": list[int] (tokens) or list[list[float]] ([length, input_dim] features),
      "label": int (classify / retrieval) or list[int] (token: one per position, -1 = none),
      and for retrieval also "inputs2".
    info: the task description shared by all splits.
    """

    data: datasets.Dataset | None
    info: TaskInfo

    def __len__(self) -> int:
        return len(self.data)


_DESCRIBE_ONLY = contextvars.ContextVar("seqlab_describe_only", default=False)


@contextlib.contextmanager
def describe_only() -> Iterator[None]:
    """Inside this context, sources return ``Split(data=None, info)`` without reading,
    downloading or generating anything (``seqlab check --no-data``); a source whose
    ``TaskInfo`` comes from its files (``arrays``) raises a ValueError instead."""
    token = _DESCRIBE_ONLY.set(True)
    try:
        yield
    finally:
        _DESCRIBE_ONLY.reset(token)


def describing() -> bool:
    """Whether the caller asked for the ``TaskInfo`` alone (see ``describe_only``)."""
    return _DESCRIBE_ONLY.get()


# A batch (numpy, from seqlab.data.Loader) is a dict:
#   "inputs":  [B, L] int32 tokens or [B, L, C] float32 features, zero-padded
#   "mask":    [B, L] bool, True at real positions
#   "labels":  [B] int32 (classify/retrieval) or [B, L] int32 (token, -1 = no target)
#   "weights": [B] float32, 1 for real examples, 0 for filler rows that complete a last batch
#   "inputs2", "mask2": the second sequence of a retrieval pair
