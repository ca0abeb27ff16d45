"""Hydra (bidirectional, quasiseparable) and Mamba-2 (causal, semiseparable) mixers.

Both wrap ``seqlab.ops.ssd``: Mamba-2 (Dao & Gu 2024, 'Transformers are SSMs', Sec. 7) runs one
causal SSD scan; Hydra (Hwang, Lahoti, Dao, Gu 2024, Sec. 3-4) runs the quasiseparable mixer
``QS(X) = shift(SS(X)) + flip(shift(SS(flip(X)))) + diag(D + W_D X) X``.

Padding is exact in both: a padded position gets dt = 0 (no decay, nothing fed into the state)
and zero input, so the outputs at real positions do not depend on it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from seqlab.layers.common import (
    GatedRMSNorm,
    ShortConv,
    SSMParam,
    apply_mask,
    check_input,
    dt_bias_init,
    reject_renamed,
)
from seqlab.layers.protocol import register_mixer
from seqlab.ops.ssd import materialize, quasiseparable, ssd
from seqlab.ops.state_passes import unsupported


def _A_log_init(rngs: nnx.Rngs, heads: int, A_init_range: tuple[float, float]) -> jax.Array:
    lo, hi = A_init_range
    if not 0 < lo <= hi:
        raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range}")
    return jnp.log(jax.random.uniform(rngs.params(), (heads,), minval=lo, maxval=hi))


class _SSDMixerBase(nnx.Module):
    """Shared shapes, parameters and validation of the Hydra and Mamba-2 mixers."""

    def _setup(self, d_model: int, *, d_state: int, expand: int, head_dim: int | None,
               n_heads: int | None, n_groups: int, chunk_size: int, dtype: jnp.dtype,
               name: str, implementation: str = "xla",
               dt_limit: tuple[float, float] = (0.0, math.inf)) -> None:
        d_inner = expand * d_model
        if n_heads is not None:  # the one vocabulary: n_heads = expand * d_model / head_dim
            if not isinstance(n_heads, int) or n_heads < 1 or d_inner % n_heads:
                raise ValueError(f"{name}: n_heads = {n_heads!r} must be a positive divisor of "
                                 f"expand * d_model = {d_inner}")
            if head_dim is not None and head_dim * n_heads != d_inner:
                raise ValueError(f"{name}: head_dim = {head_dim} and n_heads = {n_heads} "
                                 f"disagree (n_heads = expand * d_model / head_dim = "
                                 f"{d_inner} / head_dim); give only one of them")
            head_dim = d_inner // n_heads
        elif head_dim is None:
            head_dim = 64
        if d_inner % head_dim:
            raise ValueError(f"{name}: expand * d_model = {d_inner} must be a multiple of "
                             f"head_dim = {head_dim}")
        heads = d_inner // head_dim
        if heads % n_groups:
            raise ValueError(f"{name}: n_groups = {n_groups} must divide the number of heads "
                             f"{heads} (= expand * d_model / head_dim)")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"{name}: chunk_size must be a positive int, got {chunk_size!r}")
        self.d_model, self.d_state, self.d_inner = d_model, d_state, d_inner
        self.head_dim, self.n_heads, self.n_groups = head_dim, heads, n_groups
        if implementation not in ("xla", "pallas"):
            raise ValueError(f"{name}: implementation must be 'xla' or 'pallas', got "
                             f"{implementation!r}")
        why = unsupported(jnp.promote_types(dtype, jnp.float32), d_state=d_state) or (
            f"head_dim must be a multiple of 16, got {head_dim}" if head_dim % 16 else None)
        if implementation == "pallas" and why:
            raise ValueError(f"{name}: implementation='pallas': {why}; use "
                             "implementation='xla' (the default)")
        lo, hi = dt_limit
        if not 0 <= lo < hi:
            raise ValueError(f"{name}: dt_limit = {dt_limit!r} must be (low, high) with "
                             "0 <= low < high (high may be inf)")
        self.chunk_size, self.dtype, self.name = chunk_size, dtype, name
        self.implementation, self.dt_limit = implementation, (float(lo), float(hi))

    def _heads(self, t: jax.Array, width: int) -> jax.Array:
        """[b, L, k * width] -> [b, L, k, width]."""
        return t.reshape(t.shape[:2] + (-1, width))

    def _dt(self, dt_raw: jax.Array, mask: jax.Array | None) -> jax.Array:
        """clip(softplus(dt + dt_bias), *dt_limit) in float32, 0 at padded positions:
        [b, L, k * heads].

        With k = 2 (Hydra's dt_fw | dt_bw) both directions share the bias."""
        bias = jnp.tile(self.dt_bias[...], dt_raw.shape[-1] // self.n_heads)
        dt = jax.nn.softplus(dt_raw.astype(jnp.float32) + bias)
        if self.dt_limit != (0.0, math.inf):  # softplus is positive: (0, inf) clips nothing
            dt = jnp.clip(dt, *self.dt_limit)
        return apply_mask(dt, mask)

    def _A(self) -> jax.Array:
        return -jnp.exp(self.A_log[...])


@register_mixer("hydra")
class Hydra(_SSDMixerBase):
    """Hydra: a bidirectional quasiseparable SSM mixer (Hwang et al. 2024, Sec. 4).

    u: [batch, length, d_model] -> y: [batch, length, d_model]. One input projection to
    ``[z | x | B_fw C_fw | B_bw C_bw | dt_fw dt_bw]``; a shared centred depthwise convolution
    (odd ``d_conv``) + SiLU over ``[x | B C]``; a shared negative ``A`` per head; ``dt =
    softplus(dt + dt_bias)``; the quasiseparable mixer with the data-dependent diagonal
    ``D + W_D x`` (``seqlab.ops.ssd.quasiseparable``); gated RMSNorm ``rms(y) * silu(z)`` over
    all of d_inner even when ``n_groups > 1`` (as goombalab/hydra, whose ``RMSNormGated`` has no
    ``group_size``; Mamba-2 normalises per group); output projection.
    Heads: ``n_heads = expand * d_model / head_dim``; give ``head_dim`` (default 64) or
    ``n_heads``, not two that disagree. Bidirectional: ``decode`` raises.
    ``implementation="pallas"`` runs the SSD passes over chunks as Pallas kernels (as ``ssd``).
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        d_state: int = 64,
        expand: int = 2,
        head_dim: int | None = None,
        n_heads: int | None = None,
        n_groups: int = 1,
        d_conv: int = 7,
        A_init_range: tuple[float, float] = (1.0, 1.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        use_bias: bool = False,
        implementation: str = "xla",
    ):
        self._setup(d_model, d_state=d_state, expand=expand, head_dim=head_dim, n_heads=n_heads,
                    n_groups=n_groups, chunk_size=chunk_size, dtype=dtype, name="Hydra",
                    implementation=implementation)
        self.causal = False
        if d_conv % 2 == 0 or d_conv < 1:
            raise ValueError(f"Hydra: d_conv must be a positive odd kernel size (centred "
                             f"convolution), got {d_conv}")
        gn, h = n_groups * d_state, self.n_heads
        self.in_proj = nnx.Linear(d_model, 2 * self.d_inner + 4 * gn + 2 * h, use_bias=use_bias,
                                  dtype=dtype, rngs=rngs)
        self.conv = ShortConv(self.d_inner + 4 * gn, d_conv, causal=False, rngs=rngs)
        self.A_log = SSMParam(_A_log_init(rngs, h, A_init_range))
        self.dt_bias = SSMParam(dt_bias_init(rngs.params(), (h,), dt_min, dt_max, dt_init_floor))
        self.D = nnx.Param(jnp.ones((h,)))
        self.fc_D = nnx.Linear(self.d_inner, h, use_bias=False, dtype=dtype, rngs=rngs)
        # over all of d_inner whatever n_groups, as goombalab/hydra's
        # RMSNormGated(d_inner, norm_before_gate=True) (no group_size there)
        self.norm = GatedRMSNorm(self.d_inner, norm_before_gate=True)
        self.out_proj = nnx.Linear(self.d_inner, d_model, use_bias=use_bias, dtype=dtype,
                                   rngs=rngs)

    def _mixer_inputs(self, u: jax.Array, mask: jax.Array | None):
        """(z [b, L, d_inner], x [b, L, h, p], keyword arguments of ``quasiseparable``)."""
        check_input(u, self.d_model, "Hydra")
        gn, h = self.n_groups * self.d_state, self.n_heads
        zxbcdt = self.in_proj(u.astype(self.dtype))
        z, xbc, dt = jnp.split(zxbcdt, [self.d_inner, 2 * self.d_inner + 4 * gn], axis=-1)
        xbc = jax.nn.silu(self.conv(xbc, mask))
        x, B_fw, C_fw, B_bw, C_bw = jnp.split(
            xbc, [self.d_inner + k * gn for k in range(4)], axis=-1)
        x = apply_mask(x, mask)
        dt = self._dt(dt, mask)
        diag = self.fc_D(x).astype(jnp.float32) + self.D[...]
        args = dict(
            dt_fw=dt[..., :h], dt_bw=dt[..., h:], A=self._A(),
            B_fw=self._heads(B_fw, self.d_state), C_fw=self._heads(C_fw, self.d_state),
            B_bw=self._heads(B_bw, self.d_state), C_bw=self._heads(C_bw, self.d_state),
            diag=diag,
        )
        return z, self._heads(x, self.head_dim), args

    def _output(self, y: jax.Array, z: jax.Array) -> jax.Array:
        y = y.reshape(y.shape[:2] + (self.d_inner,)).astype(self.dtype)
        return self.out_proj(self.norm(y, z))

    def __call__(self, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """u: [batch, length, d_model], mask: [batch, length] bool -> [batch, length, d_model]."""
        z, x, args = self._mixer_inputs(u, mask)
        y = quasiseparable(x, chunk_size=self.chunk_size, implementation=self.implementation,
                           **args)
        return self._output(y, z)

    def mixing_matrix(self, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """The quasiseparable matrix this layer applies to its conv features, per head:
        [batch, heads, length, length] (``seqlab.ops.ssd.materialize``; O(length^2))."""
        _, _, a = self._mixer_inputs(u, mask)
        return materialize(a["dt_fw"], a["A"], a["B_fw"], a["C_fw"], dt_bw=a["dt_bw"],
                           B_bw=a["B_bw"], C_bw=a["C_bw"], diag=a["diag"])

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32):
        raise ValueError("Hydra is bidirectional: every output depends on future tokens, so it "
                         "has no decode cache; use a causal mixer (e.g. 'mamba2') to generate")

    def decode(self, x: jax.Array, cache):
        raise ValueError("Hydra is bidirectional: every output depends on future tokens, so it "
                         "cannot decode token by token; use a causal mixer (e.g. 'mamba2')")


@register_mixer("mamba2")
class Mamba2(_SSDMixerBase):
    """Mamba-2: a causal selective SSM mixer on the chunked SSD scan (Dao & Gu 2024, Sec. 7).

    u: [batch, length, d_model] -> y: [batch, length, d_model]. One input projection to
    ``[z | x | B | C | dt]``; a causal depthwise convolution + SiLU over ``[x | B C]``;
    ``y = SSD(x) + D x`` (``seqlab.ops.ssd.ssd``); gated RMSNorm ``rms(y * silu(z))`` per group
    of ``d_inner / n_groups`` features (mamba_ssm's ``RMSNormGated(group_size=d_ssm //
    ngroups)``); output projection. Decode cache: ``{"conv": [batch, d_conv-1, channels],
    "state": [batch, heads, head_dim, d_state]}`` (fixed size: ``max_length`` is not needed).
    Heads: ``n_heads = expand * d_model / head_dim``; give ``head_dim`` (default 64) or
    ``n_heads``, not two that disagree. ``implementation="pallas"`` runs the SSD passes over
    chunks as Pallas kernels (``seqlab.ops.ssd.ssd``; d_state a power of two >= 16, head_dim a
    multiple of 16).
    Options of released checkpoints (mamba_ssm's ``Mamba2``, transformers' ``Mamba2Mixer``):
    ``use_bias`` (biases of in_proj and out_proj), ``conv_bias`` (bias of the convolution),
    ``norm_eps`` (epsilon of the gated RMSNorm), ``dt_limit = (low, high)``: the step size
    ``dt = clip(softplus(dt + dt_bias), low, high)`` (mamba_ssm's ``dt_limit``, transformers'
    ``time_step_limit``; the default (0, inf) clips nothing), in the forward pass and in
    ``decode`` alike.
    """

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        d_state: int = 64,
        expand: int = 2,
        head_dim: int | None = None,
        n_heads: int | None = None,
        n_groups: int = 1,
        d_conv: int = 4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        use_bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        implementation: str = "xla",
    ):
        self._setup(d_model, d_state=d_state, expand=expand, head_dim=head_dim, n_heads=n_heads,
                    n_groups=n_groups, chunk_size=chunk_size, dtype=dtype, name="Mamba2",
                    implementation=implementation, dt_limit=tuple(dt_limit))
        self.causal = True
        if d_conv < 1:
            raise ValueError(f"Mamba2: d_conv must be >= 1, got {d_conv}")
        gn, h = n_groups * d_state, self.n_heads
        self.in_proj = nnx.Linear(d_model, 2 * self.d_inner + 2 * gn + h, use_bias=use_bias,
                                  dtype=dtype, rngs=rngs)
        self.conv = ShortConv(self.d_inner + 2 * gn, d_conv, causal=True, use_bias=conv_bias,
                              rngs=rngs)
        self.A_log = SSMParam(_A_log_init(rngs, h, A_init_range))
        self.dt_bias = SSMParam(dt_bias_init(rngs.params(), (h,), dt_min, dt_max, dt_init_floor))
        self.D = nnx.Param(jnp.ones((h,)))
        # per group of d_inner / n_groups features, as mamba_ssm's Mamba2
        # (RMSNormGated(d_ssm, group_size=d_ssm // ngroups))
        self.norm = GatedRMSNorm(self.d_inner, norm_before_gate=False, eps=norm_eps,
                                 group_size=self.d_inner // self.n_groups)
        self.out_proj = nnx.Linear(self.d_inner, d_model, use_bias=use_bias, dtype=dtype,
                                   rngs=rngs)

    def _split(self, u: jax.Array):
        gn = self.n_groups * self.d_state
        zxbcdt = self.in_proj(u.astype(self.dtype))
        return jnp.split(zxbcdt, [self.d_inner, 2 * self.d_inner + 2 * gn], axis=-1)

    def _mix(self, xbc, dt, mask, initial_state):
        gn = self.n_groups * self.d_state
        x, B, C = jnp.split(jax.nn.silu(xbc), [self.d_inner, self.d_inner + gn], axis=-1)
        x = self._heads(apply_mask(x, mask), self.head_dim)
        y, state = ssd(x, self._dt(dt, mask), self._A(), self._heads(B, self.d_state),
                       self._heads(C, self.d_state), chunk_size=self.chunk_size,
                       initial_state=initial_state, implementation=self.implementation)
        y = y + (self.D[...][:, None] * x).astype(y.dtype)
        return y, state

    def _output(self, y: jax.Array, z: jax.Array) -> jax.Array:
        y = y.reshape(y.shape[:2] + (self.d_inner,)).astype(self.dtype)
        return self.out_proj(self.norm(y, z))

    def __call__(self, u: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """u: [batch, length, d_model], mask: [batch, length] bool -> [batch, length, d_model]."""
        check_input(u, self.d_model, "Mamba2")
        z, xbc, dt = self._split(u)
        y, _ = self._mix(self.conv(xbc, mask), dt, mask, None)
        return self._output(y, z)

    def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype = jnp.float32):
        """{"conv": [batch, d_conv-1, channels], "state": [batch, heads, head_dim, d_state]}.

        The recurrent state has a fixed size, so ``max_length`` only keeps the protocol."""
        del max_length
        return {
            "conv": self.conv.init_cache(batch_size, dtype),
            # the recurrent state accumulates over the whole sequence: float32 whatever dtype
            "state": jnp.zeros((batch_size, self.n_heads, self.head_dim, self.d_state),
                               jnp.float32),
        }

    def decode(self, u: jax.Array, cache):
        """u: [batch, t, d_model] (t >= 1) continuing the cached sequence -> (y, new cache)."""
        check_input(u, self.d_model, "Mamba2.decode")
        z, xbc, dt = self._split(u)
        xbc, conv_cache = self.conv.decode(xbc, cache["conv"])
        y, state = self._mix(xbc, dt, None, cache["state"].astype(jnp.float32))
        new_cache = {"conv": conv_cache, "state": state.astype(cache["state"].dtype)}
        return self._output(y, z), new_cache
