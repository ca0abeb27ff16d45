"""The Bidirectional mixer (forward + backward copy of a causal mixer; Hwang et al. 2024, Sec. 5
baselines): values against an explicit per-sequence flip, padding, each combine, parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS, Bidirectional, Hydra, Mamba2
from seqlab.layers.bidirectional import reverse, reverse_index

D = 16
INNER = dict(d_state=4, head_dim=8, chunk_size=4)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(module):
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m), compiler_options=FAST)
    return lambda x, mask=None: fn(state, x, mask)


def _params(module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _np_reverse_index(mask: np.ndarray) -> np.ndarray:
    out = np.tile(np.arange(mask.shape[1]), (mask.shape[0], 1))
    for b, row in enumerate(mask):
        real = np.flatnonzero(row)
        out[b, real] = real[::-1]
    return out


def test_reverse_index_matches_a_loop_and_is_an_involution():
    rng = np.random.default_rng(0)
    masks = [np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
                      bool), rng.random((6, 11)) < 0.6, np.zeros((2, 4), bool)]
    for mask in masks:
        idx = np.asarray(reverse_index(jnp.asarray(mask)))
        np.testing.assert_array_equal(idx, _np_reverse_index(mask))
        np.testing.assert_array_equal(np.take_along_axis(idx, idx, 1),
                                      np.tile(np.arange(mask.shape[1]), (len(mask), 1)))
    np.testing.assert_array_equal(np.asarray(reverse_index(jnp.asarray(masks[0])))[0],
                                  [2, 1, 0, 3, 4])  # right padding: only the real part flips
    x = jnp.arange(10.0).reshape(1, 10, 1)
    assert_close(reverse(x, None), x[:, ::-1])
    assert_close(reverse(reverse(x, jnp.asarray(masks[1][:1, :10])), jnp.asarray(
        masks[1][:1, :10])), x)


def _reference(layer: Bidirectional, u: np.ndarray, lengths) -> np.ndarray:
    """Each right-padded row on its own: fw on the real tokens, bw on their explicit flip."""
    out = np.zeros_like(u)
    for b, n in enumerate(lengths):
        x = jnp.asarray(u[b:b + 1, :n])
        f = np.asarray(layer.fw(x))[0]
        r = np.asarray(layer.bw(x[:, ::-1]))[0, ::-1]
        if layer.combine == "add":
            out[b, :n] = f + r
        elif layer.combine == "mul":
            out[b, :n] = f * r
        else:
            w = np.asarray(layer.proj.kernel[...])
            out[b, :n] = np.concatenate([f, r], -1) @ w
    return out


@pytest.mark.parametrize("combine", ["add", "concat", "mul"])
def test_matches_an_explicit_per_sequence_flip(combine):
    layer = Bidirectional(D, combine=combine, rngs=nnx.Rngs(1), **INNER)
    lengths, total = [9, 5, 7], 11  # odd lengths, right padding, batch > 1
    u = np.array(jax.random.normal(jax.random.key(2), (3, total, D)))
    mask = np.arange(total)[None] < np.array(lengths)[:, None]
    u[~mask] = 7.0  # padding holds large values
    y = np.asarray(_jit(layer)(jnp.asarray(u), jnp.asarray(mask)))
    ref = _reference(layer, u, lengths)
    assert_close(y, ref, rtol=2e-5, atol=2e-5)
    assert (y[~mask] == 0).all()
    # unpadded: mask=None, an all-True mask and the reference agree
    full = jnp.asarray(u[:1, :9])
    assert_close(_jit(layer)(full), _jit(layer)(full, jnp.ones((1, 9), bool)), rtol=1e-6,
                 atol=1e-6)
    assert_close(_jit(layer)(full), ref[:1, :9], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("combine", ["add", "concat", "mul"])
def test_padding_content_never_matters(combine):
    """Right, left and two-sided padding: the outputs (real and padded positions) do not depend
    on what the padding holds, and the real outputs equal the unpadded sequence's."""
    layer = Bidirectional(D, combine=combine, rngs=nnx.Rngs(3), **INNER)
    apply = _jit(layer)
    real = jax.random.normal(jax.random.key(4), (3, 7, D))
    ref = apply(real)
    starts, total = np.array([0, 6, 2]), 13
    mask = (np.arange(total)[None] >= starts[:, None]) & (np.arange(total)[None] < starts[:, None]
                                                          + 7)
    outs = []
    for seed in (5, 6):
        x = np.array(5.0 * jax.random.normal(jax.random.key(seed), (3, total, D)))
        for b, s in enumerate(starts):
            x[b, s:s + 7] = real[b]
        outs.append(np.asarray(apply(jnp.asarray(x), jnp.asarray(mask))))
    np.testing.assert_array_equal(outs[0], outs[1])
    for b, s in enumerate(starts):
        assert_close(outs[0][b, s:s + 7], ref[b], rtol=2e-5, atol=2e-5, err_msg=f"row {b}")


