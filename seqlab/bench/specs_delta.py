"""Bench specs of the delta-rule family (DeltaNet, Gated DeltaNet, DeltaProduct): the chunked
``ops.delta.delta_product`` against its recurrent form and flash-linear-attention's references."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqlab.bench import peers, peers_jax
from seqlab.bench.specs_base import F32, Builder, Call, Dims, MixerSpec, _keys, _normal, _torch

# ----------------------------------------------------------------------------- delta family


def _delta_inputs(d: Dims, key: jax.Array, n: int, gated: bool):
    b, t, h, dk = d.batch, d.length, d.n_heads, d.head_dim
    k1, k2, k3, k4, k5 = _keys(key, 5)
    q = _normal(k1, (b, t, h, dk))
    k = _normal(k2, (b, t * n, h, dk))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = _normal(k3, (b, t * n, h, dk))
    beta = jax.nn.sigmoid(_normal(k4, (b, t * n, h)))
    g = jax.nn.log_sigmoid(_normal(k5, (b, t, h)) + 4.0) if gated else None
    return q, k, v, beta, g


def _delta_cost(n: int) -> Callable[[Dims], tuple[float, float]]:
    def cost(d: Dims) -> tuple[float, float]:
        # per token and head: decay (KV), n x (S^T k: 2KV, rank-1 update: 3KV), read S^T q: 2KV
        b, t, h, k = d.batch, d.length, d.n_heads, d.head_dim
        flops = b * t * h * k * k * (1 + 5 * n + 2)
        nbytes = F32 * b * t * h * (k + n * (2 * k + 1) + 1 + k)
        return flops, nbytes

    return cost


def _delta_call(n: int, gated: bool, recurrent: bool) -> Builder:
    def build(d: Dims, key: jax.Array) -> Call:
        from seqlab.ops import delta

        q, k, v, beta, g = _delta_inputs(d, key, n, gated)
        f = delta.delta_product_recurrent if recurrent else delta.delta_product
        name = "ops.delta." + ("delta_product_recurrent" if recurrent else "delta_product")

        def core(q, k, v, beta, g):
            return f(q, k, v, beta, g, num_householder=n, chunk_size=d.chunk_size)[0]

        return Call(name, core, (q, k, v, beta, g))

    return build


def _fla_delta(n: int, gated: bool) -> Builder:
    def build(d: Dims, key: jax.Array) -> Call | None:
        q, k, v, beta, g = _delta_inputs(d, key, n, gated)
        if g is None:
            g = jnp.zeros(q.shape[:3])
        scale = d.head_dim**-0.5
        tri = peers.fla_triton("gated_delta_product" if n > 1 else "gated_delta_rule",
                               "chunk_gated_delta_product" if n > 1 else "chunk_gated_delta_rule")
        if tri is not None:
            tq, tk, tv, tb, tg = (x.cuda() for x in _torch(q, k, v, beta, g))
            kw = {"num_householder": n} if n > 1 else {}
            return Call("fla Triton chunk", lambda *a: tri(*a, scale=scale, **kw)[0],
                        (tq, tk, tv, tg, tb), backend="torch-cuda")
        if n == 1:
            f = peers.fla_naive("gated_delta_rule", "naive_chunk_gated_delta_rule")
            if f is None:
                return None
            return Call("fla naive_chunk_gated_delta_rule (torch)",
                        lambda q, k, v, g, b: f(q, k, v, g, b, chunk_size=d.chunk_size,
                                                scale=scale)[0],
                        _torch(q, k, v, g, beta), backend="torch")
        f = peers.fla_naive("gated_delta_product", "naive_recurrent_gated_delta_product")
        if f is None:
            return None
        return Call("fla naive_recurrent_gated_delta_product (torch)",
                    lambda q, k, v, g, b: f(q, k, v, g, b, scale, num_householder=n)[0],
                    _torch(q, k, v, g, beta), backend="torch")

    return build


def _jax_gdn(which: str) -> Builder:
    """A JAX gated delta rule (n = 1) on the op's inputs: deltanet-tpu (K = V = 128 only) or
    MaxText (``seqlab.bench.peers_jax``)."""
    def build(d: Dims, key: jax.Array) -> Call | None:
        if which == "deltanet-tpu":
            f = peers_jax.deltanet_tpu_gdn() if d.head_dim == 128 else None
            name = "deltanet-tpu chunk_gdn (JAX)"
        else:
            f, name = peers_jax.maxtext_gdn(d.chunk_size), "MaxText jax_chunk_gated_delta_rule"
        return None if f is None else Call(name, f, _delta_inputs(d, key, 1, True),
                                           same_as_op=True)

    return build


def _delta_spec(n: int, gated: bool) -> MixerSpec:
    jax_peers = (_jax_gdn("deltanet-tpu"), _jax_gdn("maxtext")) if n == 1 and gated else ()
    return MixerSpec(
        complexity="L",
        core_cost=_delta_cost(n),
        op=_delta_call(n, gated, recurrent=False),
        reference=_delta_call(n, gated, recurrent=True),
        peers=(_fla_delta(n, gated), *jax_peers),
        defaults={"n_householder": n},
    )
