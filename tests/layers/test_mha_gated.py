"""MHA with per-head q/k norms (``qk_norm``), the output gate (``output_gate``) and partial RoPE
against a float64 reference, values and gradients of every parameter; decode equals forward.

Reference (Qwen3-Next's gated attention; Vaswani et al. 2017 eq. 1; RoFormer eq. 34), float64
jax written from the definitions: [q_h | gate_h] = x W_Q per head; k, v = x W_K, x W_V;
q, k <- q / rms(q) * (1 + w_q), k / rms(k) * (1 + w_k) per head ("rms_offset"; "rms": * w);
RoPE (rotate-half pairs i, i + r/2, angle pos * base^(-2i/r)) on the first r dims of each head;
query head h reads key/value head h // (Hq / H); o_h = softmax(q_h k^T / sqrt(D) + causal) v;
y = (o * sigmoid(gate)) W_O.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from _float64_check import assert_matches_float64
from flax import nnx

from seqlab.layers.attention import MultiHeadAttention

B, T, D_MODEL, HQ, H, D, R, EPS = 2, 7, 16, 4, 2, 6, 4, 1e-5


def reference(p, x, offset_norm):
    b, t = x.shape[:2]
    qg = (x @ p["wq.kernel"]).reshape(b, t, HQ, 2 * D)
    q, gate = qg[..., :D], qg[..., D:]
    k = (x @ p["wk.kernel"]).reshape(b, t, H, D)
    v = (x @ p["wv.kernel"]).reshape(b, t, H, D)

    def norm(y, w):
        y = y / jnp.sqrt(jnp.mean(y * y, -1, keepdims=True) + EPS)
        return y * (1 + w) if offset_norm else y * w

    name = "scale" if offset_norm else "weight"
    q, k = norm(q, p[f"q_norm.{name}"]), norm(k, p[f"k_norm.{name}"])
    angle = jnp.arange(t)[:, None] * 10000.0 ** (-np.arange(0, R, 2) / R)  # [t, R/2]
    cos, sin = jnp.cos(angle)[None, :, None], jnp.sin(angle)[None, :, None]

    def rope(y):
        y1, y2, rest = y[..., : R // 2], y[..., R // 2 : R], y[..., R:]
        return jnp.concatenate([y1 * cos - y2 * sin, y2 * cos + y1 * sin, rest], -1)

    q, k = rope(q), rope(k)
    kv = np.arange(HQ) // (HQ // H)
    logits = jnp.einsum("bthd,bshd->bhts", q, k[:, :, kv]) / np.sqrt(D)
    logits = jnp.where(np.tril(np.ones((t, t), bool)), logits, -jnp.inf)
    o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), v[:, :, kv])
    return (o * jax.nn.sigmoid(gate)).reshape(b, t, HQ * D) @ p["wo.kernel"]


def _layer(qk_norm):
    layer = MultiHeadAttention(D_MODEL, n_heads=HQ, n_kv_heads=H, head_dim=D, rope_dim=R,
                               qk_norm=qk_norm, norm_eps=EPS, output_gate=True,
                               rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for norm in (layer.q_norm, layer.k_norm):
        w = norm.scale if qk_norm == "rms_offset" else norm.weight
        w[...] = jnp.asarray(rng.uniform(-0.5, 0.5, w.shape) + (qk_norm == "rms"), jnp.float32)
    return layer


@pytest.mark.parametrize("qk_norm", ["rms_offset", "rms"])
def test_gated_attention_matches_float64_reference(qk_norm):
    layer = _layer(qk_norm)
    assert layer.wq.kernel.shape == (D_MODEL, HQ * 2 * D)
    x = np.random.default_rng(2).standard_normal((B, T, D_MODEL))
    assert_matches_float64(layer, x, lambda p, x: reference(p, x, qk_norm == "rms_offset"))


def test_gated_attention_decode_equals_forward_and_gateless_paths_refuse():
    layer = _layer("rms_offset")
    x = jax.random.normal(jax.random.key(4), (B, T, D_MODEL))
    y = jax.jit(lambda x: layer(x))(x)
    step = jax.jit(lambda m, x, c: m.decode(x, c))
    cache, ys = layer.init_cache(B, T), []
    for t0, t1 in [(0, 4), (4, 5), (5, 6), (6, 7)]:
        y_t, cache = step(layer, x[:, t0:t1], cache)
        ys.append(y_t)
    assert_close(jnp.concatenate(ys, 1), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no output gate"):
        layer.qkv(x, jnp.arange(T))
    with pytest.raises(ValueError, match="qk_norm"):
        MultiHeadAttention(D_MODEL, qk_norm="layer", rngs=nnx.Rngs(0))
