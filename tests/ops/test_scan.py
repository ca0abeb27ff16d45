"""seqlab.ops.scan.linear_scan against the sequential loop h_t = a_t h_{t-1} + b_t."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from jax.test_util import check_grads

from seqlab.ops import scan as scan_module
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


def test_linear_scan_on_the_cpu_is_one_plain_loop():
    """On the CPU, ``linear_scan`` compiles to the program a bare ``lax.scan`` compiles to: the
    platform choice leaves no conditional behind, the forward is one loop and forward+backward
    two (the associative form would be O(log length) passes); docs/performance.md, JAX peers."""
    a = jnp.full((1, 64, 8), 0.9)
    b = jnp.ones((1, 64, 8))

    def compiled(f):
        return jax.jit(f).lower(a, b).compile().as_text()

    def loss(a, b):
        return jnp.sum(linear_scan(a, b))

    fwd, fwd_bwd = compiled(linear_scan), compiled(jax.grad(loss, argnums=(0, 1)))
    assert "conditional" not in fwd and "conditional" not in fwd_bwd
    assert fwd.count(" while(") == 1 and fwd_bwd.count(" while(") == 2
