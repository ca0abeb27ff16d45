"""Timing and memory measurement for JAX (and plain Python / torch) callables.

The one rule every number in ``seqlab bench`` follows: compile once, warm up, then report the
median of ``repeats`` timed calls, each ended by ``jax.block_until_ready`` so that JAX's
asynchronous dispatch cannot hide work.

    >>> import jax.numpy as jnp
    >>> from seqlab.bench.timing import time_fn
    >>> t = time_fn(lambda x: x @ x, jnp.ones((512, 512)), repeats=5)
    >>> t.median_s, t.compile_s, t.peak_bytes          # seconds, seconds, bytes (or None)

Use :func:`time_fn` for JAX functions (it jits them), :func:`time_python` for anything else
(torch peers, already-compiled callables), :func:`fwd_bwd` to turn a forward function into its
forward+backward, and :func:`is_oom` to recognise an out-of-memory error and stop politely.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "MemoryBudgetExceeded",
    "Timing",
    "time_fn",
    "time_python",
    "peak_memory",
    "fwd_bwd",
    "is_oom",
]


@dataclass(frozen=True)
class Timing:
    """The result of timing one call.

    median_s, min_s, max_s: statistics over the timed repeats (seconds per call).
    compile_s: seconds spent tracing + compiling (0.0 for :func:`time_python`).
    times_s: every timed repeat, in order.
    peak_bytes: peak memory of one call in bytes where the backend reports it, else None.
    memory_source: where peak_bytes came from: ``"xla-compiled"`` (XLA's buffer assignment of
      the compiled program: arguments + outputs + temporaries, the same on every backend),
      ``"device-stats"`` (``device.memory_stats()['peak_bytes_in_use']`` delta, GPU/TPU) or None.
    flops, bytes_accessed: XLA's cost analysis of the compiled program where available (an
      estimate of the work XLA emitted, not of the work the algorithm must do).
    """

    median_s: float
    min_s: float
    max_s: float
    compile_s: float
    times_s: tuple[float, ...]
    peak_bytes: int | None = None
    memory_source: str | None = None
    flops: float | None = None
    bytes_accessed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["times_s"] = list(self.times_s)
        return d


class MemoryBudgetExceeded(MemoryError):
    """The compiled program needs more memory than allowed (raised before running it)."""


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` is an out-of-memory error (XLA RESOURCE_EXHAUSTED, MemoryError, torch)."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(
        s in text
        for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory", "OOM")
    )


def _device_peak(device: jax.Device | None) -> int | None:
    if device is None:
        return None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def peak_memory(compiled: Any) -> int | None:
    """Peak bytes of one call of an XLA ``Compiled`` (``jax.jit(f).lower(*args).compile()``).

    From XLA's memory analysis of the compiled program: its own ``peak_memory_in_bytes`` where
    the backend fills it, else ``arguments + outputs + temporaries - aliased``. Works on CPU,
    where ``device.memory_stats()`` is None. Returns None when the backend reports nothing.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return int(max(peak, total))


def _cost(compiled: Any) -> tuple[float | None, float | None]:
    try:
        c = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None, None
    if isinstance(c, Sequence) and not isinstance(c, dict):
        c = c[0] if c else None
    if not c:
        return None, None
    return c.get("flops"), c.get("bytes accessed")


def _repeat(call: Callable[[], Any], repeats: int, warmup: int, budget_s: float | None):
    """Warm up, then time ``repeats`` calls; fewer (at least 1) if they would exceed budget_s."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    for i in range(max(1, repeats)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if budget_s is not None and i + 1 < repeats and spent + times[-1] > budget_s:
            break
    return times


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    static_argnums: int | Sequence[int] = (),
    device: jax.Device | None = None,
    max_bytes: int | None = None,
) -> Timing:
    """Time a JAX function: jit-compile once, warm up, median of ``repeats`` timed calls.

    fn: a JAX-traceable function of ``args`` (a pytree out); args: arrays or pytrees.
    repeats: timed calls (the median is reported); warmup: untimed calls after compilation.
    budget_s: optional wall-clock budget for the timed repeats; stops early (>= 1 repeat) once
      the next call would exceed it. Callers that must refuse a case outright (a length too long
      for the budget) should check ``compile_s`` / a first timing themselves.
    device: where to read ``memory_stats()``; defaults to the device of the first array arg.
    max_bytes: refuse to run (raise :class:`MemoryBudgetExceeded`) when XLA's memory analysis of
      the compiled program says one call needs more; on CPU, where running out of memory kills
      the process instead of raising, this is what lets a sweep stop politely.

    Raises whatever the call raises (use :func:`is_oom` to recognise out-of-memory).
    """
    jitted = jax.jit(fn, static_argnums=static_argnums)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    needed = peak_memory(compiled)
    if max_bytes is not None and needed is not None and needed > max_bytes:
        raise MemoryBudgetExceeded(
            f"needs {needed / 2**30:.2f} GiB, allowed {max_bytes / 2**30:.2f} GiB"
        )
    dyn_args = [a for i, a in enumerate(args) if i not in _as_tuple(static_argnums)]
    if device is None:
        leaves = [x for x in jax.tree_util.tree_leaves(dyn_args) if isinstance(x, jax.Array)]
        device = next(iter(leaves[0].devices())) if leaves else jax.devices()[0]

    def call() -> Any:
        return jax.block_until_ready(compiled(*dyn_args))

    before = _device_peak(device)
    times = _repeat(call, repeats, warmup, budget_s)
    after = _device_peak(device)
    peak, source = needed, "xla-compiled"
    extra: dict[str, Any] = {}
    if after is not None:
        extra["device_peak_bytes_in_use"] = after
        if peak is None:
            peak, source = after - (before or 0), "device-stats"
    if peak is None:
        source = None
    flops, nbytes = _cost(compiled)
    return Timing(
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        compile_s=compile_s,
        times_s=tuple(times),
        peak_bytes=peak,
        memory_source=source,
        flops=flops,
        bytes_accessed=nbytes,
        extra=extra,
    )


def time_python(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    sync: Callable[[Any], Any] | None = None,
) -> Timing:
    """Time any callable without jitting it (torch peers, pre-compiled functions).

    sync: called on each output to wait for the work (e.g. ``lambda _: torch.cuda.synchronize()``);
    defaults to ``jax.block_until_ready``, which waits for JAX arrays and passes others through.
    The first call (included in ``warmup`` when warmup >= 1) is reported as ``compile_s``.
    """
    sync = sync or jax.block_until_ready

    def call() -> Any:
        return sync(fn(*args))

    compile_s = 0.0
    if warmup > 0:
        t0 = time.perf_counter()
        call()
        compile_s = time.perf_counter() - t0
    times = _repeat(call, repeats, max(0, warmup - 1), budget_s)
    return Timing(
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        compile_s=compile_s,
        times_s=tuple(times),
    )


def fwd_bwd(fn: Callable[..., jax.Array], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Forward + backward of ``fn``: returns ``g(*args) -> grads`` of ``sum(fn(*args))``.

    The sum is taken in float32 so that bf16 outputs do not lose the gradient signal. Gradients
    are taken with respect to ``argnums`` (default: the first argument).
    """

    def loss(*args: Any) -> jax.Array:
        out = fn(*args)
        leaves = jax.tree_util.tree_leaves(out)
        return sum(jnp.sum(jnp.real(x).astype(jnp.float32)) for x in leaves)

    return jax.grad(loss, argnums=argnums)


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)
