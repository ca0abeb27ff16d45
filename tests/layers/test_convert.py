"""TransMLA gqa_to_mla: exact at full rank with the same cache size; error falls with rank."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.convert import gqa_to_mla


def cache_bytes(layer):
    return sum(a.nbytes for n, a in layer.init_cache(1, 1).items() if n != "pos")


@pytest.mark.parametrize("hq,hk", [(4, 2), (4, 1)])
def test_full_rank_is_exact(hq, hk):
    gqa = MultiHeadAttention(32, n_heads=hq, n_kv_heads=hk, head_dim=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 32))
    calib = np.asarray(jax.random.normal(jax.random.key(1), (64, 32)))
    mla = gqa_to_mla(gqa, calib_x=calib)
    assert cache_bytes(mla) == cache_bytes(gqa)
    want = jax.jit(lambda x: gqa(x))(x)
    assert_close(jax.jit(lambda x: mla(x))(x), want, atol=2e-5)
    y, _ = jax.jit(mla.decode)(x, mla.init_cache(2, 9))  # absorbed decode path (prefill)
    assert_close(y, want, atol=2e-5)


def test_error_falls_with_rank():
    gqa = MultiHeadAttention(32, n_heads=4, n_kv_heads=2, head_dim=8, rngs=nnx.Rngs(0))
    # correlated inputs (a decaying spectrum) as a trained model's would be
    mix = np.asarray(jax.random.normal(jax.random.key(2), (32, 32))) * 0.8 ** np.arange(32)[:, None]
    z = np.asarray(jax.random.normal(jax.random.key(3), (2, 12, 32)))
    x = jnp.asarray(z @ mix, jnp.float32)
    want = jax.jit(lambda x: gqa(x))(x)

    def err(rank, rope_heads=None):
        mla = gqa_to_mla(gqa, rank, rope_heads=rope_heads, calib_x=np.asarray(x).reshape(-1, 32))
        y = jax.jit(lambda x: mla(x))(x)
        return float(jnp.linalg.norm(y - want) / jnp.linalg.norm(want))

    errors = [err(r) for r in (2, 8, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-5
    # the paper's RoRoPE with one roped head: approximate even at full rank, better with rank
    assert err(4, rope_heads=1) > err(24, rope_heads=1) > 1e-6


def test_bad_arguments():
    gqa = MultiHeadAttention(16, n_heads=2, n_kv_heads=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kv_lora_rank"):
        gqa_to_mla(gqa, 1000)
    with pytest.raises(ValueError, match="rope_heads"):
        gqa_to_mla(gqa, rope_heads=2)
    with pytest.raises(ValueError, match="rope_dim=None"):
        gqa_to_mla(MultiHeadAttention(16, rope_dim=0, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="rotate-half"):
        gqa_to_mla(MultiHeadAttention(16, rope_layout="interleaved", rngs=nnx.Rngs(0)))


def test_low_rank_is_the_balanced_pca_of_the_paper():
    """BKV-PCA (TransMLA section 4.3) at rank < full: the converted layer's NoPE-key and value
    projections are the best rank-r approximation of [alpha W_K_nope, W_V] (then W_K_nope's block
    divided by alpha), alpha = ||W_V||_F / ||W_K_nope||_F balancing the two (isotropic inputs).
    W_K_nope and W_V are read off the full-rank conversion, where alpha cancels; the rank-r
    approximation is numpy's SVD in float64."""
    gqa = MultiHeadAttention(16, n_heads=2, n_kv_heads=2, head_dim=8, rngs=nnx.Rngs(0))

    def kv(mla):  # -> effective W_K_nope [d, nope] (head 0; all heads share it), W_V [d, hk*dh]
        r = mla.wk_b.shape[0]
        c = np.asarray(mla.wkv_a.kernel[...], np.float64)[:, :r]
        return (c @ np.asarray(mla.wk_b[...], np.float64)[:, 0],
                c @ np.asarray(mla.wv_b[...], np.float64).reshape(r, -1))

    wk, wv = kv(gqa_to_mla(gqa, rope_heads=1))
    alpha = np.linalg.norm(wv) / np.linalg.norm(wk)
    m = np.concatenate([alpha * wk, wv], axis=1)
    _, _, vt = np.linalg.svd(m)
    m6 = m @ vt[:6].T @ vt[:6]
    got_k, got_v = kv(gqa_to_mla(gqa, 6, rope_heads=1))
    assert_close(got_k, m6[:, :8] / alpha, atol=1e-5 * np.abs(wk).max())
    assert_close(got_v, m6[:, 8:], atol=1e-5 * np.abs(wv).max())
