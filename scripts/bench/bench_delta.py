"""Chunked vs recurrent delta product: speedup at one size, throughput over sequence lengths.

    .venv/bin/python scripts/bench/bench_delta.py                      # the issue's sizes
    .venv/bin/python scripts/bench/bench_delta.py --lengths 512 2048 --num-householder 2

Prints (1) forward+backward time of ``delta_product`` (chunked WY/UT form) against
``delta_product_recurrent`` (lax.scan) at B=2, T=2048, H=4, K=V=64, and (2) a table of
forward+backward throughput (tokens/s) of the chunked form over T, which should stay flat
(linear cost). On a shared machine the min over repeats is the less noisy statistic; both
min and median are printed. With a CUDA GPU and flash-linear-attention's Triton kernels
importable, (3) compares tokens/s with ``fla.ops.gated_delta_product.chunk_gated_delta_product``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from seqlab.bench.timing import fwd_bwd, peak_memory, time_fn
from seqlab.ops.delta import delta_product, delta_product_recurrent


def inputs(b: int, t: int, h: int, dk: int, dv: int, n: int, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, dk))
    k = jax.random.normal(ks[1], (b, t * n, h, dk))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (b, t * n, h, dv))
    beta = 2 * jax.nn.sigmoid(jax.random.normal(ks[3], (b, t * n, h)))
    g = -jax.nn.softplus(jax.random.normal(ks[4], (b, t, h)))
    return q, k, v, beta, g


def op(fn, n: int, chunk_size: int | None):
    def run(q, k, v, beta, g):
        return fn(q, k, v, beta, g, num_householder=n, chunk_size=chunk_size)
    return run


def fla_gpu(args, shapes) -> None:
    """tokens/s of fla's Triton chunk kernel vs ours on the same GPU (skipped without one)."""
    try:
        import torch
        from fla.ops.gated_delta_product import chunk_gated_delta_product
    except Exception as exc:  # noqa: BLE001 - any import failure means: no peer to compare
        print(f"\n(fla Triton comparison skipped: {type(exc).__name__}: {exc})")
        return
    if not torch.cuda.is_available() or jax.default_backend() != "gpu":
        print("\n(fla Triton comparison skipped: needs a CUDA GPU for both torch and JAX)")
        return
    print("\nGPU fwd+bwd tokens/s: seqlab (XLA) vs fla (Triton)")
    b, h, dk, dv, n = shapes
    for t in args.lengths:
        xs = inputs(b, t, h, dk, dv, n)
        ours = time_fn(fwd_bwd(op(delta_product, n, args.chunk_size), argnums=(0, 1, 2, 3, 4)),
                       *xs, repeats=args.repeats, warmup=args.warmup)
        tq = [torch.tensor(jax.device_get(x), device="cuda", requires_grad=True) for x in xs]

        def step(tq=tq):
            o, _ = chunk_gated_delta_product(tq[0], tq[1], tq[2], tq[4], tq[3],
                                             num_householder=n)
            o.sum().backward()
        for _ in range(1 + args.warmup):  # compilation, then the same warm-up as ours
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        fla_s = sorted(times)[len(times) // 2]
        print(f"T={t:6d}  seqlab {b * t / ours.median_s:12.0f}  fla {b * t / fla_s:12.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="K = V")
    p.add_argument("--num-householder", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=None, help="default: chosen per length")
    p.add_argument("--memory-length", type=int, default=16384,
                   help="T for the fwd+bwd peak-memory line (XLA memory analysis, not run)")
    p.add_argument("--speedup-length", type=int, default=2048)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls before the timed ones (the first calls after another "
                        "op's large arrays were freed pay for mapping memory again)")
    args = p.parse_args()
    b, h, d, n = args.batch, args.heads, args.dim, args.num_householder
    grads = dict(argnums=(0, 1, 2, 3, 4))

    print(f"backend={jax.default_backend()}  B={b} H={h} K=V={d} n_h={n} "
          f"chunk={args.chunk_size}")
    xs = inputs(b, args.speedup_length, h, d, d, n)
    rec = time_fn(fwd_bwd(op(delta_product_recurrent, n, args.chunk_size), **grads), *xs,
                  repeats=args.repeats, warmup=args.warmup)
    chk = time_fn(fwd_bwd(op(delta_product, n, args.chunk_size), **grads), *xs,
                  repeats=args.repeats, warmup=args.warmup)
    print(f"fwd+bwd at T={args.speedup_length}: recurrent {rec.median_s * 1e3:.1f} ms "
          f"(min {rec.min_s * 1e3:.1f}), chunked {chk.median_s * 1e3:.1f} ms "
          f"(min {chk.min_s * 1e3:.1f})")
    print(f"speedup chunked / recurrent: {rec.median_s / chk.median_s:.1f}x (median), "
          f"{rec.min_s / chk.min_s:.1f}x (min)")
    timing = dict(repeats=args.repeats, warmup=args.warmup)
    rec_f = time_fn(op(delta_product_recurrent, n, args.chunk_size), *xs, **timing)
    chk_f = time_fn(op(delta_product, n, args.chunk_size), *xs, **timing)
    print(f"fwd at T={args.speedup_length}: recurrent {rec_f.median_s * 1e3:.1f} ms "
          f"(min {rec_f.min_s * 1e3:.1f}), chunked {chk_f.median_s * 1e3:.1f} ms "
          f"(min {chk_f.min_s * 1e3:.1f}): chunked / recurrent speed "
          f"{rec_f.median_s / chk_f.median_s:.2f}x (median), "
          f"{rec_f.min_s / chk_f.min_s:.2f}x (min)")
    big = inputs(b, args.memory_length, h, d, d, n)
    for name, fn in (("recurrent", delta_product_recurrent), ("chunked", delta_product)):
        compiled = jax.jit(fwd_bwd(op(fn, n, args.chunk_size), **grads)).lower(*big).compile()
        print(f"fwd+bwd peak memory at T={args.memory_length}: {name} "
              f"{peak_memory(compiled) / 2**20:.0f} MiB")

    print(f"\n{'T':>6} {'fwd+bwd ms (median)':>20} {'min ms':>9} {'tokens/s (min)':>15}")
    for t in args.lengths:
        res = time_fn(fwd_bwd(op(delta_product, n, args.chunk_size), **grads),
                      *inputs(b, t, h, d, d, n), repeats=args.repeats, warmup=args.warmup)
        print(f"{t:6d} {res.median_s * 1e3:20.1f} {res.min_s * 1e3:9.1f} "
              f"{b * t / res.min_s:15.0f}")
    fla_gpu(args, (b, h, d, d, n))


if __name__ == "__main__":
    main()
