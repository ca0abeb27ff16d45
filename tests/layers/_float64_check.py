"""A layer against a float64 reference written from its paper: values and every parameter's
gradient of ``sum(y * ct)`` (float32 layer vs float64 reference on the same parameters)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from _assert import assert_close
from flax import nnx


def flat_state(state) -> dict:
    """{"a.b.c": array} of an nnx state."""
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}


def assert_matches_float64(layer: nnx.Module, x: np.ndarray,
                           reference: Callable[[dict, jax.Array], jax.Array]) -> None:
    """``layer(x)`` and its parameter gradients against ``reference(params, x)`` evaluated in
    float64 (params: ``flat_state`` names -> float64 arrays), with a random cotangent; x and
    y: [batch, length, d_model]."""
    ct = np.random.default_rng(3).standard_normal(x.shape)
    gdef, state = nnx.split(layer)

    def loss(st, x):
        y = nnx.merge(gdef, st)(x)
        return jnp.sum(y * ct), y

    (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(state, jnp.asarray(x, jnp.float32))
    grads = flat_state(g)
    with jax.enable_x64(True):
        p64 = {n: jnp.asarray(np.asarray(a), jnp.float64) for n, a in flat_state(state).items()}

        def ref_loss(p):
            y = reference(p, jnp.asarray(x))
            return jnp.sum(y * ct), y

        (_, want), want_grads = jax.jit(jax.value_and_grad(ref_loss, has_aux=True))(p64)
        want, want_grads = np.asarray(want), {n: np.asarray(g) for n, g in want_grads.items()}
    assert_close(y, want, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(want_grads)
    for name, g in grads.items():
        scale = np.abs(want_grads[name]).max()
        assert_close(g, want_grads[name], rtol=1e-3, atol=1e-4 * scale, err_msg=name)
