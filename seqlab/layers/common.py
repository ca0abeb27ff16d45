"""Pieces shared by several mixers: the argument vocabulary check, the SSM parameter type,
masking, bias-free linear maps, short convolutions, the Mamba dt-bias initialisation, the gated
RMSNorm, and the diagonal-SSM helpers and output stage of S4D, S4 and S5
(docs/architecture.md)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

# ---- the argument vocabulary -----------------------------------------------------------------
RENAMED_ARGS: dict[str, str] = {
    "num_heads": "n_heads",
    "headdim": "head_dim",
    "ngroups": "n_groups",
    "conv_size": "d_conv",
    "num_householder": "n_householder",
    "bidirectional": "causal",
    "rope": "rope_dim",
    "qk_rope_head_dim": "rope_dim",
}
"""Old mixer argument names -> their names in the one vocabulary (docs/architecture.md)."""

_RENAME_HINTS = {
    "bidirectional": " (bidirectional=True is causal=False)",
    "rope": " (rope=True is rope_dim=None, the whole head; rope=False is rope_dim=0)",
}

_Init = TypeVar("_Init", bound=Callable[..., None])


def check_renamed(owner: str, args: Iterable[str]) -> None:
    """Raise a ValueError naming the new name when ``args`` holds an old argument name.

    owner: the mixer's name for the message; args: the keyword names (or a dict of them)."""
    for old in args:
        if old in RENAMED_ARGS:
            new = RENAMED_ARGS[old]
            raise ValueError(
                f"{owner}: argument {old!r} was renamed to {new!r}"
                f"{_RENAME_HINTS.get(old, '')}; pass {new}=... (in a config: mixer_args.{new})"
            )


def reject_renamed(init: _Init) -> _Init:
    """Decorate a mixer's ``__init__`` so that an old argument name (``RENAMED_ARGS``) raises
    :func:`check_renamed`'s error instead of a bare TypeError."""

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        check_renamed(type(self).__name__, kwargs)
        init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]



class SSMParam(nnx.Param):
    """A parameter of a state-space or recurrent transition (A, B, dt, Lambda, log-dt, ...).

    The trainer puts every ``SSMParam`` in its own optimiser group: learning rate
    ``train.ssm_lr`` and no weight decay, as S4 trains them (Gu et al. 2022, appendix).
    """


def apply_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Zero padded positions. x: [batch, length, ...]; mask: [batch, length] bool (True = real)."""
    if mask is None:
        return x
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


def linear(d_in: int, d_out: int, dtype: jnp.dtype, rngs: nnx.Rngs, *,
           bias: bool = False) -> nnx.Linear:
    """An ``nnx.Linear`` [..., d_in] -> [..., d_out] computing in ``dtype`` with float32
    parameters, bias-free unless ``bias`` (the attention layers' projections)."""
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      rngs=rngs)


def check_input(x: jax.Array, d_model: int, name: str) -> None:
    """Raise a clear error unless x is [batch, length, d_model]."""
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} expects x of shape [batch, length, d_model={d_model}], got {tuple(x.shape)}"
        )


class ShortConv(nnx.Module):
    """Depthwise 1-D convolution over time with a short kernel (Mamba, DeltaNet, Hydra).

    ``causal=True``:  y_t = b + sum_{j<K} w_j x_{t-K+1+j}   (left zero padding; has ``decode``)
    ``causal=False``: y_t = b + sum_{j<K} w_j x_{t-(K-1)/2+j} (centred, K odd; bidirectional)

    x, y: [batch, length, channels]. Padded positions (mask False) are zeroed before the
    convolution so that they never leak into real positions.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 4,
        *,
        causal: bool = True,
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        if not causal and kernel_size % 2 == 0:
            raise ValueError(
                f"a centred (non-causal) ShortConv needs an odd kernel, got {kernel_size}"
            )
        self.channels, self.kernel_size, self.causal = channels, kernel_size, causal
        bound = 1.0 / kernel_size**0.5
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (kernel_size, channels), minval=-bound, maxval=bound)
        )
        self.bias = nnx.Param(jnp.zeros((channels,))) if use_bias else None

    def _conv_padded(self, xp: jax.Array, length: int) -> jax.Array:
        w = self.weight[...].astype(xp.dtype)
        y = sum(w[j] * xp[:, j : j + length] for j in range(self.kernel_size))
        if self.bias is not None:
            y = y + self.bias[...].astype(xp.dtype)
        return y

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = apply_mask(x, mask)
        k = self.kernel_size
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        xp = jnp.pad(x, ((0, 0), pad, (0, 0)))
        return self._conv_padded(xp, x.shape[1])

    def init_cache(self, batch_size: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
        """The last K-1 inputs: [batch, K-1, channels] (zeros = start of sequence)."""
        if not self.causal:
            raise ValueError("a centred (non-causal) convolution has no recurrent decode")
        return jnp.zeros((batch_size, self.kernel_size - 1, self.channels), dtype)

    def decode(self, x: jax.Array, cache: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x: [batch, t, channels] new inputs; returns (y [batch, t, channels], new cache)."""
        xp = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        y = self._conv_padded(xp, x.shape[1])
        return y, xp[:, xp.shape[1] - (self.kernel_size - 1) :].astype(cache.dtype)


def dt_bias_init(
    key: jax.Array,
    shape: tuple[int, ...],
    dt_min: float,
    dt_max: float,
    dt_init_floor: float = 0.0,
) -> jax.Array:
    """Bias b such that softplus(b) is a log-uniform step size (Mamba init; Gu & Dao 2023).

    dt = max(exp(u (log dt_max - log dt_min) + log dt_min), dt_init_floor), u ~ U[0, 1), so dt
    is log-uniform in [dt_min, dt_max]; b = softplus^{-1}(dt) = dt + log(1 - exp(-dt)).
    Returns a float32 array of ``shape`` (e.g. ``[heads]``).
    """
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = jax.random.uniform(key, shape)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_init_floor)
    return dt + jnp.log(-jnp.expm1(-dt))


