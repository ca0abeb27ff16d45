"""ListOps (Nangia & Bowman 2018) as Long Range Arena generates it (Tay et al. 2021, Sec. 3.1).

An example is a nested expression such as ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`` and
its label is the expression's value, a digit (10 classes). The LRA recipe
(``lra_benchmarks/data/listops.py``), reproduced in distribution by a vectorised generator:

- a node at depth ``d < max_depth`` (the root has depth 1) is an operator with probability
  ``VALUE_P = 0.25``, otherwise a digit drawn uniformly from 0-9; a node at ``d = max_depth`` is
  always a digit;
- an operator draws its number of arguments uniformly from ``2..max_args`` and its operator
  uniformly from MIN, MAX, MED (the median of the arguments, rounded down) and SM (sum mod 10);
- the length of an expression counts operator tokens, digits and closing brackets (LRA's count;
  its string form also has parentheses that LRA/S4 pipelines strip before tokenising);
- expressions are sampled independently and kept when ``min_length <= length <= max_length``
  (LRA keeps ``min_length < length < max_length``; inclusive bounds make ``max_length`` the
  longest sequence), duplicates within a split are dropped (LRA dedups with a set).

Splits are generated from different derived seeds, ``SeedSequence([seed, split, chunk])``, so
they are disjoint up to the vanishing chance that two random expressions of hundreds of tokens
coincide (tests check it at the demo sizes). A split of ``size`` examples is the first ``size``
examples of the split's stream, so a smaller split is a prefix of a larger one.

Vocabulary (fixed, ``VOCAB``): 0 = padding (never produced), 1-10 = digits 0-9,
11 = ``[MIN``, 12 = ``[MAX``, 13 = ``[MED``, 14 = ``[SM``, 15 = ``]``; ``vocab_size`` = 16.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from seqlab.data.types import Split, TaskInfo, describing

VOCAB = ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
         "[MIN", "[MAX", "[MED", "[SM", "]")
DIGIT0 = 1  # token of digit 0; digit d is DIGIT0 + d
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
OP0 = 11  # token of the first operator, in OPERATORS order
END = 15
VALUE_P = 0.25  # probability that a node above max_depth is an operator (LRA's VALUE_P)
DEFAULT_SIZES = {"train": 96_000, "val": 2_000, "test": 2_000}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CHUNK = 8192  # expressions sampled per derived seed; fixed so that results depend on seed only
GENERATOR_VERSION = 1


def _levels(rng: np.random.Generator, n: int, max_depth: int, max_args: int, max_length: int):
    """Sample ``n`` expressions breadth first, one vectorised numpy step per depth.

    Returns the per-level node arrays (a node's children are contiguous in the next level, in
    the order of their parents), each expression's token count, and whether it was cut: an
    expression whose length is bound to exceed ``max_length`` stops growing (it is rejected
    anyway, so stopping early leaves the distribution of the accepted ones unchanged).
    """
    tree = np.arange(n)
    length = np.zeros(n, np.int64)
    cut = np.zeros(n, bool)
    levels = []
    for depth in range(1, max_depth + 1):
        m = len(tree)
        is_op = (rng.random(m) <= VALUE_P) if depth < max_depth else np.zeros(m, bool)
        n_args = rng.integers(2, max_args + 1, m)
        op = rng.integers(0, len(OPERATORS), m)
        digit = rng.integers(0, 10, m)
        length += np.bincount(tree, np.where(is_op, 2, 1), minlength=n).astype(np.int64)
        # Every pending argument adds at least one token.
        pending = np.bincount(tree, np.where(is_op, n_args, 0), minlength=n).astype(np.int64)
        cut |= length + pending > max_length
        expand = is_op & ~cut[tree]
        n_children = np.where(expand, n_args, 0)
        levels.append(dict(tree=tree, is_op=is_op, expand=expand, n_children=n_children,
                           op=op, digit=digit))
        if not expand.any():
            break
        tree = np.repeat(tree, n_children)
    return levels, length, cut


def _group_starts(n_children: np.ndarray) -> np.ndarray:
    """Where each expanded node's children start in the next level."""
    return (np.cumsum(n_children) - n_children)[n_children > 0]


