"""The delta rule with gates and products of Householders (DeltaNet, Gated DeltaNet, DeltaProduct).

One recurrence covers the family. Per token t, with state ``S: [K, V]``:

    S <- exp(g_t) S                                     (Gated DeltaNet, Yang et al. 2024b, eq. 10)
    for j in 0..n-1:                                    (DeltaProduct, Siems et al. 2025, eq. 3)
        S <- S + beta_tj k_tj (v_tj - S^T k_tj)^T        = (I - beta k k^T) S + beta k v^T
    o_t = S^T (scale q_t)

n = 1 is DeltaNet (Schlag et al. 2021; Yang et al. 2024a, eq. 1) or Gated DeltaNet. The keys,
values and betas of the n steps of token t sit at rows ``t*n + j`` of ``k, v, beta`` (the layout of
flash-linear-attention's ``naive_recurrent_gated_delta_product``, whose conventions we share:
``scale`` defaults to ``K ** -0.5``, the gate is in log space and applied once per token, before
its n steps; the output is cast to ``q.dtype``, the final state is float32).

``delta_product_recurrent`` is the sequential reference (``lax.scan`` over tokens).
``delta_product`` is the chunkwise-parallel form. It views the n steps per token as one
sequence of ``T*n`` micro-steps whose gate is ``g_t`` at the first step of each token and 0 at
the others, and whose queries sit at the last step of each token. Within a chunk of ``c``
micro-steps, with ``G_r`` the cumulative gate from the chunk start and ``S_0`` the state entering
the chunk, the updates ``d_r = S_r - exp(g_r) S_{r-1}`` (written ``k_r d_r^T``) satisfy
(Yang et al. 2024a, sec. 3.2, the UT transform, with the gates of Yang et al. 2024b, sec. 3.3):

    (I + diag(beta) A) D = diag(beta) V - diag(beta exp(G)) K S_0,
    A_rs = exp(G_r - G_s) k_r . k_s  (s < r),

so ``D = U - W S_0`` with ``U = T diag(beta) V``, ``W = T diag(beta exp(G)) K`` and
``T = (I + diag(beta) A)^{-1}`` (a unit lower-triangular solve). Then

    O = diag(exp(G_q)) Q S_0 + (M * Q K^T) D,       M_qs = exp(G_q - G_s) (s <= q)
    S_c = exp(G_c) S_0 + (exp(G_c - G) * K)^T D.

Only ``S_c`` needs a sequential ``lax.scan`` over chunks (two ``[c, K] x [K, V]`` products per
step); everything else, including ``O = (diag(exp(G_q)) Q - P W) S_0 + P U`` once the entering
states are known, is one batched matmul over all chunks. The UT inverse ``T`` is computed by
recursive 2x2 blocking (``unit_lower_inverse``, with its own VJP): on CPU that is much faster
than a batched triangular solve. Reverse-mode autodiff of the scan stores one ``[B, H, K, V]``
state per chunk (T / chunk_size of them), which is small, so plain ``jax.grad`` is exact and no
recomputing ``custom_vjp`` is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _check(q, k, v, beta, g, num_householder, initial_state, chunk_size=None):
    if num_householder < 1:
        raise ValueError(f"num_householder must be >= 1, got {num_householder}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if q.ndim != 4:
        raise ValueError(f"q must be [batch, length, heads, key_dim], got shape {q.shape}")
    b, t, h, dk = q.shape
    n = num_householder
    if k.shape != (b, t * n, h, dk):
        raise ValueError(f"k must be [B, T*n, H, K] = {(b, t * n, h, dk)}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != (b, t * n, h):
        raise ValueError(f"v must be [B, T*n, H, V] with B,T*n,H = {(b, t * n, h)}, got {v.shape}")
    if beta.shape != (b, t * n, h):
        raise ValueError(f"beta must be [B, T*n, H] = {(b, t * n, h)}, got {beta.shape}")
    if g is not None and g.shape != (b, t, h):
        raise ValueError(f"g must be [B, T, H] = {(b, t, h)} or None, got {g.shape}")
    if initial_state is not None and initial_state.shape != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(b, h, dk, v.shape[-1])}, "
            f"got {initial_state.shape}"
        )


def _acc_dtype(*xs) -> jnp.dtype:
    """float32 accumulation, or float64 when the inputs are float64."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


