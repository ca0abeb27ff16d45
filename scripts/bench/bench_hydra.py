"""Hydra / SSD speed: what the two-direction mixer costs, and what chunking buys.

1. Hydra's quasiseparable mixer (two SSD scans in one batched call + shift/flip/diagonal)
   forward+backward vs one causal SSD pass of the same size; target <= 2.2x.
2. The same at layer level: the Hydra mixer vs the Mamba2 mixer (same d_model, heads, state).
3. The chunked SSD scan vs the sequential recurrence (lax.scan over time), forward and
   forward+backward, at L = 4096.

    .venv/bin/python scripts/bench/bench_hydra.py            # CPU defaults
    .venv/bin/python scripts/bench/bench_hydra.py --length 8192 --batch 8 --json out.json

Every number: compiled once, warmed up, median of --repeats calls (seqlab.bench.timing),
best of --rounds alternating rounds, and the median process CPU time (steadier on a shared
machine); ratios are given for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.bench.timing import fwd_bwd, time_python
from seqlab.layers.hydra import Hydra, Mamba2
from seqlab.ops.ssd import quasiseparable, ssd


def ssd_sequential(x, dt, A, B, C):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, one step at a time."""
    reps = x.shape[2] // B.shape[2]
    B, C = jnp.repeat(B, reps, axis=2), jnp.repeat(C, reps, axis=2)

    def step(state, inp):
        x_t, dt_t, B_t, C_t = inp
        state = (jnp.exp(dt_t * A)[..., None, None] * state
                 + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :])
        return state, jnp.einsum("bhpn,bhn->bhp", state, C_t)

    b, _, h, p = x.shape
    state0 = jnp.zeros((b, h, p, B.shape[-1]), x.dtype)
    _, ys = jax.lax.scan(step, state0, tuple(jnp.moveaxis(t, 1, 0) for t in (x, dt, B, C)))
    return jnp.moveaxis(ys, 0, 1)


def ssd_inputs(key, b, length, h, p, g, n):
    k = jax.random.split(key, 9)
    return dict(
        x=jax.random.normal(k[0], (b, length, h, p)),
        dt=jax.nn.softplus(jax.random.normal(k[1], (b, length, h)) - 3.0),
        A=-jnp.exp(jax.random.normal(k[2], (h,))),
        B=jax.random.normal(k[3], (b, length, g, n)),
        C=jax.random.normal(k[4], (b, length, g, n)),
        dt_bw=jax.nn.softplus(jax.random.normal(k[5], (b, length, h)) - 3.0),
        B_bw=jax.random.normal(k[6], (b, length, g, n)),
        C_bw=jax.random.normal(k[7], (b, length, g, n)),
        diag=jax.random.normal(k[8], (b, length, h)),
    )


def layer_fwd_bwd(module):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, u):
        return jnp.sum(nnx.merge(graphdef, params, rest)(u))

    return jax.grad(loss, argnums=(0, 1)), params


def compiled(fn, *xs):
    """jit + compile once; returns (callable, compile seconds)."""
    t0 = time.perf_counter()
    c = jax.jit(fn).lower(*xs).compile()
    return (lambda: c(*xs)), time.perf_counter() - t0


