"""The building blocks pretrained checkpoints need, against float64 references: RMSNorm with
the (1 + w) scale, norm epsilons, the FFN's hidden width and biases, tied output layers, and
attention with q/k/v and output biases and rescaled (linear, Llama 3) RoPE frequencies."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.config import ModelConfig, TaskInfo
from seqlab.layers.attention import MultiHeadAttention
from seqlab.models import FFN, ModelBuildError, Norm, build_model
from seqlab.models.blocks import OffsetRMSNorm
from seqlab.ops.rope import rope_frequencies

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def llama3_theta_reference(dim, base, s):
    """Llama 3.1's frequency rescaling, one frequency at a time, from its definition: keep
    wavelengths below original/high, divide by factor above original/low, interpolate the
    band between linearly in original/wavelength."""
    out = []
    for i in range(0, dim, 2):
        theta = 1.0 / base ** (i / dim)
        wavelength = 2 * math.pi / theta
        if wavelength < s["original_max_position_embeddings"] / s["high_freq_factor"]:
            out.append(theta)
        elif wavelength > s["original_max_position_embeddings"] / s["low_freq_factor"]:
            out.append(theta / s["factor"])
        else:
            t = ((s["original_max_position_embeddings"] / wavelength - s["low_freq_factor"])
                 / (s["high_freq_factor"] - s["low_freq_factor"]))
            out.append((1 - t) * theta / s["factor"] + t * theta)
    return np.array(out)


def test_rope_frequencies():
    theta, factor = rope_frequencies(16, 500.0, LLAMA3)
    want = llama3_theta_reference(16, 500.0, LLAMA3)
    np.testing.assert_allclose(theta, want, rtol=1e-13)
    assert factor == 1.0
    # the three regimes all occur at these sizes, so each branch is tested
    plain = 500.0 ** (-np.arange(0, 16, 2) / 16)
    assert (theta == plain).any() and np.isclose(theta, plain / 8).any()
    assert ((theta < plain) & (theta > plain / 8)).any()
    np.testing.assert_allclose(rope_frequencies(8, 1e4, {"rope_type": "linear", "factor": 4})[0],
                               1e4 ** (-np.arange(0, 8, 2) / 8) / 4, rtol=1e-13)
    with pytest.raises(ValueError, match="dynamic"):
        rope_frequencies(8, 1e4, {"rope_type": "dynamic", "factor": 2})
    with pytest.raises(ValueError, match="low_freq_factor"):
        rope_frequencies(8, 1e4, {"rope_type": "llama3", "factor": 2})


def np_rope(x, pos, theta):
    half = x.shape[-1] // 2
    ang = pos[:, None] * theta[None]
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def test_mha_with_biases_and_llama3_rope_matches_reference():
    b, t, d, hq, hk, dh = 2, 11, 24, 6, 2, 8
    layer = MultiHeadAttention(d, n_heads=hq, n_kv_heads=hk, head_dim=dh, qkv_bias=True,
                               out_bias=True, rope_base=500.0, rope_scaling=LLAMA3,
                               rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for n in ("wq", "wk", "wv", "wo"):  # biases start at 0: give them values
        bias = getattr(layer, n).bias
        bias[...] = jnp.asarray(rng.standard_normal(bias.shape), jnp.float32)
    x = rng.standard_normal((b, t, d))

    def lin(n, a):
        p = getattr(layer, n)
        return a @ np.asarray(p.kernel[...], np.float64) + np.asarray(p.bias[...], np.float64)

    theta, pos = llama3_theta_reference(dh, 500.0, LLAMA3), np.arange(t, dtype=np.float64)
    q = np_rope(lin("wq", x).reshape(b, t, hq, dh), pos, theta)
    k = np_rope(lin("wk", x).reshape(b, t, hk, dh), pos, theta)
    v = lin("wv", x).reshape(b, t, hk, dh)
    o = np.zeros((b, t, hq, dh))
    for h in range(hq):
        lg = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // 3]) / np.sqrt(dh)
        lg = lg + np.where(np.tri(t), 0, -np.inf)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        o[:, :, h] = np.einsum("bts,bsd->btd", p / p.sum(-1, keepdims=True), v[:, :, h // 3])
    want = lin("wo", o.reshape(b, t, hq * dh))
    xj = jnp.asarray(x, jnp.float32)
    assert_close(layer(xj), want, atol=5e-5)
    cache, ys = layer.init_cache(b, t), []
    for chunk in (xj[:, :4], xj[:, 4:5], xj[:, 5:]):  # prefill, a step, the rest
        y, cache = layer.decode(chunk, cache)
        ys.append(y)
    assert_close(jnp.concatenate(ys, 1), want, atol=5e-5)


def test_offset_rmsnorm_values_and_gradients():
    norm = OffsetRMSNorm(6, eps=1e-5)
    norm.scale[...] = jnp.asarray(np.random.default_rng(0).standard_normal(6), jnp.float32)
    x = np.random.default_rng(1).standard_normal((3, 5, 6))
    w = np.asarray(norm.scale[...], np.float64)

    def ref(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * (1 + w)

    assert_close(norm(jnp.asarray(x, jnp.float32)), ref(x), atol=1e-5)
    # gradient of sum(y * c) w.r.t. x, against central differences of the float64 reference
    c = np.random.default_rng(2).standard_normal(x.shape)
    g = jax.grad(lambda a: jnp.sum(norm(a) * c))(jnp.asarray(x, jnp.float32))
    eps, num = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        num[idx] = ((ref(x + e) - ref(x - e)) * c).sum() / (2 * eps)
    assert_close(g, num, atol=1e-4)
    assert Norm("rms_offset", 6, rngs=nnx.Rngs(0)).norm.scale[...].sum() == 0  # identity at init


def test_norm_eps_reaches_the_norms():
    x = 1e-3 * jnp.array([[[1.0, -1.0, 2.0, -2.0]]])  # mean(x^2) ~ 1e-6: eps matters
    for kind in ("rms", "rms_offset", "layer"):
        small, large = (Norm(kind, 4, eps=e, rngs=nnx.Rngs(0))(x) for e in (1e-8, 1.0))
        assert not np.allclose(small, large), kind


def test_ffn_hidden_width_and_bias():
    ffn = FFN("glu", 8, 2, hidden=5, bias=False, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert ffn.w_in.kernel.shape == (8, 10) and ffn.w_out.kernel.shape == (5, 8)
    assert ffn.w_in.bias is None and ffn.w_out.bias is None
    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    w_in, w_out = (np.asarray(p.kernel[...], np.float64) for p in (ffn.w_in, ffn.w_out))
    gate, up = x @ w_in[:, :5], x @ w_in[:, 5:]
    assert_close(ffn(jnp.asarray(x, jnp.float32)), (gate / (1 + np.exp(-gate)) * up) @ w_out,
                 atol=1e-5)


def test_tied_embeddings_through_the_config_path():
    cfg = ModelConfig(mixer="mha", d_model=16, n_layers=1, norm="rms_offset", norm_eps=1e-5,
                      ffn="glu", ffn_hidden=24, bias=False, tie_embeddings=True)
    info = TaskInfo(task="token", n_classes=50, vocab_size=50, input_dim=None, max_length=32,
                    causal=True)
    model = build_model(cfg, info, rngs=nnx.Rngs(0))
    assert model.head is None
    tokens = jnp.arange(10)[None] % 50
    h = model.backbone(model.embed(tokens))
    assert_close(model(tokens), np.asarray(h) @ np.asarray(model.embed.embedding[...]).T,
                 atol=1e-5)
    with pytest.raises(ModelBuildError, match="tie_embeddings"):
        build_model(cfg, TaskInfo(task="classify", n_classes=2, vocab_size=50, input_dim=None,
                                  max_length=32), rngs=nnx.Rngs(0))
