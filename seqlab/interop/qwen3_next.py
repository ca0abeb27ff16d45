"""The Qwen3-Next family (transformers ``Qwen3NextForCausalLM``).

A pre-norm decoder whose layers are Gated DeltaNet (``layer_types`` "linear_attention") or gated
attention ("full_attention"): ``x + mixer(norm(x))``, ``x + MLP(norm(x))``, every norm the
(1 + w) RMSNorm, the SwiGLU MLP ``down(silu(gate(x)) * up(x))``, a final norm and an output
layer. In seqlab: ``pattern`` of ``gated-deltanet`` (``n_v_heads`` value heads, output gate,
gated norm eps = ``rms_norm_eps``) and ``mha`` (``qk_norm="rms_offset"``, ``output_gate``,
partial RoPE ``rope_dim = head_dim * partial_rotary_factor``), norm ``rms_offset``, ffn ``glu``
without biases. transformers fuses the DeltaNet projections per key-head group
(``in_proj_qkvz``: per key head [q | k | v of its r value heads | z of them]; ``in_proj_ba``:
per key head [b of its r value heads | a of them]) and convolves [q | k | v] with one depthwise
conv1d; the names, splits and transposes are in docs/interop.md. The routed mixture-of-experts
MLP (``num_experts`` > 0 on layers not in ``mlp_only_layers``, every ``decoder_sparse_step``-th
layer) is ``seqlab.models.moe.MoE`` with a softmax router, ``norm_topk_prob``, and one shared
SwiGLU expert of width ``shared_expert_intermediate_size`` scaled by ``sigmoid(x w_s)``
(``shared_gate``); seqlab puts it on the layers ``moe_first_layer`` and later, so a config whose
sparse layers are not such a run of final layers is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from seqlab.config import ModelConfig
from seqlab.interop.hf import (
    InteropError,
    check_fields,
    decoder_ends,
    decoder_ends_to_transformers,
    experts_to_seqlab,
    experts_to_transformers,
    swiglu_to_seqlab,
    swiglu_to_transformers,
)
from seqlab.interop.llama import rope_parameters

MODEL_TYPES = ("qwen3_next",)
MIXERS = {"linear_attention": "gated-deltanet", "full_attention": "mha"}


def _t(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> nnx kernel [in, out]."""
    return np.asarray(w).T


def sparse_layers(hf: dict) -> list[int]:
    """The layers whose MLP is the routed mixture of experts in transformers
    (``Qwen3NextDecoderLayer``: not in ``mlp_only_layers``, ``num_experts`` > 0 and
    ``(i + 1) % decoder_sparse_step == 0``)."""
    dense = set(hf.get("mlp_only_layers") or [])
    n_experts, step = hf.get("num_experts", 0) or 0, hf.get("decoder_sparse_step", 1) or 1
    return [i for i in range(hf["num_hidden_layers"])
            if i not in dense and n_experts > 0 and (i + 1) % step == 0]


def _layer_types(hf: dict) -> list[str]:
    types = hf.get("layer_types")
    if types is None:  # transformers' default: every full_attention_interval-th layer attends
        every = hf.get("full_attention_interval", 4)
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention"
                 for i in range(hf["num_hidden_layers"])]
    if len(types) != hf["num_hidden_layers"] or set(types) - set(MIXERS):
        raise InteropError(
            f"qwen3_next config field 'layer_types' = {types!r} is not supported: seqlab maps "
            f"one entry per layer ({hf['num_hidden_layers']}), each 'linear_attention' (Gated "
            "DeltaNet) or 'full_attention' (gated attention).")
    return list(types)


def _deltanet_args(hf: dict) -> dict:
    dk, dv = hf["linear_key_head_dim"], hf["linear_value_head_dim"]
    nk, nv = hf["linear_num_key_heads"], hf["linear_num_value_heads"]
    if nv % nk or int(dk * (dv / dk)) != dv:
        raise InteropError(
            f"qwen3_next: linear_num_value_heads={nv} must be a multiple of "
            f"linear_num_key_heads={nk}, and linear_value_head_dim={dv} a representable "
            f"multiple of linear_key_head_dim={dk}; seqlab's gated-deltanet cannot hold it.")
    return {"n_heads": nk, "n_v_heads": nv, "head_dim": dk, "expand_v": dv / dk,
            "d_conv": hf.get("linear_conv_kernel_dim", 4), "use_output_gate": True,
            "qk_activation": "silu", "norm_eps": float(hf.get("rms_norm_eps", 1e-6))}


