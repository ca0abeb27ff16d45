"""Attention benchmarks: DSA vs dense causal attention, MLA vs MHA decode, KV-cache sizes.

    .venv/bin/python scripts/bench/bench_attention.py            # T=4096, 8k decode context
    .venv/bin/python scripts/bench/bench_attention.py --long     # also T=16384
    .venv/bin/python scripts/bench/bench_attention.py --only cache

1. ``dsa``: forward time of ``ops.attention.dsa`` (topk=256, 4 indexer heads of 32 dims) against
   ``ops.attention.attention`` (dense causal; jax.nn.dot_product_attention's XLA path, by query
   blocks when its logits would not fit) at batch 1, 8 heads of 64 dims, with MQA keys (1 KV
   head, DeepSeek-V3.2's MLA setting, the fast path) and MHA keys (8 KV heads, per token and
   with ``select="block"``); the indexer alone is timed separately. Min of the repeats.
2. ``decode``: one decode step (batch 1, one new token) against a cache filled to 8192 tokens, for
   MHA and MLA (naive and absorb) layers of the same width (d_model 1024, 16 heads of 64 dims;
   MLA kv_lora_rank 256, rope 32).
3. ``cache``: KV-cache numbers and bytes (bf16) per token per layer at DeepSeek-V2 sizes
   (d_model 5120, 128 heads of 128 dims; MLA kv_lora_rank 512, rope 64).
Timings: ``seqlab.bench.timing.time_fn`` (compiled once, warmed up, median of repeats).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.bench.timing import time_fn
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.mla import MLA
from seqlab.ops.attention import _attention_xla, attention
from seqlab.ops.dsa import dsa, dsa_indexer


def dense_blocked(q, k, v, block: int = 1024):
    """Dense causal attention one block of queries at a time (same FLOPs as one call, but the
    [B, H, block, T] logits fit in memory at T = 16384)."""
    t = q.shape[1]
    outs = [_attention_xla(q[:, t0:t0 + block], k, v, causal=True, scale=q.shape[-1] ** -0.5,
                           mask=None, q_offset=0, t0=t0) for t0 in range(0, t, block)]
    return jnp.concatenate(outs, axis=1)


def bench_dsa(lengths: list[int], repeats: int, args_max_gb: float) -> list[dict]:
    """dense / DSA forward at batch 1, 8 heads of 64 dims, topk 256, 4 indexer heads of 32:
    shared KV (1 KV head, the fast path), and 8 KV heads per token and with block selection;
    the indexer alone (scores + top-k over every causal pair) is timed separately."""
    rows = []
    hq, d, hi, di, topk, blk = 8, 64, 4, 32, 256, 512
    for t in lengths:
        for kv in (1, 8):
            ks = jax.random.split(jax.random.key(0), 6)
            q = jax.random.normal(ks[0], (1, t, hq, d))
            k = jax.random.normal(ks[1], (1, t, kv, d))
            v = jax.random.normal(ks[2], (1, t, kv, d))
            qi = jax.random.normal(ks[3], (1, t, hi, di))
            ki = jax.random.normal(ks[4], (1, t, di))
            wi = jax.random.normal(ks[5], (1, t, hi))
            row = {"T": t, "kv_heads": kv}
            logits_gb = hq * t * t * 4 / 2**30  # XLA's dense path materialises [B, H, T, T]
            dense = ((lambda q, k, v: attention(q, k, v, causal=True)) if logits_gb <= args_max_gb
                     else dense_blocked)
            row["dense_s"] = time_fn(dense, q, k, v, repeats=repeats).min_s
            cases = {"dsa_s": dict(topk=topk, block_size=blk)}
            if kv > 1:
                cases["dsa_block_s"] = dict(topk=topk, select="block", select_block=64)
            for name, kw in cases.items():
                row[name] = time_fn(lambda *a, kw=kw: dsa(*a, **kw), q, k, v, qi, ki, wi,
                                    repeats=repeats).min_s
            if kv == 1:
                def indexer(qi, ki, wi, t=t):
                    return [dsa_indexer(qi[:, t0:t0 + blk], ki[:, :t0 + blk], wi[:, t0:t0 + blk],
                                        topk=topk, q_offset=t0) for t0 in range(blk, t, blk)]
                row["indexer_s"] = time_fn(indexer, qi, ki, wi, repeats=repeats).min_s
            text = "  ".join(f"{n[:-2]} {s:.3f}s (dense/{n[:-2]} {row['dense_s'] / s:.2f}x)"
                             for n, s in row.items() if n.endswith("_s") and n != "dense_s")
            print(f"T={t:6d} kv_heads={kv}: dense {row['dense_s']:.3f}s  {text}  (min of "
                  f"{repeats})", flush=True)
            rows.append(row)
    return rows


def bench_decode(context: int, repeats: int) -> list[dict]:
    d, heads = 1024, 16
    layers = {
        "mha": MultiHeadAttention(d, n_heads=heads, rngs=nnx.Rngs(0)),
        "mla-naive": MLA(d, n_heads=heads, kv_lora_rank=256, qk_nope_head_dim=64,
                         rope_dim=32, v_head_dim=64, decode_mode="naive", rngs=nnx.Rngs(0)),
        "mla-absorb": MLA(d, n_heads=heads, kv_lora_rank=256, qk_nope_head_dim=64,
                          rope_dim=32, v_head_dim=64, decode_mode="absorb",
                          rngs=nnx.Rngs(0)),
    }
    x = jax.random.normal(jax.random.key(1), (1, 1, d))
    rows = []
    for name, layer in layers.items():
        cache = layer.init_cache(1, context)
        cache["pos"] = jnp.asarray(context - 1, jnp.int32)
        graphdef, state = nnx.split(layer)

        def step(state, x, cache, graphdef=graphdef):
            return nnx.merge(graphdef, state).decode(x, cache)[0]

        sec = time_fn(step, state, x, cache, repeats=repeats).median_s
        per_tok = sum(a.nbytes for n, a in cache.items() if n != "pos") // context
        rows.append({"layer": name, "context": context, "step_s": sec, "cache_bytes_per_token":
                     per_tok})
        print(f"decode @ {context}: {name:10s} {sec * 1e3:8.2f} ms/step, cache {per_tok} B/token "
              "(float32)", flush=True)
    return rows


def cache_table() -> list[dict]:
    d, heads, hd = 5120, 128, 128
    specs = {
        "MHA (128 kv heads)": lambda: MultiHeadAttention(d, n_heads=heads, head_dim=hd,
                                                         rngs=nnx.Rngs(0)),
        "GQA (8 kv heads)": lambda: MultiHeadAttention(d, n_heads=heads, n_kv_heads=8, head_dim=hd,
                                                       rngs=nnx.Rngs(0)),
        "MQA (1 kv head)": lambda: MultiHeadAttention(d, n_heads=heads, n_kv_heads=1, head_dim=hd,
                                                      rngs=nnx.Rngs(0)),
        "MLA (DeepSeek-V2)": lambda: MLA(d, n_heads=heads, q_lora_rank=1536, kv_lora_rank=512,
                                         qk_nope_head_dim=hd, rope_dim=64, v_head_dim=hd,
                                         rngs=nnx.Rngs(0)),
    }
    rows = []
    print("| layer | numbers/token | bytes/token (bf16) | vs MHA |\n|---|---|---|---|")
    mha = None
    for name, make in specs.items():
        layer = nnx.eval_shape(make)  # abstract parameters: nothing of DeepSeek size is allocated
        cache = jax.eval_shape(lambda layer=layer: layer.init_cache(1, 1, jnp.bfloat16))
        n = sum(a.size for k, a in cache.items() if k != "pos")
        mha = n if mha is None else mha
        rows.append({"layer": name, "numbers_per_token": n, "bytes_bf16": 2 * n})
        print(f"| {name} | {n} | {2 * n} | {n / mha:.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["dsa", "decode", "cache"], default=None)
    ap.add_argument("--long", action="store_true", help="also T=16384 for DSA vs dense")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=3.0,
                    help="skip dense attention when its [H, T, T] logits exceed this (GiB)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    out = {"backend": jax.default_backend()}
    if args.only in (None, "cache"):
        out["cache"] = cache_table()
    if args.only in (None, "decode"):
        out["decode"] = bench_decode(args.context, args.repeats)
    if args.only in (None, "dsa"):
        out["dsa"] = bench_dsa([4096] + ([16384] if args.long else []), args.repeats,
                               args.max_gb)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
