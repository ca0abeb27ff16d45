"""seqlab.ops.ssm against float64 references written from the S4 / S4D equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from jax.test_util import check_grads

from seqlab.ops import hippo, ssm

# jit whole ops: one compilation instead of one per primitive (much faster on a loaded CPU)
kernel_diag = jax.jit(ssm.kernel_diag, static_argnums=(4, 5))
kernel_dplr = jax.jit(ssm.kernel_dplr, static_argnums=5)
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
        assert_close(np.asarray(K64), ref, rtol=1e-10, atol=1e-12)
    K32 = kernel_diag(
        jnp.asarray(A, jnp.complex64), jnp.asarray(B, jnp.complex64),
        jnp.asarray(C, jnp.complex64), jnp.asarray(dt, jnp.float32), length, method,
    )
    assert K32.dtype == jnp.float32
    assert_close(np.asarray(K32), ref, atol=2e-5 * np.abs(ref).max())


def test_kernel_diag_methods_differ_and_bad_method():
    rng = np.random.default_rng(1)
    A, B, C, dt = map(jnp.asarray, _random_diag_system(rng, 2, 3))
    dt = dt * 0 + 0.5  # large step: ZOH and bilinear must differ
    K_zoh, K_bil = kernel_diag(A, B, C, dt, 1), kernel_diag(A, B, C, dt, 1, "bilinear")
    assert not np.allclose(K_zoh, K_bil)  # length 1: K_0 = 2 Re(C dB)
    dtA = np.asarray(dt)[:, None] * np.asarray(A)
    assert_close(
        K_zoh[:, 0], 2 * np.real(np.sum(C * (np.exp(dtA) - 1) / A * B, -1)), rtol=1e-5
    )
    with pytest.raises(ValueError, match="zoh, bilinear"):
        kernel_diag(A, B, C, dt, 9, "euler")
    with pytest.raises(ValueError, match="length"):
        kernel_diag(A, B, C, dt, 0)


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
    assert_close(np.asarray(y), ref, atol=2e-5)


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


def _random_dplr(rng, H, M, r):
    Lam = -rng.uniform(0.1, 1.0, (H, M)) + 1j * rng.uniform(-8, 8, (H, M))
    P = (rng.standard_normal((r, H, M)) + 1j * rng.standard_normal((r, H, M))) * 0.5
    B = rng.standard_normal((H, M)) + 1j * rng.standard_normal((H, M))
    C = rng.standard_normal((H, M)) + 1j * rng.standard_normal((H, M))
    dt = np.array([0.01, 0.1, 0.5][:H])
    return Lam, P, B, C, dt


def _full_system(Lam, P, B, C):
    """One channel's real system of N = 2M states (S4 Thm. 1, conjugate-symmetric eigenbasis):
    A = diag(Lambda, conj Lambda) - sum_r p_r p_r^H with p_r = [P_r; conj P_r], B, C likewise."""
    p = np.concatenate([P, P.conj()], -1)  # [r, N]
    A = np.diag(np.concatenate([Lam, Lam.conj()])) - p.T @ p.conj()
    return A, np.concatenate([B, B.conj()]), np.concatenate([C, C.conj()])


def _dense_bilinear_kernel(A, B, C, dt, length):
    """Dense bilinear dA = (I - dt/2 A)^-1 (I + dt/2 A), dB = (I - dt/2 A)^-1 dt B (S4 eq. (3)),
    stepped on an impulse: K_l = C dA^l dB (real for a real system)."""
    N = A.shape[0]
    inv = np.linalg.inv(np.eye(N) - dt / 2 * A)
    dA, x = inv @ (np.eye(N) + dt / 2 * A), inv @ (dt * B)
    K = []
    for _ in range(length):
        y = C @ x
        assert abs(np.imag(y)) <= 1e-9 * max(1.0, abs(y))
        K.append(np.real(y))
        x = dA @ x
    return np.array(K)


def _dplr_reference(Lam, P, B, C, dt, length):
    return np.stack([
        _dense_bilinear_kernel(*_full_system(Lam[h], P[:, h], B[h], C[h]), dt[h], length)
        for h in range(Lam.shape[0])
    ])


@pytest.mark.parametrize("r, length", [(1, 64), (2, 37)])
def test_kernel_dplr_matches_dense_bilinear_recurrence(r, length):
    """Even (z = -1 evaluated as a limit) and odd lengths, ranks 1 and 2, dt up to 0.5 (so the
    C~ = C (I - dA^L) correction matters), float64 exact and float32 close."""
    rng = np.random.default_rng(5 + r + length)
    system = _random_dplr(rng, 3, 4, r)
    ref = _dplr_reference(*system, length)
    with jax.enable_x64(True):
        K = kernel_dplr(*map(jnp.asarray, system), length)
        assert_close(np.asarray(K), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    K32 = kernel_dplr(*(jnp.asarray(v, jnp.complex64) for v in system[:4]),
                      jnp.asarray(system[4], jnp.float32), length)
    assert K32.shape == (3, length) and K32.dtype == jnp.float32
    assert_close(np.asarray(K32), ref, atol=3e-6 * np.abs(ref).max())


def test_kernel_dplr_is_the_hippo_legs_kernel():
    """hippo.dplr's half (Lambda, P, B) with C = c V (c real) is HiPPO-LegS itself: the kernel
    equals the dense bilinear kernel of the LegS matrices (the low-rank term couples the halves)."""
    N, length, dt = 8, 50, 0.05
    A, B = hippo.transition("legs", N)
    Lam, P, B_half, V = hippo.nplr("legs", N)
    idx = hippo._positive_half(Lam)
    c = np.random.default_rng(10).standard_normal((2, N))
    ref = np.stack([_dense_bilinear_kernel(A, B, ci, dt, length) for ci in c])
    Lam_h, P_h, B_h = hippo.dplr("legs", N)
    with jax.enable_x64(True):
        tile = lambda v: jnp.asarray(np.repeat(v[..., None, :], 2, axis=-2))  # noqa: E731
        K = kernel_dplr(tile(Lam_h), tile(P_h), tile(B_h), jnp.asarray(c @ V[:, idx]),
                        jnp.full((2,), dt), length)
    assert_close(np.asarray(K), ref, rtol=1e-9, atol=1e-11 * np.abs(ref).max())


def test_dplr_step_is_the_kernel_recurrence():
    """x_k = dA x_{k-1} + dB u_k by dplr_step (Woodbury, no dense matrix) from an impulse:
    2 Re(C x_k) = K_k, and a second input channel batch is independent."""
    rng = np.random.default_rng(11)
    Lam, P, B, C, dt = _random_dplr(rng, 3, 4, 2)
    ref = _dplr_reference(Lam, P, B, C, dt, 9)
    with jax.enable_x64(True):
        Lam, P, B, C, dt = map(jnp.asarray, (Lam, P, B, C, dt))
        inv = ssm.dplr_inverse(Lam, P, dt)
        u = jnp.zeros((2, 9, 3)).at[0, 0].set(1.0).at[1, 0].set(-2.0)
        step = jax.jit(lambda x, u_k: ssm.dplr_step(inv, P, B, dt, x, u_k))
        x, ys = jnp.zeros((2, 3, 4), jnp.complex128), []
        for k in range(9):
            x = step(x, u[:, k])
            ys.append(2 * jnp.einsum("hm,bhm->bh", C, x).real)
        y = np.asarray(jnp.stack(ys, -1))
    assert_close(y[0], ref, rtol=1e-10, atol=1e-12)
    assert_close(y[1], -2 * ref, rtol=1e-10, atol=1e-12)


def test_kernel_dplr_gradients_and_zero_rank_term_is_kernel_diag():
    rng = np.random.default_rng(9)
    Lam, P, B, C, dt = _random_dplr(rng, 2, 3, 1)

    def f(p_re, p_im, lam_re, c_im, log_dt):
        Pc = jax.lax.complex(p_re, p_im)
        Lc = jax.lax.complex(lam_re, jnp.asarray(Lam.imag))
        Cc = jax.lax.complex(jnp.asarray(C.real), c_im)
        return kernel_dplr(Lc, Pc, jnp.asarray(B), Cc, jnp.exp(log_dt), 9)

    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, (P.real, P.imag, Lam.real, C.imag, np.log(dt))))
        check_grads(jax.jit(f), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
        K0 = jax.jit(f)(0 * args[0], 0 * args[1], *args[2:])  # P = 0: a diagonal system
        assert_close(
            K0, kernel_diag(*map(jnp.asarray, (Lam, B, C, dt)), 9, "bilinear"), atol=1e-12
        )
    with pytest.raises(ValueError, match="length"):
        ssm.kernel_dplr(*map(jnp.asarray, (Lam, P, B, C, dt)), 0)


@pytest.mark.parametrize("length", [1, 5, 6, 13])
def test_c_from_c_tilde_inverts_c_times_i_minus_da_power(length):
    """C~ = C (I - dA^L) built with numpy's matrix_power on the dense system; c_from_c_tilde
    must return C. Short L and dt up to 0.5 keep dA^L far from 0 (odd and even L, so every
    branch of the repeated squaring counts)."""
    rng = np.random.default_rng(length)
    Lam, P, _, C, dt = _random_dplr(rng, 3, 4, 1)
    C_t = np.empty_like(C)
    for h in range(3):
        A, _, c_full = _full_system(Lam[h], P[:, h], C[h], C[h])
        inv = np.linalg.inv(np.eye(8) - dt[h] / 2 * A)
        dA = inv @ (np.eye(8) + dt[h] / 2 * A)
        power = np.linalg.matrix_power(dA, length)
        assert np.abs(power).max() > 0.1  # the correction is not negligible
        C_t[h] = (c_full @ (np.eye(8) - power))[:4]
    with jax.enable_x64(True):
        got = ssm.c_from_c_tilde(*map(jnp.asarray, (Lam, P, C_t, dt)), length)
        assert_close(np.asarray(got), C, rtol=1e-9, atol=1e-10)
