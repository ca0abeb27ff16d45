"""Your own data from one ``.npz`` file.

Keys: ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val`` and
``lengths_train, lengths_val, lengths_test``.

- ``x_*``: integer tokens ``[N, L]`` (``vocab_size`` = largest token + 1 unless given) or float
  features ``[N, L, C]``; the same L (and C) in every split.
- ``y_*``: ``[N]`` integer class labels in ``[0, n_classes)`` (sequence classification) or
  ``[N, L]`` (one label per position, -1 = no target). ``n_classes`` = largest label + 1
  unless given.
- Padding convention: without ``lengths_*`` every row is a full sequence of L elements; with
  ``lengths_<split>`` ``[N]`` (each in ``[1, L]``) row i is ``x[i, :lengths[i]]`` and the rest
  is padding that the model never sees.
- No ``x_val``: a validation split of ``round(val_fraction * N)`` training examples is drawn
  with ``seed`` and removed from the training split.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from seqlab.data.types import Split, TaskInfo, describing

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _error(path: Path, message: str) -> ValueError:
    return ValueError(f"arrays source, {path}: {message}")


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(
            f"arrays source: no file {path}. Set data.path to an .npz holding "
            f"{', '.join(REQUIRED)} (optionally x_val, y_val, lengths_*), e.g. written with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zip/format errors: say what the file should be
        raise _error(path, f"cannot be read as an .npz archive of plain arrays ({e}). "
                     "Write it with np.savez(path, x_train=..., ...).") from e
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise _error(path, f"missing key(s) {', '.join(missing)}; found "
                     f"{', '.join(sorted(arrays)) or 'none'}. Required: {', '.join(REQUIRED)} "
                     "(x_val/y_val optional, both or neither).")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise _error(path, "has only one of x_val, y_val; give both or neither (then a "
                     "validation split is carved from the training data)")
    return arrays


def _check_split(path: Path, arrays: dict[str, np.ndarray], name: str) -> None:
    x, y = arrays[f"x_{name}"], arrays[f"y_{name}"]
    if x.ndim not in (2, 3):
        raise _error(path, f"x_{name} has shape {x.shape}; expected [N, L] integer tokens or "
                     "[N, L, C] float features")
    if x.ndim == 2 and not np.issubdtype(x.dtype, np.integer):
        raise _error(path, f"x_{name} is [N, L] of {x.dtype}; [N, L] inputs must be integer "
                     "tokens (use [N, L, 1] for one float feature per position)")
    if x.ndim == 3 and not np.issubdtype(x.dtype, np.floating):
        raise _error(path, f"x_{name} is [N, L, C] of {x.dtype}; features must be floats")
    if x.ndim == 3 and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(1))
        raise _error(path, f"x_{name} has NaN or inf values in {len(bad)} example(s) (first: "
                     f"index {bad[0]}); clean or drop them")
    if not np.issubdtype(y.dtype, np.integer):
        raise _error(path, f"y_{name} has dtype {y.dtype}; labels must be integers")
    if len(x) != len(y):
        raise _error(path, f"x_{name} has {len(x)} examples but y_{name} has {len(y)}; they "
                     "must match")
    if len(x) == 0:
        raise _error(path, f"x_{name} is empty")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape != x.shape[:2]):
        raise _error(path, f"y_{name} has shape {y.shape}; expected [N] (one class per "
                     f"sequence) or [N, L] = {x.shape[:2]} (one per position)")
    lengths = arrays.get(f"lengths_{name}")
    if lengths is not None:
        if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
            raise _error(path, f"lengths_{name} must be [N] = [{len(x)}] integers, got "
                         f"{lengths.dtype} {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise _error(path, f"lengths_{name} must lie in [1, {x.shape[1]}] (the padded "
                         f"length), got [{lengths.min()}, {lengths.max()}]")


def _info(path: Path, arrays: dict[str, np.ndarray], splits: list[str],
          n_classes: int | None, vocab_size: int | None) -> TaskInfo:
    xs = [arrays[f"x_{s}"] for s in splits]
    if len({x.shape[1:] if x.ndim == 3 else (x.shape[1],) for x in xs}) > 1 or \
            len({x.ndim for x in xs}) > 1:
        raise _error(path, "splits differ in shape: "
                     + ", ".join(f"x_{s} {x.shape}" for s, x in zip(splits, xs, strict=True))
                     + "; every split needs the same L (and C)")
    if len({arrays[f"y_{s}"].ndim for s in splits}) > 1:
        raise _error(path, "y arrays mix [N] and [N, L] labels across splits")
    ys = [arrays[f"y_{s}"] for s in splits]
    top = max(int(y.max()) for y in ys)
    n = top + 1 if n_classes is None else n_classes
    for s, y in zip(splits, ys, strict=True):
        low = -1 if y.ndim == 2 else 0  # -1 = no target, for per-position labels
        if y.min() < low or y.max() >= n:
            raise _error(path, f"y_{s} has labels in [{y.min()}, {y.max()}], outside "
                         f"[{low}, {n}) for n_classes={n}; fix the labels or set "
                         "data.n_classes")
    tokens = xs[0].ndim == 2
    if tokens:
        vmax = max(int(x.max()) for x in xs) + 1
        vocab = vmax if vocab_size is None else vocab_size
        for s, x in zip(splits, xs, strict=True):
            if x.min() < 0 or x.max() >= vocab:
                raise _error(path, f"x_{s} has tokens in [{x.min()}, {x.max()}], outside "
                             f"[0, {vocab}) for vocab_size={vocab}; fix the tokens or set "
                             "data.vocab_size")
    elif vocab_size is not None:
        raise _error(path, "vocab_size is set but the inputs are float features [N, L, C]")
    return TaskInfo(task="classify" if ys[0].ndim == 1 else "token", n_classes=n,
                    vocab_size=vocab if tokens else None,
                    input_dim=None if tokens else xs[0].shape[2], max_length=xs[0].shape[1])


def _table(x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None) -> pa.Table:
    """Rows ``x[i, :lengths[i]]`` as arrow lists (features: lists of fixed-size lists)."""
    n, length = x.shape[:2]
    lengths = np.full(n, length) if lengths is None else lengths
    keep = np.arange(length)[None, :] < lengths[:, None]
    flat = x[keep]  # [sum(lengths)] or [sum(lengths), C]
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    if x.ndim == 3:
        values = pa.FixedSizeListArray.from_arrays(
            pa.array(flat.astype(np.float32).reshape(-1)), x.shape[2])
    else:
        values = pa.array(flat.astype(np.int32))
    columns = {"inputs": pa.ListArray.from_arrays(offsets, values)}
    if y.ndim == 2:
        columns["label"] = pa.ListArray.from_arrays(offsets, pa.array(y[keep].astype(np.int32)))
    else:
        columns["label"] = pa.array(y.astype(np.int64))
    return pa.table(columns)


def arrays(split: str, root: str | None = None, *, path: str, val_fraction: float = 0.1,
           seed: int = 0, n_classes: int | None = None, vocab_size: int | None = None,
           size: int | None = None) -> Split:
    """One split of the ``.npz`` at ``path`` (relative paths are taken under ``root``).

    val_fraction, seed: the validation split carved from training data when there is no x_val.
    n_classes, vocab_size: defaults are the largest label / token over all splits + 1.
    size: keep only the first ``size`` examples of the split.
    """
    file = Path(path).expanduser()
    if root is not None and not file.is_absolute():
        file = Path(root) / file
    if describing():
        raise ValueError(f"arrays source: the task's classes, vocabulary and length come from "
                         f"the file ({file}); validate with its data (without --no-data).")
    data = _read(file)
    have_val = "x_val" in data
    if not have_val and not 0.0 < val_fraction < 1.0:
        raise _error(file, f"val_fraction must be in (0, 1) to carve a validation split from "
                     f"x_train (there is no x_val), got {val_fraction}")
    splits = ["train", "val", "test"] if have_val else ["train", "test"]
    for s in splits:
        _check_split(file, data, s)
    info = _info(file, data, splits, n_classes, vocab_size)
    if have_val or split == "test":
        rows = np.arange(len(data[f"y_{split}"]))
        source = split
    else:
        n = len(data["y_train"])
        n_val = int(round(val_fraction * n))
        if not 1 <= n_val < n:
            raise _error(file, f"val_fraction={val_fraction} of {n} training examples leaves "
                         f"{n_val} for validation and {n - n_val} for training; both must be "
                         ">= 1 (add x_val/y_val or change val_fraction)")
        val_rows = np.random.default_rng(seed).permutation(n)[:n_val]
        rows = np.sort(val_rows) if split == "val" else np.setdiff1d(np.arange(n), val_rows)
        source = "train"
    if size is not None:
        if size < 1:
            raise ValueError(f"arrays: size must be >= 1, got {size}")
        rows = rows[:size]
    lengths = data.get(f"lengths_{source}")
    table = _table(data[f"x_{source}"][rows], data[f"y_{source}"][rows],
                   None if lengths is None else lengths[rows])
    return Split(data=datasets.Dataset(table), info=info)
