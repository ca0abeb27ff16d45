"""A byte-level text corpus present on every machine with Python: the standard library's source.

``stdlib_bytes()`` concatenates the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` in
sorted order of their relative paths (installed third-party packages, ``site-packages`` /
``dist-packages``, and ``__pycache__`` are skipped), so a given Python version gives the same
bytes on every machine without a download. Each file is preceded by a one-line header
``# file: <relative path>\\n``. Different Python versions give different corpora: experiments
record ``corpus_info()`` beside their numbers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig

import numpy as np

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: str | None = None) -> list[str]:
    """Relative paths of the ``.py`` files under the standard library ``root``, sorted."""
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    if not os.path.isdir(root):
        raise ValueError(f"stdlib_text: the standard library directory {root!r} does not exist")
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".py")]
    return sorted(out)


def stdlib_bytes(max_bytes: int | None = None, root: str | None = None) -> np.ndarray:
    """The corpus as uint8 [n_bytes] (deterministic for a given Python): the first
    ``max_bytes`` bytes of the concatenation (all of it when None)."""
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"stdlib_text: max_bytes must be >= 1 or None, got {max_bytes}")
    root = sysconfig.get_paths()["stdlib"] if root is None else root
    parts, n = [], 0
    for rel in stdlib_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            chunk = f"# file: {rel}\n".encode() + f.read()
        parts.append(chunk)
        n += len(chunk)
        if max_bytes is not None and n >= max_bytes:
            break
    data = np.frombuffer(b"".join(parts), np.uint8)
    return data if max_bytes is None else data[:max_bytes]


def corpus_info(data: np.ndarray) -> str:
    """One line naming the corpus: Python version, size and a SHA-256 prefix of the bytes."""
    digest = hashlib.sha256(data.tobytes()).hexdigest()[:12]
    return (f"Python {sys.version.split()[0]} stdlib source, {len(data):,} bytes, "
            f"sha256 {digest}")
