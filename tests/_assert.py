"""Assertions for numerical tests: NaN and inf never count as agreement.

``np.testing.assert_allclose`` treats NaN as equal to NaN (``equal_nan=True``), so a layer whose
every output is NaN passes a comparison against another path that is NaN too. ``assert_close``
first requires both arrays to be finite, then checks shapes, then values.
"""

from __future__ import annotations

import numpy as np


def _as_numpy(x) -> np.ndarray:
    """jax / numpy / Python values -> numpy (bfloat16 and other ml_dtypes widen to float64)."""
    a = np.asarray(x)
    if a.dtype.kind not in "biufc":  # bfloat16 etc. arrive as a non-native kind
        a = a.astype(np.float64)
    return a


def assert_finite(x, name: str = "array") -> np.ndarray:
    """Fail when x holds NaN or inf; return it as numpy."""
    a = _as_numpy(x)
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{name} has {int(bad.sum())} non-finite entries of {a.size} "
                f"(first at {where}: {a[where]})"
            )
    return a


def assert_close(actual, desired, rtol: float = 1e-7, atol: float = 0.0, *, err_msg: str = ""):
    """``|actual - desired| <= atol + rtol |desired|`` elementwise, after checking that both are
    finite and have the same shape (a scalar ``desired`` broadcasts)."""
    a = assert_finite(actual, "actual")
    d = assert_finite(desired, "desired")
    if d.ndim and a.shape != d.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, desired {d.shape}. {err_msg}")
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, equal_nan=False, err_msg=err_msg)


def assert_dtype(x, dtype) -> None:
    """Fail unless x has exactly ``dtype``."""
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise AssertionError(f"dtype {x.dtype}, expected {np.dtype(dtype)}")
