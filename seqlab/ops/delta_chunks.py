"""The chunk-local algebra of the chunked delta rule (``ops.delta``; its docstring has the
equations): decay masks, the UT transform's terms, the forward and backward passes batched over
a set of chunks, one pass over the chunks in between (``lax.scan`` or the Pallas kernels of
``ops.state_passes``).

Every array is in the chunked layout ``z = (chunk, batch, head)`` flattened: q_c: [z, c, K]
(scaled); k_c: [z, cn, K]; v_c: [z, cn, V]; b_c, g_c: [z, cn]; states: [nb, K, V] with
nb = batch * heads, cn = c * n micro-steps per chunk. ``ops.delta`` arranges the layout and
walks the groups of chunks on the CPU.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax

from seqlab.ops import state_passes
from seqlab.ops.scan import chunks_per_group
from seqlab.ops.triangular import unit_lower_inverse

GROUP_ELEMENTS = 2**20  # one [chunks, cn, max(cn, K, V)] intermediate when batched (4 MiB)


def group_size(nc: int, nb: int, cn: int, width: int, elements: int) -> int:
    """``ops.scan.chunks_per_group`` for [group, cn, max(cn, K, V)] intermediates."""
    return chunks_per_group(nc, nb * cn * max(cn, width), elements)


def decay_masks(g_c: Array) -> tuple[Array, Array]:
    """G = cumsum(g) and the masked decay exp(G_r - G_s) for s <= r (0 above): [z, cn, cn].

    The differences G_r - G_s come from a product with inner dimension 2 ([G, 1] . [1, -G],
    exact at ``HIGHEST`` precision): XLA:CPU then runs the exp over a materialised array,
    several times faster than an exp fused with a broadcast subtraction.
    """
    gam = jnp.cumsum(g_c, axis=-1)
    one = jnp.ones_like(gam)
    diff = jnp.einsum("zri,zsi->zrs", jnp.stack([gam, one], -1), jnp.stack([one, -gam], -1),
                      precision=lax.Precision.HIGHEST)
    lower = jnp.tri(gam.shape[-1], dtype=bool)
    return gam, jnp.where(lower, jnp.exp(jnp.where(lower, diff, 0.0)), 0.0)


def gram(k_c: Array, decay: Array) -> Array:
    """A = strict_lower(decay) * K K^T: [z, cn, cn]."""
    strict = jnp.tri(k_c.shape[1], k=-1, dtype=bool)
    return jnp.where(strict, decay, 0.0) * jnp.einsum("zrk,zsk->zrs", k_c, k_c)


def query_terms(q_c: Array, k_c: Array, gam: Array, decay: Array, n: int) -> tuple[Array, Array]:
    """Q_g = diag(exp(G_q)) Q and P = M * Q K^T ([z, c, K], [z, c, cn]) at the query rows
    n-1, 2n-1, ... (the last micro-step of each token)."""
    q_g = jnp.exp(gam[:, n - 1 :: n])[..., None] * q_c
    return q_g, decay[:, n - 1 :: n] * jnp.einsum("zik,zsk->zis", q_c, k_c)


def forward_terms(
    q_c: Array, k_c: Array, v_c: Array, b_c: Array, g_c: Array, n: int
) -> tuple[Array, ...]:
    """The chunk-local terms of the forward pass: T, U, W, Q_g = diag(exp(G_q)) Q,
    P = M * Q K^T, Kd^T and exp(G_last) for every chunk (then O = Q_g S_in + P D)."""
    gam, decay = decay_masks(g_c)
    eye = jnp.eye(k_c.shape[1], dtype=k_c.dtype)
    t_inv = unit_lower_inverse(eye + b_c[..., :, None] * gram(k_c, decay))  # T: [z, cn, cn]
    u = t_inv @ (b_c[..., None] * v_c)
    w = t_inv @ ((b_c * jnp.exp(gam))[..., None] * k_c)
    q_g, p = query_terms(q_c, k_c, gam, decay, n)
    g_last = gam[..., -1:]
    k_dec = jnp.swapaxes(jnp.exp(g_last - gam)[..., None] * k_c, -1, -2)  # Kd^T: [z, K, cn]
    return t_inv, u, w, q_g, p, k_dec, jnp.exp(g_last[:, 0])


def batched_forward(
    q_c: Array, k_c: Array, v_c: Array, b_c: Array, g_c: Array, s0: Array, n: int,
    pallas: bool,
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """The forward off the CPU: the chunk-local terms batched over all chunks, one pass
    over the chunks (the Pallas kernel ``state_passes.state_pass``, or ``lax.scan``), the
    outputs batched. Returns ((o, final state), (T, state entering each chunk))."""
    dk, dv = s0.shape[1:]
    t_inv, u, w, q_g, p, k_dec, e_last = forward_terms(q_c, k_c, v_c, b_c, g_c, n)
    xs = [x.reshape(-1, s0.shape[0], *x.shape[1:]) for x in (u, w, k_dec, e_last)]
    if pallas:
        s_in, s = state_passes.state_pass(*xs, s0)
        s_in = s_in.reshape(-1, dk, dv)
        d = u - w @ s_in
    else:
        def step(s, xs):  # one chunk: D = U - W S, S' = exp(G_last) S + Kd^T D
            u_j, w_j, k_j, e_j = xs
            d = u_j - w_j @ s
            return e_j[:, None, None] * s + k_j @ d, (s, d)

        s, (s_in, d) = lax.scan(step, s0, xs, unroll=4)
        s_in, d = s_in.reshape(-1, dk, dv), d.reshape(u.shape)
    return (q_g @ s_in + p @ d, s), (t_inv, s_in)


def bwd_local(
    n: int, q_c: Array, k_c: Array, b_c: Array, g_c: Array, do: Array
) -> dict[str, Array]:
    """The backward pass's chunk-local terms (no state needed): recomputed decay, A,
    X_w = diag(b exp(G)) K, P, Kd, Q_g, and the outputs' parts of the gradients, dD0 = P^T dO
    and R0 = Q_g^T dO."""
    gam, decay = decay_masks(g_c)
    a = gram(k_c, decay)
    x_w = (b_c * jnp.exp(gam))[..., None] * k_c
    q_g, p = query_terms(q_c, k_c, gam, decay, n)
    kd = jnp.exp(gam[..., -1:] - gam)[..., None] * k_c
    dd0 = jnp.einsum("zis,ziv->zsv", p, do)  # P^T dO
    r0 = jnp.einsum("zik,ziv->zkv", q_g, do)  # Q_g^T dO
    return dict(gam=gam, decay=decay, a=a, x_w=x_w, p=p, kd=kd, q_g=q_g, dd0=dd0, r0=r0)


def bwd_grads(
    n: int, loc: dict[str, Array], q_c: Array, k_c: Array, v_c: Array, b_c: Array,
    t_inv: Array, s_in: Array, do: Array, ds_out: Array, dx_u: Array,
) -> tuple[Array, ...]:
    """All input cotangents of a set of chunks, given dS' (``ds_out``) and dX_u = T^T dD
    (``dx_u``) of each.

    Only D = U - W S = T (X_u - X_w S) carries U and W to the outputs, so dU = dD,
    dW = -dD S^T, and with T = (I + L)^-1, L = diag(b) A (strictly lower), U = T X_u and
    W = T X_w, the UT VJP needs neither U, W nor dW: dX_w = T^T dW = -dX_u S^T and
    dL = -strict_lower(dX_u U^T + dX_w W^T) = -strict_lower(dX_u D^T); then dA = diag(b) dL.
    """
    gam, decay, a, x_w, p, kd, q_g = (loc[x] for x in "gam decay a x_w p kd q_g".split())
    cn = k_c.shape[1]
    d = t_inv @ (b_c[..., None] * v_c - x_w @ s_in)  # U - W S
    dq_g = jnp.einsum("ziv,zkv->zik", do, s_in)
    dp = jnp.einsum("ziv,zsv->zis", do, d)
    dqk = dp * decay[:, n - 1 :: n]  # gradient of Q K^T
    e_p = dp * p  # gradient of the log-decay differences G_i - G_s in P
    dkd = jnp.einsum("zsv,zkv->zsk", d, ds_out)
    g_kd = jnp.sum(dkd * kd, -1)  # [z, cn]
    dx_w = -jnp.einsum("zrv,zkv->zrk", dx_u, s_in)  # T^T dW
    dl = -jnp.where(jnp.tri(cn, k=-1, dtype=bool), jnp.einsum("zrv,zsv->zrs", dx_u, d), 0.0)
    da = b_c[..., :, None] * dl
    e_a = da * a
    dkk = da * decay  # strictly lower, like dl

    e_q = jnp.exp(gam[:, n - 1 :: n])
    dq = e_q[..., None] * dq_g + dqk @ k_c
    dk = (jnp.einsum("zis,zik->zsk", dqk, q_c) + (dkk + jnp.swapaxes(dkk, -1, -2)) @ k_c
          + jnp.exp(gam[..., -1:] - gam)[..., None] * dkd + (b_c * jnp.exp(gam))[..., None] * dx_w)
    dv = b_c[..., None] * dx_u
    db = (jnp.sum(dl * a, -1) + jnp.sum(dx_u * v_c, -1)
          + jnp.sum(dx_w * jnp.exp(gam)[..., None] * k_c, -1))
    # gradient of G: each decay exp(G_r - G_s) gives +E to row r and -E to column s
    dgam = jnp.sum(e_a, -1) - jnp.sum(e_a, -2) - jnp.sum(e_p, -2) - g_kd
    dgam = dgam + jnp.sum(dx_w * x_w, -1)
    row_q = jnp.sum(e_p, -1) + jnp.sum(dq_g * q_g, -1)  # at the query rows n-1, 2n-1, ...
    dgam = dgam.at[:, n - 1 :: n].add(row_q)
    last = jnp.sum(g_kd, -1) + jnp.exp(gam[:, -1]) * jnp.sum(ds_out * s_in, (-2, -1))
    dgam = dgam.at[:, -1].add(last)
    dg = jnp.flip(jnp.cumsum(jnp.flip(dgam, -1), -1), -1)  # G = cumsum(g)
    return dq, dk, dv, db, dg


def state_grad_step(
    ds: Array, xs: tuple[Array, ...]
) -> tuple[Array, tuple[Array, Array]]:
    """One chunk of the backward state pass, last chunk first: ds is the gradient of the state
    leaving chunk j; dD = dD0 + Kd dS', dS_in = e^{G_l} dS' + R0 - W^T dD, with
    W^T dD = X_w^T (T^T dD). Emits dS' and dX_u = T^T dD (which the gradients need)."""
    t_j, x_j, kd_j, e_j, r0_j, dd0_j = xs
    dx_u = jnp.einsum("zsr,zsv->zrv", t_j, dd0_j + kd_j @ ds)  # T^T dD
    return e_j[:, None, None] * ds + r0_j - jnp.einsum("zsk,zsv->zkv", x_j, dx_u), (ds, dx_u)


