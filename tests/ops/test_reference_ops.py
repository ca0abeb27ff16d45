"""The slow references of ``seqlab.ops.reference`` against the fast ops (float64): each pair was
written separately, so agreement checks both."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close

from seqlab.ops import hippo
from seqlab.ops.attention import attention, dsa, topk_attention
from seqlab.ops.reference import attention as ref_attn
from seqlab.ops.reference import scan as ref_scan
from seqlab.ops.reference import ssd as ref_ssd
from seqlab.ops.reference import ssm as ref_ssm
from seqlab.ops.scan import linear_scan
from seqlab.ops.ssd import quasiseparable, ssd
from seqlab.ops.ssm import kernel_diag, kernel_dplr


def _rng(seed):
    return np.random.default_rng(seed)


def test_ssd_and_quasiseparable_references():
    rng = _rng(0)
    b, t, h, p, g, n = 2, 7, 4, 3, 2, 5
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((b, t, h, p)))
        dt = jnp.asarray(rng.uniform(0.05, 0.8, (b, t, h)))
        A = -jnp.asarray(rng.uniform(0.2, 2.0, h))
        B, C = (jnp.asarray(rng.standard_normal((b, t, g, n))) for _ in range(2))
        h0 = jnp.asarray(rng.standard_normal((b, h, p, n)))
        y, final = jax.jit(lambda *a: ssd(*a, chunk_size=3, initial_state=h0))(x, dt, A, B, C)
        y_ref, final_ref = ref_ssd.ssd_sequential(x, dt, A, B, C, h0)
        assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        assert_close(final, final_ref, rtol=1e-10, atol=1e-12)
        dt2 = jnp.asarray(rng.uniform(0.05, 0.8, (b, t, h)))
        B2, C2 = (jnp.asarray(rng.standard_normal((b, t, g, n))) for _ in range(2))
        diag = jnp.asarray(rng.standard_normal((b, t, h)))
        args = (x, dt, dt2, A, B, C, B2, C2, diag)
        got = jax.jit(lambda *a: quasiseparable(*a, chunk_size=3))(*args)
        assert_close(got, ref_ssd.quasiseparable_sequential(*args), rtol=1e-10, atol=1e-12)


def test_linear_recurrence_reference():
    rng = _rng(4)
    with jax.enable_x64(True):
        a = jnp.asarray(rng.uniform(-1, 1, (2, 9, 3)) + 1j * rng.uniform(-1, 1, (2, 9, 3)))
        b = jnp.asarray(rng.standard_normal((2, 9, 3)) + 0j)
        h = ref_scan.linear_recurrence(a, b)
        want = np.zeros(b.shape, complex)
        for t in range(9):
            want[:, t] = (a[:, t] * want[:, t - 1] if t else 0) + b[:, t]
        assert_close(h, want, rtol=1e-12, atol=1e-12)
        assert_close(linear_scan(a, b), h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_diagonal_kernel_and_recurrence_references(method):
    rng = _rng(1)
    H, N, L = 3, 4, 11
    with jax.enable_x64(True):
        A = jnp.asarray(-rng.uniform(0.1, 1, (H, N)) + 1j * rng.uniform(0, 5, (H, N)))
        B, C = (jnp.asarray(rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N)))
                for _ in range(2))
        dt = jnp.asarray(rng.uniform(0.01, 0.3, H))
        K = kernel_diag(A, B, C, dt, L, method)
        assert_close(K, ref_ssm.kernel_diag_powers(A, B, C, dt, L, method), rtol=1e-10,
                     atol=1e-12)
        u = jnp.asarray(rng.standard_normal((2, L, H)))
        y, _ = ref_ssm.diag_ssm_sequential(u, A, B, C, dt, method)
        conv = np.stack([[np.convolve(np.asarray(u[b, :, h]), np.asarray(K[h]))[:L]
                          for h in range(H)] for b in range(2)]).transpose(0, 2, 1)
        assert_close(y, conv, rtol=1e-10, atol=1e-12)


def test_dplr_kernel_reference_on_hippo_legs():
    """S4's Woodbury/Cauchy kernel against powers of the dense bilinear matrix, with the
    HiPPO-LegS (Lambda, P, B) of ``ops.hippo.dplr`` (odd and even lengths) and random rank-2
    and rank-3 corrections."""
    fast = jax.jit(kernel_dplr, static_argnums=5)
    slow = jax.jit(ref_ssm.kernel_dplr_dense, static_argnums=5)
    Lambda, P, B = hippo.dplr("legs", 8)
    rng = _rng(2)
    H = 2
    with jax.enable_x64(True):
        lam = jnp.asarray(np.tile(Lambda, (H, 1)))
        Pj = jnp.asarray(np.tile(P[:, None], (1, H, 1)))
        Bj = jnp.asarray(np.tile(B, (H, 1)))
        C = jnp.asarray(rng.standard_normal((H, 4)) + 1j * rng.standard_normal((H, 4)))
        dt = jnp.asarray([0.05, 0.3])
        for L in (9, 12):
            assert_close(fast(lam, Pj, Bj, C, dt, L), slow(lam, Pj, Bj, C, dt, L), rtol=1e-9,
                         atol=1e-11)
        for r in (2, 3):  # higher-rank corrections (closed-form 2x2 solve, then the general one)
            Pr = jnp.asarray(0.5 * (rng.standard_normal((r, H, 4))
                                    + 1j * rng.standard_normal((r, H, 4))))
            assert_close(fast(lam, Pr, Bj, C, dt, 10), slow(lam, Pr, Bj, C, dt, 10), rtol=1e-9,
                         atol=1e-11)


def test_attention_references():
    rng = _rng(3)
    b, t, hq, h, d = 2, 9, 4, 2, 8
    mask = np.ones((b, t), bool)
    mask[1, 6:] = False
    with jax.enable_x64(True):
        q = jnp.asarray(rng.standard_normal((b, t, hq, d)))
        k, v = (jnp.asarray(rng.standard_normal((b, t, h, d))) for _ in range(2))
        m = jnp.asarray(mask)
        real = mask[:, :, None, None]
        for causal in (True, False):
            got = jax.jit(partial(attention, causal=causal))(q, k, v, mask=m)
            want = jax.jit(partial(ref_attn.attention_naive, causal=causal))(q, k, v, mask=m)
            assert_close(np.where(real, got, 0), np.where(real, want, 0), rtol=1e-10, atol=1e-12)
        got = jax.jit(partial(topk_attention, topk=3))(q, k, v, mask=m)
        want = jax.jit(partial(ref_attn.attention_naive, causal=True, topk=3))(q, k, v, mask=m)
        assert_close(np.where(real, got, 0), np.where(real, want, 0), rtol=1e-10, atol=1e-12)
        q_idx = jnp.asarray(rng.standard_normal((b, t, 3, 4)))
        k_idx = jnp.asarray(rng.standard_normal((b, t, 4)))
        w_idx = jnp.asarray(rng.standard_normal((b, t, 3)))
        got = jax.jit(partial(dsa, topk=3, block_size=4))(q, k, v, q_idx, k_idx, w_idx, mask=m)
        want = jax.jit(partial(ref_attn.dsa_naive, topk=3))(q, k, v, q_idx, k_idx, w_idx, mask=m)
        assert_close(np.where(real, got, 0), np.where(real, want, 0), rtol=1e-10, atol=1e-12)
