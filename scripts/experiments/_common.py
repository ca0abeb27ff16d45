"""Shared helpers of the reproduction scripts: seed statistics, machine load, timing, plots."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[2] / "docs"


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    """``"mean ± std (n=k)"`` over seeds (population std: the spread of the runs shown)."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():{fmt}} ± {v.std():{fmt}} (n={len(v)})"


def loadavg() -> str:
    """The 1/5/15-minute load averages of the machine (``/proc/loadavg``), or 'n/a'."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


class Clock:
    """Wall time and load average at start and end, printed as one line by :meth:`report`."""

    def __init__(self) -> None:
        self.t0, self.load0 = time.perf_counter(), loadavg()

    def report(self) -> str:
        line = (f"wall {time.perf_counter() - self.t0:.1f} s on {os.cpu_count()} CPUs; "
                f"loadavg at start {self.load0}, at end {loadavg()}")
        print(line, flush=True)
        return line


def figure_path(name: str, smoke: bool) -> Path:
    """``docs/<name>.png``; smoke runs write ``seqlab_smoke_<name>.png`` in the temporary
    directory instead, never over the docs."""
    if smoke:
        import tempfile

        return Path(tempfile.gettempdir()) / f"seqlab_smoke_{name}.png"
    return DOCS / f"{name}.png"


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, or None where matplotlib is not
    installed (it is in the ``bench`` extra; smoke runs then skip the plot)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
