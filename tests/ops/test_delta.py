"""seqlab.ops.delta against a float64 numpy reference written from the papers' equations.

Reference (Siems et al. 2025, eq. 3, with the Gated DeltaNet decay of Yang et al. 2024b):
per token S <- exp(g_t) S, then for j < n: S <- (I - beta k k^T) S + beta k v^T (an explicit
generalized Householder matrix), then o_t = S^T (scale q_t).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from _assert import assert_close

from seqlab.ops import delta as delta_module
from seqlab.ops import delta_chunks
from seqlab.ops.delta import delta_product, delta_product_recurrent
from seqlab.ops.triangular import unit_lower_inverse


def reference(q, k, v, beta, g, n, scale=None, s0=None):
    """float64 numpy: explicit Householder products, one token at a time."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    s = np.zeros((b, h, dk, dv)) if s0 is None else np.array(s0, np.float64)
    o = np.zeros((b, t, h, dv))
    eye = np.eye(dk)
    for i in range(t):
        if g is not None:
            s = s * np.exp(g[:, i])[..., None, None]
        for j in range(n):
            kk, vv, bb = k[:, i * n + j], v[:, i * n + j], beta[:, i * n + j]
            house = eye - bb[..., None, None] * kk[..., :, None] * kk[..., None, :]
            s = house @ s + bb[..., None, None] * kk[..., :, None] * vv[..., None, :]
        o[:, i] = np.einsum("bhkv,bhk->bhv", s, scale * q[:, i])
    return o, s


def _jit(fn, **static):
    return jax.jit(functools.partial(fn, **static))


