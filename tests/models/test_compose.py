"""Models from modules: the config path builds exactly the module path's parameters; a user's
own (unregistered) mixer drops into a Block; hybrids are list comprehensions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.config import ModelConfig, TaskInfo
from seqlab.layers import S4D, MultiHeadAttention
from seqlab.models import (
    Backbone,
    Block,
    Classifier,
    DualEncoder,
    LanguageModel,
    MLPHead,
    ModelBuildError,
    Norm,
    build_model,
)

D, V = 16, 11
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, 7)))
MASK = jnp.arange(7)[None] < jnp.array([[7], [5]])


def params(model):
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same(a, b):
    pa, pb = params(a), params(b)
    assert list(pa) == list(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


def test_classifier_config_path_equals_module_path():
    cfg = ModelConfig(mixer="mha", d_model=D, n_layers=2, mixer_args={"n_heads": 2,
                      "causal": False}, norm="rms", ffn="glu", pool="cls")
    info = TaskInfo("classify", n_classes=3, vocab_size=V, input_dim=None, max_length=64)
    built = build_model(cfg, info, rngs=nnx.Rngs(3))
    rngs = nnx.Rngs(3)
    embed = nnx.Embed(V, D, rngs=rngs)
    blocks = [Block(MultiHeadAttention(D, n_heads=2, causal=False, rngs=rngs), D, norm="rms",
                    ffn="glu", rngs=rngs) for _ in range(2)]
    backbone = Backbone(blocks, final_norm=Norm("rms", D, rngs=rngs))
    model = Classifier(embed, backbone, nnx.Linear(D, 3, rngs=rngs), pool="cls", rngs=rngs)
    assert type(built) is Classifier
    assert_same(built, model)
    np.testing.assert_array_equal(built(TOKENS, MASK), model(TOKENS, MASK))
    np.testing.assert_array_equal(model(TOKENS), model(TOKENS, jnp.ones(TOKENS.shape, bool)))


def test_dual_encoder_and_features_config_path_equals_module_path():
    cfg = ModelConfig(mixer="s4d", d_model=D, n_layers=1, mixer_args={"d_state": 4},
                      norm="batch", prenorm=False)
    info = TaskInfo("retrieval", n_classes=2, vocab_size=None, input_dim=3, max_length=64)
    built = build_model(cfg, info, rngs=nnx.Rngs(1))
    rngs = nnx.Rngs(1)
    embed = nnx.Linear(3, D, rngs=rngs)
    backbone = Backbone([Block(S4D(D, d_state=4, rngs=rngs), D, norm="batch", prenorm=False,
                               rngs=rngs)])
    model = DualEncoder(embed, backbone, MLPHead(4 * D, D, 2, rngs=rngs))
    assert type(built) is DualEncoder
    assert_same(built, model)
    x, x2 = jax.random.normal(jax.random.key(0), (2, 7, 3)), jnp.ones((2, 5, 3))
    model.eval()
    np.testing.assert_array_equal(  # no masks: every position real
        model(x, None, x2), model(x, jnp.ones((2, 7), bool), x2, jnp.ones((2, 5), bool)))


def test_hybrid_language_model_config_path_equals_module_path():
    cfg = ModelConfig(mixer="s4d", d_model=D, n_layers=3, pattern=("s4d", "mha"),
                      mixer_args={"s4d": {"d_state": 4}, "mha": {"n_heads": 2}}, ffn="mlp")
    info = TaskInfo("token", n_classes=V, vocab_size=V, input_dim=None, max_length=64,
                    causal=True)
    built = build_model(cfg, info, rngs=nnx.Rngs(0))
    rngs = nnx.Rngs(0)
    embed = nnx.Embed(V, D, rngs=rngs)
    mixers = [S4D, MultiHeadAttention, S4D]
    args = {S4D: {"d_state": 4}, MultiHeadAttention: {"n_heads": 2}}
    blocks = [Block(m(D, rngs=rngs, **args[m]), D, ffn="mlp", rngs=rngs) for m in mixers]
    model = LanguageModel(embed, Backbone(blocks, final_norm=Norm("layer", D, rngs=rngs)),
                          nnx.Linear(D, V, rngs=rngs))
    assert type(built) is LanguageModel
    assert_same(built, model)


class CumulativeMean(nnx.Module):
    """A user's mixer, not registered: y_t = W (mean of x_1..x_t); causal."""

    def __init__(self, d_model, *, rngs):
        self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
        self.causal = True

    def __call__(self, x, mask=None):
        if mask is not None:
            x = x * mask[..., None]
        n = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return self.proj(jnp.cumsum(x, axis=1) / n)


def test_own_mixer_drops_into_a_hybrid():
    rngs = nnx.Rngs(0)
    blocks = [Block(CumulativeMean(D, rngs=rngs) if i % 2 == 0 else
                    MultiHeadAttention(D, n_heads=2, rngs=rngs), D, rngs=rngs) for i in range(3)]
    lm = LanguageModel(nnx.Embed(V, D, rngs=rngs), Backbone(blocks), nnx.Linear(D, V, rngs=rngs))
    out = nnx.jit(lambda m, x: m(x))(lm, TOKENS)
    assert out.shape == (2, 7, V) and out.dtype == jnp.float32
    # causal: changing the last token changes no earlier logit
    out2 = nnx.jit(lambda m, x: m(x))(lm, TOKENS.at[:, -1].set((TOKENS[:, -1] + 1) % V))
    np.testing.assert_array_equal(np.asarray(out[:, :-1]), np.asarray(out2[:, :-1]))
    assert not np.array_equal(np.asarray(out[:, -1]), np.asarray(out2[:, -1]))


def test_module_path_checks():
    rngs = nnx.Rngs(0)

    class NoFlag(nnx.Module):
        def __call__(self, x, mask=None):
            return x

    with pytest.raises(ModelBuildError, match="no boolean attribute 'causal'"):
        Block(NoFlag(), D, rngs=rngs)
    bidirectional = Backbone([Block(MultiHeadAttention(D, n_heads=2, causal=False, rngs=rngs),
                                    D, rngs=rngs)])
    with pytest.raises(ModelBuildError,
                       match=r"0 \(MultiHeadAttention\) is bidirectional.*mixer_args\.causal"):
        LanguageModel(nnx.Embed(V, D, rngs=rngs), bidirectional, nnx.Linear(D, V, rngs=rngs))
    tagger = LanguageModel(nnx.Embed(V, D, rngs=rngs), bidirectional,
                           nnx.Linear(D, V, rngs=rngs), causal=False)
    assert tagger(TOKENS, MASK).shape == (2, 7, V)
    causal = Backbone([Block(CumulativeMean(D, rngs=rngs), D, rngs=rngs)])
    with pytest.raises(ModelBuildError, match=r"pool='cls'.*mixer_args\.causal: false"):
        Classifier(nnx.Embed(V, D, rngs=rngs), causal, nnx.Linear(D, 2, rngs=rngs), pool="cls",
                   rngs=rngs)
    batch_norm = Backbone([Block(CumulativeMean(D, rngs=rngs), D, norm="batch", rngs=rngs)])
    with pytest.raises(ModelBuildError, match="BatchNorm"):
        LanguageModel(nnx.Embed(V, D, rngs=rngs), batch_norm, nnx.Linear(D, V, rngs=rngs))
    with pytest.raises(ModelBuildError, match="d_model"):
        Backbone([Block(CumulativeMean(8, rngs=rngs), 8, rngs=rngs),
                  Block(CumulativeMean(D, rngs=rngs), D, rngs=rngs)])
    assert jax.tree.leaves(nnx.state(causal, nnx.Param))
