"""The GPU peers of seqlab's ops, same inputs, same process: tokens/s forward and forward+backward.

    python3 scripts/bench/gpu_peers.py --json out/peers.json            # bf16, 4k and 16k
    python3 scripts/bench/gpu_peers.py --smoke --json /tmp/peers.json   # tiny, any machine

Rows: ``ops.delta.delta_product`` (n=1 and n=2; its XLA form and its Pallas state passes)
against flash-linear-attention's Triton kernels ``chunk_gated_delta_rule`` and
``chunk_gated_delta_product``; ``ops.ssd.ssd`` (both forms);
``ops.attention.attention`` against ``jax.nn.dot_product_attention`` with cuDNN. A peer that
cannot run here (no CUDA, fla or triton missing) is recorded with the reason, never fatal. The
rows of seqlab's two forms note how far each output is from float32 products at ``highest``
precision.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from seqlab.bench.timing import fwd_bwd, time_fn, time_python
from seqlab.ops.attention import attention
from seqlab.ops.delta import delta_product
from seqlab.ops.ssd import ssd


def delta_inputs(b, t, h, d, n, dtype):
    ks = jax.random.split(jax.random.key(0), 5)
    k = jax.random.normal(ks[1], (b, t * n, h, d))
    return (jax.random.normal(ks[0], (b, t, h, d)).astype(dtype),
            (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype),
            jax.random.normal(ks[2], (b, t * n, h, d)).astype(dtype),
            jax.nn.sigmoid(jax.random.normal(ks[3], (b, t * n, h))).astype(dtype),
            -jax.nn.softplus(jax.random.normal(ks[4], (b, t, h))))


def fla_delta(xs, n, repeats):
    """fla's Triton kernel on the same inputs (torch, CUDA); returns (fwd Timing, f+b Timing)."""
    import torch
    from fla.ops.gated_delta_product import chunk_gated_delta_product
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    def to_torch(x):  # through float32 numpy (bfloat16 numpy arrays have no torch path)
        dt = torch.float32 if x.dtype == jnp.float32 else torch.bfloat16
        t = torch.tensor(np.asarray(x, np.float32), device="cuda", dtype=dt)
        return t.requires_grad_(True)

    tq = [to_torch(x) for x in xs]
    q, k, v, beta, g = tq

    def fwd():
        if n == 1:
            return chunk_gated_delta_rule(q, k, v, g, beta)[0]
        return chunk_gated_delta_product(q, k, v, g, beta, num_householder=n)[0]

    def both():
        fwd().float().sum().backward()

    sync = lambda _: torch.cuda.synchronize()  # noqa: E731
    with torch.no_grad():
        f = time_python(fwd, repeats=repeats, sync=sync)
    return f, time_python(both, repeats=repeats, sync=sync)


def forms(name, fn, args, grads, length, tokens, repeats):
    """Rows for ``fn(*args, implementation=form)`` with form "xla" and "pallas". Each row's note
    gives the largest difference of its output from the XLA form run with float32 products at
    ``highest`` precision (on a GPU the default precision may use TF32), relative to the
    largest entry of the latter."""
    with jax.default_matmul_precision("highest"):
        exact = jnp.asarray(jax.jit(functools.partial(fn, implementation="xla"))(*args),
                            jnp.float32)
    scale, out = float(jnp.max(jnp.abs(exact))), []
    for form in ("xla", "pallas"):
        op = functools.partial(fn, implementation=form)
        try:
            y = jnp.asarray(jax.jit(op)(*args), jnp.float32)
            note = (f"max abs(out - f32 highest) / max abs = "
                    f"{float(jnp.max(jnp.abs(y - exact))) / scale:.1e}")
            out.append(row(f"{name} ({form})", length, tokens,
                           time_fn(op, *args, repeats=repeats),
                           time_fn(fwd_bwd(op, grads), *args, repeats=repeats), note))
        except Exception as exc:  # noqa: BLE001 - a kernel that fails is a note
            out.append(row(f"{name} ({form})", length, tokens, None, None,
                           f"not run: {type(exc).__name__}: {exc}"[:200]))
    return out


def row(name, length, tokens, fwd, fb, note=""):
    return {"name": name, "length": length,
            "fwd_ms": None if fwd is None else fwd.median_s * 1e3,
            "fwd_bwd_ms": None if fb is None else fb.median_s * 1e3,
            "fwd_tok_s": None if fwd is None else tokens / fwd.median_s,
            "fwd_bwd_tok_s": None if fb is None else tokens / fb.median_s, "note": note}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, float32, any device")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    if a.smoke:
        a.lengths, a.heads, a.dim, a.repeats = [64], 2, 16, 1
    dtype = jnp.float32 if a.smoke else jnp.bfloat16
    b, h, d, rows = a.batch, a.heads, a.dim, []
    impl = "cudnn" if jax.default_backend() == "gpu" else None

    def ref(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)

    for t in a.lengths:
        tokens = b * t
        for n in (1, 2):
            xs = delta_inputs(b, t, h, d, n, dtype)
            def delta(*x, n=n, implementation):
                return delta_product(*x, num_householder=n, implementation=implementation)[0]
            rows += forms(f"seqlab delta_product n={n}", delta, xs, tuple(range(4)), t, tokens,
                          a.repeats)
            try:
                rows.append(row(f"fla Triton chunk_gated_delta_{'rule' if n == 1 else 'product'}"
                                f" n={n}", t, tokens, *fla_delta(xs, n, a.repeats)))
            except Exception as exc:  # noqa: BLE001 - a missing peer is a note, not a failure
                rows.append(row(f"fla Triton n={n}", t, tokens, None, None,
                                f"not run: {type(exc).__name__}: {exc}"[:200]))
        ks = jax.random.split(jax.random.key(1), 5)
        x = jax.random.normal(ks[0], (b, t, h, d)).astype(dtype)
        dt = jax.nn.softplus(jax.random.normal(ks[1], (b, t, h)) - 3.0)
        B = jax.random.normal(ks[2], (b, t, 1, d)).astype(dtype)
        C = jax.random.normal(ks[3], (b, t, 1, d)).astype(dtype)
        A = -jnp.exp(jax.random.normal(ks[4], (h,)))
        def ssd_y(*z, implementation):
            return ssd(*z, implementation=implementation)[0]
        rows += forms("seqlab ssd", ssd_y, (x, dt, A, B, C), (0, 1, 3, 4), t, tokens, a.repeats)
        q = k = v = x
        ours = lambda q, k, v: attention(q, k, v, causal=True)  # noqa: E731
        rows.append(row("seqlab attention (causal)", t, tokens,
                        time_fn(ours, q, k, v, repeats=a.repeats),
                        time_fn(fwd_bwd(ours, (0, 1, 2)), q, k, v, repeats=a.repeats)))
        try:
            rows.append(row(f"jax.nn.dot_product_attention ({impl or 'default'})", t, tokens,
                            time_fn(ref, q, k, v, repeats=a.repeats),
                            time_fn(fwd_bwd(ref, (0, 1, 2)), q, k, v, repeats=a.repeats)))
        except Exception as exc:  # noqa: BLE001
            rows.append(row("jax.nn.dot_product_attention", t, tokens, None, None,
                            f"not run: {type(exc).__name__}: {exc}"[:200]))
        print(json.dumps(rows[-1]), flush=True)
    with open(a.json, "w") as f:
        json.dump({"schema": "seqlab-gpu-peers/1", "backend": jax.default_backend(),
                   "device": str(jax.devices()[0]), "dtype": jnp.dtype(dtype).name,
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
                  f, indent=1)


if __name__ == "__main__":
    main()