@pytest.mark.parametrize("combine", ["add", "concat", "mul"])
def test_every_output_sees_both_ends(combine):
    layer = Bidirectional(D, combine=combine, rngs=nnx.Rngs(7), **INNER)
    u = jax.random.normal(jax.random.key(8), (1, 9, D))
    jac = jax.jacobian(lambda x: layer(x)[0, :, 0])(u)[:, 0]  # [out t, in s, D]
    strength = np.abs(np.asarray(jac)).sum(-1)
    assert (strength[0, -1] > 1e-6) and (strength[-1, 0] > 1e-6)
    causal = jax.jacobian(lambda x: layer.fw(x)[0, :, 0])(u)[:, 0]
    assert np.abs(np.asarray(causal))[0, 1:].max() == 0  # the forward copy alone is causal


def test_parameter_counts_and_registry():
    single = _params(Mamba2(D, rngs=nnx.Rngs(0), **INNER))
    counts = {c: _params(Bidirectional(D, combine=c, rngs=nnx.Rngs(0), **INNER))
              for c in ("add", "concat", "mul")}
    assert counts["add"] == counts["mul"] == 2 * single
    assert counts["concat"] == 2 * single + 2 * D * D
    m = nnx.eval_shape(lambda: MIXERS["bidirectional"](d_model=64, rngs=nnx.Rngs(0)))
    assert isinstance(m, Bidirectional) and m.causal is False and m.combine == "add"
    assert isinstance(m.fw, Mamba2) and m.fw.d_state == 64  # Mamba-2's own defaults
    by_class = Bidirectional(D, inner=Mamba2, rngs=nnx.Rngs(0), **INNER)
    assert _params(by_class) == 2 * single


def test_bad_arguments_and_no_decode():
    with pytest.raises(ValueError, match="unknown combine 'sum'"):
        Bidirectional(D, combine="sum", rngs=nnx.Rngs(0), **INNER)
    with pytest.raises(ValueError, match="unknown inner mixer 'mamba'"):
        Bidirectional(D, inner="mamba", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="must be causal"):
        Bidirectional(D, inner=Hydra, rngs=nnx.Rngs(0), **INNER)
    with pytest.raises(ValueError, match="'headdim' was renamed to 'head_dim'"):
        Bidirectional(D, headdim=8, rngs=nnx.Rngs(0))
    layer = Bidirectional(D, rngs=nnx.Rngs(0), **INNER)
    with pytest.raises(ValueError, match="no decode cache"):
        layer.init_cache(1, 4)
    with pytest.raises(ValueError, match="cannot decode"):
        layer.decode(jnp.zeros((1, 1, D)), None)
    with pytest.raises(ValueError, match="expects x of shape"):
        layer(jnp.zeros((1, 3, D + 1)))


def test_built_from_a_config_and_padding_blind_in_a_classifier():
    """``mixer: bidirectional`` in a config: a classifier reads the same features from a
    right-padded batch as from the unpadded one."""
    from seqlab.config import ModelConfig, TaskInfo
    from seqlab.models import build_model

    cfg = ModelConfig(mixer="bidirectional", d_model=D, n_layers=1, pool="mean",
                      mixer_args=dict(combine="mul", **INNER))
    info = TaskInfo(task="classify", n_classes=3, vocab_size=11, input_dim=None, max_length=16)
    model = build_model(cfg, info, rngs=nnx.Rngs(0))
    model.eval()
    apply = jax.jit(lambda x, m: model(x, m), compiler_options=FAST)
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, 11)
    pad = jnp.full((2, 4), 5)
    mask = jnp.concatenate([jnp.ones((2, 7), bool), jnp.zeros((2, 4), bool)], 1)
    assert_close(apply(jnp.concatenate([tokens, pad], 1), mask),
                 apply(tokens, jnp.ones((2, 7), bool)), rtol=2e-5, atol=2e-5)
