"""Byte-level language modelling on any local text file (a token task with next-byte labels).

The file's bytes are cut into three contiguous regions (train | val | test, in that order, so no
window of one split overlaps another). A split is a set of windows of ``length + 1`` bytes w:
inputs ``w[:-1]``, labels ``w[1:]`` (the next byte at every position). Vocabulary: 256 bytes.
"""

from __future__ import annotations

import os

import datasets
import numpy as np

from seqlab.data.types import Split, TaskInfo, describing

VOCAB = 256


def _region(n: int, split: str, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    return {"train": (0, n_train), "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, n)}[split]


def text_lm(
    split: str,
    root: str | None = None,
    *,
    path: str,
    length: int = 256,
    size: int | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Split:
    """Next-byte prediction windows of ``length`` bytes from the text file ``path``.

    path: the file (relative paths are taken under ``root`` when given).
    size: windows in the split. None: every non-overlapping window of the split's region, in
      order. A number: that many windows at offsets drawn uniformly (seeded by ``seed`` and the
      split) from the region, so a small file can still give many (overlapping) examples.
    val_fraction, test_fraction: the shares of the file's bytes held out (at its end).
    Returns a token task: inputs [length] bytes, labels [length] next bytes, TaskInfo(causal=True).
    """
    if describing():
        return Split(None, TaskInfo(task="token", n_classes=VOCAB, vocab_size=VOCAB,
                                    input_dim=None, max_length=length, causal=True))
    if root is not None and not os.path.isabs(path):
        path = os.path.join(root, path)
    if not os.path.isfile(path):
        raise ValueError(f"text_lm: no such file {path!r} (data.path)")
    if length < 1:
        raise ValueError(f"text_lm: length must be >= 1, got {length}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"text_lm: need 0 <= val_fraction, test_fraction and a sum < 1, got {val_fraction}, "
            f"{test_fraction}"
        )
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    lo, hi = _region(len(data), split, val_fraction, test_fraction)
    if hi - lo < length + 1:
        raise ValueError(
            f"text_lm: the {split} region of {path!r} has {hi - lo} bytes, fewer than "
            f"length + 1 = {length + 1}; use a larger file, a shorter length or other fractions"
        )
    if size is None:
        starts = np.arange(lo, hi - length, length)
    elif size < 1:
        raise ValueError(f"text_lm: size must be >= 1 or None, got {size}")
    else:
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        starts = lo + rng.integers(0, hi - lo - length, size)
    windows = data[starts[:, None] + np.arange(length + 1)].astype(np.int32)
    table = datasets.Dataset.from_dict(
        {"inputs": windows[:, :-1].tolist(), "label": windows[:, 1:].tolist()}
    )
    info = TaskInfo(task="token", n_classes=VOCAB, vocab_size=VOCAB, input_dim=None,
                    max_length=length, causal=True)
    return Split(table, info)