def _attention_args(hf: dict) -> dict:
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    theta, scaling = rope_parameters(hf)
    if scaling:
        raise InteropError(
            f"qwen3_next config field 'rope_parameters' has RoPE scaling {scaling!r}; seqlab "
            "maps Qwen3-Next's default RoPE only (rope_type 'default').")
    params = hf.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25))
    rope_dim = int(head_dim * factor)
    if rope_dim % 2:
        raise InteropError(f"qwen3_next: partial_rotary_factor={factor} gives an odd rotary "
                           f"dimension {rope_dim} of head_dim={head_dim}; RoPE needs pairs.")
    bias = bool(hf.get("attention_bias", False))
    return {"n_heads": n_heads, "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
            "head_dim": head_dim, "rope_base": theta, "rope_dim": rope_dim,
            "rope_layout": "rotate_half", "qk_norm": "rms_offset", "output_gate": True,
            "norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "qkv_bias": bias,
            "out_bias": bias}


def _moe_args(hf: dict) -> tuple[dict | None, int]:
    """The ``MoE`` arguments of the sparse layers and the first of them (None, n_layers: no
    sparse layer); InteropError when they are not the final layers from some layer on."""
    n_layers, sparse = hf["num_hidden_layers"], sparse_layers(hf)
    if not sparse:
        return None, n_layers
    if sparse != list(range(sparse[0], n_layers)):
        raise InteropError(
            f"qwen3_next: layers {sparse} use the routed mixture-of-experts MLP (num_experts="
            f"{hf.get('num_experts')}, decoder_sparse_step={hf.get('decoder_sparse_step', 1)}, "
            f"mlp_only_layers={hf.get('mlp_only_layers')}); seqlab puts the mixture of experts "
            "on every layer from one layer on (ModelConfig.moe_first_layer), so it maps sparse "
            "layers that are the final ones only.")
    if not hf.get("shared_expert_intermediate_size"):
        raise InteropError("qwen3_next: shared_expert_intermediate_size must be > 0 (the "
                           "shared expert of Qwen3NextSparseMoeBlock).")
    return {"n_experts": hf["num_experts"], "top_k": hf["num_experts_per_tok"],
            "hidden": hf["moe_intermediate_size"], "n_shared": 1,
            "shared_hidden": hf["shared_expert_intermediate_size"], "shared_gate": True,
            "scoring": "softmax", "norm_topk_prob": bool(hf.get("norm_topk_prob", True))
            }, sparse[0]


def model_config(hf: dict) -> ModelConfig:
    """The seqlab ModelConfig of a Qwen3-Next config.json."""
    check_fields(hf, {"hidden_act": "silu", "attention_dropout": lambda p: True,
                      "output_router_logits": lambda v: True,
                      "router_aux_loss_coef": lambda v: True}, "qwen3_next")  # training only
    moe, first_sparse = _moe_args(hf)
    pattern = tuple(MIXERS[t] for t in _layer_types(hf))
    args = {"gated-deltanet": _deltanet_args, "mha": _attention_args}
    return ModelConfig(
        pattern=pattern, d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        mixer_args={name: args[name](hf) for name in sorted(set(pattern))},
        norm="rms_offset", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), prenorm=True,
        ffn="glu", ffn_hidden=hf["intermediate_size"], bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), moe=moe,
        moe_first_layer=first_sparse if moe else 0,
    )


