"""The downloaded Long Range Arena tasks: Text (IMDB), Retrieval (AAN), Image (CIFAR-10).

Each reads the public release files from ``root`` (formats below) or, for IMDB and CIFAR-10 on a
machine that is online, the HF hub copies; the processed splits are cached (``cached``).

- ``text``: IMDB reviews (Maas et al. 2011) as UTF-8 bytes, truncated to ``max_length`` = 4096
  (LRA's byte-level text classification), 2 classes. Files: Stanford's ``aclImdb_v1.tar.gz``
  unpacked as ``root/aclImdb/{train,test}/{pos,neg}/*.txt``; hub: ``stanfordnlp/imdb``.
- ``retrieval``: ACL Anthology Network citation pairs (LRA), each document as bytes truncated
  to 4000, "inputs" and "inputs2", 2 classes. Files: LRA's ``lra_release.gz`` unpacked so that
  ``root/new_aan_pairs.{train,eval,test}.tsv`` exist (tab-separated: label, id1, id2, text1,
  text2; found also under ``root/lra_release/lra_release/tsv_data/``). No hub copy.
- ``image``: CIFAR-10 (Krizhevsky 2009) in grayscale, ``0.2989 R + 0.5870 G + 0.1140 B`` rounded,
  1024 pixels as tokens 0-255 in row-major order, 10 classes. Files: ``cifar-10-python.tar.gz``
  unpacked as ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``; hub:
  ``uoft-cs/cifar10``.

Validation: ``val_fraction > 0`` carves that fraction of the training set (drawn with ``seed``,
removed from train); ``val_fraction = 0`` uses the test set for validation, as LRA and S4 do
for IMDB. Retrieval has its own eval file. ``size=N`` keeps N examples of the split (after a
seeded shuffle, so small splits are class-mixed).
"""

from __future__ import annotations

import codecs
import importlib
import os
import pickle
import threading
import urllib.error
import urllib.request
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa

from seqlab.data.listops import cached
from seqlab.data.types import Split, TaskInfo, describing

AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
             "test": "new_aan_pairs.test.tsv"}
GRAY = np.array([0.2989, 0.5870, 0.1140])
VERSION = 1
HUB_PROBE_SECONDS = 1.0  # bound on the one connection attempt made before touching the hub


