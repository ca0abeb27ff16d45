"""seqlab.ops.scan.linear_scan against the sequential loop h_t = a_t h_{t-1} + b_t."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from jax.test_util import check_grads

from seqlab.ops import scan as scan_module
from seqlab.ops.reference import scan as reference_scan
from seqlab.ops.scan import linear_scan


def _loop(a, b, h0, reverse):
    a = np.broadcast_to(a, b.shape)
    h = np.zeros_like(b)
    state = np.zeros_like(b[:, 0]) if h0 is None else h0
    order = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    for t in order:
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return h


@pytest.mark.parametrize("form", ["cpu", "gpu/tpu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_linear_scan_matches_loop(reverse, with_h0, form, monkeypatch):
    """Both forms: the CPU's sequential lax.scan and the associative scan of other platforms
    (forced here by making ``on_cpu`` take its other branch)."""
    if form == "gpu/tpu":
        monkeypatch.setattr(scan_module, "on_cpu", lambda cpu_fn, other_fn, *args: other_fn(*args))
    rng = np.random.default_rng(0)
    shape = (2, 13, 3, 2)
    a = (rng.uniform(0.5, 1.0, shape) * np.exp(1j * rng.uniform(-1, 1, shape)))
    b = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    h0 = rng.standard_normal((2, 3, 2)) + 1j * rng.standard_normal((2, 3, 2)) if with_h0 else None
    ref = _loop(a, b, h0, reverse)
    with jax.enable_x64(True):
        h = linear_scan(jnp.asarray(a), jnp.asarray(b), None if h0 is None else jnp.asarray(h0),
                        reverse=reverse)
        assert_close(np.asarray(h), ref, rtol=1e-12, atol=1e-12)


def test_linear_scan_broadcast_float32_and_gradients():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.99, (1, 1, 4))  # one decay per channel, broadcast over batch/time
    b = rng.standard_normal((2, 9, 4))
    h = linear_scan(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert h.shape == b.shape and h.dtype == jnp.float32
    assert_close(np.asarray(h), _loop(a, b, None, False), rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        a_full = jnp.asarray(np.broadcast_to(a, b.shape).copy())
        check_grads(jax.jit(lambda a, b, h0: linear_scan(a, b, h0)),
                    (a_full, jnp.asarray(b), jnp.asarray(b[:, 0])), order=1, modes=["rev"])
    with pytest.raises(ValueError, match="batch, length"):
        linear_scan(jnp.ones(3), jnp.ones(3))


@pytest.mark.parametrize("form", ["cpu", "gpu/tpu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_gradients_match_the_loop(reverse, form, monkeypatch):
    """The VJP written for ``linear_scan`` (the transposed recurrence) against JAX's own
    differentiation of the step-by-step loop, float64, complex decays and inputs, an initial
    state, batch 2, odd length; the decay broadcast over the batch (its gradient is summed)."""
    if form == "gpu/tpu":
        monkeypatch.setattr(scan_module, "on_cpu", lambda cpu_fn, other_fn, *args: other_fn(*args))
    rng = np.random.default_rng(2)
    shape = (2, 11, 3)
    a = rng.uniform(0.5, 1.0, (1,) + shape[1:]) * np.exp(1j * rng.uniform(-1, 1, (1,) + shape[1:]))
    b = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    h0 = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    w = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    def loop(a, b, h0):
        a = jnp.broadcast_to(a, b.shape)
        state, hs = h0, [None] * b.shape[1]
        for t in (range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])):
            state = a[:, t] * state + b[:, t]
            hs[t] = state
        return jnp.stack(hs, 1)

    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (a, b, h0)))
        for f in (loop, lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse)):
            assert_close(np.asarray(f(*args)), np.asarray(loop(*args)), rtol=1e-12, atol=1e-12)
        loss = lambda f: lambda *x: jnp.sum(jnp.real(f(*x) * w))  # noqa: E731
        want = jax.grad(loss(loop), argnums=(0, 1, 2))(*args)
        got = jax.jit(jax.grad(loss(lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse)),
                               argnums=(0, 1, 2)))(*args)
        for g, r in zip(got, want, strict=True):
            assert g.shape == r.shape
            assert_close(np.asarray(g), np.asarray(r), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_linear_scan_on_the_cpu_compiles_to_a_bare_lax_scan(dtype):
    """On the CPU, ``linear_scan`` (forward, and forward+backward) compiles to exactly the
    program of the bare step-by-step ``lax.scan`` (``ops.reference.scan``; recurrentgemma's scan
    compiles to the same instructions): the platform choice leaves nothing behind, so a peer
    running that scan can only tie (docs/performance.md, JAX peers). Compared with names,
    source locations and metadata stripped."""
    a = jnp.full((2, 64, 8), 0.9, dtype)
    b = jnp.ones((2, 64, 8), dtype)

    def compiled(f):
        text = jax.jit(f).lower(a, b).compile().as_text()
        text = text[min(text.index("\n%"), text.index("ENTRY")):]  # after the debug tables
        return re.sub(r"%[\w.\-]+", "%", re.sub(r", metadata=\{[^}]*\}", "", text))

    def grads(f):
        return jax.grad(lambda a, b: jnp.sum(jnp.real(f(a, b))), argnums=(0, 1))

    bare = reference_scan.linear_recurrence
    assert compiled(linear_scan) == compiled(bare)
    assert compiled(grads(linear_scan)) == compiled(grads(bare))
    assert " while(" in compiled(linear_scan)
