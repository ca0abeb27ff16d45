"""Per-mixer benchmark specs: the op call, its naive reference, its peers and the work it must do.

For every registered mixer name, a :class:`MixerSpec` says
- ``op``: how to call the mixer's core op from ``seqlab.ops`` at the benchmark's sizes;
- ``reference``: the naive form of the same computation (the "speedup" denominator);
- ``peers``: other implementations of the same core (flash-linear-attention's torch references
  on CPU / Triton on GPU, ``jax.nn.dot_product_attention``, a tutorial-style S4D);
- ``core_cost``: the FLOPs and bytes the core *must* do (the minimal arithmetic of the
  recurrence or attention, not what a given algorithm happens to do), for the physical bound;
- ``complexity``: the asymptotic cost in the length, for the scaling plot.

Each builder imports its op lazily and may raise ImportError / AttributeError: the harness turns
that into a "skipped: ..." note, so the table degrades gracefully while ops are still landing.
The sizes of the core call (heads, head dim, state size, top-k, ...) are read from the mixer
instance when it exposes them (:func:`dims_of`), else from the defaults below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqlab.bench import peers

__all__ = ["Dims", "Call", "MixerSpec", "SPECS", "spec_for", "dims_of"]

F32 = 4  # bytes


@dataclass(frozen=True)
class Dims:
    """Sizes of one benchmark case. heads * head_dim need not equal d_model (the mixer's own)."""

    batch: int
    length: int
    d_model: int
    heads: int = 4
    head_dim: int = 64
    state: int = 64
    topk: int = 512
    num_householder: int = 2
    chunk: int = 64
    idx_heads: int = 4
    idx_dim: int = 32


@dataclass(frozen=True)
class Call:
    """One timed call: ``fn(*args)``. backend "jax" (jitted) or "torch" (timed as is)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    backend: str = "jax"


Builder = Callable[[Dims, jax.Array], Call | None]


@dataclass(frozen=True)
class MixerSpec:
    complexity: str  # "L", "L log L" or "L^2"
    core_cost: Callable[[Dims], tuple[float, float]]
    op: Builder | None = None
    reference: Builder | None = None
    peers: tuple[Builder, ...] = ()
    defaults: dict[str, int] = field(default_factory=dict)


_ATTRS = {
    "heads": ("num_heads", "n_heads", "heads", "nheads"),
    "head_dim": ("head_dim", "d_head", "head_k_dim", "headdim", "head_qk_dim"),
    "state": ("d_state", "state_size", "n_state", "state_dim", "N", "P"),
    "topk": ("topk", "top_k", "index_topk"),
    "num_householder": ("num_householder", "n_householder"),
    "chunk": ("chunk_size",),
    "idx_heads": ("index_heads", "n_index_heads", "idx_heads"),
    "idx_dim": ("index_dim", "index_head_dim", "idx_dim"),
}


def dims_of(mixer: Any, spec: MixerSpec, batch: int, length: int, d_model: int) -> Dims:
    """Dims of a case: spec defaults, overridden by the mixer's own attributes where it has them."""
    d = replace(Dims(batch, length, d_model), **spec.defaults)
    found: dict[str, int] = {}
    for field_name, names in _ATTRS.items():
        for n in names:
            value = getattr(mixer, n, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found[field_name] = value
                break
    return replace(d, **found)


def _keys(key: jax.Array, n: int) -> list[jax.Array]:
    return list(jax.random.split(key, n))


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32)


def _torch(*xs: Any) -> tuple[Any, ...]:
    import torch

    return tuple(None if x is None else torch.from_numpy(np.array(x)) for x in xs)


def _log2(n: float) -> float:
    return math.log2(max(n, 2))


# ----------------------------------------------------------------------------- S4 / S4D (conv)


def _s4d_params(d: Dims, key: jax.Array):
    h, n = d.d_model, max(d.state // 2, 1)
    k1, k2, k3, k4 = _keys(key, 4)
    A = -0.5 + 1j * jnp.pi * jnp.broadcast_to(jnp.arange(n), (h, n))  # S4D-Lin
    C = (_normal(k1, (h, n)) + 1j * _normal(k2, (h, n))) * 0.5**0.5
    log_dt = jax.random.uniform(k3, (h,), minval=math.log(1e-3), maxval=math.log(1e-1))
    u = _normal(k4, (d.batch, d.length, h))
    return u, A.astype(jnp.complex64), C.astype(jnp.complex64), log_dt, jnp.ones((h,))


def _conv_cost(d: Dims, kernel_flops: float) -> tuple[float, float]:
    """Kernel generation + 3 real FFTs of size 2L per channel + pointwise product + D u."""
    b, h, length = d.batch, d.d_model, d.length
    fft = 2.5 * 2 * length * _log2(2 * length)  # one real FFT of size 2L
    flops = kernel_flops + (2 * b * h + h) * fft + 6 * b * h * (length + 1) + 2 * b * length * h
    nbytes = F32 * (2 * b * length * h + h * length)
    return flops, nbytes


def _s4d_cost(d: Dims) -> tuple[float, float]:
    return _conv_cost(d, 8.0 * d.d_model * max(d.state // 2, 1) * d.length)


def _s4_cost(d: Dims) -> tuple[float, float]:
    # Cauchy kernel at L roots of unity: 4 Cauchy sums (rank 1 Woodbury) of N/2 complex terms,
    # plus an inverse FFT of the L generating-function values per channel.
    n, h, length = max(d.state // 2, 1), d.d_model, d.length
    return _conv_cost(d, 4 * 8.0 * h * n * length + h * 5 * length * _log2(length))


def _s4d_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssm import fft_conv, kernel_diag

    u, A, C, log_dt, D = _s4d_params(d, key)
    B = jnp.ones_like(A)

    def core(u, A, B, C, log_dt, D):
        return fft_conv(u, kernel_diag(A, B, C, jnp.exp(log_dt), u.shape[1]), D)

    return Call("ops.ssm kernel_diag + fft_conv", core, (u, A, B, C, log_dt, D))


def _s4_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssm import fft_conv, kernel_dplr

    u, A, C, log_dt, D = _s4d_params(d, key)
    P = 0.1 * jnp.ones((1,) + A.shape, jnp.complex64)
    B = jnp.ones_like(A)

    def core(u, A, P, B, C, log_dt, D):
        return fft_conv(u, kernel_dplr(A, P, B, C, jnp.exp(log_dt), u.shape[1]), D)

    return Call("ops.ssm kernel_dplr + fft_conv", core, (u, A, P, B, C, log_dt, D))


def _bare_fft_conv(d: Dims, key: jax.Array) -> Call:
    u, *_ = _s4d_params(d, key)
    K = _normal(jax.random.fold_in(key, 7), (d.d_model, d.length))
    return Call("bare FFT conv (kernel given)", peers.fft_conv_bare, (u, K))


def _s4d_tutorial(d: Dims, key: jax.Array) -> Call:
    return Call("tutorial S4D (Vandermonde + jnp.fft)", peers.s4d_tutorial, _s4d_params(d, key))


# ----------------------------------------------------------------------------- S5 (scan)


def _s5_inputs(d: Dims, key: jax.Array):
    k1, k2, k3 = _keys(key, 3)
    p = max(d.state // 2, 1)  # complex modes (conjugate pairs implied), as S5 keeps them
    lam = jnp.exp(-jax.random.uniform(k1, (p,), minval=1e-3, maxval=1e-1))
    a = jnp.broadcast_to(lam * jnp.exp(1j * 0.1), (d.batch, d.length, p)).astype(jnp.complex64)
    b = (_normal(k2, (d.batch, d.length, p)) + 1j * _normal(k3, (d.batch, d.length, p)))
    return a, b.astype(jnp.complex64)


def _s5_cost(d: Dims) -> tuple[float, float]:
    # h_t = a h_{t-1} + B u_t ; y_t = Re(C h_t): complex B [P, H] and C [H, P] products + the scan.
    b, length, h, p = d.batch, d.length, d.d_model, max(d.state // 2, 1)
    flops = b * length * (2 * 8 * h * p + 8 * p)
    return flops, F32 * 2 * b * length * h


def _s5_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.scan import linear_scan

    return Call("ops.scan.linear_scan (associative)", linear_scan, _s5_inputs(d, key))


def _sequential_scan(a: jax.Array, b: jax.Array) -> jax.Array:
    """h_t = a_t h_{t-1} + b_t, one step at a time (lax.scan over time). a, b: [B, L, ...]."""

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    _, hs = lax.scan(step, jnp.zeros_like(b[:, 0]), (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
    return jnp.swapaxes(hs, 0, 1)


def _s5_ref(d: Dims, key: jax.Array) -> Call:
    return Call("sequential lax.scan", _sequential_scan, _s5_inputs(d, key))


# ----------------------------------------------------------------------------- delta family


def _delta_inputs(d: Dims, key: jax.Array, n: int, gated: bool):
    b, t, h, dk = d.batch, d.length, d.heads, d.head_dim
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
        b, t, h, k = d.batch, d.length, d.heads, d.head_dim
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
            return f(q, k, v, beta, g, num_householder=n, chunk_size=d.chunk)[0]

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
                        lambda q, k, v, g, b: f(q, k, v, g, b, chunk_size=d.chunk, scale=scale)[0],
                        _torch(q, k, v, g, beta), backend="torch")
        f = peers.fla_naive("gated_delta_product", "naive_recurrent_gated_delta_product")
        if f is None:
            return None
        return Call("fla naive_recurrent_gated_delta_product (torch)",
                    lambda q, k, v, g, b: f(q, k, v, g, b, scale, num_householder=n)[0],
                    _torch(q, k, v, g, beta), backend="torch")

    return build


def _delta_spec(n: int, gated: bool) -> MixerSpec:
    return MixerSpec(
        complexity="L",
        core_cost=_delta_cost(n),
        op=_delta_call(n, gated, recurrent=False),
        reference=_delta_call(n, gated, recurrent=True),
        peers=(_fla_delta(n, gated),),
        defaults={"num_householder": n},
    )


# ----------------------------------------------------------------------------- SSD (Mamba-2, Hydra)


def _ssd_inputs(d: Dims, key: jax.Array):
    b, t, h, p, n = d.batch, d.length, d.heads, d.head_dim, d.state
    k1, k2, k3, k4 = _keys(key, 4)
    x = _normal(k1, (b, t, h, p))
    dt = jax.nn.softplus(_normal(k2, (b, t, h)) - 2.0)
    A = -jnp.exp(jnp.linspace(0.0, 1.0, h))
    B = _normal(k3, (b, t, 1, n))
    C = _normal(k4, (b, t, 1, n))
    return x, dt, A, B, C


def _ssd_cost(sides: int) -> Callable[[Dims], tuple[float, float]]:
    def cost(d: Dims) -> tuple[float, float]:
        # per token and head: decay N P, dt x B^T outer 2 N P, read h C: 2 N P
        b, t, h, p, n = d.batch, d.length, d.heads, d.head_dim, d.state
        flops = sides * b * t * h * 5 * n * p
        nbytes = F32 * b * t * (2 * h * p + sides * (h + 2 * n))
        return flops, nbytes

    return cost


def ssd_sequential(x, dt, A, B, C):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, one step at a time.

    x: [b, L, h, p]; dt: [b, L, h]; A: [h]; B, C: [b, L, g, n] (heads share groups). Returns y.
    """
    rep = x.shape[2] // B.shape[2]
    Bh, Ch = jnp.repeat(B, rep, axis=2), jnp.repeat(C, rep, axis=2)

    def step(hs, xs):
        x_t, dt_t, b_t, c_t = xs
        hs = jnp.exp(dt_t * A)[..., None, None] * hs + jnp.einsum(
            "bh,bhp,bhn->bhpn", dt_t, x_t, b_t
        )
        return hs, jnp.einsum("bhpn,bhn->bhp", hs, c_t)

    h0 = jnp.zeros(x.shape[:1] + x.shape[2:] + B.shape[-1:], x.dtype)
    _, y = lax.scan(step, h0, tuple(jnp.swapaxes(a, 0, 1) for a in (x, dt, Bh, Ch)))
    return jnp.swapaxes(y, 0, 1)


def _ssd_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssd import ssd

    return Call("ops.ssd.ssd (chunked)", lambda *a: ssd(*a, chunk_size=d.chunk)[0],
                _ssd_inputs(d, key))


def _ssd_ref(d: Dims, key: jax.Array) -> Call:
    return Call("sequential lax.scan", ssd_sequential, _ssd_inputs(d, key))


def _hydra_inputs(d: Dims, key: jax.Array):
    x, dt, A, B, C = _ssd_inputs(d, key)
    _, dt2, _, B2, C2 = _ssd_inputs(d, jax.random.fold_in(key, 1))
    diag = _normal(jax.random.fold_in(key, 2), dt.shape)
    return x, dt, dt2, A, B, C, B2, C2, diag


def _hydra_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.ssd import quasiseparable

    return Call("ops.ssd.quasiseparable (chunked)",
                lambda *a: quasiseparable(*a, chunk_size=d.chunk), _hydra_inputs(d, key))


def _hydra_sequential(x, dt_fw, dt_bw, A, B_fw, C_fw, B_bw, C_bw, diag):
    """shift(SS_fw(x)) + flip(shift(SS_bw(flip(x)))) + diag x with two sequential scans."""

    def shift(y):
        return jnp.pad(y[:, :-1], [(0, 0), (1, 0), (0, 0), (0, 0)])

    def flip(a):
        return jnp.flip(a, axis=1)

    fw = shift(ssd_sequential(x, dt_fw, A, B_fw, C_fw))
    bw = flip(shift(ssd_sequential(flip(x), flip(dt_bw), A, flip(B_bw), flip(C_bw))))
    return fw + bw + diag[..., None] * x


def _hydra_ref(d: Dims, key: jax.Array) -> Call:
    return Call("two sequential lax.scans", _hydra_sequential, _hydra_inputs(d, key))


# ----------------------------------------------------------------------------- attention family


def _attn_inputs(d: Dims, key: jax.Array):
    k1, k2, k3 = _keys(key, 3)
    shape = (d.batch, d.length, d.heads, d.head_dim)
    return _normal(k1, shape), _normal(k2, shape), _normal(k3, shape)


def _attn_cost(d: Dims) -> tuple[float, float]:
    # causal: QK^T and PV over L(L+1)/2 pairs, 2 D FLOPs each, + softmax (~5 per pair)
    b, t, h, dh = d.batch, d.length, d.heads, d.head_dim
    pairs = b * h * t * (t + 1) / 2
    return pairs * (4 * dh + 5), F32 * 4 * b * t * h * dh


def _topk_cost(d: Dims) -> tuple[float, float]:
    # exact top-k still scores every causal pair (2D + select), then attends to k keys
    b, t, h, dh = d.batch, d.length, d.heads, d.head_dim
    pairs = b * h * t * (t + 1) / 2
    k = min(d.topk, t)
    return pairs * (2 * dh + 2) + b * h * t * k * (2 * dh + 5), F32 * 4 * b * t * h * dh


def _dsa_cost(d: Dims) -> tuple[float, float]:
    # indexer: every causal pair, Hi heads of dim Di (+ ReLU, weights); attention on top-k keys
    b, t, h, dh = d.batch, d.length, d.heads, d.head_dim
    pairs = b * t * (t + 1) / 2
    k = min(d.topk, t)
    flops = pairs * d.idx_heads * (2 * d.idx_dim + 3) + b * h * t * k * (4 * dh + 5)
    nbytes = F32 * (4 * b * t * h * dh + b * t * (d.idx_heads * (d.idx_dim + 1) + d.idx_dim))
    return flops, nbytes


def naive_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(D) + causal mask) v with the [B, H, T, T] scores materialised."""
    t = q.shape[1]
    s = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)


def _naive_attn(d: Dims, key: jax.Array) -> Call:
    return Call("naive einsum softmax", naive_attention, _attn_inputs(d, key))


def _dense_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import attention

    return Call("ops.attention.attention", lambda q, k, v: attention(q, k, v, causal=True),
                _attn_inputs(d, key))


def _dense_ref(d: Dims, key: jax.Array) -> Call:
    call = _dense_op(d, key)
    return replace(call, name="dense ops.attention.attention")


def _topk_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import topk_attention

    k = min(d.topk, d.length)
    return Call(f"ops.attention.topk_attention (k={k})",
                lambda q, kk, v: topk_attention(q, kk, v, topk=k, causal=True),
                _attn_inputs(d, key))


def _dsa_inputs(d: Dims, key: jax.Array):
    q, k, v = _attn_inputs(d, key)
    k1, k2, k3 = _keys(jax.random.fold_in(key, 3), 3)
    # Shifted to mostly-positive index scores: with zero-mean inputs many ReLU scores are 0 and
    # tie, and implementations may then select different (equally valid) keys.
    q_idx = _normal(k1, (d.batch, d.length, d.idx_heads, d.idx_dim)) + 2.0
    k_idx = _normal(k2, (d.batch, d.length, d.idx_dim)) + 2.0
    w_idx = jnp.abs(_normal(k3, (d.batch, d.length, d.idx_heads))) + 0.1
    return q, k, v, q_idx, k_idx, w_idx


def _dsa_op(d: Dims, key: jax.Array) -> Call:
    from seqlab.ops.attention import dsa

    k = min(d.topk, d.length)
    return Call(f"ops.attention.dsa (k={k})", lambda *a: dsa(*a, topk=k), _dsa_inputs(d, key))


def _jax_sdpa(d: Dims, key: jax.Array) -> Call:
    return Call("jax.nn.dot_product_attention",
                lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
                _attn_inputs(d, key))


def _fla_attn(d: Dims, key: jax.Array) -> Call | None:
    f = peers.fla_naive("attn", "naive_parallel_attn")
    if f is None:
        return None

    def run(q, k, v):
        out = f(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out

    return Call("fla naive_parallel_attn (torch)", run, _torch(*_attn_inputs(d, key)),
                backend="torch")


def _fla_dsa(d: Dims, key: jax.Array) -> Call | None:
    f = peers.fla_naive("dsa", "naive_dsa")
    if f is None:
        return None
    k = min(d.topk, d.length)
    return Call("fla naive_dsa (torch)", lambda *a: f(*a, topk=k),
                _torch(*_dsa_inputs(d, key)), backend="torch")


def _conv_spec(cost: Callable[[Dims], tuple[float, float]], op: Builder) -> MixerSpec:
    return MixerSpec("L log L", cost, op=op, reference=_bare_fft_conv, peers=(_s4d_tutorial,))


SPECS: dict[str, MixerSpec] = {
    "s4d": _conv_spec(_s4d_cost, _s4d_op),
    "s4-ptd": _conv_spec(_s4d_cost, _s4d_op),
    "s4": _conv_spec(_s4_cost, _s4_op),
    "s5": MixerSpec("L", _s5_cost, op=_s5_op, reference=_s5_ref),
    "deltanet": _delta_spec(1, gated=False),
    "gated-deltanet": _delta_spec(1, gated=True),
    "deltaproduct": _delta_spec(2, gated=True),
    "mamba2": MixerSpec("L", _ssd_cost(1), op=_ssd_op, reference=_ssd_ref),
    "hydra": MixerSpec("L", _ssd_cost(2), op=_hydra_op, reference=_hydra_ref),
    "mha": MixerSpec("L^2", _attn_cost, op=_dense_op, reference=_naive_attn,
                     peers=(_jax_sdpa, _fla_attn)),
    "mla": MixerSpec("L^2", _attn_cost, op=_dense_op, reference=_naive_attn,
                     peers=(_jax_sdpa,)),
    "topk": MixerSpec("L^2", _topk_cost, op=_topk_op, reference=_dense_ref),
    "dsa": MixerSpec("L^2", _dsa_cost, op=_dsa_op, reference=_dense_ref, peers=(_fla_dsa,)),
}
"""Known mixers. A mixer registered under another name gets :data:`GENERIC` (no op-level rows;
its bound then comes from XLA's own cost analysis, marked as such)."""

GENERIC = MixerSpec("?", lambda d: (0.0, 0.0))


def spec_for(name: str) -> MixerSpec:
    """The spec of a mixer name (``GENERIC`` for unknown names)."""
    return SPECS.get(name, GENERIC)
