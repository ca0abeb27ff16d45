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

Only ``S_c`` needs a sequential pass over chunks (two ``[c, K] x [K, V]`` products per
chunk, which also give ``D``, and ``O = diag(exp(G_q)) Q S_0 + P D`` with ``P = M * Q K^T``);
everything else is batched matmuls over chunks. The UT inverse ``T`` is ``ops.triangular``'s
batched blocked inverse (with its own VJP). On the CPU the XLA form walks the chunks in groups
small enough to stay in cache: one ``lax.scan`` over groups, each step batching its group's local
terms and then scanning its chunks (on the CPU the forward runs 1.4-1.8x faster this way than
batching the local terms over all chunks first, docs/performance.md); lowered for a GPU or TPU
it batches over all chunks around one ``lax.scan`` (``ops.scan.on_cpu``). The Pallas form
(``implementation="pallas"``) batches the local terms over all chunks and walks the chunks in
one kernel (``ops.state_passes``).

The backward pass is written for the algorithm (``jax.custom_vjp``), after the backward of
flash-linear-attention's ``chunk_gated_delta_rule``: the forward keeps only its inputs, the
UT inverses ``T`` and the state entering each chunk; the backward recomputes the decay masks,
``A``, ``U``, ``W``, ``P`` and ``D`` chunk by chunk, carries ``dS`` between chunks in one
reverse pass (grouped the same way) and forms the gradients with batched matmuls. Plain
reverse-mode autodiff would store (and re-read) every ``[c, c]`` intermediate instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from seqlab.ops import state_passes
from seqlab.ops.scan import chunks_per_group, on_cpu
from seqlab.ops.triangular import unit_lower_inverse


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
    chunk_size: int | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Sequential gated delta product (the reference form; ``chunk_size`` and
    ``implementation`` are ignored).

    q: [B, T, H, K]; k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H];
    g: [B, T, H] log-space decay or None; initial_state: [B, H, K, V] or None.
    Returns o: [B, T, H, V] (dtype of q) and the final state [B, H, K, V] (float32/float64).
    Per token: ``S <- exp(g_t) S``, then n steps ``S <- S + beta k (v - S^T k)^T``,
    then ``o_t = S^T (scale q_t)`` (Siems et al. 2025, eq. 3).
    """
    del chunk_size, implementation
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


def _decay(g_c):
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


def _gram(k_c, decay):
    """A = strict_lower(decay) * K K^T: [z, cn, cn]."""
    strict = jnp.tri(k_c.shape[1], k=-1, dtype=bool)
    return jnp.where(strict, decay, 0.0) * jnp.einsum("zrk,zsk->zrs", k_c, k_c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(q_c, k_c, v_c, b_c, g_c, s0, n, pallas):
    """(o_c [z, c, V], final state [nb, K, V]) of the chunked layout; see ``delta_product``.

    q_c: [z, c, K] (scaled); k_c: [z, cn, K]; v_c: [z, cn, V]; b_c, g_c: [z, cn];
    s0: [nb, K, V], with z = (chunk, nb) flattened. ``pallas``: run the two passes over the
    chunks as the kernels of ``ops.state_passes`` instead of ``lax.scan``.
    """
    args = (q_c, k_c, v_c, b_c, g_c, s0)
    if pallas:
        return _batched_forward(*args, n, pallas)[0]
    return on_cpu(lambda *a: _grouped_forward(*a, n, residuals=False),
                   lambda *a: _batched_forward(*a, n, False)[0], *args)


def _forward_terms(q_c, k_c, v_c, b_c, g_c, n):
    """The chunk-local terms of the forward pass: T, U, W, Q_g = diag(exp(G_q)) Q,
    P = M * Q K^T, Kd^T and exp(G_last) for every chunk (then O = Q_g S_in + P D)."""
    gam, decay = _decay(g_c)
    eye = jnp.eye(k_c.shape[1], dtype=k_c.dtype)
    t_inv = unit_lower_inverse(eye + b_c[..., :, None] * _gram(k_c, decay))  # T: [z, cn, cn]
    u = t_inv @ (b_c[..., None] * v_c)
    w = t_inv @ ((b_c * jnp.exp(gam))[..., None] * k_c)
    p = decay[:, n - 1 :: n] * jnp.einsum("zik,zsk->zis", q_c, k_c)  # M * Q K^T: [z, c, cn]
    q_g = jnp.exp(gam[:, n - 1 :: n])[..., None] * q_c
    g_last = gam[..., -1:]
    k_dec = jnp.swapaxes(jnp.exp(g_last - gam)[..., None] * k_c, -1, -2)  # Kd^T: [z, K, cn]
    return t_inv, u, w, q_g, p, k_dec, jnp.exp(g_last[:, 0])


def _grouped_forward(q_c, k_c, v_c, b_c, g_c, s0, n, residuals):
    """The CPU's XLA forward: one scan over groups of chunks small enough to stay in cache
    (``_CACHE_ELEMENTS``); on the CPU this is faster than batching over all chunks, whose arrays
    leave the cache from T ~ 4k on. Each step forms its group's local terms and scans its chunks,
    emitting each chunk's output (5-12% faster than batching the outputs after the scan); with
    ``residuals`` (a gradient will be taken) the UT inverses T and the state entering each
    chunk are returned too."""
    (nb, dk, dv), cn = s0.shape, k_c.shape[1]
    gc = _chunks_per_group(k_c.shape[0] // nb, nb, cn, max(dk, dv), _CACHE_ELEMENTS)

    def step(s, xs):  # one chunk: D = U - W S, O = Q_g S + P D, S' = exp(G_last) S + Kd^T D
        u_j, w_j, k_j, e_j, q_j, p_j = xs
        d = u_j - w_j @ s
        o = q_j @ s + p_j @ d
        return e_j[:, None, None] * s + k_j @ d, (o, s) if residuals else o

    def group(s, xs):  # gc chunks x nb sequences
        t_inv, u, w, q_g, p, k_dec, e_last = _forward_terms(*xs, n)
        xs = [x.reshape(gc, nb, *x.shape[1:]) for x in (u, w, k_dec, e_last, q_g, p)]
        s, out = lax.scan(step, s, xs, unroll=4)
        return s, (*out, t_inv) if residuals else out

    s, out = lax.scan(group, s0, [x.reshape(-1, gc * nb, *x.shape[1:])
                                  for x in (q_c, k_c, v_c, b_c, g_c)])
    if not residuals:
        return out.reshape(-1, out.shape[-2], dv), s
    o, s_in, t_inv = (x.reshape(-1, *x.shape[3 if i < 2 else 2:]) for i, x in enumerate(out))
    return (o, s), (t_inv, s_in)


def _batched_forward(q_c, k_c, v_c, b_c, g_c, s0, n, pallas):
    """The forward for GPUs and TPUs: the chunk-local terms batched over all chunks, one pass
    over the chunks (the Pallas kernel ``state_passes.state_pass``, or ``lax.scan``), the
    outputs batched. Returns ((o, final state), (T, state entering each chunk))."""
    dk, dv = s0.shape[1:]
    t_inv, u, w, q_g, p, k_dec, e_last = _forward_terms(q_c, k_c, v_c, b_c, g_c, n)
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


def _chunked_fwd(q_c, k_c, v_c, b_c, g_c, s0, n, pallas):
    args = (q_c, k_c, v_c, b_c, g_c, s0)
    if pallas:
        out, saved = _batched_forward(*args, n, pallas)
    else:
        out, saved = on_cpu(lambda *a: _grouped_forward(*a, n, residuals=True),
                             lambda *a: _batched_forward(*a, n, False), *args)
    return out, (q_c, k_c, v_c, b_c, g_c, *saved)


def _bwd_local(n, q_c, k_c, v_c, b_c, g_c, t_inv, do):
    """The backward pass's chunk-local terms (no state needed): recomputed decay, A,
    X_w = diag(b exp(G)) K, P, Kd, Q_g, and the outputs' parts of the gradients, dD0 = P^T dO
    and R0 = Q_g^T dO."""
    gam, decay = _decay(g_c)
    a = _gram(k_c, decay)
    x_w = (b_c * jnp.exp(gam))[..., None] * k_c
    p = decay[:, n - 1 :: n] * jnp.einsum("zik,zsk->zis", q_c, k_c)
    kd = jnp.exp(gam[..., -1:] - gam)[..., None] * k_c
    q_g = jnp.exp(gam[:, n - 1 :: n])[..., None] * q_c
    dd0 = jnp.einsum("zis,ziv->zsv", p, do)  # P^T dO
    r0 = jnp.einsum("zik,ziv->zkv", q_g, do)  # Q_g^T dO
    return dict(gam=gam, decay=decay, a=a, x_w=x_w, p=p, kd=kd, q_g=q_g, dd0=dd0, r0=r0)


def _bwd_grads(n, loc, q_c, k_c, v_c, b_c, t_inv, s_in, do, ds_out, dx_u):
    """All input cotangents of a set of chunks, given dS' (``ds_out``) and dX_u = T^T dD
    (``dx_u``) of each.

    Only D = U - W S = T (X_u - X_w S) carries U and W to the outputs, so dU = dD,
    dW = -dD S^T, and with T = (I + diag(b) A)^-1 the UT VJP needs neither U, W nor dW:
    dX_w = T^T dW = -dX_u S^T and dL = -strict_lower(dX_u U^T + dX_w W^T) =
    -strict_lower(dX_u D^T).
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


