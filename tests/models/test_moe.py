"""The routed mixture-of-experts FFN against a float64 reference that routes one token at a time
with Python sorting (DeepSeek-V2/V3's routing rules written out), values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.models import ModelBuildError
from seqlab.models.moe import MoE

D, H, E = 6, 5, 8
CASES = {
    "v2-greedy": dict(scoring="softmax", top_k=2, n_shared=2, routed_scaling_factor=1.5),
    "v2-groups": dict(scoring="softmax", top_k=3, n_group=4, topk_group=2, group_score="max"),
    "v3": dict(scoring="sigmoid", score_bias=True, top_k=3, n_group=4, topk_group=2,
               group_score="top2", norm_topk_prob=True, routed_scaling_factor=2.5, n_shared=1),
    "qwen3-next": dict(scoring="softmax", top_k=3, norm_topk_prob=True, n_shared=1,
                       shared_hidden=7, shared_gate=True),
}


def reference(p, x, o):
    """x [N, D] -> [N, D], one token at a time; selection by Python sorting of float64 scores
    (piecewise constant, so jax.grad differentiates through the chosen weights only)."""
    silu = jax.nn.silu
    out = []
    for t in range(x.shape[0]):
        logits = x[t] @ p["router"]
        s = jax.nn.softmax(logits) if o["scoring"] == "softmax" else jax.nn.sigmoid(logits)
        c = np.asarray(jax.lax.stop_gradient(s)) + np.asarray(p.get("bias", np.zeros(E)))
        size = E // o.get("n_group", 1)
        groups = range(o.get("n_group", 1))
        if o.get("topk_group"):
            best = [sorted(c[g * size:(g + 1) * size], reverse=True) for g in groups]
            score = [m[0] if o["group_score"] == "max" else m[0] + m[1] for m in best]
            groups = sorted(groups, key=lambda g: score[g], reverse=True)[: o["topk_group"]]
        candidates = [e for e in range(E) if e // size in groups]
        chosen = sorted(candidates, key=lambda e: c[e], reverse=True)[: o["top_k"]]
        w = [s[e] for e in chosen]
        if o.get("norm_topk_prob"):
            w = [wi / sum(w) for wi in w]
        y = 0.0
        for e, we in zip(chosen, w, strict=True):
            gate, up = jnp.split(x[t] @ p["w_in"][e], 2)
            y = y + we * o.get("routed_scaling_factor", 1.0) * ((silu(gate) * up) @ p["w_out"][e])
        if o.get("n_shared"):
            gate, up = jnp.split(x[t] @ p["shared_in"], 2)
            shared = (silu(gate) * up) @ p["shared_out"]
            if o.get("shared_gate"):
                shared = shared / (1 + jnp.exp(-(x[t] @ p["shared_gate"])))
            y = y + shared
        out.append(y)
    return jnp.stack(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_moe_matches_per_token_reference(case):
    o = CASES[case]
    with jax.enable_x64(True):
        layer = MoE(D, n_experts=E, hidden=H, dtype=jnp.float64, rngs=nnx.Rngs(0), **o)
        rng = np.random.default_rng(1)
        p = {"router": rng.standard_normal((D, E)), "w_in": rng.standard_normal((E, D, 2 * H)),
             "w_out": rng.standard_normal((E, H, D)) / 3}
        layer.router.kernel.set_value(jnp.asarray(p["router"]))  # float64 parameters
        layer.w_in.set_value(jnp.asarray(p["w_in"]))
        layer.w_out.set_value(jnp.asarray(p["w_out"]))
        if o.get("score_bias"):
            p["bias"] = rng.standard_normal(E) / 4
            layer.bias.set_value(jnp.asarray(p["bias"]))
        if o.get("n_shared"):
            width = o.get("shared_hidden") or H * o["n_shared"]
            p["shared_in"] = rng.standard_normal((D, 2 * width))
            p["shared_out"] = rng.standard_normal((width, D)) / 3
            layer.shared.w_in.kernel.set_value(jnp.asarray(p["shared_in"]))
            layer.shared.w_out.kernel.set_value(jnp.asarray(p["shared_out"]))
        if o.get("shared_gate"):
            p["shared_gate"] = rng.standard_normal((D, 1))
            layer.shared_gate.kernel.set_value(jnp.asarray(p["shared_gate"]))
        p = {k: jnp.asarray(v) for k, v in p.items()}
        x = jnp.asarray(rng.standard_normal((2, 5, D)))
        np.testing.assert_allclose(layer(x), reference(p, x.reshape(-1, D), o).reshape(x.shape),
                                   rtol=1e-12, atol=1e-12)
        # the routing really varies: several experts serve these 10 tokens
        assert len(np.unique(np.argmax(np.asarray(layer.gates(x)), -1))) > 2
        c = jnp.asarray(rng.standard_normal(x.shape))

        graphdef, state = nnx.split(layer)

        def ours(state, x):
            return jnp.sum(nnx.merge(graphdef, state)(x) * c)

        def theirs(router, w_in, w_out, x):
            q = {**p, "router": router, "w_in": w_in, "w_out": w_out}
            return jnp.sum(reference(q, x.reshape(-1, D), o).reshape(x.shape) * c)

        gs, gx = jax.grad(ours, (0, 1))(state, x)
        gs = {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(gs)}
        want = jax.grad(theirs, (0, 1, 2, 3))(p["router"], p["w_in"], p["w_out"], x)
        got = (gs["router.kernel"], gs["w_in"], gs["w_out"], gx)
        if o.get("shared_gate"):  # and the shared expert's gate
            got += (gs["shared_gate.kernel"],)
            want += (jax.grad(lambda w: jnp.sum(reference(
                {**p, "shared_gate": w}, x.reshape(-1, D), o).reshape(x.shape) * c))(
                    p["shared_gate"]),)
        for g1, g2 in zip(got, want, strict=True):
            assert float(jnp.abs(g2).max()) > 0
            np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-10)


def test_moe_refuses_impossible_routing():
    with pytest.raises(ModelBuildError, match="shared_gate"):
        MoE(D, n_experts=E, hidden=H, top_k=2, shared_gate=True, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="top_k"):
        MoE(D, n_experts=E, hidden=H, top_k=5, n_group=4, topk_group=2, rngs=nnx.Rngs(0))
    with pytest.raises(ModelBuildError, match="scoring"):
        MoE(D, n_experts=E, hidden=H, top_k=2, scoring="relu", rngs=nnx.Rngs(0))
