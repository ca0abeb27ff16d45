"""seqlab's ops against JAX implementations from the package index, same inputs, same backend.

    python scripts/bench/bench_jax_peers.py [--lengths 2048 4096 8192] [--repeats 3] [--rounds 2]

Each peer is imported when installed; an absent one is reported as such (nothing is required).
For every pair the outputs and the input gradients are first checked equal (relative error
printed), then forward and forward+backward are timed in alternation (``--rounds`` rounds, each
side's best median of ``--repeats`` calls, ``seqlab.bench.timing.time_fn``; gradients w.r.t.
the first two inputs). Ratio = peer time / seqlab time (> 1: seqlab is faster).

- SSD (Mamba-2 chunked scan): ``seqlab.ops.ssd.ssd`` vs mamba2-jax ``modeling.ssd_forward``
  (B=1, H=4, P=N=64, chunk 64; the peer takes per-head B, C, given broadcast, and applies
  softplus to dt: it computes ``log(expm1(dt))`` first).
- Gated delta rule: ``seqlab.ops.delta.delta_product`` (n=1, gated) vs deltanet-tpu
  ``variants.chunk_gdn(fallback_scan=True, precision="fp32")`` (its pure-JAX form; it requires
  K = V = 128 and chunk 128) and MaxText ``models.qwen3.jax_chunk_gated_delta_rule``
  (compute_dtype float32, chunk 64). B=1, H=4, K=V=128.
- Diagonal linear scan ``h_t = a_t h_{t-1} + b_t`` (S5's and RG-LRU's recurrence, real):
  ``seqlab.ops.scan.linear_scan`` vs recurrentgemma ``jax.scan.linear_scan`` (B=1, D=1024).
"""

from __future__ import annotations

import argparse
import importlib
import os

import jax
import jax.numpy as jnp

from seqlab.bench.timing import fwd_bwd, time_fn


def _peer(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 - an absent or broken peer is reported, not raised
        return f"not available ({type(e).__name__}: {str(e)[:80]})"


def _rel(a, b) -> float:
    """The largest relative error over the leaves of two pytrees of arrays."""
    def one(a, b):
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(a), 1e-30))

    return max(jax.tree.leaves(jax.tree.map(one, a, b)))


def ssd_pair(t: int, key):
    from seqlab.ops.ssd import ssd

    peer = _peer("mamba2_jax.modeling", "ssd_forward")
    b, h, p, n = 1, 4, 64, 64
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (b, t, h, p))
    dt = jax.nn.softplus(jax.random.normal(k2, (b, t, h)) - 2.0)
    A = -jnp.exp(jnp.linspace(0.0, 1.0, h))
    B = jax.random.normal(k3, (b, t, 1, n))
    C = jax.random.normal(k4, (b, t, 1, n))

    def ours(x, dt, A, B, C):
        return ssd(x, dt, A, B, C, chunk_size=64)[0]

    if isinstance(peer, str):
        return "SSD", ours, (x, dt, A, B, C), {"mamba2-jax ssd_forward": peer}
    zeros = jnp.zeros(h)

    def theirs(x, dt, A, B, C):
        Bh, Ch = (jnp.broadcast_to(m, (b, t, h, n)) for m in (B, C))
        raw = jnp.log(jnp.expm1(dt))  # the peer applies softplus to its dt
        return peer(x, raw, A, Bh, Ch, 64, zeros, zeros, 0.0, float("inf"))[0]

    return "SSD", ours, (x, dt, A, B, C), {"mamba2-jax ssd_forward": (theirs, (x, dt, A, B, C))}