def cpu_seconds(fn, repeats: int) -> float:
    """Median process CPU time of one call (all threads): steadier than wall time when other
    jobs share the cores, since time spent descheduled is not counted."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        times.append(time.process_time() - t0)
    return statistics.median(times)


def compare(name_a: str, a, name_b: str, b, *, rounds: int, repeats: int):
    """Two compiled calls measured in alternating rounds, so that a busy machine's load
    drifts into both alike. Returns ((wall_a, cpu_a), (wall_b, cpu_b)): the best round's
    median wall time and the median CPU time over all rounds."""
    wall: dict[str, list[float]] = {name_a: [], name_b: []}
    cpu: dict[str, list[float]] = {name_a: [], name_b: []}
    for _ in range(rounds):
        for name, fn in ((name_a, a), (name_b, b)):
            wall[name].append(time_python(fn, repeats=repeats).median_s)
            cpu[name].append(cpu_seconds(fn, repeats))
    out = []
    for name in (name_a, name_b):
        w, c = min(wall[name]), statistics.median(cpu[name])
        print(f"{name:<44} wall {1e3 * w:9.1f} ms   cpu {1e3 * c:9.1f} ms")
        out.append((w, c))
    return out


def ratio_line(label: str, num, den, note: str = "") -> dict[str, float]:
    wall, cpu = num[0] / den[0], num[1] / den[1]
    print(f"  -> {label}: {wall:.2f}x wall, {cpu:.2f}x cpu{note}")
    return {"wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--d-state", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per round")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    b, length, n, chunk = args.batch, args.length, args.d_state, args.chunk_size
    h, p = 2 * args.d_model // args.head_dim, args.head_dim
    a = ssd_inputs(jax.random.key(0), b, length, h, p, 1, n)
    fw = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    qs_args = (a["x"], a["dt"], a["dt_bw"], a["A"], a["B"], a["C"], a["B_bw"], a["C_bw"],
               a["diag"])
    timing = dict(rounds=args.rounds, repeats=args.repeats)
    results: dict[str, dict[str, float]] = {}
    print(f"backend {jax.default_backend()}, batch {b}, length {length}, heads {h}, "
          f"head_dim {p}, d_state {n}, chunk {chunk}")

    def ssd_y(*t):
        return ssd(*t, chunk_size=chunk)[0]

    def qs_y(*t):
        return quasiseparable(*t, chunk_size=chunk)

    # 1. the op: two directions vs one
    ssd_fb, _ = compiled(fwd_bwd(ssd_y, tuple(range(5))), *fw)
    qs_fb, _ = compiled(fwd_bwd(qs_y, tuple(range(9))), *qs_args)
    t_ssd, t_qs = compare("ssd fwd+bwd (one causal pass)", ssd_fb,
                          "quasiseparable fwd+bwd (two directions)", qs_fb, **timing)
    results["quasiseparable_over_ssd"] = ratio_line("quasiseparable / ssd", t_qs, t_ssd,
                                                    " (target <= 2.2x)")

    # 2. the layers
    u = jax.random.normal(jax.random.key(1), (b, length, args.d_model))
    opts = dict(d_state=n, head_dim=p, chunk_size=chunk)
    g_m, p_m = layer_fwd_bwd(Mamba2(args.d_model, rngs=nnx.Rngs(0), **opts))
    g_h, p_h = layer_fwd_bwd(Hydra(args.d_model, rngs=nnx.Rngs(0), **opts))
    t_m, t_h = compare("Mamba2 layer fwd+bwd", compiled(g_m, p_m, u)[0],
                       "Hydra layer fwd+bwd", compiled(g_h, p_h, u)[0], **timing)
    results["hydra_over_mamba2_layer"] = ratio_line("Hydra / Mamba2 layer", t_h, t_m)

    # 3. chunked vs sequential
    t_chunk, t_seq = compare("ssd chunked fwd", compiled(ssd_y, *fw)[0],
                             "ssd sequential (lax.scan) fwd", compiled(ssd_sequential, *fw)[0],
                             **timing)
    results["chunked_speedup_fwd"] = ratio_line("chunked speedup over sequential (fwd)",
                                                t_seq, t_chunk)
    seq_fb, _ = compiled(fwd_bwd(ssd_sequential, tuple(range(5))), *fw)
    t_chunk_b, t_seq_b = compare("ssd chunked fwd+bwd", ssd_fb,
                                 "ssd sequential (lax.scan) fwd+bwd", seq_fb, **timing)
    results["chunked_speedup_fwd_bwd"] = ratio_line(
        "chunked speedup over sequential (fwd+bwd)", t_seq_b, t_chunk_b)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "backend": jax.default_backend(),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