def batched_backward(
    n: int, pallas: bool, res: tuple[Array, ...], do: Array, ds_last: Array
) -> tuple[Array, ...]:
    """The local terms batched over all chunks (over groups with ``lax.map`` when the sequence
    is long, so the [c, c] intermediates of one group are alive at a time), one reverse pass
    over the chunks (the Pallas kernel ``state_passes.state_pass_bwd``, or ``lax.scan``), the
    gradients batched."""
    q_c, k_c, v_c, b_c, g_c, t_inv, s_in = res
    nb, cn = ds_last.shape[0], k_c.shape[1]
    nc = k_c.shape[0] // nb
    gc = group_size(nc, nb, cn, max(k_c.shape[-1], v_c.shape[-1]), GROUP_ELEMENTS)
    gc = max(d for d in range(1, gc + 1) if nc % d == 0)  # (nc was padded for the CPU's groups)
    local_in = (q_c, k_c, b_c, g_c, do)  # what bwd_local reads
    if gc == nc:
        loc = bwd_local(n, *local_in)
    else:  # keep only what the state pass and the gradients cannot cheaply recompute
        keep = ("x_w", "kd", "r0", "dd0")
        groups = [x.reshape(nc // gc, gc * nb, *x.shape[1:]) for x in local_in]
        kept = lax.map(lambda xs: {x: bwd_local(n, *xs)[x] for x in keep}, groups)
        loc = {x: y.reshape(-1, *y.shape[2:]) for x, y in kept.items()}
    e_last = jnp.exp(jnp.sum(g_c, -1))
    x_w, kd, r0, dd0 = (loc[x] for x in ("x_w", "kd", "r0", "dd0"))
    if pallas:  # the kernel's R is R0 - W^T dD0, and dD is formed after it
        w = t_inv @ x_w
        r = r0 - jnp.einsum("zsk,zsv->zkv", w, dd0)
        xs = [x.reshape(nc, nb, *x.shape[1:]) for x in (w, kd, e_last, r)]
        ds_out, ds0 = state_passes.state_pass_bwd(*xs, ds_last)
        ds_out = ds_out.reshape(-1, *ds_out.shape[2:])
        dx_u = jnp.einsum("zsr,zsv->zrv", t_inv, dd0 + kd @ ds_out)
    else:
        xs = [x.reshape(nc, nb, *x.shape[1:]) for x in (t_inv, x_w, kd, e_last, r0, dd0)]
        ds0, (ds_out, dx_u) = lax.scan(state_grad_step, ds_last, xs, reverse=True, unroll=2)
        ds_out, dx_u = (x.reshape(-1, *x.shape[2:]) for x in (ds_out, dx_u))
    # ds_out: [z, K, V], the gradient of each chunk's S'; dx_u: [z, cn, V], T^T dD
    if gc == nc:
        grads = bwd_grads(n, loc, q_c, k_c, v_c, b_c, t_inv, s_in, do, ds_out, dx_u)
    else:
        def post(xs):
            (q_j, k_j, v_j, b_j, g_j, t_j, do_j), saved, s_j, ds_j, dx_j = xs
            fresh = bwd_local(n, q_j, k_j, b_j, g_j, do_j)  # its X_w, Kd, R0, dD0: unused
            return bwd_grads(n, {**fresh, **saved}, q_j, k_j, v_j, b_j, t_j, s_j, do_j, ds_j,
                             dx_j)

        def grp(x):
            return x.reshape(nc // gc, gc * nb, *x.shape[1:])

        grads = lax.map(post, ([grp(x) for x in (q_c, k_c, v_c, b_c, g_c, t_inv, do)],
                               {x: grp(y) for x, y in loc.items()},
                               grp(s_in), grp(ds_out), grp(dx_u)))
        grads = [x.reshape(-1, *x.shape[2:]) for x in grads]
    return (*grads, ds0)
