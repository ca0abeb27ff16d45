"""DeltaNet, Gated DeltaNet and DeltaProduct mixers (causal), on ``seqlab.ops.delta``.

Per token t (heads in parallel), the layer computes (Yang et al. 2024a, sec. 3; Yang et al.
2024b, sec. 3; Siems et al. 2025, sec. 3):

    q_t, k_tj, v_tj = SiLU(ShortConv(W x))        j = 0..n-1 (n = n_householder)
    q_t, k_tj       <- q_t / |q_t|, k_tj / |k_tj|   (L2 norm per head)

(``qk_activation`` replaces the SiLU of q and k: "silu" as above and as fla's layers, "relu",
or "identity": keys of either sign before the L2 norm, which is how a Householder factor
reaches every reflection direction directly; v keeps its SiLU.)
    beta_tj          = sigmoid(w_b x_t)  (x 2 when allow_neg_eigval: eigenvalues of each
                                          Householder factor I - beta k k^T in [-1, 1];
                                          Grazzi et al. 2025)
    g_t              = -exp(A_log) softplus(w_a x_t + dt_bias)   (gated variants, Mamba-2 style)
    o_t              = delta_product(q, k, v, beta, g)            (state [H_v, K, V] per sequence)
    y_t              = W_o (RMSNorm(o_t) * SiLU(W_g x_t))         (output gate optional)

``n_v_heads`` (default ``n_heads``) separates the value heads from the query/key heads
(grouped value heads, fla's ``num_v_heads``; Qwen3-Next): v, beta, g, the state and the output
have ``n_v_heads`` heads, and query/key head i serves the ``n_v_heads / n_heads`` consecutive
value heads ``i r .. i r + r - 1`` (r = n_v_heads / n_heads), as grouped-query attention
with the roles of the heads exchanged.

Padding (mask False) is exact: padded inputs are zeroed before the convolutions and get
beta = 0, g = 0 there, so a padded step leaves the state untouched.
"""

from __future__ import annotations

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
from seqlab.ops.delta import AUTO_CHUNK_STEPS, delta_product, delta_product_recurrent
from seqlab.ops.state_passes import unsupported


def _l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


QK_ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu, "identity": lambda x: x}


def _reject_fixed(owner: str, options: dict, hints: dict[str, str]) -> None:
    """A clear ValueError for an argument that ``owner`` fixes itself (``hints``: name -> fix)."""
    for name, hint in hints.items():
        if name in options:
            raise ValueError(f"{owner} fixes {name} itself, so it cannot be set; {hint}")