def _offline() -> bool:
    return bool(datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the hub answers one HTTP request within ``timeout`` seconds (any HTTP status
    counts; name resolution included: the request runs in a daemon thread that is abandoned at
    the bound).

    ``datasets.load_dataset`` retries an unreachable hub for tens of seconds and then raises a
    ``ConnectionError``; this probe gives a machine without network the one-paragraph "place
    the files" error at once instead. It asks for an HTTP answer, not just a TCP connection,
    because sandboxes and firewalls may accept connections that never answer.
    """
    answered: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(_hub_endpoint().rstrip("/") + "/api/datasets",
                                         method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # an HTTP status is an answer
            answered.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _missing(task: str, where: str, files: str, hub: str | None,
             reason: str | None = None) -> FileNotFoundError:
    online = (f", or run on a machine with internet access, where {hub} is downloaded from "
              "the HF hub instead") if hub else ""
    if reason is None and hub and _offline():
        reason = "this machine is offline"
    state = f" ({reason})" if reason else ""
    return FileNotFoundError(
        f"LRA {task}: no data found{state}. Place {files} under {where} and set data.root to "
        f"that directory{online}.")


def _from_hub(task: str, where: str, files: str, hub: str, part: str) -> datasets.Dataset:
    """``part`` of the hub dataset ``hub``, or the "place the files" error at once when the
    machine is offline or the hub cannot be reached (no retries)."""
    if _offline():
        raise _missing(task, where, files, hub)
    if not _hub_reachable():
        raise _missing(task, where, files, hub,
                       f"the HF hub at {_hub_endpoint()} cannot be reached")
    try:
        return datasets.load_dataset(hub, split=part)
    except (ConnectionError, TimeoutError) as e:
        raise _missing(task, where, files, hub,
                       f"downloading {hub} from the HF hub failed: {e}") from None


def _bytes_column(texts: list[bytes], max_length: int) -> pa.Array:
    """Byte strings -> arrow lists of uint8 tokens, each truncated to ``max_length``."""
    cut = [t[:max_length] for t in texts]
    lengths = np.array([len(t) for t in cut], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.frombuffer(b"".join(cut), np.uint8)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _select(n: int, split: str, val_fraction: float, seed: int) -> np.ndarray:
    """Rows of the train file that form ``split`` ("train" or "val") when val is carved."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    return {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}[split]


def _finish(table: pa.Table, size: int | None, seed: int) -> datasets.Dataset:
    """Shuffle the rows with ``seed`` (so that any prefix mixes classes) and keep ``size``."""
    order = np.random.default_rng([seed, 1]).permutation(table.num_rows)
    if size is not None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        order = order[:size]
    return datasets.Dataset(table.take(pa.array(order)))


# ---------------------------------------------------------------- text (IMDB)

def _imdb_files(root: Path, part: str) -> tuple[list[bytes], list[int]]:
    texts, labels = [], []
    for label, name in ((0, "neg"), (1, "pos")):
        folder = root / "aclImdb" / part / name
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise _missing("text", str(root), "the IMDB folders aclImdb/train/{pos,neg}/*.txt "
                           "and aclImdb/test/{pos,neg}/*.txt (from aclImdb_v1.tar.gz)",
                           "stanfordnlp/imdb")
        texts += [f.read_bytes() for f in files]
        labels += [label] * len(files)
    return texts, labels


def _imdb(source: Path | None, part: str) -> tuple[list[bytes], list[int]]:
    """Reviews and labels from the local folders, else (online) from the hub."""
    if source is not None and (source / "aclImdb" / part).is_dir():
        return _imdb_files(source, part)
    ds = _from_hub("text", str(source or "a directory of your choice"),
                   "the IMDB folders aclImdb/{train,test}/{pos,neg}/*.txt (from "
                   "aclImdb_v1.tar.gz)", "stanfordnlp/imdb", part)
    return [t.encode("utf-8") for t in ds["text"]], list(ds["label"])


def text(split: str, root: str | None = None, *, size: int | None = None,
         max_length: int = 4096, val_fraction: float = 0.0, seed: int = 0) -> Split:
    """LRA Text: IMDB sentiment from UTF-8 bytes (tokens 0-255), truncated to max_length."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (0: validate on the test set), got "
                         f"{val_fraction}")
    part = "test" if split == "test" or (split == "val" and val_fraction == 0) else "train"
    source = Path(root).expanduser().resolve() if root else None
    key = dict(task="text", split=split, size=size, max_length=max_length,
               val_fraction=val_fraction, seed=seed, root=str(source), version=VERSION)

    def build() -> datasets.Dataset:
        texts, labels = _imdb(source, part)
        rows = np.arange(len(texts))
        if part == "train" and val_fraction > 0:
            rows = _select(len(texts), split, val_fraction, seed)
        table = pa.table({"inputs": _bytes_column([texts[i] for i in rows], max_length),
                          "label": pa.array(np.asarray(labels, np.int64)[rows])})
        return _finish(table, size, seed)

    info = TaskInfo(task="classify", n_classes=2, vocab_size=256, input_dim=None,
                    max_length=max_length)
    return Split(data=cached("lra-text", None, key, build), info=info)


# ---------------------------------------------------------------- retrieval (AAN)

def _aan_file(root: Path, split: str) -> Path:
    for folder in (root, root / "lra_release" / "lra_release" / "tsv_data", root / "tsv_data"):
        if (folder / AAN_FILES[split]).exists():
            return folder / AAN_FILES[split]
    raise _missing("retrieval", str(root), "LRA's " + ", ".join(AAN_FILES.values()) +
                   " (from lra_release.gz: lra_release/tsv_data/)", None)


def _read_aan(path: Path) -> tuple[list[bytes], list[bytes], list[int]]:
    first, second, labels = [], [], []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 5:
                raise ValueError(f"{path}, line {n}: expected 5 tab-separated fields (label, "
                                 f"id1, id2, text1, text2), got {len(fields)}")
            try:
                labels.append(int(float(fields[0])))
            except ValueError:
                if n == 1:  # a header row
                    continue
                raise ValueError(f"{path}, line {n}: label {fields[0]!r} is not a number") from None
            first.append(fields[3])
            second.append(fields[4])
    return first, second, labels


def retrieval(split: str, root: str | None = None, *, size: int | None = None,
              max_length: int = 4000, seed: int = 0) -> Split:
    """LRA Retrieval: do two AAN papers cite each other? Two byte sequences per example."""
    info = TaskInfo(task="retrieval", n_classes=2, vocab_size=256, input_dim=None,
                    max_length=max_length)
    if describing():
        return Split(data=None, info=info)
    if root is None:
        raise _missing("retrieval", "a directory of your choice",
                       ", ".join(AAN_FILES.values()), None)
    source = Path(root).expanduser().resolve()
    path = _aan_file(source, split)
    key = dict(task="retrieval", split=split, size=size, max_length=max_length, seed=seed,
               file=str(path), bytes=path.stat().st_size, version=VERSION)

    def build() -> datasets.Dataset:
        first, second, labels = _read_aan(path)
        table = pa.table({"inputs": _bytes_column(first, max_length),
                          "inputs2": _bytes_column(second, max_length),
                          "label": pa.array(np.asarray(labels, np.int64))})
        return _finish(table, size, seed)

    return Split(data=cached("lra-retrieval", None, key, build), info=info)


# ---------------------------------------------------------------- image (CIFAR-10)

def _numpy_dtype(*args) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays unpickle arbitrary Python objects
        raise pickle.UnpicklingError("an array of Python objects (dtype object)")
    return dtype


def _numpy_core(module: str):
    """``numpy._core.<module>`` (numpy 2), else ``numpy.core.<module>`` (numpy 1)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


# The globals a CIFAR-10 python batch refers to: numpy arrays pickle as
# ``_reconstruct(ndarray, (0,), b"b")`` plus ``__setstate__`` with a ``dtype`` (module
# ``numpy.core`` before numpy 2, ``numpy._core`` after; protocol 5 uses ``_frombuffer``), and
# Python 3 writes bytes at protocol 2 as ``_codecs.encode(str, "latin1")``. Dicts, lists, ints
# and bytes are opcodes, not globals.
_CIFAR_GLOBALS = {
    **{(f"numpy.{c}.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray")._reconstruct
       for c in ("core", "_core")},
    **{(f"numpy.{c}.numeric", "_frombuffer"): lambda: _numpy_core("numeric")._frombuffer
       for c in ("core", "_core")},
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _numpy_dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``_CIFAR_GLOBALS``: loading a tampered batch cannot call
    anything else (``os.system`` in a ``__reduce__``, say)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return _CIFAR_GLOBALS[module, name]()


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch (a pickled dict: b"data" [N, 3072] uint8, b"labels" [N]),
    read with an unpickler that admits only dicts, lists, bytes, numbers and numpy arrays."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(
            f"LRA image: {path} is not a CIFAR-10 python batch ({e}); it was refused unread "
            "because only dicts, lists, bytes, numbers and numpy arrays may appear in one. "
            "Replace it with the file from the official cifar-10-python.tar.gz.") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"LRA image: {path} is not a CIFAR-10 python batch (expected a dict "
                         "with b'data' and b'labels'); replace it with the file from the "
                         "official cifar-10-python.tar.gz.")
    return batch