def _deltanet(hf: dict, tensors: Mapping[str, np.ndarray], src: str) -> dict[str, np.ndarray]:
    """in_proj_qkvz / in_proj_ba de-interleaved per key-head group, conv1d split into q, k, v."""
    nk, nv = hf["linear_num_key_heads"], hf["linear_num_value_heads"]
    dk, dv, r = hf["linear_key_head_dim"], hf["linear_value_head_dim"], nv // nk
    qkvz = _t(tensors[f"{src}in_proj_qkvz.weight"])
    d = qkvz.shape[0]
    q, k, v, z = np.split(qkvz.reshape(d, nk, 2 * dk + 2 * r * dv),
                          [dk, 2 * dk, 2 * dk + r * dv], axis=2)
    b, a = np.split(_t(tensors[f"{src}in_proj_ba.weight"]).reshape(d, nk, 2 * r), [r], axis=2)
    conv = np.asarray(tensors[f"{src}conv1d.weight"])[:, 0, :].T  # [K, nk*dk*2 + nv*dv]
    cq, ck, cv = np.split(conv, [nk * dk, 2 * nk * dk], axis=1)
    return {"q_proj.kernel": q.reshape(d, nk * dk), "k_proj.kernel": k.reshape(d, nk * dk),
            "v_proj.kernel": v.reshape(d, nv * dv), "g_proj.kernel": z.reshape(d, nv * dv),
            "b_proj.kernel": b.reshape(d, nv), "a_proj.kernel": a.reshape(d, nv),
            "q_conv.weight": cq, "k_conv.weight": ck, "v_conv.weight": cv,
            "A_log": tensors[f"{src}A_log"], "dt_bias": tensors[f"{src}dt_bias"],
            "o_norm.weight": tensors[f"{src}norm.weight"],
            "o_proj.kernel": _t(tensors[f"{src}out_proj.weight"])}


