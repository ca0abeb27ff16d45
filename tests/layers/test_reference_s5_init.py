"""S5's initial parameters against its paper (Smith et al. 2023, Sec. 4.2 and App. B).

Lambda: the eigenvalues of HiPPO-N, the normal part A + P P^T of HiPPO-LegS (S4 Thm. 1, P_n =
sqrt(n + 1/2)), in each of J blocks; real parts all -1/2. B~ = V^* B and C~ = C V with the
reference's draws (lindermanlab/S5: B LeCun-normal on (P, H), std 1/sqrt(P); C complex, each
part std 1/sqrt(P)), so E|B~|^2 = 1/P and E|C~|^2 = 2/P (V has orthonormal columns).
"""

import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers.s5 import S5


def _complex(p):
    p = np.asarray(p, np.float64)
    return p[..., 0] + 1j * p[..., 1]


def _lambda(layer):
    re = np.asarray(layer.Lambda_re[...], np.float64)
    re = -np.exp(re) if layer.real_param == "exp" else re
    return re + 1j * np.asarray(layer.Lambda_im[...], np.float64)


def hippo_n_eigs(size):
    """Eigenvalues with positive imaginary part of A_LegS + P P^T (size x size), increasing."""
    n = np.arange(size)
    r = np.sqrt(2 * n + 1)
    A = np.where(n[:, None] > n[None], -np.outer(r, r), 0.0) - np.diag(n + 1.0)
    p = np.sqrt(n + 0.5)
    w = np.linalg.eigvals(A + np.outer(p, p))
    w = w[w.imag > 0]
    return w[np.argsort(w.imag)]


@pytest.mark.parametrize("P,blocks", [(8, 1), (16, 2)])
def test_s5_lambda_is_block_hippo_n(P, blocks):
    lam = _lambda(S5(4, d_state=P, blocks=blocks, rngs=nnx.Rngs(0)))
    want = hippo_n_eigs(P // blocks)
    assert_close(np.real(lam), np.full(P // 2, -0.5), rtol=1e-6, atol=1e-6)
    for j in range(blocks):  # each block holds the same spectrum
        block = lam[j * (P // blocks // 2):(j + 1) * (P // blocks // 2)]
        assert_close(np.sort(block.imag), want.imag, rtol=1e-5, atol=1e-5)


def test_s5_b_and_c_statistics_follow_the_reference():
    """H = 256 channels, P = 16: mean |B~|^2 = 1/P and mean |C~|^2 = 2/P within 10%."""
    P, H = 16, 256
    layer = S5(H, d_state=P, blocks=1, rngs=nnx.Rngs(0))
    B, C = _complex(layer.B[...]), _complex(layer.C[...])
    assert abs(np.mean(np.abs(B) ** 2) * P - 1) < 0.1
    assert abs(np.mean(np.abs(C) ** 2) * P / 2 - 1) < 0.1
