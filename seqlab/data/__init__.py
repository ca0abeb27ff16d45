"""Data sources by name, and the batching loader.

``load(name, split, root=None, **options) -> Split``: every source is a function
``source(split, root=None, *, option=default, ...) -> Split`` registered in ``SOURCES``; its
keyword options are the ``data.*`` keys a config may set for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from seqlab.data.arrays import arrays
from seqlab.data.listops import listops
from seqlab.data.loader import Loader
from seqlab.data.lra import image, retrieval, text
from seqlab.data.pathfinder import pathfinder
from seqlab.data.synthetic import modular, mqar, parity, permutation
from seqlab.data.text_lm import stdlib_text, text_lm
from seqlab.data.types import Split, TaskInfo, describe_only
from seqlab.utils import did_you_mean

SOURCES: dict[str, Callable[..., Split]] = {
    "arrays": arrays, "listops": listops, "pathfinder": pathfinder, "text": text,
    "retrieval": retrieval, "image": image,
    "parity": parity, "modular": modular, "permutation": permutation, "mqar": mqar,
    "text_lm": text_lm, "stdlib_text": stdlib_text,
}

SPLITS = ("train", "val", "test")


def source_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options a source accepts (the ``data.*`` keys of a config)."""
    fn = get_source(name)
    return {
        p.name: p
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def get_source(name: str) -> Callable[..., Split]:
    if name not in SOURCES:
        raise ValueError(
            f"unknown data source {name!r}.{did_you_mean(name, SOURCES)} "
            f"Valid sources: {', '.join(sorted(SOURCES))}."
        )
    return SOURCES[name]


def load(name: str, split: str, root: str | None = None, **options) -> Split:
    """Load one split ("train", "val" or "test") of the source ``name``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    valid = source_options(name)
    for key in options:
        if key not in valid:
            raise ValueError(
                f"data source {name!r} has no option {key!r}.{did_you_mean(key, valid)} "
                f"Valid options: {', '.join(sorted(valid)) or '(none)'}."
            )
    return get_source(name)(split, root, **options)


def task_info(name: str, root: str | None = None, **options) -> TaskInfo:
    """The ``TaskInfo`` of source ``name`` with ``options``, without reading, downloading or
    generating its data where the options determine it (every source but ``arrays``, whose
    classes and shapes come from its file; the small synthetic tasks are generated)."""
    with describe_only():
        return load(name, "train", root, **options).info


__all__ = [
    "Loader", "SOURCES", "SPLITS", "Split", "TaskInfo", "get_source", "load", "source_options",
    "task_info",
]