def make_inputs(seed, b, t, h, dk, dv, n, gate=True, init=False, neg=True):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, h, dk))
    k = rng.normal(size=(b, t * n, h, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(b, t * n, h, dv))
    beta = rng.uniform(0, 2 if neg else 1, size=(b, t * n, h))
    g = -rng.uniform(0.0, 0.7, size=(b, t, h)) if gate else None
    s0 = rng.normal(size=(b, h, dk, dv)) if init else None
    return q, k, v, beta, g, s0


@pytest.mark.parametrize(
    "n,gate,init,t,chunk",
    [(1, False, False, 13, 4), (2, True, False, 9, 4), (3, True, True, 7, 2),
     (3, False, False, 5, 16)],
)
def test_chunked_equals_recurrent_equals_reference_float64(n, gate, init, t, chunk):
    q, k, v, beta, g, s0 = make_inputs(n * 10 + t, 2, t, 3, 5, 4, n, gate, init)
    o_ref, s_ref = reference(q, k, v, beta, g, n, s0=s0)
    with jax.enable_x64(True):
        kw = dict(num_householder=n, chunk_size=chunk)
        o_r, s_r = _jit(delta_product_recurrent, **kw)(q, k, v, beta, g, initial_state=s0)
        o_c, s_c = _jit(delta_product, **kw)(q, k, v, beta, g, initial_state=s0)
        assert o_c.dtype == jnp.float64 and s_c.dtype == jnp.float64
    assert_close(o_r, o_ref, rtol=1e-10, atol=1e-10)
    assert_close(s_r, s_ref, rtol=1e-10, atol=1e-10)
    assert_close(o_c, o_ref, rtol=1e-10, atol=1e-10)
    assert_close(s_c, s_ref, rtol=1e-10, atol=1e-10)


def test_scale_is_used_and_defaults_to_inverse_sqrt_k():
    q, k, v, beta, g, _ = make_inputs(0, 1, 6, 2, 4, 3, 1)
    with jax.enable_x64(True):
        o_def, _ = _jit(delta_product, chunk_size=4)(q, k, v, beta, g)
        o_one, _ = _jit(delta_product, chunk_size=4, scale=1.0)(q, k, v, beta, g)
    assert_close(o_def, reference(q, k, v, beta, g, 1)[0], rtol=1e-10)
    assert_close(o_one, reference(q, k, v, beta, g, 1, scale=1.0)[0], rtol=1e-10)


@pytest.mark.parametrize("n,gate,init", [(1, True, True), (2, True, True), (3, False, False)])
def test_gradients_chunked_equal_recurrent_and_finite_differences(n, gate, init):
    """The custom backward pass (T = 7 tokens in chunks of 3: the last chunk is padded)."""
    q, k, v, beta, g, s0 = make_inputs(7 + n, 2, 7, 2, 3, 3, n, gate, init)
    args = [q, k, v, beta] + ([g] if gate else []) + ([s0] if init else [])
    w_o = np.random.default_rng(1).normal(size=(2, 7, 2, 3))
    w_s = np.random.default_rng(2).normal(size=(2, 2, 3, 3))

    def loss(fn):
        def f(*a):
            gg = a[4] if gate else None
            ss = a[-1] if init else None
            o, s = fn(*a[:4], gg, num_householder=n, initial_state=ss, chunk_size=3)
            return jnp.sum(o * w_o) + jnp.sum(s * w_s)
        return f

    with jax.enable_x64(True):
        argnums = tuple(range(len(args)))
        g_c = jax.jit(jax.grad(loss(delta_product), argnums))(*args)
        g_r = jax.jit(jax.grad(loss(delta_product_recurrent), argnums))(*args)
        for a, b in zip(g_c, g_r, strict=True):
            assert_close(a, b, rtol=1e-9, atol=1e-10)
        if n == 3:  # and against finite differences, once
            jax.test_util.check_grads(jax.jit(loss(delta_product)), args, order=1,
                                      modes=["rev"], atol=1e-6, rtol=1e-6)


def test_float32_gradients_equal_grad_of_recurrent():
    """float32, gates, n = 2, initial state, padding (T = 21, chunks of 8) and the default
    chunk size: the written backward matches jax.grad of the scan to float32 rounding."""
    q, k, v, beta, g, s0 = make_inputs(21, 2, 21, 2, 8, 8, 2, True, True)
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, g, s0)]
    w_o = jnp.asarray(np.random.default_rng(5).normal(size=(2, 21, 2, 8)), jnp.float32)

    def loss(fn, chunk):
        def f(*a):
            o, s = fn(*a[:5], num_householder=2, initial_state=a[5], chunk_size=chunk)
            return jnp.sum(o * w_o) + jnp.sum(s)
        return jax.jit(jax.grad(f, tuple(range(6))))

    g_r = loss(delta_product_recurrent, None)(*args)
    for chunk in (8, None):
        for a, b in zip(loss(delta_product, chunk)(*args), g_r, strict=True):
            assert_close(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_groups_of_chunks_are_exact(monkeypatch):
    """The forward and backward walk the chunks in groups that fit in cache (a scan over
    groups, a scan over each group's chunks): forced here with a tiny group size (4 chunks of 2
    tokens in groups of 2), values of the forward and gradients, float64."""
    monkeypatch.setattr(delta_module, "_CACHE_ELEMENTS", 2 * 2 * 2 * 4 * 4)
    assert delta_chunks.group_size(4, 4, 4, 3, delta_module._CACHE_ELEMENTS) == 2
    q, k, v, beta, g, s0 = make_inputs(4, 2, 7, 2, 3, 3, 2, True, True)

    def loss(fn):
        def f(*a):
            o, s = fn(*a[:5], num_householder=2, initial_state=a[5], chunk_size=2)
            return jnp.sum(o * jnp.arange(o.size).reshape(o.shape)) + jnp.sum(s)
        return jax.jit(jax.grad(f, tuple(range(6))))

    with jax.enable_x64(True):
        args = (q, k, v, beta, g, s0)
        for a, b in zip(loss(delta_product)(*args), loss(delta_product_recurrent)(*args),
                        strict=True):
            assert_close(a, b, rtol=1e-9, atol=1e-10)
        kw = dict(num_householder=2, initial_state=s0, chunk_size=2)
        for a, b in zip(delta_product(*args[:5], **kw),
                        delta_product_recurrent(*args[:5], **kw), strict=True):
            assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("lax_map_groups", [False, True])
def test_form_for_other_platforms_is_exact(lax_map_groups, monkeypatch):
    """On a GPU or TPU the XLA form batches the chunk-local work over all chunks around one
    lax.scan (``ops.scan.on_cpu`` picks it when lowering for them); forced here on the CPU,
    with the backward's lax.map over groups of chunks (``lax_map_groups``): values and
    gradients against the recurrent form, float64."""
    monkeypatch.setattr(delta_module, "on_cpu", lambda cpu_fn, other_fn, *a: other_fn(*a))
    if lax_map_groups:
        monkeypatch.setattr(delta_chunks, "GROUP_ELEMENTS", 2 * 2 * 2 * 4 * 4)
    q, k, v, beta, g, s0 = make_inputs(5, 2, 7, 2, 3, 3, 2, True, True)
    kw = dict(num_householder=2, chunk_size=2)

    def loss(fn):
        def f(*a):
            o, s = fn(*a[:5], initial_state=a[5], **kw)
            return jnp.sum(o * jnp.arange(o.size).reshape(o.shape)) + jnp.sum(s)
        return jax.jit(jax.value_and_grad(f, tuple(range(6))))

    with jax.enable_x64(True):
        args = (q, k, v, beta, g, s0)
        (v_c, g_c), (v_r, g_r) = loss(delta_product)(*args), loss(delta_product_recurrent)(*args)
        assert_close(v_c, v_r, rtol=1e-10)
        for a, b in zip(g_c, g_r, strict=True):
            assert_close(a, b, rtol=1e-9, atol=1e-10)
        # the forward without a gradient (its own path through the custom VJP)
        for a, b in zip(delta_product(*args[:5], initial_state=s0, **kw),
                        delta_product_recurrent(*args[:5], initial_state=s0, **kw), strict=True):
            assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_traced_scale_is_differentiated():
    """``scale`` given as a traced value (under jit, or as a differentiated argument) is applied
    to q outside the custom VJP: its gradient equals the recurrent form's."""
    q, k, v, beta, g, s0 = make_inputs(6, 2, 9, 2, 3, 3, 1, True, True)

    def loss(fn):
        def f(scale):
            o, s = fn(q, k, v, beta, g, scale=scale, initial_state=s0, chunk_size=4)
            return jnp.sum(o * jnp.arange(o.size).reshape(o.shape)) + jnp.sum(s)
        return jax.jit(jax.value_and_grad(f))

    with jax.enable_x64(True):
        (v_c, g_c), (v_r, g_r) = loss(delta_product)(0.7), loss(delta_product_recurrent)(0.7)
        assert_close(v_c, v_r, rtol=1e-10)
        assert_close(g_c, g_r, rtol=1e-9)
        assert abs(float(g_r)) > 1e-3  # the gradient is not trivially zero


def test_float32_and_bfloat16_accumulate_in_float32():
    q, k, v, beta, g, s0 = make_inputs(3, 2, 45, 2, 16, 16, 2, True, True)
    o_ref, s_ref = reference(q, k, v, beta, g, 2, s0=s0)
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, g, s0)]
    kw = dict(num_householder=2, chunk_size=16)
    o_c, s_c = _jit(delta_product, **kw)(*f32[:5], initial_state=f32[5])
    o_r, s_r = _jit(delta_product_recurrent, **kw)(*f32[:5], initial_state=f32[5])
    for o, s in ((o_c, s_c), (o_r, s_r)):
        assert o.dtype == jnp.float32 and s.dtype == jnp.float32
        assert_close(o, o_ref, rtol=2e-4, atol=2e-4)
        assert_close(s, s_ref, rtol=2e-4, atol=2e-4)
    bf = [x.astype(jnp.bfloat16) for x in f32[:4]] + [f32[4]]
    o_b, s_b = _jit(delta_product, **kw)(*bf, initial_state=f32[5])
    assert o_b.dtype == jnp.bfloat16 and s_b.dtype == jnp.float32
    ref_b = reference(*[np.asarray(x, np.float64) for x in bf], 2, s0=s0)
    assert_close(np.asarray(o_b, np.float32), ref_b[0], rtol=2e-2, atol=2e-2)
    assert_close(s_b, ref_b[1], rtol=1e-3, atol=1e-3)


