"""seqlab.ops.delta_pallas: the Pallas state passes of the chunked delta rule.

On this CPU the kernels run in Pallas interpret mode, which executes the kernel body as written;
so these tests check the kernels' arithmetic and indexing (every chunk, every value block) against
a float64 numpy loop, ``delta_product(implementation="pallas")`` against the XLA form (values and
gradients), and that both kernels lower to Triton for CUDA (``jax.export`` from this host).
Speed is measured on a GPU by scripts/gpu_check.sh, never here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from test_delta import make_inputs

from seqlab.ops import delta_pallas
from seqlab.ops.delta import delta_product


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
    got_in, got_last = delta_pallas.state_pass(*f32, block_v=16)
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
    got_out, got0 = delta_pallas.state_pass_bwd(*f32, block_v=16)
    assert_close(got_out, np.stack(ds_out), rtol=1e-5, atol=1e-5)
    assert_close(got0, ds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,chunk,t", [(1, 16, 37), (2, 8, 21)])
def test_delta_product_pallas_equals_xla(n, chunk, t):
    """Values and gradients (q, k, v, beta, g, initial state) of the two implementations, with
    gates, n_h = 1 and 2, an initial state and a padded last chunk."""
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


def test_kernels_lower_to_triton_for_cuda():
    """Export of forward+backward for CUDA from this host: both passes become Triton kernels
    (the Pallas -> Triton lowering ran; compiling Triton to PTX needs the GPU)."""
    export = pytest.importorskip("jax.export")
    shapes = [(1, 256, 2, 64), (1, 256, 2, 64), (1, 256, 2, 64), (1, 256, 2), (1, 256, 2)]
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16 if i < 4 else jnp.float32)
            for i, s in enumerate(shapes)]

    def f(*xs):
        return delta_product(*xs, implementation="pallas")[0].astype(jnp.float32).sum()

    triton = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4))), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)],
    )(*args)
    assert exported.mlir_module().count(f"@{triton}(") == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(implementation="triton"), "'xla' or 'pallas'"),
    (dict(implementation="pallas", chunk_size=12), "chunk steps=12"),
])
def test_bad_implementation_is_refused(kwargs, match):
    q, k, v, beta, g, _ = make_inputs(0, 1, 24, 1, 16, 16, 1)
    with pytest.raises(ValueError, match=match):
        delta_product(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, g)), **kwargs)


def test_unsupported_reasons():
    assert delta_pallas.unsupported(32, 64, 64, jnp.float32) is None
    assert "K=48" in delta_pallas.unsupported(32, 48, 64, jnp.float32)
    assert "float64" in delta_pallas.unsupported(32, 64, 64, jnp.float64)