def _evaluate_and_size(levels: list[dict]) -> None:
    """Bottom up: every node's value and token count (adds "value" and "size" to each level).

    An operator's value is MIN, MAX, MED (``int(np.median)``: the mean of the two middle
    arguments rounded down) or SM (sum mod 10) of its arguments' values.
    """
    for d in range(len(levels) - 1, -1, -1):
        lv = levels[d]
        value = lv["digit"].copy()
        size = np.where(lv["is_op"], 2, 1).astype(np.int64)
        parents = np.flatnonzero(lv["expand"])
        if len(parents):
            child = levels[d + 1]
            starts = _group_starts(lv["n_children"])
            counts = lv["n_children"][parents]
            cv = child["value"]
            group = np.repeat(np.arange(len(parents)), counts)
            ordered = cv[np.lexsort((cv, group))]
            by_op = np.stack([
                np.minimum.reduceat(cv, starts),
                np.maximum.reduceat(cv, starts),
                (ordered[starts + (counts - 1) // 2] + ordered[starts + counts // 2]) // 2,
                np.add.reduceat(cv, starts) % 10,
            ])
            value[parents] = by_op[lv["op"][parents], np.arange(len(parents))]
            size[parents] += np.add.reduceat(child["size"], starts)
        lv["value"] = value
        lv["size"] = size


def _serialise(levels: list[dict], keep: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Top down: the pre-order tokens of the kept expressions, concatenated.

    ``offsets[t]`` is where expression ``t`` starts in the flat output. An operator writes its
    token at its start and ``]`` at its start + size - 1; its first argument starts right after
    it, each next argument after the previous one's tokens.
    """
    out = np.zeros(int(offsets[-1]), np.uint8)
    start = offsets[levels[0]["tree"]]
    for d, lv in enumerate(levels):
        kept = keep[lv["tree"]]
        tok = np.where(lv["is_op"], OP0 + lv["op"], DIGIT0 + lv["digit"])
        out[start[kept]] = tok[kept]
        ops = kept & lv["is_op"]
        out[start[ops] + lv["size"][ops] - 1] = END
        if not lv["expand"].any():
            break
        n_children = lv["n_children"]
        child_size = levels[d + 1]["size"]
        before = np.cumsum(child_size) - child_size  # tokens of all earlier nodes of the level
        first = np.repeat(before[_group_starts(n_children)], n_children[n_children > 0])
        start = np.repeat(start, n_children) + 1 + (before - first)
    return out


def _sample_chunk(rng: np.random.Generator, max_depth: int, max_args: int, min_length: int,
                  max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``CHUNK`` sampled expressions kept by length: (flat tokens, offsets [n + 1], labels [n])."""
    levels, length, cut = _levels(rng, CHUNK, max_depth, max_args, max_length)
    keep = ~cut & (length >= min_length) & (length <= max_length)
    _evaluate_and_size(levels)
    offsets = np.concatenate([[0], np.cumsum(np.where(keep, length, 0))])
    tokens = _serialise(levels, keep, offsets)
    return tokens, offsets[np.concatenate([[True], keep])], levels[0]["value"][keep]


def generate(split: str, size: int, *, min_length: int, max_length: int, max_depth: int,
             max_args: int, seed: int, progress: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``size`` distinct expressions of a split's stream.

    Returns (tokens: flat uint8 [total], offsets: [size + 1] int64, labels: [size] int64);
    example i is ``tokens[offsets[i]:offsets[i + 1]]``.
    """
    seen: set[bytes] = set()
    parts, lengths, labels = [], [], []
    count, chunk = 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, desc=f"listops {split}", unit="ex")
    while count < size:
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], chunk]))
        tokens, offsets, values = _sample_chunk(rng, max_depth, max_args, min_length, max_length)
        for i in range(len(values)):
            row = tokens[offsets[i]:offsets[i + 1]]
            key = row.tobytes()
            if key in seen:
                continue
            seen.add(key)
            parts.append(row)
            lengths.append(len(row))
            labels.append(values[i])
            count += 1
            if count == size:
                break
        chunk += 1
        if bar is not None:
            bar.update(min(count, size) - bar.n)
        if chunk >= 100 and 10 * count < chunk:  # < 1 kept per 10 chunks: hopeless
            raise ValueError(
                f"listops: almost no expression of depth <= {max_depth} with <= {max_args} "
                f"arguments has a length in [{min_length}, {max_length}] ({count} kept from "
                f"{chunk * CHUNK} samples); widen the length range or raise max_depth/max_args."
            )
    if bar is not None:
        bar.close()
    flat = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return flat, offsets, np.asarray(labels, np.int64)


def cache_dir(root: str | os.PathLike | None) -> Path:
    """Where generated datasets live: ``root`` if given, else the HF datasets cache."""
    return Path(root) if root is not None else Path(datasets.config.HF_DATASETS_CACHE)


def cached(name: str, root: str | os.PathLike | None, key: dict, build) -> datasets.Dataset | None:
    """Load the dataset saved under ``name`` and the hash of ``key``, or ``build()`` and save it
    (None inside ``describe_only``).

    The save goes to a temporary directory renamed into place, so an interrupted or concurrent
    generation never leaves a half-written dataset behind.
    """
    if describing():  # the TaskInfo alone was asked for: read and build nothing
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir(root) / "seqlab" / f"{name}-{digest}"
    if not (path / "dataset_info.json").exists():
        ds = build()
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
        ds.save_to_disk(str(tmp))
        (tmp / "seqlab_key.json").write_text(json.dumps(key, sort_keys=True, indent=1))
        try:
            tmp.rename(path)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def ragged_table(flat: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> pa.Table:
    """An arrow table with "inputs" (rows ``flat[offsets[i]:offsets[i+1]]``) and "label"."""
    if offsets[-1] < 2**31:
        inputs = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))
    else:
        inputs = pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)),
                                               pa.array(flat))
    return pa.table({"inputs": inputs, "label": pa.array(labels.astype(np.int64))})


def listops(split: str, root: str | None = None, *, size: int | None = None,
            min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
            max_args: int = 10, seed: int = 0) -> Split:
    """ListOps as in LRA: expressions of ``min_length..max_length`` tokens, 10 classes.

    size: examples in the split (default 96k train, 2k val, 2k test, as LRA).
    root: cache directory (default: the HF datasets cache); generated once per set of options.
    """
    size = DEFAULT_SIZES[split] if size is None else size
    if size < 1:
        raise ValueError(f"listops: size must be >= 1, got {size}")
    if not 1 <= min_length <= max_length:
        raise ValueError(
            f"listops: need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"listops: need max_depth >= 1 and max_args >= 2, got {max_depth}, "
                         f"{max_args}")
    key = dict(split=split, size=size, min_length=min_length, max_length=max_length,
               max_depth=max_depth, max_args=max_args, seed=seed, version=GENERATOR_VERSION)

    def build() -> datasets.Dataset:
        flat, offsets, labels = generate(
            split, size, min_length=min_length, max_length=max_length, max_depth=max_depth,
            max_args=max_args, seed=seed, progress=size >= 20_000)
        return datasets.Dataset(ragged_table(flat, offsets, labels))

    info = TaskInfo(task="classify", n_classes=10, vocab_size=len(VOCAB), input_dim=None,
                    max_length=max_length)
    return Split(data=cached("listops", root, key, build), info=info)