@jax.custom_vjp
def unit_lower_inverse(lower: jax.Array) -> jax.Array:
    """Inverse of unit lower-triangular matrices ``[..., c, c]``.

    Recursive 2x2 blocking, all diagonal blocks of one size at once:
    ``[[L11, 0], [L21, L22]]^-1 = [[T11, 0], [-T22 L21 T11, T22]]`` with ``Tii = Lii^-1``.
    On CPU this batched-matmul form is far faster than a batched triangular solve.
    """
    n = lower.shape[-1]
    c = 1 << (n - 1).bit_length()  # pad to a power of two with an identity block
    if c != n:
        lower = jnp.pad(lower, [(0, 0)] * (lower.ndim - 2) + [(0, c - n), (0, c - n)])
        lower = lower + jnp.diag((jnp.arange(c) >= n).astype(lower.dtype))
    inv = jnp.ones(lower.shape[:-2] + (c, 1, 1), lower.dtype)  # the 1x1 diagonal blocks
    size = 1
    while size < c:
        m = c // (2 * size)
        blocks = lower.reshape(lower.shape[:-2] + (m, 2 * size, m, 2 * size))
        blocks = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)  # [.., m, 2s, 2s]
        t11, t22 = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        t21 = -(t22 @ blocks[..., size:, :size] @ t11)
        top = jnp.concatenate([t11, jnp.zeros_like(t11)], -1)
        inv = jnp.concatenate([top, jnp.concatenate([t21, t22], -1)], -2)
        size *= 2
    return inv[..., 0, :n, :n]


def _inverse_fwd(lower):
    inv = unit_lower_inverse(lower)
    return inv, inv


