"""``seqlab bench``: time every registered mixer against its reference, the bound and its peers.

For each mixer and length: forward and forward+backward time (jit-compiled once, warmed up,
median of repeats, ``block_until_ready``), peak memory (XLA's memory analysis of the compiled
program), tokens/s; the mixer's core op from ``seqlab.ops`` against its naive reference
(speedup) and its peers; and the fraction of the physical bound reached, from a device probe
run in the same process (``seqlab.bench.probe``). Sweeps stop politely at out-of-memory or
when a case would exceed the per-case time budget. ``--decode`` adds tokens/s and cache bytes
of one-token decode steps at several context sizes for the causal mixers. ``--json`` writes
the full report (schema ``seqlab-bench/1``, see :data:`SCHEMA`), ``--plot`` a log-log scaling
plot.

    python -m seqlab.bench s4d mha --lengths 1k 4k 16k --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp

from seqlab.bench.probe import DeviceProbe, bound_seconds, probe
from seqlab.bench.report import format_table, plot
from seqlab.bench.specs import SPECS, Call, Dims, MixerSpec, dims_of, spec_for
from seqlab.bench.timing import Timing, is_oom, time_fn, time_python

__all__ = ["SCHEMA", "ROW_KEYS", "DECODE_KEYS", "run", "format_table", "plot", "cli_main"]

SCHEMA = "seqlab-bench/1"
ROW_KEYS = (
    "mixer", "length", "batch", "d_model", "status", "note", "complexity",
    "fwd_s", "fwd_bwd_s", "compile_s", "peak_bytes", "fwd_bwd_peak_bytes", "tokens_per_s",
    "flops", "bytes", "bound_s", "bound_by", "bound_source", "frac_of_bound",
    "op", "reference", "peers",
)  # fmt: skip
"""Keys of every row of ``report["results"]``. ``op`` and ``reference`` are ``{name, s, note}``
or None; ``peers`` a list of ``{name, s, note, op_speedup}`` (and ``rel_err``, the peer's
output against the op's on the same inputs, where the peer takes them); ``status`` is ``ok``,
``oom``, ``budget``, ``error``, ``skipped`` or ``op-only`` (a known op whose mixer is not
registered yet: named explicitly on the command line, it gets the op-level comparisons only)."""
DECODE_KEYS = (
    "mixer", "context", "batch", "status", "note", "step_s", "tokens_per_s", "cache_bytes",
    "cache_bytes_per_token",
)  # fmt: skip
GROWTH = {"L": 1.0, "L log L": 1.1, "L^2": 2.0, "?": 2.0}


def _parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = 1024 if t.endswith("k") else 1
    try:
        value = int(float(t[:-1]) * mult) if mult > 1 else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (use e.g. 4096 or 4k)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a length must be positive, got {text!r}")
    return value


def _parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value read as YAML: ``128`` an int, ``true`` a bool, ``pallas`` a
    string)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"not a mixer option: {text!r} (use KEY=VALUE, e.g. implementation=pallas)")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqlab bench",
        description="Time seqlab's mixers against their naive references, the device's physical "
        "bound (measured in the same run) and peers.",
    )
    p.add_argument("mixers", nargs="*", metavar="MIXER",
                   help="mixer names (default: all registered; a name with a bench spec but no "
                   "registered mixer yet gets op-level rows only)")
    p.add_argument("--lengths", nargs="+", type=_parse_size,
                   default=[1024, 2048, 4096, 8192, 16384], help="sequence lengths (4096 or 4k)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="default: JAX's default backend")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds allowed per timed case (predicted from the previous length)")
    p.add_argument("--mixer-args", nargs="+", type=_parse_option, default=[],
                   metavar="KEY=VALUE", help="constructor options for every mixer of the run, "
                   "e.g. implementation=pallas chunk_size=128 (values read as YAML); the rows' "
                   "mixer names carry them")
    p.add_argument("--no-backward", action="store_true", help="skip forward+backward timing")
    p.add_argument("--no-ops", action="store_true", help="skip op/reference/peer comparisons")
    p.add_argument("--decode", action="store_true", help="also benchmark decode steps")
    p.add_argument("--contexts", nargs="+", type=_parse_size,
                   default=[1024, 2048, 4096, 8192, 16384, 32768], help="decode context sizes")
    p.add_argument("--probe", choices=("full", "quick"), default="full",
                   help="quick: a tiny probe (for smoke tests; the bound is then meaningless)")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--plot", metavar="OUT.png")
    return p


# ----------------------------------------------------------------------------- helpers


def _device(kind: str | None) -> jax.Device:
    if kind is None:
        return jax.devices()[0]
    try:
        return jax.devices(kind)[0]
    except RuntimeError as e:
        raise ValueError(f"--device {kind}: no {kind} backend available ({e})") from None


def _memory_limit(device: jax.Device) -> int | None:
    """Bytes a single program may use: 90% of the accelerator's limit, or 70% of the host's
    available memory on CPU (other processes share it)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(0.9 * stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(0.7 * int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


class _Budget:
    """Predicts a case's time from the same component at the previous length."""

    def __init__(self, budget_s: float, calls: int):
        self.budget_s, self.calls = budget_s, calls
        self.last: dict[str, tuple[int, float]] = {}

    def predict(self, component: str, length: int, growth: float) -> float | None:
        if component not in self.last:
            return None
        l0, t0 = self.last[component]
        return t0 * (length / l0) ** growth * self.calls

    def over(self, component: str, length: int, growth: float) -> str | None:
        pred = self.predict(component, length, growth)
        if pred is not None and pred > self.budget_s:
            return f"over budget (predicted {pred:.1f} s > {self.budget_s:g} s)"
        return None

    def record(self, component: str, length: int, seconds: float) -> None:
        self.last[component] = (length, seconds)


def _time_call(call: Call, args: argparse.Namespace, max_bytes: int | None) -> Timing:
    if call.backend == "jax":
        return time_fn(call.fn, *call.args, repeats=args.repeats, warmup=args.warmup,
                       budget_s=args.budget, max_bytes=max_bytes)
    sync = None
    if call.backend == "torch-cuda":
        import torch

        sync = lambda _: torch.cuda.synchronize()  # noqa: E731
    import torch

    with torch.inference_mode():
        return time_python(call.fn, *call.args, repeats=args.repeats, warmup=args.warmup,
                           budget_s=args.budget, sync=sync)


def _component(
    builder: Callable[[Dims, jax.Array], Call | None] | None,
    dims: Dims,
    label: str,
    budget: _Budget,
    growth: float,
    args: argparse.Namespace,
    max_bytes: int | None,
    op_output: Callable[[], jax.Array | None] | None = None,
) -> dict[str, Any] | None:
    """Time one op/reference/peer call; a dict {name, s, note} or None when it does not apply.
    A peer built ``same_as_op`` is first compared with ``op_output()`` (the op's output on the
    same inputs): its relative error is the dict's ``rel_err``, and one above 1e-3 is timed
    but noted."""
    if builder is None:
        return None
    try:
        call = builder(dims, jax.random.PRNGKey(dims.length))
    except (ImportError, AttributeError) as e:
        return {"name": label, "s": None, "note": f"skipped: not available ({_short(e)})"}
    if call is None:
        return None
    checked: dict[str, Any] = {}
    want = op_output() if call.same_as_op and op_output is not None else None
    if want is not None:
        try:
            got = jnp.asarray(jax.jit(call.fn)(*call.args), jnp.float32)
        except Exception as e:  # noqa: BLE001 - a failing peer must not stop the sweep
            return {"name": call.name, "s": None, "note": "error: " + _short(e)}
        rel = float(jnp.linalg.norm(got - want) / jnp.maximum(jnp.linalg.norm(want), 1e-30))
        checked["rel_err"] = rel
        if not rel <= 1e-3:
            checked["note"] = f"values differ from the op (rel. error {rel:.1e})"
    over = budget.over(label + call.name, dims.length, growth)
    if over:
        return {"name": call.name, "s": None, "note": over}
    try:
        t = _time_call(call, args, max_bytes)
    except Exception as e:  # noqa: BLE001 - a failing comparison must not stop the sweep
        note = ("oom: " if is_oom(e) else "error: ") + _short(e)
        budget.record(label + call.name, 1, math.inf)
        return {"name": call.name, "s": None, "note": note}
    budget.record(label + call.name, dims.length, t.median_s)
    return {"name": call.name, "s": t.median_s, "note": "", **checked}


def _matmul_params(state: Any) -> int:
    """Entries of the 2-D+ weight matrices of Linear/Einsum layers (named ``kernel``)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if "kernel" in names and getattr(leaf, "ndim", 0) >= 2:
            total += leaf.size
    return total


def _param_bytes(state: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)
               if hasattr(x, "dtype"))


def _empty_row(name: str, length: int, args: argparse.Namespace, spec: MixerSpec) -> dict:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    options = ",".join(f"{k}={v}" for k, v in args.mixer_args)
    row.update(mixer=f"{name}[{options}]" if options else name, length=length,
               batch=args.batch, d_model=args.d_model, status="ok", note="",
               complexity=spec.complexity, peers=[])
    return row


def _build(name: str, args: argparse.Namespace) -> Any:
    from flax import nnx

    from seqlab.layers import MIXERS

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    mixer = MIXERS[name](d_model=args.d_model, rngs=nnx.Rngs(0), dtype=dtype,
                         **dict(args.mixer_args))
    if hasattr(mixer, "eval"):
        mixer.eval()
    return mixer, dtype


def bench_mixer(
    name: str, args: argparse.Namespace, p: DeviceProbe | None, max_bytes: int | None
) -> list[dict[str, Any]]:
    """All rows of one mixer: one per length, stopping at OOM or the time budget."""
    from flax import nnx

    from seqlab.layers import MIXERS

    spec = spec_for(name)
    growth = GROWTH[spec.complexity]
    budget = _Budget(args.budget, args.repeats + args.warmup)
    rows: list[dict[str, Any]] = []
    if name not in MIXERS:  # a known op whose mixer has not landed: op-level rows only
        for length in args.lengths:
            row = _empty_row(name, length, args, spec)
            row.update(status="op-only", note="mixer not registered: op-level comparison only")
            dims = replace(Dims(args.batch, length, args.d_model), **spec.defaults)
            _compare(row, spec, dims, budget, growth, args, max_bytes)
            rows.append(row)
        return rows
    try:
        mixer, dtype = _build(name, args)
    except Exception as e:  # noqa: BLE001
        row = _empty_row(name, args.lengths[0], args, spec)
        row.update(status="error", note=f"cannot build: {_short(e)}")
        return [row]
    graphdef, params, rest = nnx.split(mixer, nnx.Param, ...)
    state = (params, rest)

    def forward(state, x):
        return nnx.merge(graphdef, *state)(x)

    def loss(params, rest, x):
        return jnp.sum(forward((params, rest), x).astype(jnp.float32))

    grads = jax.grad(loss, argnums=(0, 2))  # w.r.t. the parameters and the input

    def fwd_bwd(state, x):
        return grads(state[0], state[1], x)
    stopped = None
    for length in args.lengths:
        row = _empty_row(name, length, args, spec)
        rows.append(row)
        if stopped:
            row.update(status="skipped", note=f"after {stopped}")
            continue
        over = budget.over("fwd_bwd" if not args.no_backward else "fwd", length, growth)
        if over:
            row.update(status="budget", note=over)
            stopped = "budget"
            continue
        x = jax.random.normal(jax.random.PRNGKey(length), (args.batch, length, args.d_model),
                              dtype)
        try:
            tf = time_fn(forward, state, x, repeats=args.repeats, warmup=args.warmup,
                         budget_s=args.budget, max_bytes=max_bytes)
            budget.record("fwd", length, tf.median_s)
            row.update(fwd_s=tf.median_s, compile_s=tf.compile_s, peak_bytes=tf.peak_bytes,
                       tokens_per_s=args.batch * length / tf.median_s)
            if not args.no_backward:
                tb = time_fn(fwd_bwd, state, x, repeats=args.repeats, warmup=args.warmup,
                             budget_s=args.budget, max_bytes=max_bytes)
                budget.record("fwd_bwd", length, tb.median_s)
                row.update(fwd_bwd_s=tb.median_s, fwd_bwd_peak_bytes=tb.peak_bytes)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                row.update(status="oom", note=_short(e))
                stopped = "out of memory"
            else:
                row.update(status="error", note=_short(e))
                stopped = "error"
            continue
        dims = dims_of(mixer, spec, args.batch, length, args.d_model)
        core_flops, core_bytes = spec.core_cost(dims)
        if core_flops > 0:
            row["flops"] = core_flops + 2.0 * args.batch * length * _matmul_params(params)
            row["bytes"] = core_bytes + _param_bytes(params) + 2 * x.size * x.dtype.itemsize
            row["bound_source"] = "analytic"
        elif tf.flops:
            row["flops"], row["bytes"] = tf.flops, tf.bytes_accessed or 0.0
            row["bound_source"] = "xla-cost-analysis"
        if p is not None and row["flops"]:
            bound, by = bound_seconds(row["flops"], row["bytes"], p)
            row.update(bound_s=bound, bound_by=by, frac_of_bound=bound / tf.median_s)
        if not args.no_ops:
            _compare(row, spec, dims, budget, growth, args, max_bytes)
    return rows


def _compare(row: dict, spec: MixerSpec, dims: Dims, budget: _Budget, growth: float,
             args: argparse.Namespace, max_bytes: int | None) -> None:
    """Fill a row's op / reference / peers entries (op-level timings at the row's sizes)."""
    row["op"] = _component(spec.op, dims, "op", budget, growth, args, max_bytes)
    row["reference"] = _component(spec.reference, dims, "ref", budget, growth, args, max_bytes)
    op_s = (row["op"] or {}).get("s")

    @functools.cache
    def op_output() -> jax.Array | None:  # once per row, for the peers that take its inputs
        try:
            call = spec.op(dims, jax.random.PRNGKey(dims.length)) if spec.op else None
            return None if call is None else jnp.asarray(jax.jit(call.fn)(*call.args),
                                                         jnp.float32)
        except Exception:  # noqa: BLE001 - the op's own failure is already in row["op"]
            return None

    for builder in spec.peers:
        peer = _component(builder, dims, "peer", budget, growth, args, max_bytes, op_output)
        if peer is not None:
            peer["op_speedup"] = peer["s"] / op_s if peer["s"] and op_s else None
            row["peers"].append(peer)


def bench_decode(name: str, args: argparse.Namespace, max_bytes: int | None) -> list[dict]:
    """One-token decode steps at each context size (empty rows list for bidirectional mixers).

    The cache is allocated for ``context + 1`` positions and left at its initial contents: with
    static shapes, a JAX decode step touches the whole allocated cache whatever its fill level,
    so the step time at a given capacity is the step time at that context.
    """
    from flax import nnx

    mixer, dtype = _build(name, args)
    if not mixer.causal:  # bidirectional: no decode rows
        return []
    graphdef, state = nnx.split(mixer)

    def step(state, x, cache):
        return nnx.merge(graphdef, state).decode(x, cache)

    rows = []
    budget = _Budget(args.budget, args.repeats + args.warmup)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 1, args.d_model), dtype)
    stopped = None
    for ctx in args.contexts:
        row = dict.fromkeys(DECODE_KEYS)
        row.update(mixer=name, context=ctx, batch=args.batch, status="ok", note="")
        rows.append(row)
        if stopped:
            row.update(status="skipped", note=f"after {stopped}")
            continue
        over = budget.over("step", ctx, 1.0)
        if over:
            row.update(status="budget", note=over)
            stopped = "budget"
            continue
        try:
            cache = mixer.init_cache(args.batch, ctx + 1, dtype=jnp.float32)
            nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache))
            t = time_fn(step, state, x, cache, repeats=args.repeats, warmup=args.warmup,
                        budget_s=args.budget, max_bytes=max_bytes)
        except Exception as e:  # noqa: BLE001
            row.update(status="oom" if is_oom(e) else "error", note=_short(e))
            stopped = row["status"]
            continue
        budget.record("step", ctx, t.median_s)
        row.update(step_s=t.median_s, tokens_per_s=args.batch / t.median_s, cache_bytes=nbytes,
                   cache_bytes_per_token=nbytes / (args.batch * ctx))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the report (see :data:`SCHEMA`)."""
    from seqlab.layers import MIXERS

    names = list(args.mixers) or sorted(MIXERS)
    unknown = [n for n in names if n not in MIXERS and n not in SPECS]
    if unknown:
        raise ValueError(f"unknown mixer(s) {', '.join(unknown)}; registered: "
                         f"{', '.join(sorted(MIXERS)) or '(none)'}")
    device = _device(args.device)
    max_bytes = _memory_limit(device)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")  # of the start
    started = time.perf_counter()
    with jax.default_device(device):
        if args.probe == "quick":
            measured = probe(device, matmul_sizes=(64,), stream_bytes=2**20, repeats=2)
        else:
            measured = probe(device)
        results, decode = [], []
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            results += bench_mixer(name, args, measured, max_bytes)
            if args.decode:
                decode += bench_decode(name, args, max_bytes)
    return {
        "schema": SCHEMA,
        "date": date,
        "command": "seqlab bench " + " ".join(getattr(args, "argv", [])),
        "environment": {
            "jax": jax.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "backend": device.platform,
            "device": str(device.device_kind),
            "memory_limit_bytes": max_bytes,
        },
        "config": {k: getattr(args, k) for k in (
            "lengths", "batch", "d_model", "dtype", "repeats", "warmup", "budget", "contexts",
            "probe")},
        "probe": measured.to_dict(),
        "results": results,
        "decode": decode,
        "wall_s": time.perf_counter() - started,
    }


def cli_main(argv: list[str]) -> int:
    """Entry point of ``seqlab bench``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    for flag in ("batch", "d_model", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    try:
        report = run(args)
    except ValueError as e:
        print(f"seqlab bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