def _cifar_files(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
    if not all((folder / n).exists() for n in names):
        raise _missing("image", str(root), "cifar-10-batches-py/{data_batch_1..5,test_batch} "
                       "(from cifar-10-python.tar.gz)", "uoft-cs/cifar10")
    xs, ys = [], []
    for n in names:
        batch = read_cifar_batch(folder / n)
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar(source: Path | None, part: str) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, 32, 32] uint8 images and labels from the local batches, else from the hub."""
    if source is not None and (source / "cifar-10-batches-py").is_dir():
        return _cifar_files(source, part)
    ds = _from_hub("image", str(source or "a directory of your choice"),
                   "cifar-10-batches-py/{data_batch_1..5,test_batch} (from "
                   "cifar-10-python.tar.gz)", "uoft-cs/cifar10", part)
    images = np.stack([np.asarray(im.convert("RGB")) for im in ds["img"]])  # [N, 32, 32, 3]
    return images.transpose(0, 3, 1, 2), np.asarray(ds["label"], np.int64)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] uint8 RGB -> [N, H*W] uint8 luma (ITU-R 601 weights, rounded)."""
    gray = np.einsum("nchw,c->nhw", rgb.astype(np.float64), GRAY)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8).reshape(len(rgb), -1)


def image(split: str, root: str | None = None, *, size: int | None = None,
          val_fraction: float = 0.1, seed: int = 0) -> Split:
    """LRA Image: CIFAR-10 in grayscale, 1024 pixel tokens (0-255) per image, 10 classes."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (0: validate on the test set), got "
                         f"{val_fraction}")
    part = "test" if split == "test" or (split == "val" and val_fraction == 0) else "train"
    source = Path(root).expanduser().resolve() if root else None
    key = dict(task="image", split=split, size=size, val_fraction=val_fraction, seed=seed,
               root=str(source), version=VERSION)

    def build() -> datasets.Dataset:
        rgb, labels = _cifar(source, part)
        rows = np.arange(len(rgb))
        if part == "train" and val_fraction > 0:
            rows = _select(len(rgb), split, val_fraction, seed)
        pixels = grayscale(rgb[rows])
        inputs = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 1024)
        return _finish(pa.table({"inputs": inputs, "label": pa.array(labels[rows])}), size, seed)

    info = TaskInfo(task="classify", n_classes=10, vocab_size=256, input_dim=None,
                    max_length=1024)
    return Split(data=cached("lra-image", None, key, build), info=info)
