"""JAX implementations of seqlab's cores by other projects, each wrapped to take seqlab's op's
own inputs, so that a bench row or ``scripts/bench/bench_jax_peers.py`` can check the values
equal and then time both on the same backend.

None of them is a dependency: each function returns None when its project is not importable
(nothing is installed or downloaded here). They install from the package index into any
environment (``pip install --no-deps``; docs/performance.md lists the versions measured), except
lindermanlab/S5, which is not packaged: point ``SEQLAB_S5_PATH`` at a checkout of
https://github.com/lindermanlab/S5 (its ``s5`` package is imported from there, nothing is copied).

- :func:`recurrentgemma_scan`: recurrentgemma's ``jax.scan.linear_scan`` (a ``lax.scan`` per
  sequence, vmapped over the batch), for ``ops.scan.linear_scan``.
- :func:`s5_scan`: lindermanlab/S5's ``s5/ssm.py`` ``apply_ssm`` recurrence
  (``lax.associative_scan`` with its ``binary_operator``, one sequence at a time, vmapped), for
  ``ops.scan.linear_scan``; :func:`s5_module` its ``S5SSM`` layer (flax linen).
- :func:`mamba2_jax_ssd`: mamba2-jax's ``modeling.ssd_forward``, for ``ops.ssd.ssd``.
- :func:`deltanet_tpu_gdn` (deltanet-tpu ``variants.chunk_gdn``, pure-JAX form) and
  :func:`maxtext_gdn` (MaxText ``models.qwen3.jax_chunk_gated_delta_rule``), for the gated
  ``ops.delta.delta_product`` with one Householder factor.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["recurrentgemma_scan", "s5_scan", "s5_module", "mamba2_jax_ssd", "deltanet_tpu_gdn",
           "maxtext_gdn", "S5_PATH_VAR"]

S5_PATH_VAR = "SEQLAB_S5_PATH"


def _import(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - an absent or broken peer is absent, not an error
        return None


def recurrentgemma_scan() -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """``(a, b) -> h`` with a, b: [batch, length, ...] (real or complex), as ``linear_scan``."""
    scan = _import("recurrentgemma.jax.scan", "linear_scan")
    if scan is None:
        return None
    return lambda a, b: scan(b, jnp.broadcast_to(a, b.shape).astype(b.dtype))[0]


def _s5_package() -> Any:
    """lindermanlab/S5's ``s5.ssm`` from ``$SEQLAB_S5_PATH``, or None.

    Its annotations name ``jax.numpy.DeviceArray``, which JAX removed (0.4.x); the name is
    aliased to ``jax.Array`` before the import (the only change; the code runs as published)."""
    root = os.environ.get(S5_PATH_VAR)
    if not root or not os.path.isdir(os.path.join(root, "s5")):
        return None
    if not hasattr(jnp, "DeviceArray"):
        jnp.DeviceArray = jax.Array
    if root not in sys.path:
        sys.path.append(root)
    try:
        return importlib.import_module("s5.ssm")
    except Exception:  # noqa: BLE001 - a broken checkout is absent, not an error
        return None


def s5_scan() -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """``(a, b) -> h`` with a, b: [batch, length, P] by S5's own recurrence: its
    ``binary_operator`` under ``lax.associative_scan`` on each sequence, vmapped over the batch
    (as its models vmap ``apply_ssm``)."""
    ssm = _s5_package()
    if ssm is None:
        return None

    def one(a, b):  # [length, P]
        return jax.lax.associative_scan(ssm.binary_operator, (a, b))[1]

    return lambda a, b: jax.vmap(one)(jnp.broadcast_to(a, b.shape).astype(b.dtype), b)


def s5_module() -> Any:
    """lindermanlab/S5's ``S5SSM`` (flax linen) class, or None."""
    ssm = _s5_package()
    return None if ssm is None else ssm.S5SSM


def mamba2_jax_ssd(chunk_size: int) -> Callable[..., jax.Array] | None:
    """``(x, dt, A, B, C) -> y`` as ``ops.ssd.ssd``: x [batch, length, heads, P], dt [batch,
    length, heads] (after softplus), A [heads], B, C [batch, length, groups, N]. The peer takes
    per-head B and C (broadcast here) and applies softplus to dt itself (given
    ``log(expm1(dt))``), with no dt bias and no clamp."""
    ssd = _import("mamba2_jax.modeling", "ssd_forward")
    if ssd is None:
        return None

    def call(x, dt, A, B, C):
        h = x.shape[2]
        Bh, Ch = (jnp.repeat(m, h // m.shape[2], axis=2) for m in (B, C))
        zeros = jnp.zeros(h, x.dtype)
        return ssd(x, jnp.log(jnp.expm1(dt)), A, Bh, Ch, chunk_size, zeros, zeros, 0.0,
                   float("inf"))[0]

    return call


def deltanet_tpu_gdn() -> Callable[..., jax.Array] | None:
    """``(q, k, v, beta, g) -> o`` as the gated ``delta_product`` (n = 1): deltanet-tpu's
    ``chunk_gdn`` in its pure-JAX form (``fallback_scan=True``, fp32); it requires head
    dimensions K = V = 128 and chunk 128."""
    gdn = _import("deltanet_tpu.variants", "chunk_gdn")
    if gdn is None:
        return None
    return lambda q, k, v, beta, g: gdn(q, k, v, g, beta, chunk_size=128, precision="fp32",
                                        fallback_scan=True)


def maxtext_gdn(chunk_size: int) -> Callable[..., jax.Array] | None:
    """``(q, k, v, beta, g) -> o`` as the gated ``delta_product`` (n = 1): MaxText's
    ``jax_chunk_gated_delta_rule`` computed in float32."""
    gdn = _import("maxtext.models.qwen3", "jax_chunk_gated_delta_rule")
    if gdn is None:
        return None
    return lambda q, k, v, beta, g: gdn(q, k, v, g, beta, chunk_size=chunk_size,
                                        compute_dtype=jnp.float32)[0]