def _inverse_bwd(inv, ct):
    """d(L^-1) = -L^-1 dL L^-1, so dL_bar = -T^T T_bar T^T on the strictly lower part."""
    n = inv.shape[-1]
    grad = -(jnp.swapaxes(inv, -1, -2) @ ct @ jnp.swapaxes(inv, -1, -2))
    return (jnp.where(jnp.tri(n, k=-1, dtype=bool), grad, 0.0),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def delta_product_recurrent(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    g: jax.Array | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """Sequential gated delta product (the reference form; ``chunk_size`` is ignored).

    q: [B, T, H, K]; k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H];
    g: [B, T, H] log-space decay or None; initial_state: [B, H, K, V] or None.
    Returns o: [B, T, H, V] (dtype of q) and the final state [B, H, K, V] (float32/float64).
    Per token: ``S <- exp(g_t) S``, then n steps ``S <- S + beta k (v - S^T k)^T``,
    then ``o_t = S^T (scale q_t)`` (Siems et al. 2025, eq. 3).
    """
    del chunk_size
    _check(q, k, v, beta, g, num_householder, initial_state)
    b, t, h, dk = q.shape
    n, dv = num_householder, v.shape[-1]
    acc = _acc_dtype(q, k, v, beta)
    scale = dk**-0.5 if scale is None else scale
    qs = (q.astype(acc) * scale).swapaxes(0, 1)  # [T, B, H, K]
    ks = k.astype(acc).reshape(b, t, n, h, dk).transpose(1, 2, 0, 3, 4)  # [T, n, B, H, K]
    vs = v.astype(acc).reshape(b, t, n, h, dv).transpose(1, 2, 0, 3, 4)
    bs = beta.astype(acc).reshape(b, t, n, h).transpose(1, 2, 0, 3)  # [T, n, B, H]
    gs = jnp.zeros((t, b, h), acc) if g is None else g.astype(acc).swapaxes(0, 1)
    s0 = jnp.zeros((b, h, dk, dv), acc) if initial_state is None else initial_state.astype(acc)

    def step(s, xs):
        q_t, k_t, v_t, b_t, g_t = xs
        s = s * jnp.exp(g_t)[..., None, None]
        for j in range(n):
            err = v_t[j] - jnp.einsum("bhkv,bhk->bhv", s, k_t[j])
            s = s + jnp.einsum("bhk,bhv->bhkv", b_t[j][..., None] * k_t[j], err)
        return s, jnp.einsum("bhkv,bhk->bhv", s, q_t)

    s, o = lax.scan(step, s0, (qs, ks, vs, bs, gs))
    return o.swapaxes(0, 1).astype(q.dtype), s


def delta_product(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    g: jax.Array | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    chunk_size: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """Chunkwise-parallel gated delta product (WY/UT form; see the module docstring).

    Same arguments and results as ``delta_product_recurrent``: q: [B, T, H, K];
    k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H]; g: [B, T, H] or None;
    initial_state: [B, H, K, V] or None -> (o [B, T, H, V], final_state [B, H, K, V]).
    ``chunk_size`` counts tokens, so a chunk holds ``chunk_size * n`` Householder steps. Any T:
    the tail is padded with beta = g = 0 steps, which leave the state unchanged.
    """
    _check(q, k, v, beta, g, num_householder, initial_state, chunk_size)
    b, t, h, dk = q.shape
    n, dv = num_householder, v.shape[-1]
    acc = _acc_dtype(q, k, v, beta)
    scale = dk**-0.5 if scale is None else scale
    c = min(chunk_size, t)
    nc = -(-t // c)
    pad = nc * c - t
    cn = c * n  # micro-steps per chunk

    # Chunks are batched along one flat axis z = (chunk, batch, head): XLA's CPU matmuls (and
    # their transposes in the backward pass) are several times faster with one batch dimension.
    def chunks(x, steps):  # [B, T*steps, H, ...] -> [nc*B*H, c*steps, ...], padded with zeros
        x = jnp.pad(x.astype(acc), [(0, 0), (0, pad * steps)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(b, nc, c * steps, h, *x.shape[3:])
        return jnp.moveaxis(x, (1, 3), (0, 2)).reshape(nc * b * h, c * steps, *x.shape[4:])

    q_c = chunks(q, 1) * scale  # [z, c, K]
    k_c, v_c, b_c = chunks(k, n), chunks(v, n), chunks(beta, n)  # [z, cn, (K|V)], [z, cn]
    if g is None:
        g_c = jnp.zeros((nc * b * h, cn), acc)
    else:  # the token's gate sits at its first micro-step
        g_c = chunks(g, 1)[..., None]
        g_c = jnp.concatenate([g_c, jnp.zeros(g_c.shape[:-1] + (n - 1,), acc)], -1)
        g_c = g_c.reshape(nc * b * h, cn)
    gam = jnp.cumsum(g_c, axis=-1)  # G_r: [z, cn]
    gam_q = gam[..., n - 1 :: n]  # G at each token's last micro-step (its query): [.., c]

    # decay[r, s] = exp(G_r - G_s) for s <= r, else 0: one exp serves A (s < r) and the
    # queries, which sit at rows n-1, 2n-1, ... with the same causal rule s <= r.
    lower = jnp.tri(cn, dtype=bool)
    decay = jnp.where(lower, jnp.exp(jnp.where(lower, gam[:, :, None] - gam[:, None, :], 0.0)), 0.0)
    a = jnp.where(lower & ~jnp.eye(cn, dtype=bool), decay, 0.0) * jnp.einsum(
        "zrk,zsk->zrs", k_c, k_c
    )
    t_inv = unit_lower_inverse(jnp.eye(cn, dtype=acc) + b_c[..., :, None] * a)
    u = t_inv @ (b_c[..., None] * v_c)  # U = T diag(beta) V: [z, cn, V]
    w = t_inv @ ((b_c * jnp.exp(gam))[..., None] * k_c)  # W = T diag(beta exp(G)) K: [z, cn, K]

    p = decay[:, n - 1 :: n] * jnp.einsum("zik,zsk->zis", q_c, k_c)  # (M * Q K^T): [z, c, cn]
    q_eff = jnp.exp(gam_q)[..., None] * q_c - p @ w  # [z, c, K]: O = q_eff S_0 + P U
    o_intra = p @ u  # [z, c, V]
    g_last = gam[..., -1:]
    k_dec = jnp.swapaxes(jnp.exp(g_last - gam)[..., None] * k_c, -1, -2)  # [z, K, cn]
    s0 = jnp.zeros((b * h, dk, dv), acc)
    if initial_state is not None:
        s0 = initial_state.astype(acc).reshape(b * h, dk, dv)

    def chunk_step(s, xs):  # s: [B*H, K, V], the state entering the chunk
        u_j, w_j, k_j, d_j = xs
        return d_j[..., None] * s + k_j @ (u_j - w_j @ s), s

    xs = (u, w, k_dec, jnp.exp(g_last))
    s, s_in = lax.scan(chunk_step, s0, [x.reshape(nc, b * h, *x.shape[1:]) for x in xs], unroll=4)
    o = q_eff @ s_in.reshape(nc * b * h, dk, dv) + o_intra  # [z, c, V]
    o = jnp.moveaxis(o.reshape(nc, b, h, c, dv), (0, 2), (1, 3)).reshape(b, nc * c, h, dv)
    return o[:, :t].astype(q.dtype), s.reshape(b, h, dk, dv)
