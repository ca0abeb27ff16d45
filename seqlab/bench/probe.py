"""Measure this device's peak matmul FLOP/s and memory bandwidth, in the same run as the bench.

The physical bound of an op on this device is ``max(flops / peak_flops, bytes / peak_bandwidth)``
seconds: whichever of compute or memory traffic takes longer ("FLOPs-bound" or "bytes-bound").
Both peaks are *measured* here, not taken from a datasheet, so the ratio "fraction of the bound"
is honest on a shared, loaded machine too (the probe sees the same load as the op).

- FLOP/s: a square float32 matmul ``C = A @ B`` (``2 n^3`` FLOPs), best of the repeats, at the
  largest of a few sizes (small sizes under-report on big devices).
- bandwidth: the faster of a read-only reduction ``sum(x)`` (``x.nbytes`` bytes) and a streaming
  ``y = 2 x + 1`` (reads + writes = ``2 * x.nbytes``) over an array much larger than the caches,
  best of the repeats. (On XLA:CPU the streaming form also pays for page-faulting a fresh output
  buffer every call, so the reduction is usually the one that reaches the hardware's bandwidth.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp

from seqlab.bench.timing import time_fn

__all__ = ["DeviceProbe", "probe", "bound_seconds"]


@dataclass(frozen=True)
class DeviceProbe:
    """Measured peaks of one device.

    flops_per_s: float32 matmul FLOP/s; bf16_flops_per_s: bf16 matmul FLOP/s (accelerators only).
    bytes_per_s: memory bandwidth, the best of read_bytes_per_s and stream_bytes_per_s.
    read_bytes_per_s: ``sum(x)``; stream_bytes_per_s: ``2 x + 1`` (read + write).
    matmul_n: the matmul size that gave flops_per_s; stream_bytes: size of x in bytes.
    """

    device: str
    platform: str
    flops_per_s: float
    bytes_per_s: float
    matmul_n: int
    stream_bytes: int
    read_bytes_per_s: float
    stream_bytes_per_s: float
    bf16_flops_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bound_seconds(flops: float, nbytes: float, p: DeviceProbe) -> tuple[float, str]:
    """The physical lower bound on time for ``flops`` FLOPs and ``nbytes`` bytes on this device.

    Returns (seconds, "flops" | "bytes"): which resource bounds it (roofline model).
    """
    t_flops = flops / p.flops_per_s
    t_bytes = nbytes / p.bytes_per_s
    return (t_flops, "flops") if t_flops >= t_bytes else (t_bytes, "bytes")


def _matmul_rate(n: int, dtype: jnp.dtype, device: jax.Device, repeats: int) -> float:
    key = jax.random.PRNGKey(0)
    a = jax.device_put(jax.random.normal(key, (n, n), dtype), device)
    b = jax.device_put(jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype), device)
    t = time_fn(jnp.matmul, a, b, repeats=repeats, warmup=1)
    return 2.0 * n**3 / t.min_s


def probe(
    device: jax.Device | None = None,
    *,
    matmul_sizes: tuple[int, ...] | None = None,
    stream_bytes: int | None = None,
    repeats: int = 5,
) -> DeviceProbe:
    """Measure peak matmul FLOP/s and memory bandwidth of ``device`` (default: the first device).

    Defaults are sized so that the probe takes about a second on a CPU and is near peak on a
    GPU: matmul sizes (512, 1024) on CPU and (4096, 8192) elsewhere; a 256 MiB stream on CPU,
    2 GiB elsewhere.
    """
    device = device or jax.devices()[0]
    cpu = device.platform == "cpu"
    sizes = matmul_sizes or ((512, 1024) if cpu else (4096, 8192))
    best_n, best = sizes[0], 0.0
    for n in sizes:
        rate = _matmul_rate(n, jnp.float32, device, repeats)
        if rate > best:
            best_n, best = n, rate
    bf16 = None if cpu else _matmul_rate(sizes[-1], jnp.bfloat16, device, repeats)

    nbytes = stream_bytes or (256 * 2**20 if cpu else 2 * 2**30)
    x = jax.device_put(jnp.ones((nbytes // 4,), jnp.float32), device)
    read = x.nbytes / time_fn(jnp.sum, x, repeats=repeats, warmup=1).min_s
    stream = 2 * x.nbytes / time_fn(lambda x: 2.0 * x + 1.0, x, repeats=repeats, warmup=1).min_s
    del x
    return DeviceProbe(
        device=str(device.device_kind),
        platform=device.platform,
        flops_per_s=best,
        bytes_per_s=max(read, stream),
        matmul_n=best_n,
        stream_bytes=nbytes,
        read_bytes_per_s=read,
        stream_bytes_per_s=stream,
        bf16_flops_per_s=bf16,
    )
