"""MultiHeadAttention: float64 reference from its weights, decode == forward, padding, cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.attention import MultiHeadAttention


def np_rope(x, pos):
    half = x.shape[-1] // 2
    ang = pos[:, None] * 10000.0 ** (-np.arange(half) * 2 / x.shape[-1])
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def np_partial_rope(x, pos, r):
    """RoPE on the first r dims of each head (frequencies over r dims), the rest unchanged."""
    return np.concatenate([np_rope(x[..., :r], pos), x[..., r:]], -1) if r else x


@pytest.mark.parametrize("rope_dim", [None, 2, 0])
def test_mha_matches_reference_gqa(rope_dim):
    layer = MultiHeadAttention(24, n_heads=6, n_kv_heads=2, rope_dim=rope_dim, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((2, 7, 24))
    w = {n: np.asarray(getattr(layer, n).kernel[...], np.float64) for n in ("wq", "wk", "wv", "wo")}
    pos, r = np.arange(7), 4 if rope_dim is None else rope_dim
    q = np_partial_rope((x @ w["wq"]).reshape(2, 7, 6, 4), pos, r)
    k = np_partial_rope((x @ w["wk"]).reshape(2, 7, 2, 4), pos, r)
    v = (x @ w["wv"]).reshape(2, 7, 2, 4)
    o = np.zeros((2, 7, 6, 4))
    for h in range(6):
        lg = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // 3]) / 2
        lg = lg + np.where(np.tri(7), 0, -np.inf)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        o[:, :, h] = np.einsum("bts,bsd->btd", p / p.sum(-1, keepdims=True), v[:, :, h // 3])
    want = o.reshape(2, 7, 24) @ w["wo"]
    assert_close(layer(jnp.asarray(x, jnp.float32)), want, atol=2e-5)


@pytest.mark.parametrize("kv", [4, 1])
def test_mha_decode_equals_forward(kv):
    layer = MIXERS["mha"](d_model=16, n_kv_heads=kv, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 16))
    y = jax.jit(lambda x: layer(x))(x)
    cache, step = layer.init_cache(2, 12), jax.jit(layer.decode)
    ys = []
    for t in range(9):
        yt, cache = step(x[:, t : t + 1], cache)
        ys.append(yt)
    assert_close(jnp.concatenate(ys, 1), y, atol=2e-6)
    cache = layer.init_cache(2, 12)
    y1, cache = step(x[:, :4], cache)
    y2, cache = step(x[:, 4:], cache)
    assert_close(jnp.concatenate([y1, y2], 1), y, atol=2e-6)
    assert int(cache["pos"]) == 9
    per_token = sum(a.nbytes for n, a in cache.items() if n != "pos") / (2 * 12)
    assert per_token == 2 * kv * 4 * 4  # k and v, kv heads of dim 4, float32


@pytest.mark.parametrize("causal", [True, False])
def test_mha_padding_does_not_change_real_outputs(causal):
    layer = MultiHeadAttention(16, causal=causal, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 16))
    mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
    fwd = jax.jit(lambda x, mask: layer(x, mask))
    short = fwd(x[1:, :5], None)
    assert_close(fwd(x, mask)[1, :5], short[0], atol=2e-6)
    garbage = x.at[1, 5:].set(100.0)
    assert_close(fwd(garbage, mask)[1, :5], short[0], atol=2e-6)
    if not causal:
        with pytest.raises(ValueError, match="no decode"):
            layer.init_cache(1, 4)


def test_mha_bad_options():
    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(16, n_heads=4, n_kv_heads=3, rngs=nnx.Rngs(0))
    for bad in (3, 6, -2):  # odd, above head_dim = 4, negative
        with pytest.raises(ValueError, match="rope_dim"):
            MultiHeadAttention(16, n_heads=4, rope_dim=bad, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_model=16"):
        MultiHeadAttention(16, rngs=nnx.Rngs(0))(jnp.zeros((1, 3, 8)))


def test_decoding_past_the_cache_is_an_error_not_a_silent_overwrite():
    for name, args in (("mha", {"n_heads": 2}), ("mla", {"n_heads": 2})):
        layer = MIXERS[name](d_model=16, rngs=nnx.Rngs(0), **args)
        x = jnp.ones((1, 5, 16))
        with pytest.raises(ValueError, match="cache overflow"):
            layer.decode(x, layer.init_cache(1, 4))
        step = nnx.jit(lambda m, x, c: m.decode(x, c))
        cache = layer.init_cache(1, 4)
        finite = []
        for t in range(5):
            y, cache = step(layer, x[:, t : t + 1], cache)
            finite.append(bool(jnp.isfinite(y).all()))
        assert finite == [True] * 4 + [False], (name, finite)


def test_interleaved_rope_is_deepseeks_and_loads_permuted_weights():
    """rope_layout='interleaved' rotates pairs (2i, 2i+1) as a complex product (DeepSeek's
    apply_rotary_emb); an MHA with interleaved RoPE and its q/k weights permuted per head
    equals the rotate-half MHA: converted checkpoints load by choosing the layout."""
    from seqlab.layers.attention import rope

    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 5, 2, 8)), np.float64)
    pos = np.arange(5.0)
    theta = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * pos[None, :, None, None] * theta)
    ref = np.stack([z.real, z.imag], -1).reshape(x.shape)
    assert_close(rope(jnp.asarray(x, jnp.float32), jnp.arange(5), 10000.0,
                                    "interleaved"), ref, atol=1e-5)
    half = MultiHeadAttention(16, n_heads=2, rngs=nnx.Rngs(0))
    inter = MultiHeadAttention(16, n_heads=2, rope_layout="interleaved", rngs=nnx.Rngs(0))
    perm = np.stack([np.arange(4), np.arange(4) + 4], -1).reshape(-1)  # half -> interleaved
    cols = np.concatenate([h * 8 + perm for h in range(2)])
    for name in ("wq", "wk"):
        getattr(inter, name).kernel[...] = getattr(half, name).kernel[...][:, cols]
    xs = jax.random.normal(jax.random.key(1), (2, 6, 16))
    assert_close(inter(xs), half(xs), atol=1e-5)
    with pytest.raises(ValueError, match="rotate_half, interleaved"):
        MultiHeadAttention(16, rope_layout="neox", rngs=nnx.Rngs(0))
