"""DeltaNet / Gated DeltaNet / DeltaProduct: protocol, decode == forward, padding, learning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS
from seqlab.layers.common import SSMParam
from seqlab.layers.deltanet import DeltaProduct

CASES = {  # name -> options exercising every branch (gate, n_h > 1, beta in [0, 2])
    "deltanet": dict(allow_neg_eigval=True),
    "gated-deltanet": dict(),
    "deltaproduct": dict(n_householder=3, use_forget_gate=True, allow_neg_eigval=True),
}


def make(name, d_model=16, **extra):
    return MIXERS[name](d_model=d_model, rngs=nnx.Rngs(0), n_heads=2, chunk_size=4,
                        **{**CASES[name], **extra})


def test_defaults_build_and_gate_parameters_are_ssm_params():
    for name in CASES:
        mixer = MIXERS[name](d_model=32, rngs=nnx.Rngs(0))
        y = jax.jit(lambda x, mixer=mixer: mixer(x))(jnp.ones((1, 3, 32)))
        assert y.shape == (1, 3, 32) and bool(jnp.isfinite(y).all())
        gated = name == "gated-deltanet"
        assert isinstance(mixer.A_log, SSMParam) == gated
        assert isinstance(mixer.dt_bias, SSMParam) == gated


@pytest.mark.parametrize("name", ["deltanet", "deltaproduct"])
def test_decode_token_by_token_and_prefill_equal_forward(name):
    mixer = make(name)
    x = jax.random.normal(jax.random.key(1), (2, 9, 16))
    y = jax.jit(lambda x: mixer(x))(x)
    decode = jax.jit(mixer.decode)
    cache = mixer.init_cache(2, 9)
    y_pre, cache = decode(x[:, :3], cache)  # prefill, then one token at a time
    steps = [y_pre]
    for t in range(3, 9):
        y_t, cache = decode(x[:, t : t + 1], cache)
        steps.append(y_t)
    assert_close(jnp.concatenate(steps, 1), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gated-deltanet", "deltaproduct"])
def test_padding_does_not_change_real_positions(name):
    mixer = make(name)
    x = jax.random.normal(jax.random.key(2), (2, 11, 16))
    mask = jnp.arange(11)[None, :] < jnp.array([[11], [6]])
    y = jax.jit(lambda x, m: mixer(x, m))(x, mask)
    y_short = jax.jit(lambda x: mixer(x))(x[1:, :6])
    assert_close(y[1, :6], y_short[0], rtol=1e-4, atol=1e-5)
    x_junk = x.at[1, 6:].set(100.0)  # whatever sits in the padding must not leak
    assert_close(jax.jit(lambda x, m: mixer(x, m))(x_junk, mask)[1, :6], y[1, :6],
                               rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32():
    x = jax.random.normal(jax.random.key(3), (2, 6, 16))
    m32, m16 = make("deltaproduct"), make("deltaproduct", dtype=jnp.bfloat16)
    y32, y16 = jax.jit(lambda x: (m32(x), m16(x)))(x)
    assert y16.dtype == jnp.bfloat16
    assert_close(np.asarray(y16, np.float32), y32, rtol=0.1, atol=0.05)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="n_heads"):
        MIXERS["deltanet"](d_model=10, rngs=nnx.Rngs(0), n_heads=3)
    with pytest.raises(ValueError, match="n_householder"):
        MIXERS["deltaproduct"](d_model=8, rngs=nnx.Rngs(0), n_householder=0)
    with pytest.raises(ValueError, match="d_model=8"):
        MIXERS["deltanet"](d_model=8, rngs=nnx.Rngs(0))(jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match="qk_activation 'tanh'.*silu, relu, identity"):
        MIXERS["gated-deltanet"](d_model=8, rngs=nnx.Rngs(0), qk_activation="tanh")
    with pytest.raises(ValueError, match="'xla' or 'pallas'"):
        MIXERS["deltanet"](d_model=32, rngs=nnx.Rngs(0), implementation="triton")
    with pytest.raises(ValueError, match="powers of two.*K=8"):  # head_dim 32 / 4 heads = 8
        MIXERS["deltanet"](d_model=32, rngs=nnx.Rngs(0), implementation="pallas")


def test_pallas_implementation_equals_xla_forward_and_decode():
    """Same parameters, implementation='pallas' (interpret mode here) vs 'xla': the forward of
    a length that pads the last chunk, and a prefill (shorter than one chunk) then one step."""
    opts = dict(d_model=32, n_heads=2, use_forget_gate=True, n_householder=2)
    xla = MIXERS["deltaproduct"](rngs=nnx.Rngs(0), **opts)
    pallas = MIXERS["deltaproduct"](rngs=nnx.Rngs(0), implementation="pallas", **opts)
    x = jax.random.normal(jax.random.key(3), (2, 21, 32))
    assert_close(pallas(x), xla(x), rtol=1e-5, atol=1e-6)
    cache_x, cache_p = xla.init_cache(2), pallas.init_cache(2)
    for part in (x[:, :20], x[:, 20:]):
        (y_x, cache_x), (y_p, cache_p) = xla.decode(part, cache_x), pallas.decode(part, cache_p)
        assert_close(y_p, y_x, rtol=1e-5, atol=1e-6)


class _ParityNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(2, 16, rngs=rngs)
        self.mixer = DeltaProduct(16, n_heads=1, n_householder=1, allow_neg_eigval=True,
                                  chunk_size=16, rngs=rngs)
        self.head = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        return self.head(h + self.mixer(h))


def test_negative_eigenvalues_learn_parity():
    """Grazzi et al. 2025: beta in [0, 2] lets a one-layer delta rule track parity."""
    model = _ParityNet(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    @jax.jit
    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)

        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        grads = nnx.grad(loss)(model)
        opt.update(model, grads)
        return nnx.state((model, opt))

    rng = np.random.default_rng(0)
    for _ in range(150):
        x = rng.integers(0, 2, (32, 16))
        state = step(state, x, np.cumsum(x, 1) % 2)
    model, _ = nnx.merge(graphdef, state)
    x = rng.integers(0, 2, (256, 16))
    accuracy = float((jax.jit(model)(x).argmax(-1) == np.cumsum(x, 1) % 2).mean())
    assert accuracy > 0.98, accuracy  # chance is 0.5; beta in [0, 1] stays near 0.7 here


def test_defaults_against_fla():
    """Gated DeltaNet as fla's GatedDeltaNet: expand_v = 2, A ~ U(0, 16); DeltaProduct with
    beta in [0, 2] (fla's GatedDeltaProduct and Siems et al.), no forget gate, expand_v = 1."""
    gdn = MIXERS["gated-deltanet"](d_model=32, rngs=nnx.Rngs(0), n_heads=64, head_dim=4)
    assert gdn.v_dim == 2 * gdn.head_dim
    A = np.exp(np.asarray(gdn.A_log[...]))
    assert A.min() < 1.0 and 0 < A.min() and A.max() < 16  # U(0, 16): 1/16 of 64 draws < 1
    dp = MIXERS["deltaproduct"](d_model=32, rngs=nnx.Rngs(0))
    assert dp.allow_neg_eigval and dp.a_proj is None and dp.v_dim == dp.head_dim