class GatedRMSNorm(nnx.Module):
    """RMSNorm over the last axis (or over groups of it) with an optional SiLU gate, float32.

    x, z: [..., dim]; weight w: [dim] (ones at init); returns x's dtype.

    ``norm_before_gate=True``  (Hydra, gated DeltaNet): y = rms(x) * w * silu(z)
    ``norm_before_gate=False`` (Mamba-2, Dao & Gu 2024 Sec. 7.3): y = rms(x * silu(z)) * w
    ``z=None``: y = rms(x) * w, where rms(x) = x / sqrt(mean(x^2) + eps).

    ``group_size`` (must divide dim; None = dim): the mean of x^2 is taken over each
    contiguous group of ``group_size`` features separately, as mamba_ssm's
    ``RMSNormGated(group_size=...)`` (Mamba-2 passes ``d_ssm // ngroups``). Per-head norms
    (DeltaNet) pass x, z as [..., heads, head_dim] with ``dim = head_dim``.
    """

    def __init__(self, dim: int, *, norm_before_gate: bool = True, eps: float = 1e-5,
                 group_size: int | None = None):
        group_size = dim if group_size is None else group_size
        if group_size < 1 or dim % group_size:
            raise ValueError(f"GatedRMSNorm: group_size={group_size} must divide dim={dim}")
        self.weight = nnx.Param(jnp.ones((dim,)))
        self.norm_before_gate, self.eps, self.group_size = norm_before_gate, eps, group_size

    def __call__(self, x: jax.Array, z: jax.Array | None = None) -> jax.Array:
        dtype, shape = x.dtype, x.shape
        x = x.astype(jnp.float32)
        gate = None if z is None else jax.nn.silu(z.astype(jnp.float32))
        if gate is not None and not self.norm_before_gate:
            x = x * gate
        g = x.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        g = g * jax.lax.rsqrt(jnp.mean(g * g, axis=-1, keepdims=True) + self.eps)
        x = g.reshape(shape) * self.weight[...]
        if gate is not None and self.norm_before_gate:
            x = x * gate
        return x.astype(dtype)


# ---- diagonal state-space layers (S4D, S4, S4-PTD, S5) -------------------------------------
REAL_PARAMS = ("exp", "clip")
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "identity": lambda x: x,
}
OUTPUTS = ("glu", "linear", "none")
CLIP_MAX = -1e-4  # real_param 'clip': Re(Lambda) = min(param, -1e-4)


def choice(name: str, value: str, valid: Iterable[str]) -> str:
    """``value`` if it is one of ``valid``, else a ValueError listing the valid choices."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")
    return value


def complex_param(z: Any) -> jax.Array:
    """complex [...] -> float32 [..., 2] (real, imag): parameters are real float32 arrays.
    (jnp, not np: layers are also built abstractly under ``nnx.eval_shape``.)"""
    return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(jnp.float32)


def as_complex(p: jax.Array) -> jax.Array:
    """float32 [..., 2] (real, imag) -> complex64 [...]: the inverse of :func:`complex_param`."""
    return jax.lax.complex(p[..., 0], p[..., 1])


def real_part(p: jax.Array, real_param: str) -> jax.Array:
    """Re(Lambda) < 0 from its parameter: ``-exp(p)`` ('exp') or ``min(p, -1e-4)`` ('clip')."""
    return -jnp.exp(p) if real_param == "exp" else jnp.minimum(p, CLIP_MAX)


def check_length(length: int, max_length: int | None, name: str) -> None:
    """Raise a clear error when a sequence is longer than a layer's configured ``max_length``."""
    if max_length is not None and length > max_length:
        raise ValueError(
            f"{name} was configured with max_length={max_length} but got length {length}; "
            "raise mixer_args.max_length or shorten the sequences"
        )


def init_log_dt(key: jax.Array, H: int, dt_min: float, dt_max: float) -> jax.Array:
    """log dt [H] uniform in [log dt_min, log dt_max] (S4, Sec. 4 / appendix)."""
    if not (0 < dt_min <= dt_max):
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    return jax.random.uniform(key, (H,), minval=math.log(dt_min), maxval=math.log(dt_max))


class SSMOutputStage(nnx.Module):
    """Base of S4D, S4 and S5: the skip ``D [H]`` and the block that follows the SSM, as in the
    S4 repository: activation, dropout, output projection (``out``: glu | linear | none)."""

    def init_output_stage(
        self, H: int, *, activation: str, out: str, dropout: float, dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        """Create D [H] ~ N(0, 1), the dropout and the projection (in this order: the random
        draws follow it)."""
        self.D = nnx.Param(jax.random.normal(rngs.params(), (H,)))
        self.act = ACTIVATIONS[activation]
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        if out == "glu":
            self.proj = nnx.Linear(H, 2 * H, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        elif out == "linear":
            self.proj = nnx.Linear(H, H, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        else:
            self.proj = None

    def output_stage(self, y: jax.Array) -> jax.Array:
        """Activation, dropout and output projection: y [batch, length, H] float32 ->
        [batch, length, H] in the layer's dtype."""
        y = self.drop(self.act(y.astype(self.dtype)))
        if self.proj is not None:
            y = self.proj(y)
            if self.out == "glu":
                y = jax.nn.glu(y, axis=-1)
            y = self.drop(y)
        return y
