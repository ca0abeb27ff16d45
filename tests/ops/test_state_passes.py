"""seqlab.ops.state_passes: the Pallas passes over chunks of the chunked delta rule and SSD.

On this CPU the kernels run in Pallas interpret mode, which executes the kernel body as written;
so these tests check the kernels' arithmetic and indexing (every chunk, every column block)
against float64 numpy loops, ``delta_product`` and ``ssd`` with ``implementation="pallas"``
against their XLA forms (values and gradients), and that the kernels lower to Triton for CUDA
(``jax.export`` from this host). Speed is measured on a GPU by scripts/gpu_check.sh, never here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from test_delta import make_inputs

from seqlab.ops import delta as delta_module
from seqlab.ops import delta_chunks, state_passes
from seqlab.ops.delta import delta_product
from seqlab.ops.ssd import quasiseparable, ssd


def _state_inputs(seed, nc, nb, c, dk, dv):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(nc, nb, c, dv))
    w = rng.normal(size=(nc, nb, c, dk)) / np.sqrt(dk * c)
    kd = rng.normal(size=(nc, nb, c, dk)) / np.sqrt(dk * c)
    e = rng.uniform(0.3, 1.0, size=(nc, nb))
    s0 = rng.normal(size=(nb, dk, dv))
    r = rng.normal(size=(nc, nb, dk, dv))
    return u, w, kd, e, s0, r


def test_state_pass_matches_loop():
    """S_{j+1} = e_j S_j + Kd_j^T (U_j - W_j S_j): 5 chunks, 3 sequences, 2 value blocks."""
    u, w, kd, e, s0, _ = _state_inputs(0, nc=5, nb=3, c=16, dk=16, dv=32)
    s, s_in = s0.copy(), []
    for j in range(5):
        s_in.append(s)
        s = e[j][:, None, None] * s + np.swapaxes(kd[j], -1, -2) @ (u[j] - w[j] @ s)
    f32 = [jnp.asarray(x, jnp.float32) for x in (u, w, np.swapaxes(kd, -1, -2), e, s0)]
    got_in, got_last = state_passes.state_pass(*f32, block_v=16)
    assert_close(got_in, np.stack(s_in), rtol=1e-5, atol=1e-5)
    assert_close(got_last, s, rtol=1e-5, atol=1e-5)


def test_state_pass_bwd_matches_loop():
    """dS_j = e_j dS_{j+1} + R_j - W_j^T Kd_j dS_{j+1}, last chunk first, 2 value blocks."""
    _, w, kd, e, ds_last, r = _state_inputs(1, nc=5, nb=3, c=16, dk=16, dv=32)
    ds, ds_out = ds_last, [None] * 5
    for j in reversed(range(5)):
        ds_out[j] = ds
        ds = e[j][:, None, None] * ds + r[j] - np.swapaxes(w[j], -1, -2) @ (kd[j] @ ds)
    f32 = [jnp.asarray(x, jnp.float32) for x in (w, kd, e, r, ds_last)]
    got_out, got0 = state_passes.state_pass_bwd(*f32, block_v=16)
    assert_close(got_out, np.stack(ds_out), rtol=1e-5, atol=1e-5)
    assert_close(got0, ds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,chunk,t,grouped", [(1, 16, 37, False), (2, 8, 21, False),
                                               (1, 16, 70, True)])
def test_delta_product_pallas_equals_xla(n, chunk, t, grouped, monkeypatch):
    """Values and gradients (q, k, v, beta, g, initial state) of the two implementations, with
    gates, n_h = 1 and 2, an initial state and a padded last chunk; ``grouped``: both forms
    work on groups of 2 chunks (the XLA form's cache-sized groups, the Pallas form's lax.map
    over groups in the backward, forced by small group budgets)."""
    if grouped:
        monkeypatch.setattr(delta_module, "_CACHE_ELEMENTS", 2 * 4 * 16 * 16)
        monkeypatch.setattr(delta_chunks, "GROUP_ELEMENTS", 2 * 4 * 16 * 16)
    q, k, v, beta, g, s0 = make_inputs(3, 2, t, 2, 16, 16, n, gate=True, init=True)
    xs = [jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, g, s0)]
    weight = jnp.asarray(np.random.default_rng(4).normal(size=(2, t, 2, 16)), jnp.float32)

    def loss(implementation):
        def f(q, k, v, beta, g, s0):
            o, s = delta_product(q, k, v, beta, g, num_householder=n, chunk_size=chunk,
                                 initial_state=s0, implementation=implementation)
            return jnp.sum(o * weight) + jnp.sum(s * s)
        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(6))))

    (va, ga), (vb, gb) = loss("xla")(*xs), loss("pallas")(*xs)
    assert_close(vb, va, rtol=1e-6)
    for name, a, b in zip("q k v beta g s0".split(), ga, gb, strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))), err_msg=name)
    # the forward without a gradient (its own path through the custom VJP)
    kw = dict(num_householder=n, chunk_size=chunk, initial_state=xs[5])
    for a, b in zip(delta_product(*xs[:5], **kw),
                    delta_product(*xs[:5], **kw, implementation="pallas"), strict=True):
        assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_decay_pass_matches_loop(reverse):
    """s_{j+1} = e_j * s_j + x_j (SSD's state passing), both directions, Q = 48 (blocks of 16)."""
    rng = np.random.default_rng(5)
    e, x = rng.uniform(0.2, 1.0, size=(6, 3, 48)), rng.normal(size=(6, 3, 16, 48))
    s0 = rng.normal(size=(3, 16, 48))
    s, seen = s0, [None] * 6
    for j in (reversed(range(6)) if reverse else range(6)):
        seen[j] = s
        s = e[j][:, None, :] * s + x[j]
    got, last = state_passes.decay_pass(*(jnp.asarray(a, jnp.float32) for a in (e, x, s0)),
                                        reverse=reverse)
    assert_close(got, np.stack(seen), rtol=1e-5, atol=1e-5)
    assert_close(last, s, rtol=1e-5, atol=1e-5)


def test_ssd_pallas_equals_xla():
    """Values and gradients of ssd (2 groups of 3 heads, an initial state, a padded last chunk)
    and of Hydra's quasiseparable op (both directions in one call), pallas vs xla."""
    rng = np.random.default_rng(6)
    b, t, h, p, g, n = 2, 37, 6, 16, 2, 16
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    x, B, C, h0 = f32(b, t, h, p), f32(b, t, g, n), f32(b, t, g, n), f32(b, h, p, n)
    dt = jax.nn.softplus(f32(b, t, h))
    A = -jnp.exp(f32(h))

    def ssd_loss(implementation):
        def f(x, dt, A, B, C, h0):
            y, s = ssd(x, dt, A, B, C, chunk_size=16, initial_state=h0,
                       implementation=implementation)
            return jnp.sum(y * jnp.cos(y)) + jnp.sum(s * s)
        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(6))))

    def qs_loss(implementation):
        def f(x, dt, A, B, C):
            y = quasiseparable(x, dt, dt[:, ::-1], A, B, C, C, B, dt, chunk_size=16,
                               implementation=implementation)
            return jnp.sum(y * jnp.cos(y))
        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(5))))

    for loss, args in ((ssd_loss, (x, dt, A, B, C, h0)), (qs_loss, (x, dt, A, B, C))):
        (va, ga), (vb, gb) = loss("xla")(*args), loss("pallas")(*args)
        assert_close(vb, va, rtol=1e-6)
        for a, b_ in zip(ga, gb, strict=True):
            assert_close(b_, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))