def test_final_state_continues_the_sequence():
    q, k, v, beta, g, _ = make_inputs(5, 1, 12, 2, 4, 4, 2)
    with jax.enable_x64(True):
        fn = _jit(delta_product, num_householder=2, chunk_size=4)
        o_full, s_full = fn(q, k, v, beta, g)
        o1, s1 = fn(q[:, :5], k[:, :10], v[:, :10], beta[:, :10], g[:, :5])
        o2, s2 = fn(q[:, 5:], k[:, 10:], v[:, 10:], beta[:, 10:], g[:, 5:], initial_state=s1)
    assert_close(np.concatenate([o1, o2], 1), o_full, rtol=1e-10, atol=1e-12)
    assert_close(s2, s_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [1, 13])
def test_unit_lower_inverse_and_its_gradient(size):
    rng = np.random.default_rng(size)
    lower = np.tril(rng.normal(size=(3, size, size)), -1) + np.eye(size)
    with jax.enable_x64(True):
        assert_close(jax.jit(unit_lower_inverse)(lower), np.linalg.inv(lower),
                                   rtol=1e-10, atol=1e-10)
        w = rng.normal(size=(3, size, size))

        def f(x):  # only the strictly lower part is read: perturb only there
            return jnp.sum(unit_lower_inverse(jnp.tril(x, -1) + jnp.eye(size)) * w)

        jax.test_util.check_grads(jax.jit(f), (lower,), order=1, modes=["rev"],
                                  atol=1e-7, rtol=1e-7)


