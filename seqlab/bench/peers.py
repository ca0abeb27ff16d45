"""Peers that seqlab's ops are measured against in the same run.

- ``s4d_tutorial``: a plain-JAX S4D written the way the public tutorials write it (the S4D
  paper's minimal code, Gu et al. 2022 "On the Parameterization and Initialization of Diagonal
  State Space Models", listing 1, and The Annotated S4): materialise the kernel with a
  Vandermonde product, then convolve with ``jnp.fft``. Written here from the equations.
- ``fft_conv_bare``: the bare FFT convolution with a given kernel (no kernel generation, no D):
  the floor an S4D core cannot beat.
- flash-linear-attention (``fla-core``): its pure-torch references ``fla/ops/<op>/naive.py``,
  loaded by file path (``import fla`` needs Triton, which CPU machines lack); on a CUDA machine
  with Triton, its Triton kernels instead.
- ``jax.nn.dot_product_attention`` (XLA; cuDNN flash attention on GPU).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "s4d_kernel_tutorial",
    "s4d_tutorial",
    "fft_conv_bare",
    "fla_naive",
    "fla_triton",
    "torch_available",
]


def s4d_kernel_tutorial(A: jax.Array, C: jax.Array, log_dt: jax.Array, length: int) -> jax.Array:
    """S4D-ZOH kernel by an explicit Vandermonde product (the tutorial form).

    A, C: [H, N] complex (N = half the state, conjugate pairs implied); log_dt: [H].
    ``K[h, l] = 2 Re( sum_n C[h,n] (exp(dt A) - 1)/A [h,n] exp(dt A l) )`` (S4D, eq. 6 with ZOH,
    B folded into C). Materialises the ``[H, N, L]`` Vandermonde matrix. Returns K: [H, L].
    """
    dtA = A * jnp.exp(log_dt)[:, None]  # [H, N]
    vandermonde = jnp.exp(dtA[:, :, None] * jnp.arange(length))  # [H, N, L]
    Cb = C * (jnp.exp(dtA) - 1.0) / A
    return 2.0 * jnp.einsum("hn,hnl->hl", Cb, vandermonde).real


def fft_conv_bare(u: jax.Array, K: jax.Array) -> jax.Array:
    """Causal convolution by FFT with zero padding to 2L. u: [B, L, H]; K: [H, L] -> [B, L, H]."""
    length = u.shape[1]
    uf = jnp.fft.rfft(u, n=2 * length, axis=1)
    kf = jnp.fft.rfft(K, n=2 * length, axis=-1).T  # [2L/2+1, H]
    return jnp.fft.irfft(uf * kf, n=2 * length, axis=1)[:, :length]


def s4d_tutorial(
    u: jax.Array, A: jax.Array, C: jax.Array, log_dt: jax.Array, D: jax.Array
) -> jax.Array:
    """Tutorial-style S4D core: Vandermonde kernel, then FFT convolution, then ``+ D u``.

    u: [B, L, H]; A, C: [H, N] complex; log_dt, D: [H]. Returns y: [B, L, H].
    The tutorial works channel-first (``[B, H, L]``), so we transpose in and out as it does.
    """
    length = u.shape[1]
    K = s4d_kernel_tutorial(A, C, log_dt, length)
    uh = jnp.swapaxes(u, 1, 2)  # [B, H, L]
    k_f = jnp.fft.rfft(K, n=2 * length)
    u_f = jnp.fft.rfft(uh, n=2 * length)
    y = jnp.fft.irfft(u_f * k_f, n=2 * length)[..., :length]
    return jnp.swapaxes(y + uh * D[:, None], 1, 2)


def torch_available() -> bool:
    """True when torch can be imported (the ``bench`` extra)."""
    return importlib.util.find_spec("torch") is not None


def _fla_root() -> Path | None:
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _load_naive(op: str) -> ModuleType | None:
    root = _fla_root()
    if root is None or not torch_available():
        return None
    path = root / "ops" / op / "naive.py"
    if not path.exists():
        return None
    name = f"_seqlab_fla_naive_{op}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fla_naive(op: str, function: str) -> Callable[..., Any] | None:
    """``fla/ops/<op>/naive.py``'s ``function`` (pure torch), or None when not installed.

    Example: ``fla_naive("gated_delta_rule", "naive_chunk_gated_delta_rule")``.
    """
    try:
        module = _load_naive(op)
    except Exception:  # noqa: BLE001 - a peer that fails to import is reported as absent
        return None
    return getattr(module, function, None) if module is not None else None


def fla_triton(module: str, function: str) -> Callable[..., Any] | None:
    """A Triton kernel of flash-linear-attention (``fla.ops.<module>.<function>``) when CUDA and
    Triton are available, else None."""
    if not torch_available() or importlib.util.find_spec("triton") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        mod = importlib.import_module(f"fla.ops.{module}")
    except Exception:  # noqa: BLE001
        return None
    return getattr(mod, function, None)