_GROUP_ELEMENTS = 2**20  # one [chunks, cn, max(cn, K, V)] intermediate when batched (4 MiB)
_CACHE_ELEMENTS = 2**15  # the same, for the groups walked by one scan step (128 KiB: in L2)


def _chunks_per_group(nc: int, nb: int, cn: int, width: int, elements: int) -> int:
    """``ops.scan.chunks_per_group`` for [group, cn, max(cn, K, V)] intermediates."""
    return chunks_per_group(nc, nb * cn * max(cn, width), elements)


def _state_grad_step(ds, xs):
    """One chunk of the backward state pass, last chunk first: ds is the gradient of the state
    leaving chunk j; dD = dD0 + Kd dS', dS_in = e^{G_l} dS' + R0 - W^T dD, with
    W^T dD = X_w^T (T^T dD). Emits dS' and dX_u = T^T dD (which the gradients need)."""
    t_j, x_j, kd_j, e_j, r0_j, dd0_j = xs
    dx_u = jnp.einsum("zsr,zsv->zrv", t_j, dd0_j + kd_j @ ds)  # T^T dD
    return e_j[:, None, None] * ds + r0_j - jnp.einsum("zsk,zsv->zkv", x_j, dx_u), (ds, dx_u)


def _chunked_bwd(n, pallas, res, cts):
    """Backward pass from the saved chunk-entering states S_in and UT inverses T (as fla's
    chunk_gated_delta_rule keeps T): the decay masks, A, P and D are recomputed chunk by
    chunk and one reverse pass carries dS between chunks. With O = Q_g S + P D,
    S' = e^{G_l} S + Kd^T D, D = U - W S: dD = P^T dO + Kd dS', dS = e^{G_l} dS' + Q_g^T dO -
    W^T dD, and T = (I + diag(b) A)^-1 gives dL = -strict_lower(T^T dU U^T + T^T dW W^T) (the
    UT VJP), which is -strict_lower(T^T dD D^T) since dU = dD and dW = -dD S^T (``_bwd_grads``).
    The reverse pass forms dX_u = T^T dD (the gradients reuse it), so neither U nor W is
    recomputed on the CPU. Grouped on the CPU, batched elsewhere, as the forward
    (``ops.scan.on_cpu``)."""
    if pallas:
        return _batched_backward(n, True, res, *cts)
    return on_cpu(lambda *a: _grouped_backward(n, *a),
                   lambda *a: _batched_backward(n, False, *a), res, *cts)


