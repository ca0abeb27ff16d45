"""What every data source returns, and the batch format the trainer consumes."""

from __future__ import annotations

import dataclasses
from typing import Literal

import datasets

Task = Literal["classify", "retrieval", "token"]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about a task to build its encoder and head.

    task: "classify" (one label per sequence), "retrieval" (one label per pair of sequences,
      LRA's dual encoder) or "token" (one label per position, -1 = no target; language
      modelling is a token task whose labels are the next tokens).
    n_classes: number of output classes (the vocabulary size for language modelling).
    vocab_size: inputs are integer tokens in [0, vocab_size); None when inputs are features.
    input_dim: channels of float feature inputs; None for token inputs.
    max_length: the longest sequence in the task.
    causal: True when the task must only see the past (language modelling).
    """

    task: Task
    n_classes: int
    vocab_size: int | None
    input_dim: int | None
    max_length: int
    causal: bool = False


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a task.

    data: a HF ``datasets.Dataset`` with columns
      "inputs": list[int] (tokens) or list[list[float]] ([length, input_dim] features),
      "label": int (classify / retrieval) or list[int] (token: one per position, -1 = none),
      and for retrieval also "inputs2".
    info: the task description shared by all splits.
    """

    data: datasets.Dataset
    info: TaskInfo

    def __len__(self) -> int:
        return len(self.data)


# A batch (numpy, from seqlab.data.Loader) is a dict:
#   "inputs":  [B, L] int32 tokens or [B, L, C] float32 features, zero-padded
#   "mask":    [B, L] bool, True at real positions
#   "labels":  [B] int32 (classify/retrieval) or [B, L] int32 (token, -1 = no target)
#   "weights": [B] float32, 1 for real examples, 0 for filler rows that complete a last batch
#   "inputs2", "mask2": the second sequence of a retrieval pair
