"""Byte-level language modelling (a token task with next-byte labels) on a local text file
(``text_lm``) or on the Python standard library's source (``stdlib_text``: a real corpus that
every machine with Python has, ``seqlab.data.stdlib_text``).

The corpus' bytes are cut into three contiguous regions (train | val | test, in that order, so no
window of one split overlaps another). A split is a set of windows of ``length + 1`` bytes w:
inputs ``w[:-1]``, labels ``w[1:]`` (the next byte at every position). Vocabulary: 256 bytes.
"""

from __future__ import annotations

import os

import datasets
import numpy as np

from seqlab.data.stdlib_text import stdlib_bytes
from seqlab.data.types import Split, TaskInfo, describing

VOCAB = 256


def _info(length: int) -> TaskInfo:
    return TaskInfo(task="token", n_classes=VOCAB, vocab_size=VOCAB, input_dim=None,
                    max_length=length, causal=True)


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
        return Split(None, _info(length))
    if root is not None and not os.path.isabs(path):
        path = os.path.join(root, path)
    if not os.path.isfile(path):
        raise ValueError(f"text_lm: no such file {path!r} (data.path)")
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    return _windows("text_lm", repr(path), data, split, length, size, val_fraction,
                    test_fraction, seed)


def stdlib_text(
    split: str,
    root: str | None = None,
    *,
    length: int = 256,
    size: int | None = None,
    max_bytes: int | None = 8_000_000,
    val_fraction: float = 0.0625,
    test_fraction: float = 0.0625,
    seed: int = 0,
) -> Split:
    """Next-byte prediction windows from the Python standard library's source
    (``stdlib_text.stdlib_bytes(max_bytes)``: the ``.py`` files in sorted order, the same bytes
    on every machine with the same Python version; no download).

    root: unused (the corpus is this Python's standard library). max_bytes: the first bytes of
    the concatenation used (None: all of it, ~30 MB for Python 3.11). The other options are
    ``text_lm``'s; the defaults hold out the last 500,000 of 8,000,000 bytes for val and as
    many for test.
    """
    del root
    if describing():
        return Split(None, _info(length))
    data = stdlib_bytes(max_bytes)
    return _windows("stdlib_text", "the standard-library corpus", data, split, length, size,
                    val_fraction, test_fraction, seed)


def _windows(source: str, what: str, data: np.ndarray, split: str, length: int,
             size: int | None, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """The ``split``'s windows of ``data`` (uint8 [n]): inputs/labels [windows, length]."""
    if length < 1:
        raise ValueError(f"{source}: length must be >= 1, got {length}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"{source}: need 0 <= val_fraction, test_fraction and a sum < 1, got "
            f"{val_fraction}, {test_fraction}"
        )
    lo, hi = _region(len(data), split, val_fraction, test_fraction)
    if hi - lo < length + 1:
        raise ValueError(
            f"{source}: the {split} region of {what} has {hi - lo} bytes, fewer than "
            f"length + 1 = {length + 1}; use a larger corpus, a shorter length or other fractions"
        )
    if size is None:
        starts = np.arange(lo, hi - length, length)
    elif size < 1:
        raise ValueError(f"{source}: size must be >= 1 or None, got {size}")
    else:
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        starts = lo + rng.integers(0, hi - lo - length, size)
    windows = data[starts[:, None] + np.arange(length + 1)].astype(np.int32)
    table = datasets.Dataset.from_dict(
        {"inputs": windows[:, :-1].tolist(), "label": windows[:, 1:].tolist()}
    )
    return Split(table, _info(length))
