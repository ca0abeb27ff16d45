"""The DeepSeek-V3 and DeepSeek-V2 families (transformers ``DeepseekV3ForCausalLM``,
``DeepseekV2ForCausalLM``), dense layers.

Both are pre-norm decoders ``x + MLA(RMSNorm(x))``, ``x + MLP(RMSNorm(x))`` with the SwiGLU MLP
``down(silu(gate(x)) * up(x))``, a final RMSNorm and an output layer. Attention is Multi-head
Latent Attention (seqlab's ``mla``): the optional query latent with its RMSNorm, the key/value
latent c_kv (RMSNorm, eps 1e-6 as the checkpoints') and one decoupled RoPE key shared by all
heads; ``kv_b_proj`` holds per head ``[k_nope | v]``. RoPE pairs dimensions 2i and 2i + 1 in
DeepSeek-V2 (a complex rotation) and in DeepSeek-V3 with ``rope_interleave`` (the default;
transformers de-interleaves the output, which changes no dot product), rotate-half otherwise;
YaRN scaling (``seqlab.ops.yarn``) scales the rotary dimensions and, with ``mscale_all_dim``,
the softmax. Layers ``first_k_dense_replace`` and later replace the MLP by routed experts plus
shared experts (``seqlab.models.moe.MoE``: ``ModelConfig.moe``, ``moe_first_layer``): softmax
gates, greedy or group-limited (group max) in DeepSeek-V2; sigmoid gates, a selection bias and
group-limited routing by the sum of each group's two best in DeepSeek-V3. The name table is in
docs/interop.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from seqlab.config import ModelConfig
from seqlab.interop.hf import (
    InteropError,
    check_fields,
    decoder_ends,
    experts_to_seqlab,
    swiglu_to_seqlab,
)
from seqlab.interop.llama import rope_parameters
from seqlab.ops.rope import rope_type

MODEL_TYPES = ("deepseek_v3", "deepseek_v2")


def _t(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> nnx kernel [in, out] (and back)."""
    return np.asarray(w).T


def _rope(hf: dict) -> tuple[float, dict | None, str]:
    """(rope_theta, scaling dict or None, seqlab rope_layout)."""
    name = hf["model_type"]
    theta, scaling = rope_parameters(hf)
    if (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0) != 1.0:
        raise InteropError(f"{name}: partial_rotary_factor != 1 is not a DeepSeek feature; "
                           "seqlab's MLA rotates all qk_rope_head_dim dimensions.")
    if scaling:
        try:
            kind = rope_type(scaling)
        except ValueError as e:
            raise InteropError(f"{name}: {e}") from None
        if scaling.get("mscale_all_dim") and kind != "yarn":
            raise InteropError(
                f"{name}: mscale_all_dim with RoPE type {kind!r}: transformers scales the "
                "softmax by it for every non-default type, seqlab only for 'yarn' (where "
                "DeepSeek uses it); no published checkpoint combines them.")
        if kind == "yarn":
            scaling = dict(scaling)
            if scaling.get("factor") is None and scaling.get("original_max_position_embeddings"):
                # transformers' rule for a missing factor (modeling_rope_utils.py line 449)
                scaling["factor"] = (hf["max_position_embeddings"]
                                     / scaling["original_max_position_embeddings"])
    interleaved = name == "deepseek_v2" or hf.get("rope_interleave", True)
    return theta, scaling, "interleaved" if interleaved else "rotate_half"


def mixer_args(hf: dict) -> dict:
    """The ``mla`` arguments of a DeepSeek config."""
    theta, scaling, layout = _rope(hf)
    args = {"n_heads": hf["num_attention_heads"], "q_lora_rank": hf.get("q_lora_rank"),
            "kv_lora_rank": hf["kv_lora_rank"], "qk_nope_head_dim": hf["qk_nope_head_dim"],
            "rope_dim": hf["qk_rope_head_dim"], "v_head_dim": hf["v_head_dim"],
            "rope_base": theta, "rope_layout": layout,
            "qkv_bias": bool(hf.get("attention_bias", False)),
            "out_bias": bool(hf.get("attention_bias", False))}
    if scaling:
        args["rope_scaling"] = scaling
    return args