def _attention(hf: dict, tensors: Mapping[str, np.ndarray], src: str) -> dict[str, np.ndarray]:
    """q_proj's per-head [q | gate] rows are MHA's output-gate layout already: transposes."""
    out = {f"{ours}.kernel": _t(tensors[f"{src}{theirs}.weight"]) for ours, theirs in
           (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj"))}
    if hf.get("attention_bias", False):
        out |= {f"{ours}.bias": tensors[f"{src}{theirs}.bias"] for ours, theirs in
                (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj"))}
    return out | {"q_norm.scale": tensors[f"{src}q_norm.weight"],
                  "k_norm.scale": tensors[f"{src}k_norm.weight"]}


def to_seqlab(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers names -> seqlab variable names (docs/interop.md, Qwen3-Next)."""
    cfg = model_config(hf)
    out = decoder_ends(tensors, cfg.tie_embeddings)
    for i, kind in enumerate(_layer_types(hf)):
        src, dst = f"model.layers.{i}.", f"backbone.blocks.{i}."
        mixer = (_deltanet(hf, tensors, f"{src}linear_attn.") if kind == "linear_attention"
                 else _attention(hf, tensors, f"{src}self_attn."))
        out |= {f"{dst}mixer.{name}": value for name, value in mixer.items()}
        out[f"{dst}norm.norm.scale"] = tensors[f"{src}input_layernorm.weight"]
        out[f"{dst}ffn_norm.norm.scale"] = tensors[f"{src}post_attention_layernorm.weight"]
        if cfg.moe and i >= cfg.moe_first_layer:
            moe = experts_to_seqlab(tensors, f"{src}mlp.", cfg.moe["n_experts"])
            moe |= swiglu_to_seqlab(tensors, f"{src}mlp.shared_expert.", "shared.")
            moe["shared_gate.kernel"] = np.asarray(
                tensors[f"{src}mlp.shared_expert_gate.weight"]).T
            out |= {f"{dst}ffn.{name}": value for name, value in moe.items()}
        else:
            out |= swiglu_to_seqlab(tensors, f"{src}mlp.", f"{dst}ffn.")
    return out


# compute-only or initialisation-only options, free in an exported model
_FREE = {"chunk_size", "implementation", "dt_min", "dt_max", "A_init_range"}
_DELTA_DEFAULTS = {"use_output_gate": True, "qk_activation": "silu", "allow_neg_eigval": False,
                   "norm_eps": 1e-5}  # GatedDeltaNet's defaults of the options Qwen3-Next fixes


def _export_deltanet(args: dict, d_model: int, eps: float, problems: list[str]) -> dict:
    n_heads = args.get("n_heads", 4)
    head_dim = args.get("head_dim") or d_model // n_heads
    v_dim = int(head_dim * args.get("expand_v", 2.0))
    fixed = {"use_output_gate": True, "qk_activation": "silu", "allow_neg_eigval": False,
             "norm_eps": eps}
    wrong = [k for k in args if k not in _FREE | {"n_heads", "n_v_heads", "head_dim",
                                                   "expand_v", "d_conv"} and k not in fixed]
    wrong += [k for k, v in fixed.items() if args.get(k, _DELTA_DEFAULTS.get(k)) != v]
    if wrong:
        problems.append(f"gated-deltanet options {sorted(wrong)} differ from Qwen3-Next's "
                        f"(output gate, silu q/k, beta in [0, 1], norm_eps = the model's {eps})")
    return {"linear_num_key_heads": n_heads,
            "linear_num_value_heads": args.get("n_v_heads") or n_heads,
            "linear_key_head_dim": head_dim, "linear_value_head_dim": v_dim,
            "linear_conv_kernel_dim": args.get("d_conv", 4)}


def _export_attention(args: dict, d_model: int, eps: float, problems: list[str]) -> dict:
    n_heads = args.get("n_heads", 4)
    head_dim = args.get("head_dim") or d_model // n_heads
    rope_dim = head_dim if args.get("rope_dim") is None else args["rope_dim"]
    fixed = {"causal": True, "qk_norm": "rms_offset", "output_gate": True, "norm_eps": eps,
             "rope_layout": "rotate_half", "rope_scaling": None,
             "out_bias": args.get("qkv_bias", False)}
    defaults = {"causal": True, "norm_eps": 1e-6, "rope_layout": "rotate_half"}
    known = {"n_heads", "n_kv_heads", "head_dim", "rope_dim", "rope_base", "qkv_bias"}
    wrong = [k for k in args if k not in known and k not in fixed]
    wrong += [k for k, v in fixed.items() if args.get(k, defaults.get(k)) != v]
    if wrong:
        problems.append(f"mha options {sorted(wrong)} differ from Qwen3-Next's gated attention "
                        f"(causal, qk_norm 'rms_offset', output_gate, norm_eps = the model's "
                        f"{eps}, rotate-half RoPE without scaling, biases on all or none)")
    return {"num_attention_heads": n_heads,
            "num_key_value_heads": args.get("n_kv_heads") or n_heads, "head_dim": head_dim,
            "attention_bias": bool(args.get("qkv_bias", False)),
            "rope_parameters": {"rope_type": "default", "rope_theta": args.get("rope_base",
                                                                               10000.0),
                                "partial_rotary_factor": rope_dim / head_dim}}


def _export_moe(cfg: ModelConfig, problems: list[str]) -> dict:
    """The config fields of ``cfg.moe`` (Qwen3-Next's sparse MLP on layers
    ``moe_first_layer`` and later), or the dense model's (``num_experts`` 0)."""
    if not cfg.moe:
        return {"num_experts": 0, "mlp_only_layers": []}
    m = cfg.moe
    fixed = {"scoring": "softmax", "score_bias": False, "n_group": None, "topk_group": None,
             "routed_scaling_factor": 1.0, "n_shared": 1, "shared_gate": True}
    defaults = {"scoring": "softmax", "score_bias": False, "routed_scaling_factor": 1.0,
                "n_shared": 0, "shared_gate": False}
    wrong = [k for k, v in fixed.items() if m.get(k, defaults.get(k)) != v]
    wrong += [k for k in m if k not in fixed and k not in
              {"n_experts", "top_k", "hidden", "shared_hidden", "norm_topk_prob",
               "group_score"}]
    if wrong:
        problems.append(f"moe options {sorted(wrong)} differ from Qwen3-Next's mixture of "
                        "experts (softmax router without bias or groups, scaling 1, one shared "
                        "expert with a sigmoid gate)")
    return {"num_experts": m["n_experts"], "num_experts_per_tok": m["top_k"],
            "moe_intermediate_size": m["hidden"],
            "shared_expert_intermediate_size": m.get("shared_hidden") or m["hidden"],
            "norm_topk_prob": bool(m.get("norm_topk_prob", False)), "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(cfg.moe_first_layer))}


def transformers_config(cfg: ModelConfig, vocab_size: int) -> dict:
    """config.json of the Qwen3-Next model equal to ``cfg``; InteropError naming what does not
    fit."""
    from seqlab.models.builder import layer_mixers, mixer_args_for

    mixers, problems = layer_mixers(cfg.mixer, cfg.n_layers, cfg.pattern), []
    kinds = {v: k for k, v in MIXERS.items()}
    if set(mixers) - set(kinds):
        problems.append(f"every layer must be 'gated-deltanet' or 'mha' (got {set(mixers)})")
    if cfg.norm != "rms_offset" or not cfg.prenorm:
        problems.append(f"norm must be pre-norm 'rms_offset' (got {cfg.norm}, "
                        f"prenorm={cfg.prenorm})")
    if cfg.ffn != "glu" or cfg.bias or cfg.dropout:
        problems.append(f"ffn must be 'glu' without biases or dropout (got {cfg.ffn}, "
                        f"bias={cfg.bias}, dropout={cfg.dropout})")
    eps = cfg.norm_eps if cfg.norm_eps is not None else 1e-6
    hf = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
          "vocab_size": vocab_size, "hidden_size": cfg.d_model,
          "intermediate_size": cfg.ffn_hidden or cfg.ffn_expand * cfg.d_model,
          "num_hidden_layers": cfg.n_layers, "hidden_act": "silu", "rms_norm_eps": eps,
          "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": 2**17,
          "layer_types": [kinds.get(m, m) for m in mixers], "dtype": "float32",
          **_export_moe(cfg, problems)}
    export = {"gated-deltanet": _export_deltanet, "mha": _export_attention}
    for name in sorted(set(mixers) & set(export)):
        hf |= export[name](mixer_args_for(name, cfg.mixer_args, cfg.pattern), cfg.d_model, eps,
                           problems)
    if problems:
        raise InteropError("the model is not a Qwen3-Next: " + "; ".join(problems) + ".")
    return hf


def to_transformers(cfg: ModelConfig, arrays: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """seqlab variable names -> transformers names (the inverse of ``to_seqlab``)."""
    hf = transformers_config(cfg, arrays["embed.embedding"].shape[0])
    out = decoder_ends_to_transformers(arrays, cfg.tie_embeddings)
    for i, kind in enumerate(hf["layer_types"]):
        src, dst = f"backbone.blocks.{i}.", f"model.layers.{i}."
        m = {k[len(src) + 6:]: v for k, v in arrays.items() if k.startswith(f"{src}mixer.")}
        if kind == "linear_attention":
            out |= {f"{dst}linear_attn.{k}": v for k, v in _deltanet_back(hf, m).items()}
        else:
            for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"),
                                 ("wo", "o_proj")):
                out[f"{dst}self_attn.{theirs}.weight"] = _t(m[f"{ours}.kernel"])
                if f"{ours}.bias" in m:
                    out[f"{dst}self_attn.{theirs}.bias"] = m[f"{ours}.bias"]
            out[f"{dst}self_attn.q_norm.weight"] = m["q_norm.scale"]
            out[f"{dst}self_attn.k_norm.weight"] = m["k_norm.scale"]
        out[f"{dst}input_layernorm.weight"] = arrays[f"{src}norm.norm.scale"]
        out[f"{dst}post_attention_layernorm.weight"] = arrays[f"{src}ffn_norm.norm.scale"]
        ffn = f"{src}ffn."
        if cfg.moe and i >= cfg.moe_first_layer:
            out |= experts_to_transformers({k[len(ffn):]: v for k, v in arrays.items()
                                            if k.startswith(ffn)}, f"{dst}mlp.")
            out |= swiglu_to_transformers(arrays, f"{ffn}shared.", f"{dst}mlp.shared_expert.")
            out[f"{dst}mlp.shared_expert_gate.weight"] = _t(arrays[f"{ffn}shared_gate.kernel"])
        else:
            out |= swiglu_to_transformers(arrays, ffn, f"{dst}mlp.")
    return out


def _deltanet_back(hf: dict, m: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-key-head-group interleaving of ``_deltanet``, rebuilt."""
    nk = hf["linear_num_key_heads"]
    d = m["q_proj.kernel"].shape[0]

    def grouped(*names):  # [d, nk, ...] parts concatenated per key head -> torch [out, d]
        parts = [np.asarray(m[n]).reshape(d, nk, -1) for n in names]
        return _t(np.concatenate(parts, axis=2).reshape(d, -1))

    conv = np.concatenate([m["q_conv.weight"], m["k_conv.weight"], m["v_conv.weight"]], 1)
    return {"in_proj_qkvz.weight": grouped("q_proj.kernel", "k_proj.kernel", "v_proj.kernel",
                                           "g_proj.kernel"),
            "in_proj_ba.weight": grouped("b_proj.kernel", "a_proj.kernel"),
            "conv1d.weight": np.asarray(conv).T[:, None, :], "A_log": m["A_log"],
            "dt_bias": m["dt_bias"], "norm.weight": m["o_norm.weight"],
            "out_proj.weight": _t(m["o_proj.kernel"])}