def gdn_pair(t: int, key):
    from seqlab.ops.delta import delta_product

    b, h, d = 1, 4, 128
    ks = jax.random.split(key, 5)
    q = jax.random.normal(ks[0], (b, t, h, d))
    k = jax.random.normal(ks[1], (b, t, h, d))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (b, t, h, d))
    beta = jax.nn.sigmoid(jax.random.normal(ks[3], (b, t, h)))
    g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (b, t, h)) + 4.0)

    def ours(q, k, v, beta, g):
        return delta_product(q, k, v, beta, g, num_householder=1)[0]

    peers = {}
    tpu = _peer("deltanet_tpu.variants", "chunk_gdn")
    peers["deltanet-tpu chunk_gdn (fallback_scan)"] = tpu if isinstance(tpu, str) else (
        lambda q, k, v, beta, g: tpu(q, k, v, g, beta, chunk_size=128, precision="fp32",
                                     fallback_scan=True), (q, k, v, beta, g))
    mt = _peer("maxtext.models.qwen3", "jax_chunk_gated_delta_rule")
    peers["MaxText jax_chunk_gated_delta_rule"] = mt if isinstance(mt, str) else (
        lambda q, k, v, beta, g: mt(q, k, v, g, beta, chunk_size=64,
                                    compute_dtype=jnp.float32)[0], (q, k, v, beta, g))
    return "gated delta rule", ours, (q, k, v, beta, g), peers


def scan_pair(t: int, key):
    from seqlab.ops.scan import linear_scan

    peer = _peer("recurrentgemma.jax.scan", "linear_scan")
    k1, k2 = jax.random.split(key)
    a = jax.random.uniform(k1, (1, t, 1024), minval=0.5, maxval=1.0)
    x = jax.random.normal(k2, (1, t, 1024))
    if isinstance(peer, str):
        return "linear scan", linear_scan, (a, x), {"recurrentgemma linear_scan": peer}
    return "linear scan", linear_scan, (a, x), {
        "recurrentgemma linear_scan": (lambda a, x: peer(x, a)[0], (a, x))}


def _best(fns, args, rounds: int, repeats: int) -> list[float]:
    best = [float("inf")] * len(fns)
    for _ in range(rounds):  # alternate the sides: drift on a shared machine hits both
        for i, (fn, a) in enumerate(zip(fns, args, strict=True)):
            best[i] = min(best[i], time_fn(fn, *a, repeats=repeats).median_s)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", nargs="+", default=["ssd", "gdn", "scan"])
    args = ap.parse_args()
    print(f"jax {jax.__version__} backend={jax.default_backend()} "
          f"device={jax.devices()[0].device_kind} load={os.getloadavg()[0]:.1f}")
    print(f"{'op':18} {'peer':42} {'T':>5} {'rel.err':>8} {'ours fwd':>9} {'peer fwd':>9} "
          f"{'ratio':>6} {'ours f+b':>9} {'peer f+b':>9} {'ratio':>6}")
    pairs = {"ssd": ssd_pair, "gdn": gdn_pair, "scan": scan_pair}
    for t in args.lengths:
        for which in args.pairs:
            label, ours, ours_args, peers = pairs[which](t, jax.random.PRNGKey(t))
            for name, peer in peers.items():
                if isinstance(peer, str):
                    print(f"{label:18} {name:42} {t:5d} {peer}")
                    continue
                theirs, their_args = peer
                err = max(_rel(jax.jit(ours)(*ours_args), jax.jit(theirs)(*their_args)),
                          _rel(jax.jit(fwd_bwd(ours, (0, 1)))(*ours_args),
                               jax.jit(fwd_bwd(theirs, (0, 1)))(*their_args)))
                f = _best([ours, theirs], [ours_args, their_args], args.rounds, args.repeats)
                fb = _best([fwd_bwd(ours, (0, 1)), fwd_bwd(theirs, (0, 1))],
                           [ours_args, their_args], args.rounds, args.repeats)
                print(f"{label:18} {name:42} {t:5d} {err:8.1e} {f[0] * 1e3:8.1f}ms "
                      f"{f[1] * 1e3:8.1f}ms {f[1] / f[0]:5.2f}x {fb[0] * 1e3:8.1f}ms "
                      f"{fb[1] * 1e3:8.1f}ms {fb[1] / fb[0]:5.2f}x  load="
                      f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