def model_config(hf: dict) -> ModelConfig:
    """The seqlab ModelConfig of a DeepSeek-V3 / V2 config.json (dense layers only)."""
    name = hf["model_type"]
    n_layers, n_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    check_fields(hf, {"hidden_act": "silu", "mlp_bias": False,
                      # MLA expands the latent to every head; transformers repeats those keys
                      # num_heads // num_key_value_heads times, a no-op only when that is <= 1
                      "num_key_value_heads": lambda k: k is None or n_heads // k <= 1,
                      "attention_dropout": lambda p: True,  # training only
                      "pretraining_tp": lambda p: True}, name)  # unused by the forward pass
    first_dense = hf.get("first_k_dense_replace", 0 if name == "deepseek_v2" else 3)
    moe = moe_args(hf) if first_dense < n_layers else None
    return ModelConfig(
        mixer="mla", d_model=hf["hidden_size"], n_layers=n_layers, mixer_args=mixer_args(hf),
        norm="rms", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), prenorm=True, ffn="glu",
        ffn_hidden=hf["intermediate_size"], bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), moe=moe,
        moe_first_layer=min(first_dense, n_layers) if moe else 0,
    )


def moe_args(hf: dict) -> dict:
    """The ``MoE`` arguments of the routed layers (InteropError for what seqlab lacks)."""
    name, v3 = hf["model_type"], hf["model_type"] == "deepseek_v3"
    check_fields(hf, {"moe_layer_freq": 1, "ep_size": lambda p: True,  # parallelism only
                      "aux_loss_alpha": lambda p: True, "seq_aux": lambda p: True,  # training
                      "scoring_func": "sigmoid" if v3 else "softmax",
                      "topk_method": "noaux_tc" if v3 else (
                          lambda m: m in ("greedy", "group_limited_greedy"))}, name)
    if not v3 and hf.get("norm_topk_prob"):
        raise InteropError(
            f"{name}: norm_topk_prob = true: transformers' DeepseekV2TopkRouter ignores it, "
            "DeepSeek's own DeepSeek-V2 code normalises the top-k weights; the checkpoint's "
            "function is ambiguous, so seqlab does not load it.")
    grouped = v3 or hf.get("topk_method") == "group_limited_greedy"
    args = {"n_experts": hf["n_routed_experts"], "top_k": hf["num_experts_per_tok"],
            "hidden": hf["moe_intermediate_size"], "n_shared": hf.get("n_shared_experts") or 0,
            "scoring": "sigmoid" if v3 else "softmax", "score_bias": v3,
            "n_group": hf.get("n_group") if grouped else None,
            "topk_group": hf.get("topk_group") if grouped else None,
            "group_score": "top2" if v3 else "max", "norm_topk_prob": bool(v3 and hf.get(
                "norm_topk_prob", True)),
            "routed_scaling_factor": float(hf.get("routed_scaling_factor", 2.5 if v3 else 1.0))}
    from seqlab.models import ModelBuildError
    from seqlab.models.moe import MoE

    try:  # the routing checks, on shapes only
        nnx.eval_shape(lambda: MoE(hf["hidden_size"], **args, rngs=nnx.Rngs(0)))
    except ModelBuildError as e:
        raise InteropError(f"{name}: {e}") from None
    return args


def moe_to_seqlab(hf: dict, tensors: Mapping[str, np.ndarray], src: str
                  ) -> dict[str, np.ndarray]:
    """One routed layer: transformers names under ``src`` ("model.layers.3.mlp.") -> MoE
    variable names (the experts: ``hf.experts_to_seqlab``, fused or one module per expert),
    with V3's selection bias and the shared experts."""
    out = experts_to_seqlab(tensors, src, hf["n_routed_experts"])
    if hf["model_type"] == "deepseek_v3":
        out["bias"] = tensors[f"{src}gate.e_score_correction_bias"]
    if hf.get("n_shared_experts"):
        out.update(swiglu_to_seqlab(tensors, f"{src}shared_experts.", "shared."))
    return out


