"""Reading safetensors checkpoints with numpy alone (no torch, no transformers).

The format (huggingface/safetensors, ``docs``: "Format"): an 8-byte little-endian header size
N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{...}}``, then the tensors' bytes, offsets relative to the end of the header. A tensor is read
when it is asked for; bfloat16 and float8 come from ``ml_dtypes`` (a JAX dependency).
Sharded checkpoints list their files in ``model.safetensors.index.json`` (``weight_map``:
tensor name -> file name), as transformers' ``save_pretrained`` writes them.

The ``safetensors`` package's numpy reader is not used because numpy has no bfloat16 (it
refuses BF16 tensors, the dtype of most published checkpoints); writing uses the package.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np
from etils import epath

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_HEADER_LIMIT = 100_000_000  # the format's own cap on the header size


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors checkpoint."""


def _read_header(path: epath.Path) -> tuple[dict, int]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path} is too short to be a safetensors file.")
        (n,) = struct.unpack("<Q", raw)
        if n > _HEADER_LIMIT:
            raise SafetensorsError(f"{path}: header size {n} is not plausible; the file is not "
                                   "safetensors or is corrupted.")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsError(f"{path}: unreadable header ({e}); the file is corrupted or "
                                   "not safetensors.") from None
    return header, 8 + n


def _index(path: epath.Path) -> dict[str, tuple[np.dtype, tuple[int, ...], int]]:
    """name -> (dtype, shape, byte offset in the file), checked against the file's size."""
    header, start = _read_header(path)
    header.pop("__metadata__", None)
    size = path.stat().length
    out = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which "
                                   f"seqlab cannot read (readable: {', '.join(DTYPES)}).")
        begin, end = (start + o for o in info["data_offsets"])
        dtype, shape = np.dtype(DTYPES[info["dtype"]]), tuple(info["shape"])
        if end > size or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} lies outside the file or has the "
                                   "wrong byte count; the file is truncated or corrupted.")
        out[name] = (dtype, shape, begin)
    return out


def _read(path: epath.Path, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    count = int(np.prod(shape))
    return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape)


def read_file(path: str | epath.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as numpy arrays."""
    path = epath.Path(path)
    return {name: _read(path, *where) for name, where in _index(path).items()}


class CheckpointTensors(Mapping):
    """The tensors of a folder (``model.safetensors``, or the shards of
    ``model.safetensors.index.json``) by name, each read from disk when it is first asked for
    (one ``read`` of its bytes: no memory map, whose page faults made loading 3x slower than
    reading). Records which names were read (``used``), so a loader can find the ones it did not
    consume."""

    def __init__(self, folder: str | epath.PathLike):
        folder = epath.Path(folder)
        if (folder / INDEX).is_file():
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (folder / SINGLE).is_file():
            weight_map, files = None, [SINGLE]
        else:
            raise FileNotFoundError(
                f"{folder} holds neither {SINGLE} nor {INDEX}; seqlab reads transformers "
                f"checkpoints in the safetensors format (save_pretrained's default). Convert a "
                f"pytorch_model.bin with transformers first: "
                f"Model.from_pretrained(dir).save_pretrained(new_dir)."
            )
        self._where: dict[str, tuple] = {}
        for file in files:
            for name, where in _index(folder / file).items():
                if weight_map is None or weight_map.get(name) == file:
                    self._where[name] = (folder / file, *where)
        missing = sorted(set(weight_map or ()) - set(self._where))
        if missing:
            raise SafetensorsError(f"{folder}: {INDEX} lists tensors its shards lack "
                                   f"({missing[:3]}...); the checkpoint is incomplete.")
        self.used: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(name)
        self.used.add(name)
        return _read(*self._where[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