def _grouped_backward(n, res, do, ds_last):
    """One reverse scan over the forward's cache-sized groups of chunks, each step the batched
    backward (``_batched_backward``) of its group."""
    nb, cn, k_c = ds_last.shape[0], res[1].shape[1], res[1]
    gc = _chunks_per_group(k_c.shape[0] // nb, nb, cn, max(k_c.shape[-1], res[2].shape[-1]),
                           _CACHE_ELEMENTS)

    def group(ds, xs):  # gc chunks x nb sequences, last group first
        *grads, ds = _batched_backward(n, False, xs[:-1], xs[-1], ds)
        return ds, grads

    ds0, grads = lax.scan(group, ds_last, [x.reshape(-1, gc * nb, *x.shape[1:])
                                           for x in (*res, do)], reverse=True)
    return (*(x.reshape(-1, *x.shape[2:]) for x in grads), ds0)


def _batched_backward(n, pallas, res, do, ds_last):
    """The local terms batched over all chunks (over groups with ``lax.map`` when the sequence
    is long, so the [c, c] intermediates of one group are alive at a time), one reverse pass
    over the chunks (the Pallas kernel ``state_passes.state_pass_bwd``, or ``lax.scan``), the
    gradients batched."""
    q_c, k_c, v_c, b_c, g_c, t_inv, s_in = res
    nb, cn = ds_last.shape[0], k_c.shape[1]
    nc = k_c.shape[0] // nb
    gc = _chunks_per_group(nc, nb, cn, max(k_c.shape[-1], v_c.shape[-1]), _GROUP_ELEMENTS)
    gc = max(d for d in range(1, gc + 1) if nc % d == 0)  # (nc was padded for the CPU's groups)
    local_in = (q_c, k_c, v_c, b_c, g_c, t_inv, do)
    if gc == nc:
        loc = _bwd_local(n, *local_in)
    else:  # keep only what the state pass and the gradients cannot cheaply recompute
        keep = ("x_w", "kd", "r0", "dd0")
        groups = [x.reshape(nc // gc, gc * nb, *x.shape[1:]) for x in local_in]
        kept = lax.map(lambda xs: {x: _bwd_local(n, *xs)[x] for x in keep}, groups)
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
        ds0, (ds_out, dx_u) = lax.scan(_state_grad_step, ds_last, xs, reverse=True, unroll=2)
        ds_out, dx_u = (x.reshape(-1, *x.shape[2:]) for x in (ds_out, dx_u))
    # ds_out: [z, K, V], the gradient of each chunk's S'; dd: [z, cn, V], that of its D
    if gc == nc:
        grads = _bwd_grads(n, loc, q_c, k_c, v_c, b_c, t_inv, s_in, do, ds_out, dx_u)
    else:
        def post(xs):
            local, saved, s_j, ds_j, dd_j = xs
            fresh = _bwd_local(n, *local)  # its W, Kd, R0, dD0 are unused: XLA drops them
            return _bwd_grads(n, {**fresh, **saved}, *local[:4], local[5], s_j, local[6], ds_j,
                              dd_j)

        def grp(x):
            return x.reshape(nc // gc, gc * nb, *x.shape[1:])

        grads = lax.map(post, ([grp(x) for x in local_in], {x: grp(y) for x, y in loc.items()},
                               grp(s_in), grp(ds_out), grp(dx_u)))
        grads = [x.reshape(-1, *x.shape[2:]) for x in grads]
    return (*grads, ds0)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


AUTO_CHUNK_STEPS = 32  # Householder micro-steps per chunk when chunk_size=None


def auto_chunk_size(length: int, num_householder: int = 1) -> int:
    """Tokens per chunk when ``chunk_size=None``: 32 micro-steps per chunk (at most ``length``).

    On the 2-core CPU (B=2, H=4, K=V=64, n=1, T=2048) chunks of 32 were the fastest of
    8/16/32/64/128 for the forward and for forward+backward (docs/performance.md); for n > 1 the
    chunk keeps the same number of Householder micro-steps.
    """
    return max(1, min(length, AUTO_CHUNK_STEPS // num_householder))


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
    chunk_size: int | None = None,
    implementation: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Chunkwise-parallel gated delta product (WY/UT form; see the module docstring).

    Same arguments and results as ``delta_product_recurrent``: q: [B, T, H, K];
    k: [B, T*n, H, K]; v: [B, T*n, H, V]; beta: [B, T*n, H]; g: [B, T, H] or None;
    initial_state: [B, H, K, V] or None -> (o [B, T, H, V], final_state [B, H, K, V]).
    ``chunk_size`` counts tokens, so a chunk holds ``chunk_size * n`` Householder steps; None
    picks it from the length (``auto_chunk_size``). Any T: the tail is padded with
    beta = g = 0 steps, which leave the state unchanged. The backward pass is written for the
    algorithm (``jax.custom_vjp``): it keeps only the inputs and the state entering each chunk
    and recomputes the intra-chunk terms. ``implementation="pallas"`` runs the two passes over
    the chunks (forward state, backward state gradient) as the Pallas kernels of
    ``ops.state_passes`` (Triton on a GPU, interpret mode elsewhere) instead of ``lax.scan``;
    it needs float32 accumulation and chunk micro-steps, K and V that are powers of two >= 16
    (``chunk_size=None`` then means 32 micro-steps at every length; shorter inputs are padded).
    """
    _check(q, k, v, beta, g, num_householder, initial_state, chunk_size)
    b, t, h, dk = q.shape
    n, dv = num_householder, v.shape[-1]
    acc = _acc_dtype(q, k, v, beta)
    scale = dk**-0.5 if scale is None else scale
    if implementation not in ("xla", "pallas"):
        raise ValueError(f"implementation must be 'xla' or 'pallas', got {implementation!r}")
    if implementation == "xla":
        c = min(auto_chunk_size(t, n) if chunk_size is None else chunk_size, t)
    else:  # the kernels' chunk sizes are fixed powers of two; a short sequence is padded
        c = max(1, AUTO_CHUNK_STEPS // n) if chunk_size is None else chunk_size
        if why := state_passes.unsupported(acc, **{"chunk steps": c * n, "K": dk, "V": dv}):
            raise ValueError(f"implementation='pallas': {why}; use implementation='xla'")
    cn = c * n  # micro-steps per chunk
    nc = -(-t // c)
    budget = _GROUP_ELEMENTS if implementation == "pallas" else _CACHE_ELEMENTS
    nc = -(-nc // (gc := _chunks_per_group(nc, b * h, cn, max(dk, dv), budget))) * gc
    pad = nc * c - t

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
    s0 = jnp.zeros((b * h, dk, dv), acc)
    if initial_state is not None:
        s0 = initial_state.astype(acc).reshape(b * h, dk, dv)
    o, s = _chunked(q_c, k_c, v_c, b_c, g_c, s0, n, implementation == "pallas")
    o = jnp.moveaxis(o.reshape(nc, b, h, c, dv), (0, 2), (1, 3)).reshape(b, nc * c, h, dv)
    return o[:, :t].astype(q.dtype), s.reshape(b, h, dk, dv)
