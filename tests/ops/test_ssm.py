"""seqlab.ops.ssm against float64 references written from the S4 / S4D equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from seqlab.ops import ssm

# jit whole ops: one compilation instead of one per primitive (much faster on a loaded CPU)
kernel_diag = jax.jit(ssm.kernel_diag, static_argnums=(4, 5))
kernel_dplr = jax.jit(ssm.kernel_dplr, static_argnums=(5, 6))
fft_conv = jax.jit(ssm.fft_conv)


def _random_diag_system(rng, H, N):
    A = -rng.uniform(0.1, 1.0, (H, N)) + 1j * rng.uniform(-20, 20, (H, N))
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    return A, B, C, dt


def _impulse_response(A, B, C, dt, length, method):
    """Step the discretised system x_k = dA x_{k-1} + dB u_k, y_k = 2 Re(C x_k) on u = delta."""
    if method == "zoh":
        dA = np.exp(dt[:, None] * A)
        dB = (dA - 1) / A * B
    else:
        dA = (1 + dt[:, None] * A / 2) / (1 - dt[:, None] * A / 2)
        dB = dt[:, None] * B / (1 - dt[:, None] * A / 2)
    x = np.zeros_like(A)
    K = np.zeros((A.shape[0], length))
    for k in range(length):
        x = dA * x + dB * (1.0 if k == 0 else 0.0)
        K[:, k] = 2 * np.real((C * x).sum(-1))
    return K


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_kernel_diag_matches_impulse_response(method, length=131):
    rng = np.random.default_rng(0)
    A, B, C, dt = _random_diag_system(rng, 3, 5)
    ref = _impulse_response(A, B, C, dt, length, method)
    with jax.enable_x64(True):
        K64 = kernel_diag(*map(jnp.asarray, (A, B, C, dt)), length, method)
        np.testing.assert_allclose(np.asarray(K64), ref, rtol=1e-10, atol=1e-12)
    K32 = kernel_diag(
        jnp.asarray(A, jnp.complex64), jnp.asarray(B, jnp.complex64),
        jnp.asarray(C, jnp.complex64), jnp.asarray(dt, jnp.float32), length, method,
    )
    assert K32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(K32), ref, atol=2e-5 * np.abs(ref).max())


def test_kernel_diag_methods_differ_and_bad_method():
    rng = np.random.default_rng(1)
    A, B, C, dt = map(jnp.asarray, _random_diag_system(rng, 2, 3))
    dt = dt * 0 + 0.5  # large step: ZOH and bilinear must differ
    K_zoh, K_bil = kernel_diag(A, B, C, dt, 1), kernel_diag(A, B, C, dt, 1, "bilinear")
    assert not np.allclose(K_zoh, K_bil)  # length 1: K_0 = 2 Re(C dB)
    dtA = np.asarray(dt)[:, None] * np.asarray(A)
    np.testing.assert_allclose(
        K_zoh[:, 0], 2 * np.real(np.sum(C * (np.exp(dtA) - 1) / A * B, -1)), rtol=1e-5
    )
    with pytest.raises(ValueError, match="zoh, bilinear"):
        kernel_diag(A, B, C, dt, 9, "euler")
    with pytest.raises(ValueError, match="length"):
        kernel_diag(A, B, C, dt, 0)
    with pytest.raises(ValueError, match="direct, fft"):
        ssm.kernel_dplr(A, A[None], B, C, dt, 4, "vandermonde")


def test_kernel_diag_gradients():
    rng = np.random.default_rng(2)
    A, B, C, dt = _random_diag_system(rng, 2, 3)
    A = A.real * 0.5 + 1j * A.imag / 10

    def f(a_re, a_im, b_re, c_im, log_dt):
        Ac = jax.lax.complex(a_re, a_im)
        Bc = jax.lax.complex(b_re, jnp.asarray(B.imag))
        Cc = jax.lax.complex(jnp.asarray(C.real), c_im)
        return kernel_diag(Ac, Bc, Cc, jnp.exp(log_dt), 11, "bilinear") + kernel_diag(
            Ac, Bc, Cc, jnp.exp(log_dt), 11, "zoh"
        )

    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (A.real, A.imag, B.real, C.imag, np.log(dt) + 1.5)))
        check_grads(jax.jit(f), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def _direct_conv(u, K, D, K_rev):
    b, L, H = u.shape
    y = np.zeros_like(u)
    for t in range(L):
        for s in range(t + 1):
            y[:, t] += K[:, t - s] * u[:, s]
        if K_rev is not None:
            for s in range(t, L):
                y[:, t] += K_rev[:, s - t] * u[:, s]
    return y + (0 if D is None else D * u)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_d", [False, True])
def test_fft_conv_matches_direct_convolution(bidirectional, with_d):
    rng = np.random.default_rng(3)
    b, L, H = 2, 29, 3
    u, K, Kr, D = (rng.standard_normal(s) for s in [(b, L, H), (H, L), (H, L), (H,)])
    Kr = Kr if bidirectional else None
    D = D if with_d else None
    ref = _direct_conv(u, K, D, Kr)
    y = fft_conv(*(None if a is None else jnp.asarray(a, jnp.float32) for a in (u, K, D, Kr)))
    assert y.shape == (b, L, H) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), ref, atol=2e-5)


def test_fft_conv_gradients_and_length_check():
    rng = np.random.default_rng(4)
    u, K, Kr, D = (rng.standard_normal(s) for s in [(2, 7, 2), (2, 7), (2, 7), (2,)])
    with pytest.raises(ValueError, match="length"):
        fft_conv(jnp.asarray(u), jnp.asarray(K[:, :5]))
    with jax.enable_x64(True):
        check_grads(
            jax.jit(ssm.fft_conv), tuple(map(jnp.asarray, (u, K, D, Kr))), order=1, modes=["rev"],
            atol=1e-7, rtol=1e-7,
        )


def _random_dplr(rng, H, N, r):
    Lam = -rng.uniform(0.1, 1.0, (H, N)) + 1j * rng.uniform(-8, 8, (H, N))
    P = (rng.standard_normal((r, H, N)) + 1j * rng.standard_normal((r, H, N))) * 0.5
    B = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
    dt = np.array([0.01, 0.1, 0.5][:H])
    return Lam, P, B, C, dt


def _dense_bilinear_kernel(Lam, P, B, C, dt, length):
    """Dense A = diag(Lambda) - sum_r P_r P_r^H, bilinear dA, dB, stepped: K_l = 2 Re(C dA^l dB)."""
    H, N = Lam.shape
    K = np.zeros((H, length))
    for h in range(H):
        A = np.diag(Lam[h]) - sum(np.outer(p[h], p[h].conj()) for p in P)
        inv = np.linalg.inv(np.eye(N) - dt[h] / 2 * A)
        dA, x = inv @ (np.eye(N) + dt[h] / 2 * A), inv @ (dt[h] * B[h])
        for k in range(length):
            K[h, k] = 2 * np.real(C[h] @ x)
            x = dA @ x
    return K


@pytest.mark.parametrize("r, length", [(1, 64), (2, 37)])
def test_kernel_dplr_matches_dense_bilinear_recurrence(r, length):
    rng = np.random.default_rng(5 + r)
    system = _random_dplr(rng, 3, 4, r)
    ref = _dense_bilinear_kernel(*system, length)
    with jax.enable_x64(True):
        for cauchy in ("direct", "fft"):
            K = kernel_dplr(*map(jnp.asarray, system), length, cauchy)
            np.testing.assert_allclose(np.asarray(K), ref, rtol=1e-10, atol=1e-12)
    K32 = kernel_dplr(*(jnp.asarray(v, jnp.complex64) for v in system[:4]),
                          jnp.asarray(system[4], jnp.float32), length)
    assert K32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(K32), ref, atol=1e-5 * np.abs(ref).max())


def test_kernel_dplr_with_zero_rank_term_is_kernel_diag_and_gradients():
    rng = np.random.default_rng(9)
    Lam, P, B, C, dt = _random_dplr(rng, 2, 3, 1)
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (Lam, 0 * P, B, C, dt)))
        np.testing.assert_allclose(
            kernel_dplr(*args, 16),
            kernel_diag(args[0], args[2], args[3], args[4], 16, "bilinear"), atol=1e-12,
        )

        def f(p_re, lam_re, log_dt):
            Pc = jax.lax.complex(p_re, jnp.asarray(P.imag))
            Lc = jax.lax.complex(lam_re, jnp.asarray(Lam.imag))
            return kernel_dplr(Lc, Pc, jnp.asarray(B), jnp.asarray(C), jnp.exp(log_dt), 9)

        check_grads(jax.jit(f), tuple(map(jnp.asarray, (P.real, Lam.real, np.log(dt)))),
                    order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
