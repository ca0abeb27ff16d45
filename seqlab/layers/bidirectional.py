"""A bidirectional mixer made of a forward and a backward copy of a causal mixer.

The heuristic bidirectional extensions of a causal SSM that Hydra (Hwang, Lahoti, Dao, Gu 2024,
'Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers', Sec. 4 and the
ablation of bidirectional methods in Sec. 5) compares its quasiseparable mixer against: run one
causal mixer on the sequence and a second one (its own parameters) on the time-reversed
sequence, flip the second output back, and combine the two by addition, element-wise product or
concatenation followed by a linear projection back to ``d_model``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers.common import apply_mask, check_input, choice, linear, reject_renamed
from seqlab.layers.protocol import MIXERS, register_mixer

COMBINES = ("add", "concat", "mul")


def reverse_index(mask: jax.Array) -> jax.Array:
    """The time index that reverses the real positions of each sequence among themselves and
    leaves padded positions where they are: mask [batch, length] bool -> [batch, length] int32.

    For a right-padded row with n real tokens: ``n-1, ..., 1, 0, n, n+1, ...``. For any mask the
    k-th real position (in order) maps to the (n-1-k)-th; the map is its own inverse.
    """
    mask = mask.astype(bool)
    length = mask.shape[1]
    rank = jnp.cumsum(mask, axis=1) - 1  # rank of each real position among the real ones
    n = mask.sum(axis=1, keepdims=True)
    # real positions first (in order), then the padded ones: a stable sort on "is padding"
    order = jnp.argsort(~mask, axis=1, stable=True)
    partner = jnp.take_along_axis(order, jnp.clip(n - 1 - rank, 0, length - 1), axis=1)
    return jnp.where(mask, partner, jnp.arange(length)[None]).astype(jnp.int32)


def reverse(x: jax.Array, mask: jax.Array | None, idx: jax.Array | None = None) -> jax.Array:
    """Reverse x [batch, length, ...] in time, per sequence over its real positions only
    (:func:`reverse_index`); ``mask=None``: the plain flip. Applying it twice is the identity.
    idx: ``reverse_index(mask)`` when the caller already has it (it is computed otherwise)."""
    if mask is None:
        return jnp.flip(x, axis=1)
    idx = reverse_index(mask) if idx is None else idx
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@register_mixer("bidirectional")
class Bidirectional(nnx.Module):
    """A forward and a backward copy of a causal mixer, combined (Hwang et al. 2024, Sec. 5,
    the 'Add', 'Concat', 'Mult' bidirectional baselines of Hydra).

    u: [batch, length, d_model], mask: [batch, length] bool -> y: [batch, length, d_model].

        f = fw(u),  b = R(bw(R(u)))       R: time reversal over each sequence's real tokens
        "add":    y = f + b
        "mul":    y = f * b               (element-wise)
        "concat": y = [f | b] W,  W: [2 d_model, d_model] (no bias)

    ``inner`` names a registered causal mixer (default ``"mamba2"``) or is a mixer class;
    ``**inner_args`` go to both copies, which have separate parameters. With padding, R reverses
    only the real positions of each row (padding stays in place), so the backward copy starts
    from a zero state at each sequence's true end and the outputs at real positions never
    depend on padded ones; outputs at padded positions are set to zero. Parameters: 2 P(inner),
    plus ``2 d_model^2`` for ``"concat"``. Bidirectional: ``decode`` raises.
    """

    @reject_renamed
    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32,
                 combine: str = "add", inner: str | type = "mamba2", **inner_args: Any):
        self.combine = choice("combine", combine, COMBINES)
        if isinstance(inner, str):
            if inner not in MIXERS:
                raise ValueError(f"Bidirectional: unknown inner mixer {inner!r}; registered: "
                                 f"{', '.join(sorted(MIXERS))}")
            inner = MIXERS[inner]
        self.d_model, self.dtype, self.causal = d_model, dtype, False
        self.fw = inner(d_model, rngs=rngs, dtype=dtype, **inner_args)
        self.bw = inner(d_model, rngs=rngs, dtype=dtype, **inner_args)
        if not getattr(self.fw, "causal", False):
            raise ValueError(f"Bidirectional: the inner mixer {type(self.fw).__name__} must be "
                             "causal (causal=True); it is already bidirectional")
        self.proj = linear(2 * d_model, d_model, dtype, rngs) if combine == "concat" else None

    def __call__(self, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """u: [batch, length, d_model], mask: [batch, length] bool -> [batch, length, d_model]."""
        check_input(u, self.d_model, "Bidirectional")
        f = self.fw(u, mask=mask)
        # the reversal keeps padded positions in place, so the mask is its own reverse
        idx = None if mask is None else reverse_index(mask)  # one index for both reversals
        b = reverse(self.bw(reverse(u, mask, idx), mask=mask), mask, idx)
        if self.combine == "add":
            y = f + b
        elif self.combine == "mul":
            y = f * b
        else:
            y = self.proj(jnp.concatenate([f, b], axis=-1))
        return apply_mask(y, mask)

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32):
        raise ValueError("Bidirectional: every output depends on future tokens, so there is no "
                         "decode cache; use the causal inner mixer (e.g. 'mamba2') to generate")

    def decode(self, x: jax.Array, cache: Any):
        raise ValueError("Bidirectional: every output depends on future tokens, so it cannot "
                         "decode token by token; use the causal inner mixer (e.g. 'mamba2')")
