"""bfloat16 layers against the float64 references (not against their own float32 run).

Tolerance, from bf16's machine epsilon eps = 2^-7 on the output's scale: a few roundings of
relative size eps each (input projection, short convolution, norm, output projection: 3 eps at
worst on the largest output) times a slow growth with the length of the sum over time,
sqrt(log2(L) / 4) (1 at L = 16). Measured (2-core CPU, L = 16..256): errors 0.8-2.1 eps max|y|.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx
from test_reference_delta import delta_ref
from test_reference_s4 import ssm_layer_ref
from test_reference_ssd_mixers import mamba2_ref

from seqlab.layers.deltanet import GatedDeltaNet
from seqlab.layers.hydra import Mamba2
from seqlab.layers.s4d import S4D

EPS = float(jnp.finfo(jnp.bfloat16).eps)
CASES = {
    "mamba2": (lambda: Mamba2(16, d_state=8, head_dim=8, chunk_size=16, dtype=jnp.bfloat16,
                              rngs=nnx.Rngs(0)), lambda m, x: mamba2_ref(m, x)[0]),
    "gated-deltanet": (lambda: GatedDeltaNet(16, n_heads=2, chunk_size=16, dtype=jnp.bfloat16,
                                             rngs=nnx.Rngs(0)), lambda m, x: delta_ref(m, x)[0]),
    "s4d": (lambda: S4D(16, d_state=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), ssm_layer_ref),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_layer_matches_float64_reference(case, length=32):
    make, ref = CASES[case]
    layer = make()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, length, 16)), jnp.bfloat16)
    y = jax.jit(lambda m, x: m(x))(layer, x)
    assert y.dtype == jnp.bfloat16
    want = ref(layer, np.asarray(x.astype(jnp.float32), np.float64))
    tol = 3 * EPS * np.abs(want).max() * math.sqrt(math.log2(length) / 4)
    assert_close(y.astype(jnp.float32), want, rtol=0, atol=tol)
