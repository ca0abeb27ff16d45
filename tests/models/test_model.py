"""Model composition: padding invariance, pooling, patterns, heads, LM decode == forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.config import ModelConfig, TaskInfo
from seqlab.layers import S4D
from seqlab.models import ModelBuildError, build_model
from seqlab.models.blocks import Block, Norm

CLS = TaskInfo("classify", n_classes=5, vocab_size=13, input_dim=None, max_length=64)
SMALL = {"d_state": 8, "init": "inv"}


@nnx.jit
def apply(model, *args):
    return model(*args)


def _padded_pair(b=3, length=11, extra=6, seed=0):
    """Sequences of different true lengths, once exactly padded with zeros and once padded
    with random garbage (masked) to a longer length."""
    rng = np.random.default_rng(seed)
    lengths = np.array([length, length - 4, 3])[:b]
    x = rng.integers(0, 13, size=(b, length + extra))
    mask = np.arange(length + extra)[None] < lengths[:, None]
    clean = np.where(mask, x, 0)[:, :length]
    return (jnp.asarray(clean), jnp.asarray(mask[:, :length])), (jnp.asarray(x), jnp.asarray(mask))


@pytest.mark.parametrize(
    "norm, prenorm, pool, ffn",
    [("layer", True, "mean", "none"), ("batch", False, "last", "glu"), ("rms", True, "cls", "mlp")],
)
def test_padding_does_not_change_predictions(norm, prenorm, pool, ffn):
    cfg = ModelConfig(mixer="s4d", d_model=16, n_layers=2, norm=norm, prenorm=prenorm,
                      pool=pool, ffn=ffn, mixer_args=dict(SMALL, causal=False))
    model = build_model(cfg, CLS, rngs=nnx.Rngs(0))
    (x1, m1), (x2, m2) = _padded_pair()
    for mode in ("train", "eval"):  # train: BatchNorm statistics over real positions only
        getattr(model, mode)()
        a, b = apply(model, x1, m1), apply(model, x2, m2)
        assert a.shape == (3, 5)
        assert_close(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_pattern_builds_alternating_mixers_with_their_args():
    cfg = ModelConfig(mixer="s4d", d_model=32, n_layers=3, pattern=("s4d", "hydra"),
                      mixer_args={"s4d": SMALL, "hydra": {"d_state": 8, "head_dim": 16}})
    model = build_model(cfg, CLS, rngs=nnx.Rngs(0))
    kinds = [type(b.mixer).__name__ for b in model.backbone.blocks]
    assert kinds == ["S4D", "Hydra", "S4D"]
    assert model.backbone.blocks[0].mixer.d_state == 8
    with pytest.raises(ModelBuildError, match="not in the pattern"):
        build_model(ModelConfig(pattern=("s4d",), mixer_args={"hydra": {}}), CLS,
                    rngs=nnx.Rngs(0))


def test_bad_model_configs_are_clear():
    with pytest.raises(ModelBuildError, match="Did you mean 's4d'"):
        build_model(ModelConfig(mixer="s4dd"), CLS, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="Did you mean 'd_state'"):
        build_model(ModelConfig(mixer="s4d", mixer_args={"dstate": 4}), CLS, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="valid norms"):
        Norm("group", 4, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="unknown ffn"):
        Block(S4D(8, rngs=nnx.Rngs(0), **SMALL), 8, ffn="moe", rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="built mixer module"):
        Block("s4d", 8, rngs=nnx.Rngs(0))


def test_retrieval_head_and_feature_inputs():
    info = TaskInfo("retrieval", n_classes=2, vocab_size=13, input_dim=None, max_length=64)
    model = build_model(ModelConfig(mixer="s4d", d_model=16, n_layers=1, mixer_args=SMALL),
                        info, rngs=nnx.Rngs(0))
    (x1, m1), (x2, m2) = _padded_pair()
    out = apply(model, x1, m1, x2[:, :9], m2[:, :9])
    assert out.shape == (3, 2) and out.dtype == jnp.float32
    # the second sequence's padding is masked too
    (y1, n1), (y2, n2) = _padded_pair(seed=1)
    assert_close(apply(model, x1, m1, y1, n1), apply(model, x1, m1, y2, n2),
                               rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="inputs2"):
        model(x1, m1)
    feats = TaskInfo("classify", n_classes=3, vocab_size=None, input_dim=2, max_length=64)
    model = build_model(ModelConfig(mixer="s4d", d_model=8, n_layers=1, mixer_args=SMALL),
                        feats, rngs=nnx.Rngs(0))
    assert apply(model, jnp.ones((2, 7, 2)), jnp.ones((2, 7), bool)).shape == (2, 3)


def test_language_model_decode_equals_forward():
    info = TaskInfo("token", n_classes=13, vocab_size=13, input_dim=None, max_length=64,
                    causal=True)
    cfg = ModelConfig(mixer="s4d", d_model=32, n_layers=2, pattern=("s4d", "mamba2"),
                      ffn="glu", mixer_args={"s4d": SMALL, "mamba2": {"d_state": 8,
                                                                      "head_dim": 16}})
    model = build_model(cfg, info, rngs=nnx.Rngs(0))
    model.eval()
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 13)
    full = apply(model, tokens, jnp.ones((2, 9), bool))
    assert full.shape == (2, 9, 13)
    decode = nnx.jit(lambda m, x, c: m.decode(x, c))
    cache = model.init_cache(2, 16)
    prefill, cache = decode(model, tokens[:, :4], cache)
    steps = [prefill]
    for t in range(4, 9):
        logits, cache = decode(model, tokens[:, t : t + 1], cache)
        steps.append(logits)
    assert_close(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full),
                               rtol=2e-4, atol=2e-4)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    cfg = ModelConfig(mixer="s4d", d_model=16, n_layers=2, mixer_args=SMALL, ffn="glu")
    (x, m), _ = _padded_pair()
    ref = apply(build_model(cfg, CLS, rngs=nnx.Rngs(0)), x, m)
    model = build_model(ModelConfig(**{**cfg.__dict__, "dtype": "bfloat16"}), CLS,
                        rngs=nnx.Rngs(0))
    assert {str(p.dtype) for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {"float32"}
    out = apply(model, x, m)
    assert out.dtype == jnp.float32
    assert_close(np.asarray(out), np.asarray(ref), atol=0.1, rtol=0.1)
    assert not np.allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=0)  # really bf16


def test_causality_rules():
    lm = TaskInfo("token", n_classes=13, vocab_size=13, input_dim=None, max_length=64,
                  causal=True)
    ok = ModelConfig(mixer="mha", d_model=16, n_layers=1, mixer_args={"n_heads": 2})
    assert build_model(ok, lm, rngs=nnx.Rngs(0)).backbone.blocks[0].causal
    for bad, words in (
        (dict(mixer="mha", mixer_args={"n_heads": 2, "causal": False}),
         "layer 0 (MultiHeadAttention)"),
        (dict(mixer="s4d", mixer_args=dict(SMALL, causal=False)), "bidirectional"),
        (dict(mixer="mha", mixer_args={"n_heads": 2}, norm="batch"), "BatchNorm"),
    ):
        with pytest.raises(ModelBuildError, match=words.replace("(", r"\(").replace(")", r"\)")):
            build_model(ModelConfig(**{**ok.__dict__, **bad}), lm, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="pool='cls'"):
        build_model(ModelConfig(mixer="deltanet", d_model=16, n_layers=1, pool="cls",
                                mixer_args={"n_heads": 2}), CLS, rngs=nnx.Rngs(0))


def test_unknown_argument_of_a_forwarding_mixer_lists_the_valid_ones():
    with pytest.raises(ModelBuildError, match=r"Valid arguments: .*n_householder"):
        build_model(ModelConfig(mixer="deltaproduct", d_model=16, n_layers=1,
                                mixer_args={"num_housholder": 2}), CLS, rngs=nnx.Rngs(0))


class _Scale(nnx.Module):
    """A user's mixer: its own argument named like a renamed one (headdim), d_model positional
    under another name, no dtype, ``*args`` that a config cannot set."""

    def __init__(self, dim, *args, rngs, headdim=3):
        self.w = nnx.Param(jnp.full((dim,), float(headdim)))
        self.causal = False

    def __call__(self, x, mask=None):
        return x * self.w[...]


def test_own_mixer_from_a_config_keeps_its_own_argument_names(monkeypatch):
    from seqlab.layers import MIXERS
    from seqlab.models.builder import build_mixer

    monkeypatch.setitem(MIXERS, "scale-test", _Scale)
    mixer = build_mixer("scale-test", 4, {"headdim": 5}, rngs=nnx.Rngs(0))  # d_model positional
    assert mixer.w[...].tolist() == [5.0] * 4
    with pytest.raises(ModelBuildError, match=r"Valid arguments: headdim\.$"):  # no bogus args
        build_mixer("scale-test", 4, {"head_dim": 5}, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="takes no dtype"):
        build_mixer("scale-test", 4, {}, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="'headdim' was renamed to 'head_dim'"):  # built-ins
        build_mixer("mamba2", 16, {"headdim": 8}, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name, key", [("deltanet", "n_householder"),
                                       ("deltanet", "use_forget_gate"),
                                       ("gated-deltanet", "n_householder"),
                                       ("gated-deltanet", "use_forget_gate")])
def test_arguments_a_delta_mixer_fixes_are_refused_clearly(name, key):
    from seqlab.models.builder import build_mixer

    with pytest.raises(ValueError, match=f"fixes {key} itself"):
        build_mixer(name, 16, {"n_heads": 2, key: 2}, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["hydra", "mamba2"])
def test_ssd_mixers_take_n_heads_or_head_dim(name):
    from seqlab.models.builder import build_mixer

    def build(**args):
        return build_mixer(name, 16, {"d_state": 4, **args}, rngs=nnx.Rngs(0))

    by_heads, by_dim = build(n_heads=4), build(head_dim=8)  # expand 2: 32 = 4 heads x 8
    assert (by_heads.n_heads, by_heads.head_dim) == (by_dim.n_heads, by_dim.head_dim) == (4, 8)
    assert build(n_heads=4, head_dim=8).n_heads == 4  # both, consistent
    default = build_mixer(name, 64, {"d_state": 4}, rngs=nnx.Rngs(0))
    assert (default.n_heads, default.head_dim) == (2, 64)  # head_dim defaults to 64
    with pytest.raises(ValueError, match="head_dim = 16 and n_heads = 4 disagree"):
        build(n_heads=4, head_dim=16)
    with pytest.raises(ValueError, match="n_heads = 3 must be a positive divisor"):
        build(n_heads=3)
