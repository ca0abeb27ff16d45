"""The discretisation rule of S4D, S4-PTD and S5, checked where the rules differ.

At the initial step sizes (dt <= 0.1) ZOH and bilinear agree to within a forward test's
tolerance for most outputs, so a layer that used the wrong rule could pass it. Here every
channel (S5: every mode) gets dt in [0.5, 2], where the two rules' float64 references differ by
a large fraction of the output; the layer must match the float64 reference of its own rule
(S4D eq. (5); S5 eq. (6)), and the other rule's reference is asserted to be far off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx
from test_reference_s4 import TOL, ssm_layer_ref
from test_s5 import reference_ssm

from seqlab.layers.s4d import S4D, S4PTD
from seqlab.layers.s5 import S5

H = 6
OTHER = {"zoh": "bilinear", "bilinear": "zoh"}


def _large_dt(layer, seed=0):
    n = layer.log_dt[...].shape
    dt = np.random.default_rng(seed).uniform(0.5, 2.0, n)
    layer.log_dt[...] = jnp.asarray(np.log(dt), jnp.float32)


def _input():
    return np.random.default_rng(6).standard_normal((2, 11, H))


CASES = {
    "s4d-legs-zoh": lambda: S4D(H, d_state=8, rngs=nnx.Rngs(0)),
    "s4d-inv-bilinear-bidir": lambda: S4D(H, d_state=8, init="inv", disc="bilinear",
                                          causal=False, rngs=nnx.Rngs(1)),
    "s4ptd-zoh": lambda: S4PTD(H, d_state=8, rngs=nnx.Rngs(2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_s4_family_uses_its_rule_at_large_dt(case):
    layer = CASES[case]()
    _large_dt(layer)
    u = _input()
    got = np.asarray(jax.jit(lambda m, u: m(u))(layer, jnp.asarray(u, jnp.float32)))
    want = ssm_layer_ref(layer, u)
    assert_close(got, want, **TOL)
    rule = layer.disc
    layer.disc = OTHER[rule]
    wrong = ssm_layer_ref(layer, u)
    layer.disc = rule
    assert np.abs(wrong - want).max() > 0.05 * np.abs(want).max()


@pytest.mark.parametrize("init, causal", [("hippo-n", True), ("ptd", False)])
def test_s5_uses_zoh_at_large_dt(init, causal):
    m = S5(H, rngs=nnx.Rngs(0), d_state=8, blocks=2, causal=causal, out="none",
           activation="identity", init=init)
    _large_dt(m)
    u = _input()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(m, jnp.asarray(u, jnp.float32)))
    want = reference_ssm(m, u, "zoh")
    assert_close(got, want, rtol=2e-4, atol=2e-5)
    wrong = reference_ssm(m, u, "bilinear")
    assert np.abs(wrong - want).max() > 0.05 * np.abs(want).max()