def test_bad_shapes_raise_clear_errors():
    q, k, v, beta, g, _ = make_inputs(0, 1, 4, 2, 3, 3, 2)
    with pytest.raises(ValueError, match="k must be"):
        delta_product(q, k, v, beta, g, num_householder=1)
    with pytest.raises(ValueError, match="g must be"):
        delta_product(q, k, v, beta, g[:, :3], num_householder=2)
    with pytest.raises(ValueError, match="num_householder"):
        delta_product_recurrent(q, k, v, beta, g, num_householder=0)
    with pytest.raises(ValueError, match="initial_state"):
        delta_product(q, k, v, beta, g, num_householder=2, initial_state=np.zeros((1, 2, 3)))


def _load_fla_naive():
    torch = pytest.importorskip("torch", reason="torch is not installed (test extra)")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed (test extra)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops/gated_delta_product/naive.py"
    if not path.exists():
        pytest.skip(f"fla has no {path}")
    mod_spec = importlib.util.spec_from_file_location("fla_gdp_naive", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return torch, module.naive_recurrent_gated_delta_product


@pytest.mark.parametrize("n,gate,init", [(1, True, False), (3, True, True)])
def test_matches_flash_linear_attention_naive(n, gate, init):
    torch, fla_naive = _load_fla_naive()
    q, k, v, beta, g, s0 = make_inputs(11 * n, 2, 9, 2, 4, 5, n, gate, init)
    scale = 4**-0.5
    tt = lambda x: None if x is None else torch.tensor(x, dtype=torch.float64)  # noqa: E731
    o_f, s_f = fla_naive(tt(q), tt(k), tt(v), tt(g), tt(beta), scale,
                         initial_state=tt(s0), output_final_state=True, num_householder=n)
    with jax.enable_x64(True):
        o, s = _jit(delta_product, num_householder=n, chunk_size=4)(q, k, v, beta, g,
                                                                  initial_state=s0)
    # fla's reference casts q, k, v, beta to float32 (``x.float()``): float32 tolerances
    assert_close(o, o_f.numpy(), rtol=1e-5, atol=1e-5)
    assert_close(s, s_f.numpy(), rtol=1e-5, atol=1e-5)