class _DeltaRuleMixer(nnx.Module):
    """Shared implementation: n Householder steps per token, optional forget gate. Causal."""

    @reject_renamed
    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        n_heads: int = 4,
        n_v_heads: int | None = None,
        head_dim: int | None = None,
        expand_v: float = 1.0,
        n_householder: int = 1,
        use_forget_gate: bool = False,
        use_output_gate: bool = True,
        allow_neg_eigval: bool = False,
        d_conv: int = 4,
        chunk_size: int | None = None,
        norm_eps: float = 1e-5,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        qk_activation: str = "silu",
        implementation: str = "xla",
    ):
        name = type(self).__name__
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"{name}: unknown qk_activation {qk_activation!r}; valid: "
                             f"{', '.join(QK_ACTIVATIONS)}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"{name}: n_heads={n_heads} must divide d_model={d_model} "
                                 "(or pass head_dim)")
            head_dim = d_model // n_heads
        v_dim = int(head_dim * expand_v)
        if n_heads < 1 or head_dim < 1 or v_dim < 1:
            raise ValueError(f"{name}: need n_heads, head_dim, head_dim*expand_v >= 1, got "
                             f"{n_heads}, {head_dim}, {v_dim}")
        n_v_heads = n_heads if n_v_heads is None else n_v_heads
        if n_v_heads < 1 or n_v_heads % n_heads:
            raise ValueError(f"{name}: n_v_heads={n_v_heads} must be a positive multiple of "
                             f"n_heads={n_heads} (each query/key head serves n_v_heads/n_heads "
                             "value heads); None = n_heads")
        if n_householder < 1:
            raise ValueError(f"{name}: n_householder must be >= 1, got {n_householder}")
        if d_conv < 1 or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"{name}: d_conv and chunk_size must be >= 1, got "
                             f"{d_conv}, {chunk_size}")
        lo, hi = A_init_range
        if not 0 <= lo <= hi or hi <= 0:
            raise ValueError(f"{name}: A_init_range must satisfy 0 <= low <= high, high > 0, "
                             f"got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.n_heads, self.head_dim, self.v_dim = d_model, n_heads, head_dim, v_dim
        self.n_v_heads = n_v_heads
        self.n_householder, self.chunk_size, self.dtype = n_householder, chunk_size, dtype
        self.allow_neg_eigval, self.causal = allow_neg_eigval, True
        self.qk_activation = qk_activation
        h, hv, n = n_heads, n_v_heads, n_householder
        if implementation not in ("xla", "pallas"):
            raise ValueError(f"{name}: implementation must be 'xla' or 'pallas', got "
                             f"{implementation!r}")
        steps = (chunk_size or max(1, AUTO_CHUNK_STEPS // n)) * n
        sizes = {"chunk steps": steps, "K": head_dim, "V": v_dim}
        acc = jnp.promote_types(dtype, jnp.float32)  # the op's accumulation dtype
        if implementation == "pallas" and (why := unsupported(acc, **sizes)):
            raise ValueError(f"{name}: implementation='pallas': {why}; use "
                             "implementation='xla' (the default)")
        self.implementation = implementation

        def linear(d_out):
            return nnx.Linear(d_model, d_out, use_bias=False, dtype=dtype, rngs=rngs)

        self.q_proj, self.k_proj = linear(h * head_dim), linear(n * h * head_dim)
        self.v_proj, self.b_proj = linear(n * hv * v_dim), linear(n * hv)
        self.q_conv = ShortConv(h * head_dim, d_conv, use_bias=False, rngs=rngs)
        self.k_conv = ShortConv(n * h * head_dim, d_conv, use_bias=False, rngs=rngs)
        self.v_conv = ShortConv(n * hv * v_dim, d_conv, use_bias=False, rngs=rngs)
        if use_forget_gate:
            self.a_proj = linear(hv)
            A = jax.random.uniform(rngs.params(), (hv,), minval=lo, maxval=hi)
            # floor 1e-4: a draw of exactly 0 from U(0, 16) would make A_log = -inf
            self.A_log = SSMParam(jnp.log(jnp.maximum(A, 1e-4)))
            self.dt_bias = SSMParam(dt_bias_init(rngs.params(), (hv,), dt_min, dt_max))
        else:
            self.a_proj = self.A_log = self.dt_bias = None
        self.g_proj = linear(hv * v_dim) if use_output_gate else None
        self.o_norm = GatedRMSNorm(v_dim, eps=norm_eps)
        self.o_proj = nnx.Linear(hv * v_dim, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def _gates(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """beta: [B, T*n, H_v] and g: [B, T, H_v] (float32), zero at padded positions."""
        b, t, _ = x.shape
        beta = jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))  # [B, T, n*H]
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        beta = apply_mask(beta, mask).reshape(b, t * self.n_householder, self.n_v_heads)
        if self.a_proj is None:
            return beta, None
        a = self.a_proj(x).astype(jnp.float32) + self.dt_bias[...]
        g = -jnp.exp(self.A_log[...]) * jax.nn.softplus(a)
        return beta, apply_mask(g, mask)

    def _qkv(self, q, k, v):
        """Activations, per-head L2 norms of q and k, and q/k heads repeated to the value
        heads: q [B, T, H_v, K], k [B, T*n, H_v, K], v [B, T*n, H_v, V]."""
        b, t, _ = q.shape
        h, n, r = self.n_heads, self.n_householder, self.n_v_heads // self.n_heads
        act = QK_ACTIVATIONS[self.qk_activation]
        q = act(q).astype(jnp.float32).reshape(b, t, h, self.head_dim)
        k = act(k).astype(jnp.float32).reshape(b, t * n, h, self.head_dim)
        v = jax.nn.silu(v).reshape(b, t * n, self.n_v_heads, self.v_dim)
        q, k = (jnp.repeat(_l2norm(y), r, axis=2).astype(self.dtype) for y in (q, k))
        return q, k, v

    def _out(self, o: jax.Array, x: jax.Array) -> jax.Array:
        """o: [B, T, H_v, V] -> RMSNorm per head (float32), optional SiLU output gate, output
        projection -> [B, T, d_model]."""
        gate = None if self.g_proj is None else self.g_proj(x).reshape(o.shape)
        o = self.o_norm(o.astype(jnp.float32), gate)
        return self.o_proj(o.reshape(o.shape[0], o.shape[1], -1).astype(self.dtype))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [batch, length, d_model] -> y: [batch, length, d_model]; mask: [batch, length]."""
        check_input(x, self.d_model, type(self).__name__)
        x = x.astype(self.dtype)
        q, k, v = self._qkv(
            self.q_conv(self.q_proj(x), mask),
            self.k_conv(self.k_proj(x), mask),
            self.v_conv(self.v_proj(x), mask),
        )
        beta, g = self._gates(x, mask)
        o, _ = delta_product(q, k, v, beta, g, num_householder=self.n_householder,
                             chunk_size=self.chunk_size, implementation=self.implementation)
        return self._out(o, x)

    def init_cache(self, batch_size: int, max_length: int = 0,
                   dtype: jnp.dtype = jnp.float32) -> dict[str, jax.Array]:
        """Conv tails ``[B, d_conv-1, channels]`` and the state ``[B, H_v, K, V]`` (float32).

        The state has a fixed size, so ``max_length`` is not needed (kept for the protocol).
        """
        del max_length
        return {
            "q_conv": self.q_conv.init_cache(batch_size, dtype),
            "k_conv": self.k_conv.init_cache(batch_size, dtype),
            "v_conv": self.v_conv.init_cache(batch_size, dtype),
            "state": jnp.zeros((batch_size, self.n_v_heads, self.head_dim, self.v_dim),
                               jnp.float32),
        }

    def decode(self, x: jax.Array, cache: dict[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """x: [batch, t, d_model] new tokens (t >= 1) -> (y [batch, t, d_model], new cache)."""
        check_input(x, self.d_model, type(self).__name__)
        x = x.astype(self.dtype)
        q, cq = self.q_conv.decode(self.q_proj(x), cache["q_conv"])
        k, ck = self.k_conv.decode(self.k_proj(x), cache["k_conv"])
        v, cv = self.v_conv.decode(self.v_proj(x), cache["v_conv"])
        q, k, v = self._qkv(q, k, v)
        beta, g = self._gates(x, None)
        # the chunked op from one chunk of new tokens on (a prefill), step by step below that
        chunked_from = self.chunk_size or max(1, AUTO_CHUNK_STEPS // self.n_householder)
        op = delta_product if x.shape[1] >= chunked_from else delta_product_recurrent
        o, state = op(q, k, v, beta, g, num_householder=self.n_householder,
                      chunk_size=self.chunk_size, initial_state=cache["state"],
                      implementation=self.implementation)
        return self._out(o, x), {"q_conv": cq, "k_conv": ck, "v_conv": cv, "state": state}


@register_mixer("deltanet")
class DeltaNet(_DeltaRuleMixer):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024a): one delta-rule step per token.

    Options: n_heads=4 (query/key heads), n_v_heads=n_heads (value heads, a multiple of n_heads;
    see the module docstring), head_dim=d_model/n_heads, expand_v=1, use_output_gate=False,
    allow_neg_eigval=False (beta in [0, 1]; True: [0, 2]), d_conv=4 (short convolution kernel),
    qk_activation="silu" (or "relu", "identity"; before the L2 norm), chunk_size=None (picked
    from the length, ``ops.delta.auto_chunk_size``), implementation="xla" (or "pallas": the
    passes over the chunks as the Pallas kernels of ``ops.state_passes``; head sizes and chunk
    micro-steps must be powers of two >= 16).
    """

    @reject_renamed
    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32,
                 use_output_gate: bool = False, **options):
        _reject_fixed("DeltaNet", options, {
            "n_householder": "DeltaNet takes one delta step per token (n_householder=1); for "
            "more, use the mixer 'deltaproduct' with n_householder=...",
            "use_forget_gate": "DeltaNet has no forget gate; for one, use the mixer "
            "'gated-deltanet' (or 'deltaproduct' with use_forget_gate=True)."})
        super().__init__(d_model, rngs=rngs, dtype=dtype, n_householder=1,
                         use_forget_gate=False, use_output_gate=use_output_gate, **options)


@register_mixer("gated-deltanet")
class GatedDeltaNet(_DeltaRuleMixer):
    """Gated DeltaNet (Yang et al. 2024b): a Mamba-2 decay exp(g_t) before each delta step.

    Options as ``DeltaNet`` (output gate on by default) plus the gate init A_init_range=(0, 16),
    dt_min=0.001, dt_max=0.1 (A_log and dt_bias are SSMParams). Defaults as fla's
    ``GatedDeltaNet``: A ~ U(0, 16) and ``expand_v=2`` (value heads twice the key head size);
    fla's ``head_dim=256, num_heads=6`` are not copied (seqlab derives head_dim from d_model
    and n_heads, for small models too).
    """

    @reject_renamed
    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32,
                 expand_v: float = 2.0, A_init_range: tuple[float, float] = (0.0, 16.0),
                 **options):
        _reject_fixed("GatedDeltaNet", options, {
            "n_householder": "Gated DeltaNet takes one delta step per token (n_householder=1); "
            "for more, use the mixer 'deltaproduct' with n_householder=... and "
            "use_forget_gate=True.",
            "use_forget_gate": "Gated DeltaNet always has its forget gate; for none, use the "
            "mixer 'deltanet'."})
        super().__init__(d_model, rngs=rngs, dtype=dtype, n_householder=1,
                         use_forget_gate=True, expand_v=expand_v, A_init_range=A_init_range,
                         **options)


@register_mixer("deltaproduct")
class DeltaProduct(_DeltaRuleMixer):
    """DeltaProduct (Siems et al. 2025): n_h delta steps (Householder factors) per token.

    Options as ``DeltaNet`` plus n_householder=2, allow_neg_eigval=True (beta in [0, 2], as
    fla's ``GatedDeltaProduct`` and Siems et al.'s state-tracking models) and
    use_forget_gate=False; output gate on by default. Kept different from fla's
    ``GatedDeltaProduct`` defaults, on purpose: no forget gate (this layer is DeltaProduct;
    ``use_forget_gate=True`` is fla's Gated DeltaProduct, with Gated DeltaNet's decay init) and
    ``expand_v=1`` (fla: 2), so that ``n_householder=1`` is exactly DeltaNet.
    """

    @reject_renamed
    def __init__(self, d_model: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32,
                 n_householder: int = 2, use_forget_gate: bool = False,
                 allow_neg_eigval: bool = True, **options):
        super().__init__(d_model, rngs=rngs, dtype=dtype, n_householder=n_householder,
                         use_forget_gate=use_forget_gate, allow_neg_eigval=allow_neg_eigval,
                         **options)
