"""The benchmark harness itself (benchmarks never run here): timing API, the agreement of the
bench's own reference/peer code with the ops it is compared against, and an end-to-end smoke
run of ``seqlab bench`` at tiny sizes with a toy mixer, checking the JSON schema and the plot."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.bench import harness, peers, specs, specs_attention, specs_ssm
from seqlab.bench.specs import Call, Dims, MixerSpec
from seqlab.bench.timing import MemoryBudgetExceeded, Timing, is_oom, time_fn, time_python
from seqlab.layers import MIXERS

# ----------------------------------------------------------------------------- timing


def test_time_fn_reports_median_compile_and_memory():
    x = jnp.ones((64, 64))
    t = time_fn(lambda x: jnp.tanh(x @ x), x, repeats=3, warmup=1)
    assert isinstance(t, Timing) and t.repeats == 3
    assert t.min_s <= t.median_s <= t.max_s and t.compile_s > 0
    # XLA's memory analysis: at least the argument and the output (64*64 float32 each)
    assert t.memory_source == "xla-compiled" and t.peak_bytes >= 2 * 64 * 64 * 4
    assert t.flops is None or t.flops >= 2 * 64**3
    assert json.loads(json.dumps(t.to_dict()))["times_s"] == list(t.times_s)


def test_time_fn_refuses_a_program_over_max_bytes():
    with pytest.raises(MemoryBudgetExceeded, match="GiB") as e:
        time_fn(lambda x: x * 2, jnp.ones((1024,)), max_bytes=100)
    assert is_oom(e.value)
    assert is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert not is_oom(ValueError("shape mismatch"))


def test_time_python_and_budget():
    calls = []
    t = time_python(lambda: calls.append(1), repeats=4, warmup=2)
    assert t.repeats == 4 and len(calls) == 6
    slow = time_python(lambda: sum(range(200_000)), repeats=50, warmup=0, budget_s=1e-9)
    assert slow.repeats == 1  # the budget stops the repeats, but one is always timed


# ----------------------------------------------------------------------------- bench code


def test_tutorial_s4d_matches_the_s4d_equations():
    """peers.s4d_tutorial against a direct float64 evaluation of the ZOH recurrence."""
    d = Dims(batch=2, length=37, d_model=3, d_state=8)
    u, A, C, log_dt, D = jax.jit(specs_ssm._s4d_params, static_argnums=0)(d, jax.random.PRNGKey(1))
    y = np.asarray(jax.jit(peers.s4d_tutorial)(u, A, C, log_dt, D), np.float64)
    u64, A64, C64 = np.asarray(u, np.float64), np.asarray(A, complex), np.asarray(C, complex)
    dt = np.exp(np.asarray(log_dt, np.float64))[:, None]
    dA, dB = np.exp(dt * A64), (np.exp(dt * A64) - 1) / A64  # ZOH, B = 1
    ref = np.zeros_like(u64)
    for b in range(2):
        x = np.zeros(A64.shape, complex)
        for t in range(37):
            x = dA * x + dB * u64[b, t][:, None]
            ref[b, t] = 2 * (C64 * x).sum(-1).real + u64[b, t]
    assert_close(y, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
    K = jax.jit(peers.s4d_kernel_tutorial, static_argnums=3)(A, C, log_dt, 37)
    assert_close(jax.jit(peers.fft_conv_bare)(u, K) + u, y, rtol=1e-4, atol=1e-4)


def test_sequential_references_match_their_equations():
    """The bench's own references: sequential SSD against a float64 loop of Mamba-2 eq. (1),
    naive attention against jax.nn.dot_product_attention."""
    d = Dims(batch=2, length=9, d_model=8, n_heads=2, head_dim=3, d_state=4)
    x, dt, A, B, C = jax.jit(specs_ssm._ssd_inputs, static_argnums=0)(d, jax.random.PRNGKey(2))
    y = jax.jit(specs_ssm.ssd_sequential)(x, dt, A, B, C)
    x, dt, A, B, C = (np.asarray(a, np.float64) for a in (x, dt, A, B, C))
    ref = np.zeros_like(x)
    for b in range(2):
        h = np.zeros((2, 3, 4))  # [heads, headdim, state]; one group shared by the heads
        for t in range(9):
            decay = np.exp(dt[b, t] * A)[:, None, None]
            h = decay * h + dt[b, t][:, None, None] * x[b, t][:, :, None] * B[b, t, 0]
            ref[b, t] = h @ C[b, t, 0]
    assert_close(y, ref, rtol=1e-5, atol=1e-5)
    q, k, v = jax.jit(specs_attention._attn_inputs, static_argnums=0)(d, jax.random.PRNGKey(3))
    assert_close(jax.jit(specs_attention.naive_attention)(q, k, v),
                               jax.nn.dot_product_attention(q, k, v, is_causal=True),
                               rtol=1e-5, atol=1e-5)


def test_dims_read_from_the_mixer():
    class M:
        n_heads, head_dim, d_state, chunk_size, flag = 3, 16, 8, 32, True

    d = specs.dims_of(M(), specs.SPECS["deltaproduct"], 2, 100, 48)
    assert (d.n_heads, d.head_dim, d.d_state, d.chunk_size, d.n_householder) == (3, 16, 8, 32, 2)
    assert d.topk == 512  # not an attribute of M: the Dims default


def test_every_registered_mixer_has_a_spec_whose_calls_trace():
    """Each spec's op and reference still match the current ``seqlab.ops`` signatures: traced
    (``jax.eval_shape``, nothing runs) at a tiny odd size, with the same output shape."""
    assert set(MIXERS) <= set(specs.SPECS), set(MIXERS) - set(specs.SPECS)
    for name, spec in specs.SPECS.items():
        d = replace(Dims(batch=1, length=24, d_model=8, n_heads=2, head_dim=4, d_state=4, topk=5,
                         chunk_size=8, index_heads=2, index_head_dim=4), **spec.defaults)
        shapes = []
        for builder in (spec.op, spec.reference):
            call = builder(d, jax.random.PRNGKey(0))
            out = jax.eval_shape(call.fn, *call.args)
            shapes.append(jax.tree_util.tree_leaves(out)[0].shape)
        assert shapes[0] == shapes[1], (name, shapes)
        flops, nbytes = spec.core_cost(d)
        assert flops > 0 and nbytes > 0, name


# ----------------------------------------------------------------------------- smoke run


class Toy(nnx.Module):
    """A causal toy mixer: y = cumsum(x W) / position (decode keeps the running sum)."""

    causal = True

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.proj = nnx.Linear(d_model, d_model, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask=None):
        n = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
        return jnp.cumsum(self.proj(x), axis=1) / n

    def init_cache(self, batch_size, max_length, dtype=jnp.float32):
        d = self.proj.in_features
        return {"sum": jnp.zeros((batch_size, d), dtype), "pos": jnp.zeros((), jnp.int32)}

    def decode(self, x, cache):
        s = cache["sum"] + self.proj(x)[:, 0]
        pos = cache["pos"] + 1
        return (s / pos)[:, None], {"sum": s, "pos": pos}


def _missing_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops import no_such_module  # noqa: F401


TOY_SPEC = MixerSpec(
    complexity="L",
    core_cost=lambda d: (2.0 * d.batch * d.length * d.d_model, 8.0 * d.batch * d.length),
    op=lambda d, key: Call("cumsum", lambda x: jnp.cumsum(x, 1),
                           (jnp.ones((d.batch, d.length, d.d_model)),)),
    reference=lambda d, key: Call("triangular matmul", lambda x: jnp.einsum(
        "ts,bsd->btd", jnp.tril(jnp.ones((x.shape[1],) * 2)), x),
        (jnp.ones((d.batch, d.length, d.d_model)),)),
    peers=(_missing_op, lambda d, key: None,
           # peers on the op's own inputs: checked against it before timing
           lambda d, key: Call("associative cumsum", lambda x: jax.lax.associative_scan(
               jnp.add, x, axis=1), (jnp.ones((d.batch, d.length, d.d_model)),), same_as_op=True),
           lambda d, key: Call("doubled cumsum", lambda x: 2 * jnp.cumsum(x, 1),
                               (jnp.ones((d.batch, d.length, d.d_model)),), same_as_op=True)),
)


def test_cli_smoke_json_schema_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MIXERS, "toy", Toy)
    monkeypatch.setitem(specs.SPECS, "toy", TOY_SPEC)
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["toy", "--lengths", "8", "16", "--d-model", "8", "--repeats", "2", "--warmup", "0",
            "--probe", "quick", "--decode", "--contexts", "8", "16", "--json", str(out),
            "--plot", str(png)]
    assert harness.cli_main(argv) == 0
    table = capsys.readouterr().out
    assert "toy" in table and "op = cumsum; ref = triangular matmul" in table
    report = json.loads(out.read_text())
    assert report["schema"] == harness.SCHEMA
    assert {"date", "command", "environment", "config", "probe", "results", "decode"} <= set(report)
    assert report["command"].startswith("seqlab bench toy --lengths 8 16")
    assert report["probe"]["flops_per_s"] > 0 and report["probe"]["bytes_per_s"] > 0
    assert [r["length"] for r in report["results"]] == [8, 16]
    for r in report["results"]:
        assert tuple(r) == harness.ROW_KEYS and r["status"] == "ok"
        assert r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0 and r["peak_bytes"] > 0
        assert math.isclose(r["tokens_per_s"], r["length"] / r["fwd_s"])
        assert r["bound_source"] == "analytic" and r["bound_by"] in ("flops", "bytes")
        assert r["flops"] == 2.0 * r["length"] * 8 + 2.0 * r["length"] * 8 * 8  # core + proj
        assert r["op"]["s"] > 0 and r["reference"]["s"] > 0
        assert r["peers"][0]["s"] is None and "not available" in r["peers"][0]["note"]
        assert len(r["peers"]) == 3  # a peer builder returning None is not installed: no entry
        same, wrong = r["peers"][1:]
        assert same["rel_err"] < 1e-6 and same["note"] == "" and same["s"] > 0
        assert wrong["rel_err"] > 0.1 and "values differ from the op" in wrong["note"]
    assert "associative cumsum (same inputs, rel. error 0.0e+00)" in table
    assert [d["context"] for d in report["decode"]] == [8, 16]
    for d in report["decode"]:
        assert tuple(d) == harness.DECODE_KEYS and d["status"] == "ok"
        assert d["cache_bytes"] == 8 * 4 + 4 and d["tokens_per_s"] > 0
    assert png.stat().st_size > 1000


def test_cli_rejects_unknown_mixer_and_stops_at_oom(monkeypatch, capsys):
    assert harness.cli_main(["no-such-mixer", "--probe", "quick"]) == 2
    assert "unknown mixer(s) no-such-mixer; registered:" in capsys.readouterr().err
    monkeypatch.setitem(MIXERS, "toy", Toy)
    monkeypatch.setattr(harness, "_memory_limit", lambda device: 64)  # bytes: nothing fits
    args = harness.build_parser().parse_args(
        ["toy", "--lengths", "8", "16", "--d-model", "4", "--no-ops", "--probe", "quick"])
    rows = harness.bench_mixer("toy", args, None, 64)
    assert [r["status"] for r in rows] == ["oom", "skipped"]
    assert "GiB" in rows[0]["note"] and rows[1]["note"] == "after out of memory"


def test_cli_mixer_args_reach_the_constructor(capsys):
    """--mixer-args KEY=VALUE (YAML values) go to every mixer's constructor and into the rows'
    mixer names; a malformed option exits 2 and one a mixer rejects becomes an error row."""
    args = harness.build_parser().parse_args(
        ["mamba2", "--lengths", "16", "--d-model", "32", "--no-ops", "--no-backward",
         "--repeats", "1", "--mixer-args", "implementation=pallas", "chunk_size=8"])
    assert args.mixer_args == [("implementation", "pallas"), ("chunk_size", 8)]
    rows = harness.bench_mixer("mamba2", args, None, None)
    assert rows[0]["mixer"] == "mamba2[implementation=pallas,chunk_size=8]"
    assert rows[0]["status"] == "ok" and rows[0]["fwd_s"] > 0
    args.mixer_args = [("implementation", "cuda")]
    row, = harness.bench_mixer("mamba2", args, None, None)
    assert row["status"] == "error" and "'xla' or 'pallas'" in row["note"]
    with pytest.raises(SystemExit) as exit_:
        harness.build_parser().parse_args(["mamba2", "--mixer-args", "pallas"])
    assert exit_.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
