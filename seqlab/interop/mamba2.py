"""The Mamba-2 family (transformers ``Mamba2ForCausalLM``, model_type "mamba2").

A stack of pre-norm residual blocks ``x + Mamba2Mixer(RMSNorm(x))`` without an FFN, a final
RMSNorm ``norm_f`` and an output layer (tied to the embedding or not); transformers'
``modeling_mamba2.py`` (``Mamba2Block.forward``, ``Mamba2Model.forward``). In seqlab: mixer
``mamba2`` (``seqlab.layers.hydra.Mamba2`` with ``use_bias``, ``conv_bias``, ``norm_eps``,
``dt_limit``), norm ``rms``, ffn ``none``, no head bias. The name table is in
docs/interop.md (Mamba-2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from seqlab.config import ModelConfig
from seqlab.interop.hf import InteropError, check_fields

MODEL_TYPES = ("mamba2",)

# transformers' Mamba2Config defaults (configuration_mamba2.py, the dataclass fields), used for
# fields a config.json leaves out
DEFAULTS = {
    "num_heads": 128, "head_dim": 64, "state_size": 128, "layer_norm_epsilon": 1e-5,
    "expand": 2, "conv_kernel": 4, "n_groups": 8, "use_bias": False, "use_conv_bias": True,
    "hidden_act": "silu", "time_step_min": 1e-3, "time_step_max": 0.1, "time_step_floor": 1e-4,
    "time_step_limit": (0.0, math.inf), "chunk_size": 256, "tie_word_embeddings": False,
}


def _encode(v: float):
    """transformers' JSON form of infinity (``hf.SPECIAL_FLOATS``), for config.json."""
    return {"__float__": "Infinity"} if v == math.inf else v


def _get(hf: dict, key: str):
    return hf.get(key, DEFAULTS[key])


def _limit_ok(v) -> bool:
    return (isinstance(v, list | tuple) and len(v) == 2
            and all(isinstance(t, int | float) for t in v) and 0 <= v[0] < v[1])


def model_config(hf: dict) -> ModelConfig:
    """The seqlab ModelConfig of a Mamba-2 config.json; InteropError for what seqlab lacks."""
    check_fields(hf, {
        "hidden_act": "silu",  # the activation after the convolution
        "time_step_limit": _limit_ok,
        "expand": lambda e: float(e).is_integer() and e >= 1,
        # init or bookkeeping only: they do not change what a loaded model computes
        "residual_in_fp32": lambda v: True,  # float32 throughout in a float32 load
        "rescale_prenorm_residual": lambda v: True, "time_step_rank": lambda v: True,
        "initializer_range": lambda v: True,
    }, "mamba2")
    d_model, expand = hf["hidden_size"], int(_get(hf, "expand"))
    heads, head_dim, groups = _get(hf, "num_heads"), _get(hf, "head_dim"), _get(hf, "n_groups")
    if heads * head_dim != expand * d_model:
        raise InteropError(
            f"mamba2 config: num_heads * head_dim = {heads} * {head_dim} differs from expand * "
            f"hidden_size = {expand} * {d_model}; transformers' Mamba2Mixer needs them equal "
            "(its in_proj would not split). The config.json is inconsistent.")
    if heads % groups:
        raise InteropError(f"mamba2 config: n_groups = {groups} does not divide num_heads = "
                           f"{heads}; neither transformers nor seqlab can share B and C so.")
    eps = float(_get(hf, "layer_norm_epsilon"))
    args = {
        "d_state": _get(hf, "state_size"), "expand": expand, "head_dim": head_dim,
        "n_groups": groups, "d_conv": _get(hf, "conv_kernel"),
        "chunk_size": _get(hf, "chunk_size"), "use_bias": bool(_get(hf, "use_bias")),
        "conv_bias": bool(_get(hf, "use_conv_bias")), "norm_eps": eps,
        "dt_min": float(_get(hf, "time_step_min")), "dt_max": float(_get(hf, "time_step_max")),
        "dt_init_floor": float(_get(hf, "time_step_floor")),
    }
    limit = tuple(float(t) for t in _get(hf, "time_step_limit"))
    if limit != (0.0, math.inf):
        args["dt_limit"] = list(limit)  # a list, as a config file gives it back
    return ModelConfig(
        mixer="mamba2", d_model=d_model, n_layers=hf["num_hidden_layers"], mixer_args=args,
        norm="rms", norm_eps=eps, prenorm=True, ffn="none", bias=False,
        tie_embeddings=bool(_get(hf, "tie_word_embeddings")),
    )


