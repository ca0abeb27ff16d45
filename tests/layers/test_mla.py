"""MLA: float64 reference of DeepSeek-V2 eqs. 37-47, naive == absorb == parallel, cache size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.mla import MLA


def np_rope(x, pos):
    """Rotate-half RoPE (RoFormer eq. 34) in float64: x [b, t, h, d], pos [t]."""
    half = x.shape[-1] // 2
    ang = pos[:, None] * 10000.0 ** (-np.arange(half) * 2 / x.shape[-1])
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def test_mla_matches_reference():
    layer = MLA(16, n_heads=2, kv_lora_rank=6, qk_nope_head_dim=4, rope_dim=4,
                v_head_dim=3, kv_norm=False, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 5, 16))
    wq = np.asarray(layer.wq.kernel[...], np.float64).reshape(16, 2, 8)
    wkv = np.asarray(layer.wkv_a.kernel[...], np.float64)
    wuk, wuv = np.asarray(layer.wk_b[...], np.float64), np.asarray(layer.wv_b[...], np.float64)
    wo = np.asarray(layer.wo.kernel[...], np.float64)
    pos = np.arange(5)
    q = np.einsum("btd,dhe->bthe", x, wq)
    q = np.concatenate([q[..., :4], np_rope(q[..., 4:], pos)], -1)
    c, kr = x @ wkv[:, :6], np_rope((x @ wkv[:, 6:])[:, :, None], pos)
    k = np.concatenate([np.einsum("bsr,rhn->bshn", c, wuk), np.repeat(kr, 2, 2)], -1)
    v = np.einsum("bsr,rhv->bshv", c, wuv)
    lg = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(8) + np.where(np.tri(5), 0, -np.inf)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    o = np.einsum("bhts,bshv->bthv", p / p.sum(-1, keepdims=True), v).reshape(2, 5, 6)
    got = jax.jit(lambda x: layer(x))(jnp.asarray(x, jnp.float32))
    assert_close(got, o @ wo, atol=2e-5)


def test_mla_naive_equals_absorb_equals_parallel(q_lora_rank=8):
    x = jax.random.normal(jax.random.key(0), (2, 7, 32))
    layers = {m: MIXERS["mla"](d_model=32, q_lora_rank=q_lora_rank, decode_mode=m, rngs=nnx.Rngs(3))
              for m in ("naive", "absorb")}
    y = jax.jit(lambda x: layers["absorb"](x))(x)
    assert_close(jax.jit(lambda x: layers["naive"](x))(x), y, atol=1e-6)
    for mode, layer in layers.items():
        cache, step = layer.init_cache(2, 10), jax.jit(layer.decode)
        ys = []
        for t in range(7):
            yt, cache = step(x[:, t : t + 1], cache)
            ys.append(yt)
        assert_close(jnp.concatenate(ys, 1), y, atol=2e-6, err_msg=mode)
        cache = layer.init_cache(2, 10)
        y1, cache = step(x[:, :3], cache)
        y2, _ = step(x[:, 3:], cache)
        assert_close(jnp.concatenate([y1, y2], 1), y, atol=2e-6, err_msg=mode)


def test_mla_cache_bytes_per_token():
    layer = MLA(64, n_heads=4, kv_lora_rank=24, rope_dim=8, rngs=nnx.Rngs(0))
    cache = layer.init_cache(3, 10)
    per_token = sum(a.nbytes for n, a in cache.items() if n != "pos") / (3 * 10)
    assert per_token == (24 + 8) * 4


def test_mla_padding_and_options():
    layer = MLA(16, causal=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    fwd = jax.jit(lambda x, mask: layer(x, mask))
    assert_close(fwd(x.at[1, 4:].set(50.0), mask)[1, :4], fwd(x[1:, :4], None)[0],
                               atol=2e-6)
    with pytest.raises(ValueError, match="no decode"):
        layer.init_cache(1, 4)
    with pytest.raises(ValueError, match="decode_mode"):
        MLA(16, decode_mode="fast", rngs=nnx.Rngs(0))
