"""Synthetic tasks: state tracking (parity, modular sums, group word problems) and MQAR.

State tracking (Merrill et al. 2024, 'The Illusion of State'; Grazzi et al. 2025; Siems et al.
2025): tokens are elements of a monoid and the label at *every* position is the product of the
prefix (a "token" task, causal). Per-prefix labels are what those papers train and report: the
model gets dense supervision, and accuracy at positions beyond the training length measures
length extrapolation directly. ``length`` sets train/val sequences, ``test_length`` the test
split (default: ``length``), so a config can train short and test long.

``start_token=True`` (the three state-tracking tasks) puts one extra token, index
``vocab_size - 1``, before every sequence, labelled -1 (no target: the empty product is not
scored); ``length`` still counts the task's own tokens. A start marker gives a causal layer a
known state to begin from; with it and a length curriculum (``train.curriculum``) one
DeltaProduct layer learns S3 (docs/reproductions.md, row 5).

- ``parity``: bits, label = XOR of the prefix (2 classes).
- ``modular``: tokens in [0, modulus), label = prefix sum mod modulus.
- ``permutation``: tokens index the elements of S3, A5 or S5 (``group``), label = index of the
  composition ``x_t o ... o x_1`` (S3 is solvable, A5/S5 are not: NC1-complete word problems).
- ``mqar``: multi-query associative recall (Arora et al. 2023, 'Zoology', sec. 3): key-value
  pairs, then the keys again at random later positions; the label at a query is its value.

Every source is deterministic in (seed, split, options) and built in memory (``root`` is
unused; it is part of the source protocol).
"""

from __future__ import annotations

import itertools
import zlib

import datasets
import numpy as np

from seqlab.data.types import Split, TaskInfo

GROUPS = ("S3", "A5", "S5")
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_INDEX[split], zlib.crc32(name.encode())])


def _common(name: str, split: str, size: int | None, length: int, test_length: int | None):
    if split not in SPLIT_INDEX:
        raise ValueError(f"{name}: unknown split {split!r}; valid: train, val, test")
    size = DEFAULT_SIZES[split] if size is None else size
    test_length = length if test_length is None else test_length
    if size < 1 or length < 1 or test_length < 1:
        raise ValueError(f"{name}: size, length and test_length must be >= 1, got "
                         f"{size}, {length}, {test_length}")
    return size, (test_length if split == "test" else length), max(length, test_length)


def _state_tracking(inputs: np.ndarray, labels: np.ndarray, n_classes: int, max_len: int,
                    start_token: bool) -> Split:
    """A causal token task; with ``start_token``, token ``n_classes`` (labelled -1) first."""
    if start_token:
        n = len(inputs)
        inputs = np.concatenate([np.full((n, 1), n_classes, inputs.dtype), inputs], axis=1)
        labels = np.concatenate([np.full((n, 1), -1, labels.dtype), labels], axis=1)
    info = TaskInfo(task="token", n_classes=n_classes, vocab_size=n_classes + start_token,
                    input_dim=None, max_length=max_len + start_token, causal=True)
    return Split(_dataset(inputs, labels), info)


def _dataset(inputs: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"inputs": inputs.astype(np.int32).tolist(), "label": labels.astype(np.int32).tolist()}
    )