def _t(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> nnx kernel [in, out] (and back)."""
    return np.asarray(w).T


def to_seqlab(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers names -> seqlab variable names (docs/interop.md (Mamba-2))."""
    cfg = model_config(hf)
    args = cfg.mixer_args
    # mamba_ssm's original checkpoints name the embedding "embedding" (transformers renames it
    # on load, Mamba2Model.load_hook)
    embed = next((n for n in ("backbone.embeddings.weight", "backbone.embedding.weight")
                  if n in tensors), "backbone.embeddings.weight")
    out = {"embed.embedding": tensors[embed],
           "backbone.final_norm.norm.scale": tensors["backbone.norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["head.kernel"] = _t(tensors["lm_head.weight"])
    elif "lm_head.weight" in tensors:  # some writers store the tied copy
        if not np.array_equal(tensors["lm_head.weight"], out["embed.embedding"]):
            raise InteropError("mamba2: tie_word_embeddings is true but lm_head.weight differs "
                               "from the embedding; the config and the weights disagree.")
    for i in range(cfg.n_layers):
        src, dst = f"backbone.layers.{i}.", f"backbone.blocks.{i}."
        out[f"{dst}norm.norm.scale"] = tensors[f"{src}norm.weight"]
        for name, value in mixer_to_seqlab(args, tensors, f"{src}mixer.").items():
            out[f"{dst}mixer.{name}"] = value
    return out


def mixer_to_seqlab(args: Mapping, tensors: Mapping[str, np.ndarray], prefix: str
                    ) -> dict[str, np.ndarray]:
    """One ``Mamba2Mixer``'s tensors (names under ``prefix``) -> the variables of seqlab's
    ``Mamba2`` built with mixer_args ``args`` (names relative to the mixer)."""
    out = {}
    for name in ("in_proj", "out_proj"):
        out[f"{name}.kernel"] = _t(tensors[f"{prefix}{name}.weight"])
        if args["use_bias"]:
            out[f"{name}.bias"] = tensors[f"{prefix}{name}.bias"]
    conv = np.asarray(tensors[f"{prefix}conv1d.weight"])  # [channels, 1, kernel]
    if conv.ndim != 3 or conv.shape[1] != 1:
        raise InteropError(f"mamba2: {prefix}conv1d.weight has shape {conv.shape}, not the "
                           "depthwise [channels, 1, kernel] of Mamba2Mixer.")
    out["conv.weight"] = conv[:, 0, :].T  # seqlab's ShortConv taps: [kernel, channels]
    if args["conv_bias"]:
        out["conv.bias"] = tensors[f"{prefix}conv1d.bias"]
    for name in ("A_log", "D", "dt_bias", "norm.weight"):
        out[name] = tensors[f"{prefix}{name}"]
    return out


def _mixer(cfg: ModelConfig):
    """The seqlab Mamba2 mixer of ``cfg`` (shapes only): its resolved options."""
    from flax import nnx

    from seqlab.layers.hydra import Mamba2

    return nnx.eval_shape(lambda: Mamba2(cfg.d_model, rngs=nnx.Rngs(0), **cfg.mixer_args))


def transformers_config(cfg: ModelConfig, vocab_size: int) -> dict:
    """config.json of the transformers Mamba2ForCausalLM equal to ``cfg``; InteropError
    naming what does not fit."""
    problems = []
    if cfg.pattern or cfg.mixer != "mamba2":
        problems.append(f"every layer must be 'mamba2' (got {cfg.pattern or cfg.mixer})")
    if cfg.norm != "rms" or not cfg.prenorm:
        problems.append(f"norm must be pre-norm 'rms' (got {cfg.norm}, prenorm={cfg.prenorm})")
    if cfg.ffn != "none":
        problems.append(f"ffn must be 'none' (Mamba2Block has no FFN; got {cfg.ffn!r})")
    if cfg.bias:
        problems.append("the output layer must have no bias (bias=False)")
    if cfg.dropout:
        problems.append("dropout must be 0")
    if problems:
        raise InteropError("the model is not a transformers Mamba-2: " + "; ".join(problems)
                           + ".")
    m = _mixer(cfg)
    eps = 1e-6 if cfg.norm_eps is None else cfg.norm_eps  # seqlab's rms default
    if m.norm.eps != eps:
        raise InteropError(
            f"the model is not a transformers Mamba-2: its block norms use eps = {eps} and the "
            f"mixers' gated norm eps = {m.norm.eps}, but Mamba2Config has one "
            f"layer_norm_epsilon for both; set model.norm_eps and mixer_args.norm_eps equal "
            f"(and retrain or accept the small change).")
    lo, hi = m.dt_limit
    return {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "state_size": m.d_state,
        "expand": m.d_inner // cfg.d_model, "num_heads": m.n_heads, "head_dim": m.head_dim,
        "n_groups": m.n_groups, "conv_kernel": m.conv.kernel_size,
        "chunk_size": m.chunk_size, "use_bias": m.in_proj.bias is not None,
        "use_conv_bias": m.conv.bias is not None, "layer_norm_epsilon": eps,
        "time_step_limit": [lo, _encode(hi)], "hidden_act": "silu", "residual_in_fp32": True,
        "time_step_min": cfg.mixer_args.get("dt_min", 1e-3),
        "time_step_max": cfg.mixer_args.get("dt_max", 0.1),
        "time_step_floor": cfg.mixer_args.get("dt_init_floor", 1e-4),
        "tie_word_embeddings": cfg.tie_embeddings, "dtype": "float32",
    }


def to_transformers(cfg: ModelConfig, arrays: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """seqlab variable names -> transformers names (the inverse of ``to_seqlab``)."""
    out = {"backbone.embeddings.weight": arrays["embed.embedding"],
           "backbone.norm_f.weight": arrays["backbone.final_norm.norm.scale"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _t(arrays["head.kernel"])
    for i in range(cfg.n_layers):
        src, dst = f"backbone.blocks.{i}.", f"backbone.layers.{i}."
        out[f"{dst}norm.weight"] = arrays[f"{src}norm.norm.scale"]
        mixer, m = f"{src}mixer.", f"{dst}mixer."
        for name in ("in_proj", "out_proj"):
            out[f"{m}{name}.weight"] = _t(arrays[f"{mixer}{name}.kernel"])
            if f"{mixer}{name}.bias" in arrays:
                out[f"{m}{name}.bias"] = arrays[f"{mixer}{name}.bias"]
        out[f"{m}conv1d.weight"] = np.asarray(arrays[f"{mixer}conv.weight"]).T[:, None, :]
        if f"{mixer}conv.bias" in arrays:
            out[f"{m}conv1d.bias"] = arrays[f"{mixer}conv.bias"]
        for name in ("A_log", "D", "dt_bias"):
            out[f"{m}{name}"] = arrays[f"{mixer}{name}"]
        out[f"{m}norm.weight"] = arrays[f"{mixer}norm.weight"]
    return out
