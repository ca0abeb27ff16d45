"""The mixer protocol, the registry and the argument vocabulary, over every registered mixer."""

import jax
import pytest
from flax import nnx

from seqlab.layers import MIXERS, RENAMED_ARGS, CausalMixer, Mixer, register_mixer

# tiny arguments per mixer (construction only: nnx.eval_shape, nothing is computed)
TINY = {
    "mha": dict(n_heads=2), "topk": dict(n_heads=2, topk=2), "mla": dict(n_heads=2),
    "dsa": dict(n_heads=2, topk=2, index_head_dim=4), "deltanet": dict(n_heads=2),
    "gated-deltanet": dict(n_heads=2), "deltaproduct": dict(n_heads=2),
    "hydra": dict(d_state=4, head_dim=8), "mamba2": dict(d_state=4, head_dim=8),
    "s4d": dict(d_state=4), "s4-ptd": dict(d_state=4), "s4": dict(d_state=4),
    "s5": dict(d_state=4, blocks=1),
    "bidirectional": dict(combine="concat", d_state=4, head_dim=8),
}
# mixers whose direction is an argument (the others fix it by class)
TAKES_CAUSAL = {"mha", "topk", "mla", "s4d", "s4-ptd", "s4", "s5"}


def _build(name, **args):
    return nnx.eval_shape(lambda: MIXERS[name](d_model=8, rngs=nnx.Rngs(0), **args))


def _decodes(m) -> bool:
    try:
        jax.eval_shape(lambda: m.init_cache(1, 4))
    except ValueError:
        return False
    return True


def test_builtin_mixers_are_registered():
    assert set(MIXERS) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_causal_attribute_agrees_with_decode(name):
    settings = [{}] + ([{"causal": True}, {"causal": False}] if name in TAKES_CAUSAL else [])
    for extra in settings:
        m = _build(name, **TINY[name], **extra)
        assert isinstance(m, Mixer) and type(m.causal) is bool
        assert m.causal == _decodes(m), (name, extra)
        assert m.causal == extra.get("causal", m.causal)
        if m.causal:
            assert isinstance(m, CausalMixer)
    expected = {"hydra": False, "bidirectional": False}.get(name, True)  # the non-causal ones
    assert _build(name, **TINY[name]).causal is expected


OLD = {  # mixer -> old argument names it used to take (or that mean one of its arguments)
    "deltanet": ["num_heads", "conv_size"], "gated-deltanet": ["num_heads", "conv_size"],
    "deltaproduct": ["num_heads", "conv_size", "num_householder"],
    "hydra": ["headdim", "ngroups"], "mamba2": ["headdim", "ngroups"],
    "s4d": ["bidirectional"], "s4-ptd": ["bidirectional"], "s4": ["bidirectional"],
    "s5": ["bidirectional"], "mha": ["rope"], "topk": ["rope"], "mla": ["qk_rope_head_dim"],
    "dsa": ["num_heads", "rope"],
    "bidirectional": ["headdim", "ngroups"],
}


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_argument_names_raise_naming_the_new_one(name):
    for old in OLD[name]:
        new = RENAMED_ARGS[old]
        with pytest.raises(ValueError, match=rf"argument '{old}' was renamed to '{new}'"):
            MIXERS[name](d_model=8, rngs=nnx.Rngs(0), **{old: 2})


def test_register_mixer():
    try:
        _check_registration()
    finally:
        MIXERS.pop("my-mixer", None)
    assert set(MIXERS) == set(TINY)


def _check_registration():
    @register_mixer("my-mixer")
    class Mine(nnx.Module):
        causal = False

        def __init__(self, d_model, *, rngs, dtype=None):
            self.d_model = d_model

        def __call__(self, x, mask=None):
            return x

    assert MIXERS["my-mixer"] is Mine and isinstance(Mine(4, rngs=nnx.Rngs(0)), Mixer)
    assert register_mixer("my-mixer")(Mine) is Mine  # the same class again: no change
    with pytest.raises(ValueError, match="already registered.*override=True"):
        register_mixer("my-mixer")(type("Other", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("s4d")(Mine)
    other = register_mixer("my-mixer", override=True)(type("Other", (), {}))
    assert MIXERS["my-mixer"] is other
    with pytest.raises(ValueError, match="non-empty name"):
        register_mixer("")
