"""Every default that docs/defaults.md compares with a reference implementation, pinned: a
changed default must change the table (and its reason) too. Defaults are read through the
class hierarchy (subclasses pass options on to their base with **kwargs)."""

import inspect

import pytest

from seqlab.layers.protocol import MIXERS

EXPECTED = {
    "s4d": dict(d_state=64, init="legs", disc="zoh", real_param="exp", dt_min=1e-3, dt_max=0.1,
                b_clip=2.0, dropout=0.0, causal=True),
    "s4": dict(measure="legs", b_clip=2.0, c_tilde=False, d_state=64),
    "s5": dict(d_state=64, blocks=4, init="hippo-n", c_init="trunc_normal", real_param="none",
               causal=True, dropout=0.0),
    "hydra": dict(d_state=64, d_conv=7, expand=2, n_groups=1, A_init_range=(1.0, 1.0),
                  chunk_size=64, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4),
    "mamba2": dict(d_state=64, d_conv=4, expand=2, n_groups=1, A_init_range=(1.0, 16.0),
                   chunk_size=64, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4),
    "deltanet": dict(n_heads=4, expand_v=1.0, allow_neg_eigval=False, use_output_gate=False,
                     d_conv=4, chunk_size=None, qk_activation="silu"),
    "gated-deltanet": dict(expand_v=2.0, A_init_range=(0.0, 16.0), allow_neg_eigval=False,
                           use_output_gate=True, d_conv=4),
    "deltaproduct": dict(n_householder=2, allow_neg_eigval=True, use_forget_gate=False,
                         expand_v=1.0),
    "mha": dict(n_heads=4, rope_base=10000.0, rope_layout="rotate_half", rope_dim=None),
    "mla": dict(rope_layout="rotate_half", q_lora_rank=None, decode_mode="absorb"),
    "dsa": dict(index_heads=4, index_head_dim=32, topk=64, index_dtype="float32"),
}


def effective_defaults(cls: type) -> dict:
    """Keyword defaults of ``cls.__init__`` and of every base it forwards to (subclass wins)."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defaults_are_the_documented_ones(name):
    defaults = effective_defaults(MIXERS[name])
    for option, value in EXPECTED[name].items():
        assert option in defaults, f"{name}: no default for {option!r}"
        assert defaults[option] == value and type(defaults[option]) is type(value), \
            f"{name}.{option}: default {defaults[option]!r}, documented {value!r}"