def _triton_calls(fn, *args) -> int:
    """Triton kernels in the export of ``jax.grad(fn)`` for CUDA from this host (the Pallas ->
    Triton lowering runs here; compiling Triton to PTX needs the GPU)."""
    export = pytest.importorskip("jax.export")
    triton = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(jax.grad(fn, argnums=tuple(range(len(args))))), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)],
    )(*args)
    return exported.mlir_module().count(f"@{triton}(")


def test_kernels_lower_to_triton_for_cuda():
    """Forward + backward of both ops, bf16 inputs: each has its two passes as Triton kernels."""
    def sds(*shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype)

    def delta(*xs):
        return delta_product(*xs, implementation="pallas")[0].astype(jnp.float32).sum()

    def ssd_sum(x, dt, B, C):
        y = ssd(x, dt, -jnp.ones(4), B, C, implementation="pallas")[0]
        return y.astype(jnp.float32).sum()

    t = 256
    assert _triton_calls(delta, sds(1, t, 2, 64), sds(1, t, 2, 64), sds(1, t, 2, 64),
                         sds(1, t, 2), sds(1, t, 2, dtype=jnp.float32)) == 2
    assert _triton_calls(ssd_sum, sds(1, t, 4, 64), sds(1, t, 4, dtype=jnp.float32),
                         sds(1, t, 1, 128), sds(1, t, 1, 128)) == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(implementation="triton"), "'xla' or 'pallas'"),
    (dict(implementation="pallas", chunk_size=12), "chunk steps=12"),
])
def test_bad_implementation_is_refused(kwargs, match):
    q, k, v, beta, g, _ = make_inputs(0, 1, 24, 1, 16, 16, 1)
    with pytest.raises(ValueError, match=match):
        delta_product(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, g)), **kwargs)


@pytest.mark.parametrize("d_state,headdim,match", [(16, 16, None), (24, 16, "d_state=24"),
                                                   (16, 8, "multiple of 16, got 8")])
def test_ssd_pallas_sizes(d_state, headdim, match):
    x, dt = jnp.ones((1, 8, 2, headdim)), jnp.ones((1, 8, 2))
    B = C = jnp.ones((1, 8, 1, d_state))
    run = lambda: ssd(x, dt, -jnp.ones(2), B, C, implementation="pallas")  # noqa: E731
    if match is None:
        assert run()[0].shape == x.shape
    else:
        with pytest.raises(ValueError, match=match):
            run()
    with pytest.raises(ValueError, match="'xla' or 'pallas'"):
        ssd(x, dt, -jnp.ones(2), B, C, implementation="cuda")


def test_unsupported_reasons():
    assert state_passes.unsupported(jnp.float32, c=32, K=64, V=64) is None
    assert "K=48" in state_passes.unsupported(jnp.float32, c=32, K=48, V=64)
    assert "float64" in state_passes.unsupported(jnp.float64, c=32, K=64, V=64)