def group_table(group: str) -> np.ndarray:
    """Multiplication table ``M[a, b] = index(a o b)`` ((a o b)(i) = a(b(i))) of the group.

    Elements are permutations in lexicographic order (A5: the even ones); index 0 is identity.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
    n = int(group[1])
    perms = list(itertools.permutations(range(n)))
    if group.startswith("A"):
        perms = [p for p in perms if sum(p[i] > p[j] for i in range(n) for j in range(i)) % 2 == 0]
    index = {p: i for i, p in enumerate(perms)}
    return np.array([[index[tuple(a[b[i]] for i in range(n))] for b in perms] for a in perms])


def _prefix_products(tokens: np.ndarray, table: np.ndarray) -> np.ndarray:
    """labels[:, t] = x_t o x_{t-1} o ... o x_1 (as table indices)."""
    labels = np.empty_like(tokens)
    acc = tokens[:, 0]
    labels[:, 0] = acc
    for t in range(1, tokens.shape[1]):
        acc = table[tokens[:, t], acc]
        labels[:, t] = acc
    return labels


def parity(split: str, root: str | None = None, *, size: int | None = None, length: int = 64,
           test_length: int | None = None, start_token: bool = False, seed: int = 0) -> Split:
    """Bit strings; the label at position t is the parity of bits 1..t (2 classes)."""
    size, seq_len, max_len = _common("parity", split, size, length, test_length)
    bits = _rng("parity", split, seed).integers(0, 2, size=(size, seq_len))
    return _state_tracking(bits, np.cumsum(bits, axis=1) % 2, 2, max_len, start_token)


def modular(split: str, root: str | None = None, *, size: int | None = None, length: int = 64,
            test_length: int | None = None, modulus: int = 5, start_token: bool = False,
            seed: int = 0) -> Split:
    """Tokens in [0, modulus); the label at position t is the prefix sum mod ``modulus``."""
    size, seq_len, max_len = _common("modular", split, size, length, test_length)
    if modulus < 2:
        raise ValueError(f"modular: modulus must be >= 2, got {modulus}")
    x = _rng(f"modular{modulus}", split, seed).integers(0, modulus, size=(size, seq_len))
    return _state_tracking(x, np.cumsum(x, axis=1) % modulus, modulus, max_len, start_token)


def permutation(split: str, root: str | None = None, *, size: int | None = None,
                length: int = 64, test_length: int | None = None, group: str = "S3",
                start_token: bool = False, seed: int = 0) -> Split:
    """Word problem on ``group`` (S3, A5 or S5): label at t = index of x_t o ... o x_1."""
    size, seq_len, max_len = _common("permutation", split, size, length, test_length)
    table = group_table(group)
    x = _rng(f"permutation{group}", split, seed).integers(0, len(table), size=(size, seq_len))
    return _state_tracking(x, _prefix_products(x, table), len(table), max_len, start_token)


def mqar(split: str, root: str | None = None, *, size: int | None = None, length: int = 64,
         test_length: int | None = None, num_pairs: int = 8, vocab_size: int = 64,
         seed: int = 0) -> Split:
    """Multi-query associative recall (Arora et al. 2023).

    Tokens: 0 = blank, keys in [1, vocab_size/2), values in [vocab_size/2, vocab_size). A
    sequence is ``k_1 v_1 ... k_D v_D`` (D = num_pairs distinct keys) followed by blanks in
    which every key reappears once at a random position; there the label is the index of its
    value (``value - vocab_size/2``, n_classes = vocab_size/2); -1 everywhere else.
    """
    size, seq_len, max_len = _common("mqar", split, size, length, test_length)
    half = vocab_size // 2
    if not 1 <= num_pairs < half:
        raise ValueError(f"mqar: need 1 <= num_pairs < vocab_size/2 = {half}, got {num_pairs}")
    if seq_len < 3 * num_pairs:
        raise ValueError(f"mqar: length {seq_len} is too short for {num_pairs} pairs "
                         f"(need >= 3 * num_pairs = {3 * num_pairs})")
    rng = _rng("mqar", split, seed)
    keys = np.argsort(rng.random((size, half - 1)), axis=1)[:, :num_pairs] + 1
    values = rng.integers(0, half, size=(size, num_pairs))
    inputs = np.zeros((size, seq_len), np.int64)
    labels = np.full((size, seq_len), -1, np.int64)
    inputs[:, 0 : 2 * num_pairs : 2], inputs[:, 1 : 2 * num_pairs : 2] = keys, values + half
    slots = np.argsort(rng.random((size, seq_len - 2 * num_pairs)), axis=1)[:, :num_pairs]
    rows = np.arange(size)[:, None]
    inputs[rows, 2 * num_pairs + slots] = keys
    labels[rows, 2 * num_pairs + slots] = values
    info = TaskInfo(task="token", n_classes=half, vocab_size=vocab_size, input_dim=None,
                    max_length=max_len, causal=True)
    return Split(_dataset(inputs, labels), info)
