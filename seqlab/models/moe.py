"""Routed mixture-of-experts FFN with shared experts (DeepSeekMoE: Dai et al. 2024; DeepSeek-V2
section 2.2; DeepSeek-V3 section 2.1.2), a channel mixer for ``Block``.

Per token x [d_model], with E routed experts FFN_e (SwiGLU, hidden width ``hidden``) and the
shared experts as one SwiGLU of width ``n_shared * hidden``:

    s = softmax(x W_r)      (V2, ``scoring="softmax"``)  or  sigmoid(x W_r)  (V3, "sigmoid")
    choice = s + b          (b: ``score_bias``, DeepSeek-V3's bias for load balancing; it only
                             selects, it never weights; 0 without it)
    groups: with ``n_group`` groups of E / n_group experts, only the ``topk_group`` groups
            with the highest group score compete; group score = max of the group's choice
            scores ("max", DeepSeek-V2) or the sum of its two highest ("top2", DeepSeek-V3)
    K = the ``top_k`` experts of highest choice score among the competing ones
    g_e = s_e for e in K (0 elsewhere), divided by sum_K s_e if ``norm_topk_prob``,
          times ``routed_scaling_factor``
    y = sum_{e in K} g_e FFN_e(x) + FFN_shared(x)        (DeepSeek-V3 eq. 12-16)
    y = sum_{e in K} g_e FFN_e(x) + sigmoid(x w_s) FFN_shared(x)   (``shared_gate``: Qwen3-Next's
        gated shared expert, w_s [d_model]; transformers 5.25 ``modeling_qwen3_next.py``
        ``Qwen3NextSparseMoeBlock``, lines 936-955)

The router runs in float32 (float64 with a float64 ``dtype``). The gradient reaches the router
through g (the selection K is piecewise constant) and the experts through their outputs. The
experts are evaluated densely (every expert on every token, weighted by g, which is zero outside
K): exact and simple, but E / top_k times the routed FLOPs of a sparse dispatch; fine for small
models and tests, not for serving a 256-expert checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

SCORINGS = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2")


class RouterBias(nnx.Variable):
    """DeepSeek-V3's per-expert selection bias: set by a balancing rule, not by gradient (not
    an ``nnx.Param``, so optimisers leave it alone)."""


class MoE(nnx.Module):
    """Routed experts plus shared experts. x: [batch, length, d_model] -> same shape.

    Options: n_experts, top_k, hidden (each expert's hidden width), n_shared (shared experts,
    0 = none), shared_hidden (the shared SwiGLU's width; default ``n_shared * hidden``),
    shared_gate (scale the shared experts' output by ``sigmoid(x w_s)``), scoring ("softmax" |
    "sigmoid"), score_bias (DeepSeek-V3's selection bias), n_group / topk_group (group-limited
    routing; None = no groups), group_score ("max" | "top2"), norm_topk_prob,
    routed_scaling_factor. Parameters: router.kernel [d, E], w_in [E, d, 2 hidden] (= [gate |
    up] per expert), w_out [E, hidden, d], bias [E] (``score_bias``), shared (a
    ``FFN("glu")`` without biases), shared_gate.kernel [d, 1].
    """

    def __init__(self, d_model: int, *, n_experts: int, top_k: int, hidden: int,
                 n_shared: int = 0, shared_hidden: int | None = None,
                 shared_gate: bool = False, scoring: str = "softmax", score_bias: bool = False,
                 n_group: int | None = None, topk_group: int | None = None,
                 group_score: str = "max", norm_topk_prob: bool = False,
                 routed_scaling_factor: float = 1.0, dtype=jnp.float32, rngs: nnx.Rngs):
        from seqlab.models.blocks import FFN, ModelBuildError

        if scoring not in SCORINGS or group_score not in GROUP_SCORES:
            raise ModelBuildError(f"MoE scoring must be one of {SCORINGS} and group_score one "
                                  f"of {GROUP_SCORES}; got {scoring!r}, {group_score!r}.")
        groups = n_group or 1
        allowed = (topk_group or groups) * (n_experts // groups)
        if n_experts % groups or not 0 < top_k <= allowed or (topk_group or 1) > groups:
            raise ModelBuildError(
                f"MoE needs n_experts ({n_experts}) divisible by n_group ({n_group}), "
                f"topk_group ({topk_group}) <= n_group, and 0 < top_k ({top_k}) <= the experts "
                f"of the topk_group groups ({allowed}); change them so that top_k experts can "
                "always be chosen.")
        if shared_gate and not n_shared:
            raise ModelBuildError("MoE shared_gate=True gates the shared experts; set n_shared "
                                  ">= 1 (and shared_hidden for their width) or drop it.")
        self.n_experts, self.top_k, self.scoring = n_experts, top_k, scoring
        self.n_group, self.topk_group, self.group_score = groups, topk_group or groups, group_score
        self.norm_topk_prob, self.scaling = norm_topk_prob, routed_scaling_factor
        self.dtype = dtype
        self.router = nnx.Linear(d_model, n_experts, use_bias=False, rngs=rngs)
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=0)
        self.w_in = nnx.Param(init(rngs.params(), (n_experts, d_model, 2 * hidden)))
        self.w_out = nnx.Param(init(rngs.params(), (n_experts, hidden, d_model)))
        self.bias = RouterBias(jnp.zeros((n_experts,))) if score_bias else None
        self.shared = (FFN("glu", d_model, 1, hidden=shared_hidden or n_shared * hidden,
                           bias=False, dtype=dtype, rngs=rngs) if n_shared else None)
        self.shared_gate = (nnx.Linear(d_model, 1, use_bias=False, dtype=dtype, rngs=rngs)
                            if shared_gate else None)

    def gates(self, x: jax.Array) -> jax.Array:
        """Routing weights g [..., E] (float32; zero outside each token's top_k experts).
        x: [..., d_model]."""
        rdt = jnp.promote_types(self.dtype, jnp.float32)
        logits = x.astype(rdt) @ self.router.kernel[...].astype(rdt)
        s = jax.nn.softmax(logits, -1) if self.scoring == "softmax" else jax.nn.sigmoid(logits)
        choice = s if self.bias is None else s + self.bias[...]
        choice = jax.lax.stop_gradient(choice)
        if self.topk_group < self.n_group:
            grouped = choice.reshape(*choice.shape[:-1], self.n_group, -1)
            if self.group_score == "max":
                gscore = grouped.max(-1)
            else:
                gscore = jax.lax.top_k(grouped, 2)[0].sum(-1)
            _, keep = jax.lax.top_k(gscore, self.topk_group)
            keep = jax.nn.one_hot(keep, self.n_group, dtype=bool).any(-2)  # [..., n_group]
            choice = jnp.where(jnp.repeat(keep, self.n_experts // self.n_group, -1), choice,
                               -jnp.inf)
        _, idx = jax.lax.top_k(choice, self.top_k)
        chosen = jax.nn.one_hot(idx, self.n_experts, dtype=bool).any(-2)  # [..., E]
        g = jnp.where(chosen, s, 0.0)
        if self.norm_topk_prob:
            g = g / (g.sum(-1, keepdims=True) + 1e-20)
        return g * self.scaling

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.gates(x).astype(self.dtype)
        h = jnp.einsum("...d,edf->...ef", x, self.w_in[...].astype(self.dtype))
        gate, up = jnp.split(h, 2, axis=-1)
        y = jnp.einsum("...ef,efd,...e->...d", jax.nn.silu(gate) * up,
                       self.w_out[...].astype(self.dtype), g)
        if self.shared is None:
            return y
        shared = self.shared(x)
        if self.shared_gate is not None:
            shared = jax.nn.sigmoid(self.shared_gate(x)) * shared
        return y + shared
