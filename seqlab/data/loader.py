"""Batches of a ``Split`` as numpy dicts (format at the bottom of ``seqlab/data/types.py``).

Rows are gathered by index straight from the dataset's arrow buffers (no per-example Python):
a ragged column is a flat value array plus row offsets, so a batch is one fancy-index gather.
Each batch is padded to its longest sequence rounded up (``pad_to``) so that a jitted step
compiles only a handful of shapes.

Order: epoch ``e`` visits the examples in ``permutation(default_rng((seed, e)))`` (or in order
when ``shuffle=False``). The whole iterator state is ``{"seed", "epoch", "position"}``
(``position`` = examples of epoch ``e`` already yielded), so a run restored with ``set_state``
sees exactly the batches it would have seen.

Many processes: every process walks the same global order (same seed, same state) and
materialises only ``rows = (start, stop)`` of each global batch, the rows its devices hold. The
padded length is taken from the lengths of the whole global batch (the row offsets, no data
read), so all processes agree on the global shape; a split read from disk is memory-mapped by
arrow, so a process reads only the pages of its own rows. One process with ``rows`` covering
the batch yields exactly the concatenation of what the processes yield.

Why not Grain: Grain reads one record at a time and batches in Python; on a 2-core CPU a batch
of 32 ListOps rows (64-256 tokens) took 2.7 ms through Grain's per-record ``MapDataset`` and
1.05 ms with Grain ordering index batches for ``Loader.batch``, against 0.25 ms for this
loader's single gather (docs/multihost.md has the command). Its process sharding
(``ShardByJaxProcess``) gives each process its own slice of the dataset and so its own batch
composition, while seqlab keeps the global batches of a one-process run, so that multi-process
losses equal single-process ones; the iterator state here is already three integers saved in
the checkpoint's JSON metadata.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from seqlab.data.types import Split, TaskInfo

PAD_MODES = ("pow2", "max", "none")
MIN_POW2 = 8


def padded_length(longest: int, max_length: int, pad_to: str) -> int:
    """The padded length of a batch whose longest sequence has ``longest`` elements.

    "pow2": the next power of two, at least 8, at most ``max_length`` rounded the same way;
    "max": always ``max_length``; "none": ``longest``.
    """
    longest, max_length = int(longest), int(max_length)
    if pad_to == "none":
        return longest
    if pad_to == "max":
        return max_length
    cap = max(MIN_POW2, 1 << (max_length - 1).bit_length())
    return min(cap, max(MIN_POW2, 1 << (max(longest, 1) - 1).bit_length()))


class _Column:
    """One column as numpy: fixed rows ``values[i]`` or ragged rows with ``offsets``."""

    def __init__(self, array: pa.ChunkedArray, name: str):
        arr = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if pa.types.is_fixed_size_list(arr.type):  # equal-length rows: offsets i * size
            size = arr.type.list_size
            arr = pa.ListArray.from_arrays(
                pa.array(np.arange(len(arr) + 1, dtype=np.int32) * size), arr.flatten())
        self.name = name
        self.ragged = pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
        if not self.ragged:
            self.values = arr.to_numpy(zero_copy_only=False)
            return
        if arr.null_count:
            raise ValueError(f"column {name!r} has missing (null) rows")
        self.offsets = np.asarray(arr.offsets)  # [rows + 1]
        inner = arr.flatten()
        if pa.types.is_list(inner.type) or pa.types.is_large_list(inner.type) or \
                pa.types.is_fixed_size_list(inner.type):
            # Feature rows [length, channels]: channels must be the same everywhere.
            if pa.types.is_fixed_size_list(inner.type):
                widths = np.array([inner.type.list_size])
            else:
                widths = np.diff(np.asarray(inner.offsets))
            if len(widths) and (widths != widths[0]).any():
                raise ValueError(f"column {name!r}: feature rows have varying channel counts")
            width = int(widths[0]) if len(widths) else 0
            self.values = np.asarray(inner.flatten()).reshape(-1, width)
        else:
            self.values = np.asarray(inner)
        self.offsets = self.offsets - self.offsets[0]
        self.lengths = np.diff(self.offsets)

    def gather(self, idx: np.ndarray, length: int | None, pad_value: float, dtype
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``idx``: ``[B, *]`` (fixed) or ``([B, length, ...] padded, mask [B, length])``."""
        if not self.ragged:
            return self.values[idx].astype(dtype), None
        lengths = self.lengths[idx]
        pos = np.arange(length)
        mask = pos[None, :] < lengths[:, None]
        flat = np.where(mask, self.offsets[idx][:, None] + pos[None, :], 0)
        out = self.values[flat].astype(dtype, copy=False)
        if out.ndim == 3:
            out[~mask] = pad_value
        else:
            out = np.where(mask, out, np.asarray(pad_value, dtype))
        return out, mask


