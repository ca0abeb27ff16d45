"""The Llama and Qwen2 families (transformers ``LlamaForCausalLM``, ``Qwen2ForCausalLM``).

Both are pre-norm decoders: ``x + attn(RMSNorm(x))``, ``x + MLP(RMSNorm(x))`` with the SwiGLU
MLP ``down(silu(gate(x)) * up(x))``, a final RMSNorm and an output layer (tied to the embedding
or not). Attention is GQA with RoPE in the rotate-half layout; Qwen2 adds biases to the q, k, v
projections. In seqlab: mixer ``mha`` (``qkv_bias``, ``out_bias``, ``rope_scaling``), norm
``rms``, ffn ``glu`` without biases. The name table is in docs/interop.md.
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
    swiglu_to_seqlab,
    swiglu_to_transformers,
)

MODEL_TYPES = ("llama", "qwen2")


def rope_parameters(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope scaling dict or None) from either config layout: transformers >= 5
    (``rope_parameters``) or the older ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = params or hf.get("rope_scaling") or None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    if scaling and "partial_rotary_factor" in scaling:
        scaling = {k: v for k, v in scaling.items() if k != "partial_rotary_factor"}
    return float(theta), scaling


def _mixer_args(hf: dict) -> dict:
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    theta, scaling = rope_parameters(hf)
    qwen2 = hf["model_type"] == "qwen2"
    args = {"n_heads": n_heads, "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
            "head_dim": head_dim, "rope_base": theta, "rope_layout": "rotate_half",
            "qkv_bias": qwen2 or bool(hf.get("attention_bias", False)),
            "out_bias": bool(hf.get("attention_bias", False)) and not qwen2}
    if scaling:
        from seqlab.ops.rope import rope_type

        try:
            rope_type(scaling)
        except ValueError as e:
            raise InteropError(f"{hf['model_type']}: {e}") from None
        args["rope_scaling"] = scaling
    return args


def model_config(hf: dict) -> ModelConfig:
    """The seqlab ModelConfig of a Llama / Qwen2 config.json."""
    name = hf["model_type"]
    check_fields(hf, {"hidden_act": "silu", "mlp_bias": False, "use_sliding_window": False,
                      "attention_dropout": lambda p: True,  # training only
                      "partial_rotary_factor": 1.0}, name)
    if (hf.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0) != 1.0:
        raise InteropError(f"{name}: partial_rotary_factor != 1 is not a {name} feature that "
                           "seqlab maps; see docs/interop.md.")
    return ModelConfig(
        mixer="mha", d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        mixer_args=_mixer_args(hf), norm="rms", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        prenorm=True, ffn="glu", ffn_hidden=hf["intermediate_size"], bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _t(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> nnx kernel [in, out] (and back)."""
    return np.asarray(w).T


def to_seqlab(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers names -> seqlab variable names (docs/interop.md, Llama / Qwen2)."""
    cfg = model_config(hf)
    out = decoder_ends(tensors, cfg.tie_embeddings)
    args = cfg.mixer_args
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"backbone.blocks.{i}."
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"),
                             ("wo", "o_proj")):
            out[f"{dst}mixer.{ours}.kernel"] = _t(tensors[f"{src}self_attn.{theirs}.weight"])
            if args["qkv_bias"] and ours != "wo" or args["out_bias"] and ours == "wo":
                out[f"{dst}mixer.{ours}.bias"] = tensors[f"{src}self_attn.{theirs}.bias"]
        out[f"{dst}norm.norm.scale"] = tensors[f"{src}input_layernorm.weight"]
        out[f"{dst}ffn_norm.norm.scale"] = tensors[f"{src}post_attention_layernorm.weight"]
        out |= swiglu_to_seqlab(tensors, f"{src}mlp.", f"{dst}ffn.")
    return out


def transformers_config(cfg: ModelConfig, vocab_size: int) -> dict:
    """config.json of the Llama (or, with q/k/v biases only, Qwen2) model equal to ``cfg``;
    InteropError naming what does not fit."""
    problems = []
    if cfg.pattern or cfg.mixer != "mha":
        problems.append(f"every layer must be 'mha' (got {cfg.pattern or cfg.mixer})")
    args = dict(cfg.mixer_args) if not cfg.pattern else {}
    if cfg.norm != "rms" or not cfg.prenorm:
        problems.append(f"norm must be pre-norm 'rms' (got {cfg.norm}, prenorm={cfg.prenorm})")
    if cfg.ffn != "glu" or cfg.bias:
        problems.append(f"ffn must be 'glu' without biases (got {cfg.ffn}, bias={cfg.bias})")
    if not args.get("causal", True) or args.get("rope_layout", "rotate_half") != "rotate_half":
        problems.append("attention must be causal with rope_layout 'rotate_half'")
    if args.get("rope_dim") not in (None, args.get("head_dim", cfg.d_model // args.get(
            "n_heads", 4))):
        problems.append("RoPE must cover the whole head (rope_dim None)")
    if args.get("out_bias") and not args.get("qkv_bias"):
        problems.append("an output bias needs q/k/v biases too (Llama's attention_bias)")
    if cfg.dropout:
        problems.append("dropout must be 0")
    if problems:
        raise InteropError("the model is not a Llama: " + "; ".join(problems) + ".")
    n_heads = args.get("n_heads", 4)
    qwen2 = bool(args.get("qkv_bias")) and not args.get("out_bias")
    hf = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden or cfg.ffn_expand * cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": args.get("n_kv_heads") or n_heads,
        "head_dim": args.get("head_dim") or cfg.d_model // n_heads,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps or 1e-6,
        "rope_parameters": {"rope_theta": args.get("rope_base", 10000.0),
                            **(dict(args.get("rope_scaling") or {}) or {"rope_type": "default"})},
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": 2**17,
        "dtype": "float32",
    }
    if not qwen2:
        hf["attention_bias"] = bool(args.get("qkv_bias"))
    return hf


def to_transformers(cfg: ModelConfig, arrays: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """seqlab variable names -> transformers names (the inverse of ``to_seqlab``)."""
    out = decoder_ends_to_transformers(arrays, cfg.tie_embeddings)
    for i in range(cfg.n_layers):
        src, dst = f"backbone.blocks.{i}.", f"model.layers.{i}."
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"),
                             ("wo", "o_proj")):
            out[f"{dst}self_attn.{theirs}.weight"] = _t(arrays[f"{src}mixer.{ours}.kernel"])
            if f"{src}mixer.{ours}.bias" in arrays:
                out[f"{dst}self_attn.{theirs}.bias"] = arrays[f"{src}mixer.{ours}.bias"]
        out[f"{dst}input_layernorm.weight"] = arrays[f"{src}norm.norm.scale"]
        out[f"{dst}post_attention_layernorm.weight"] = arrays[f"{src}ffn_norm.norm.scale"]
        out |= swiglu_to_transformers(arrays, f"{src}ffn.", f"{dst}mlp.")
    return out