def attention_to_seqlab(args: Mapping, tensors: Mapping[str, np.ndarray], src: str
                        ) -> dict[str, np.ndarray]:
    """One attention layer: transformers names under ``src`` (e.g. "model.layers.0.self_attn.")
    -> MLA variable names (``wq_a.kernel``, ...). ``args``: the layer's ``mla`` arguments."""
    h, nope, dv = args["n_heads"], args["qk_nope_head_dim"], args["v_head_dim"]
    out = {}
    if args.get("q_lora_rank") is None:
        out["wq.kernel"] = _t(tensors[f"{src}q_proj.weight"])
        if args["qkv_bias"]:  # transformers' q_proj has no bias: an exact zero
            out["wq.bias"] = np.zeros(out["wq.kernel"].shape[1], out["wq.kernel"].dtype)
    else:
        out["wq_a.kernel"] = _t(tensors[f"{src}q_a_proj.weight"])
        out["q_norm.scale"] = tensors[f"{src}q_a_layernorm.weight"]
        out["wq.kernel"] = _t(tensors[f"{src}q_b_proj.weight"])
        if args["qkv_bias"]:
            out["wq_a.bias"] = tensors[f"{src}q_a_proj.bias"]
    out["wkv_a.kernel"] = _t(tensors[f"{src}kv_a_proj_with_mqa.weight"])
    out["kv_norm.scale"] = tensors[f"{src}kv_a_layernorm.weight"]
    kv_b = np.asarray(tensors[f"{src}kv_b_proj.weight"])  # [H (nope + v), rank]
    kv_b = kv_b.reshape(h, nope + dv, -1).transpose(2, 0, 1)  # [rank, H, nope + v]
    out["wk_b"], out["wv_b"] = kv_b[..., :nope], kv_b[..., nope:]
    out["wo.kernel"] = _t(tensors[f"{src}o_proj.weight"])
    if args["qkv_bias"]:
        out["wkv_a.bias"] = tensors[f"{src}kv_a_proj_with_mqa.bias"]
    if args["out_bias"]:
        out["wo.bias"] = tensors[f"{src}o_proj.bias"]
    return out


def to_seqlab(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers names -> seqlab variable names (docs/interop.md, DeepSeek-V3 / V2)."""
    cfg = model_config(hf)
    out = decoder_ends(tensors, cfg.tie_embeddings)
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"backbone.blocks.{i}."
        for k, v in attention_to_seqlab(cfg.mixer_args, tensors, f"{src}self_attn.").items():
            out[f"{dst}mixer.{k}"] = v
        out[f"{dst}norm.norm.scale"] = tensors[f"{src}input_layernorm.weight"]
        out[f"{dst}ffn_norm.norm.scale"] = tensors[f"{src}post_attention_layernorm.weight"]
        if cfg.moe and i >= cfg.moe_first_layer:
            ffn = moe_to_seqlab(hf, tensors, f"{src}mlp.")
        else:
            ffn = swiglu_to_seqlab(tensors, f"{src}mlp.", "")
        out.update({f"{dst}ffn.{k}": v for k, v in ffn.items()})
    # DeepSeek-V3's multi-token-prediction module is stored as layers n_layers.. (transformers
    # skips it on load too): it predicts further tokens for speculative decoding and has no
    # part in the logits, so it is read as consumed and dropped.
    extra = re.compile(r"model\.layers\.(\d+)\.")
    for name in list(tensors):
        m = extra.match(name)
        if m and int(m.group(1)) >= cfg.n_layers and hf.get("num_nextn_predict_layers"):
            tensors[name]  # noqa: B018  (marks it read)
    return out