class Loader:
    """Iterate over a split in padded numpy batches.

    split: the data. batch_size: rows per batch (B).
    seed, shuffle: epoch ``e`` is ``permutation(default_rng((seed, e)))`` of the examples.
    drop_remainder: drop an epoch's last incomplete batch (training); otherwise complete it
      with filler rows (copies of a real example) of weight 0, so nothing is skipped (eval).
    pad_to: "pow2" | "max" | "none" (see ``padded_length``).
    repeat: iterate forever, epoch after epoch (training); False = one pass per ``iter``.
    rows: ``(start, stop)``: materialise only these rows of each global batch (this process's
      share, see the module docstring); None = all ``batch_size`` rows.

    Yields dicts (``B`` = ``stop - start`` with ``rows``): "inputs" [B, L] int32 or [B, L, C]
    float32, "mask" [B, L] bool, "labels" [B] or [B, L] int32 (-1 at padding), "weights" [B]
    float32, and for retrieval "inputs2", "mask2".
    """

    def __init__(self, split: Split, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_remainder: bool = True, pad_to: str = "pow2", repeat: bool = True,
                 rows: tuple[int, int] | None = None):
        if pad_to not in PAD_MODES:
            raise ValueError(f"pad_to must be one of {', '.join(PAD_MODES)}, got {pad_to!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = (0, batch_size) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= rows[0] < rows[1] <= batch_size:
            raise ValueError(f"rows {rows} must be a non-empty range inside the global batch "
                             f"[0, {batch_size})")
        self.rows = rows
        self.info: TaskInfo = split.info
        self.n = len(split)
        if self.n == 0:
            raise ValueError("cannot batch an empty split")
        if drop_remainder and batch_size > self.n:
            raise ValueError(f"batch_size {batch_size} exceeds the split's {self.n} examples "
                             "and drop_remainder=True would yield nothing; lower batch_size")
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.drop_remainder, self.pad_to, self.repeat = drop_remainder, pad_to, repeat
        table = split.data.with_format("arrow")[:]
        self._columns = {
            name: _Column(table.column(name), name)
            for name in ("inputs", "inputs2", "label") if name in table.column_names
        }
        for name in ("inputs", "label"):
            if name not in self._columns:
                raise ValueError(f"split has no {name!r} column (columns: {table.column_names})")
        for name in ("inputs", "inputs2"):
            col = self._columns.get(name)
            if col is not None and col.ragged and len(col.lengths) and \
                    col.lengths.max() > self.info.max_length:
                raise ValueError(f"column {name!r} has a row of {col.lengths.max()} elements, "
                                 f"longer than the task's max_length {self.info.max_length}")
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 0 and not self.drop_remainder)

    def get_state(self) -> dict:
        """The position of the next batch: ``{"seed", "epoch", "position"}``."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        """Continue from a ``get_state()`` value (of a loader over the same split and seed)."""
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}; expected the dict that "
                             "Loader.get_state() returns")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state is for seed {state['seed']}, this loader has seed "
                             f"{self.seed}")
        position = int(state["position"])
        if not 0 <= position <= self.n:
            raise ValueError(f"loader state position {position} is outside [0, {self.n}]: "
                             "it belongs to a different split")
        self.epoch, self.position = int(state["epoch"]), position

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng((self.seed, self.epoch))
                self._order = rng.permutation(self.n)
            else:
                self._order = np.arange(self.n)
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            remaining = self.n - self.position
            if remaining == 0 or (self.drop_remainder and remaining < self.batch_size):
                self.epoch, self.position = self.epoch + 1, 0
                if not self.repeat:
                    return
                continue
            take = min(self.batch_size, remaining)
            idx = self._epoch_order()[self.position:self.position + take]
            self.position += take
            yield self.batch(idx)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``self.rows`` of the global batch of examples ``idx`` (completed with weight-0
        filler rows to batch_size)."""
        idx = np.asarray(idx, np.int64)
        weights = np.zeros(self.batch_size, np.float32)
        weights[:len(idx)] = 1.0
        if len(idx) < self.batch_size:
            idx = np.concatenate([idx, np.full(self.batch_size - len(idx), idx[0])])
        everyone = idx  # the padded length is the global batch's, the same on every process
        idx, weights = idx[slice(*self.rows)], weights[slice(*self.rows)]
        out: dict[str, np.ndarray] = {}
        lengths: dict[str, int] = {}
        for name, key in (("inputs", ""), ("inputs2", "2")):
            col = self._columns.get(name)
            if col is None:
                continue
            tokens = self.info.vocab_size is not None
            dtype = np.int32 if tokens else np.float32
            if not col.ragged:
                raise ValueError(f"column {name!r} must hold one sequence per row")
            length = padded_length(int(col.lengths[everyone].max()), self.info.max_length,
                                   self.pad_to)
            out["inputs" + key], out["mask" + key] = col.gather(idx, length, 0, dtype)
            lengths[name] = length
        labels = self._columns["label"]
        if labels.ragged:  # one label per position, aligned with "inputs"
            out["labels"], _ = labels.gather(idx, lengths["inputs"], -1, np.int32)
        else:
            out["labels"], _ = labels.gather(idx, None, 0, np.int32)
        out["weights"] = weights
        return out
