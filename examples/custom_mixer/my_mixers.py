"""A mixer of your own, registered for configs and the CLI.

``@register_mixer("ema")`` makes ``mixer: ema`` (and ``mixer_args``) valid in a config once this
module is imported: ``seqlab train ... --import my_mixers`` (from this directory), or
``imports: [my_mixers.py]`` in the config (a .py path is taken relative to the config file).

The mixer: a per-channel exponential moving average, h_t = a * h_{t-1} + (1 - a) * W_in x_t,
y_t = W_out h_t, with a = sigmoid(w) learned per channel. It is causal and has a recurrent mode
(``init_cache`` / ``decode``), so it also serves language models and ``seqlab.generate``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers import register_mixer


@register_mixer("ema")
class EMA(nnx.Module):
    """x, y: [batch, length, d_model]; mask: [batch, length] (padded inputs are zeroed)."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 init_decay: float = 0.9):
        self.causal = True
        self.w_in = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.w_out = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)
        logit = jnp.log(init_decay / (1 - init_decay))
        self.decay = nnx.Param(jnp.full((d_model,), logit, jnp.float32))

    def _scan(self, u: jax.Array, h0: jax.Array) -> tuple[jax.Array, jax.Array]:
        a = jax.nn.sigmoid(self.decay[...])

        def step(h, u_t):
            h = a * h + (1 - a) * u_t
            return h, h

        h, hs = jax.lax.scan(step, h0, jnp.swapaxes(u, 0, 1).astype(jnp.float32))
        return jnp.swapaxes(hs, 0, 1), h

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        u = self.w_in(x)
        hs, _ = self._scan(u, jnp.zeros((x.shape[0], x.shape[-1]), jnp.float32))
        return self.w_out(hs.astype(x.dtype))

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> jax.Array:
        return jnp.zeros((batch_size, self.decay.shape[0]), jnp.float32)

    def decode(self, x: jax.Array, cache: jax.Array) -> tuple[jax.Array, jax.Array]:
        hs, h = self._scan(self.w_in(x), cache)
        return self.w_out(hs.astype(x.dtype)), h
