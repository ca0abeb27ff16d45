"""Hugging Face transformers checkpoints: load them as seqlab models, and write seqlab models
as transformers folders (docs/interop.md).

A transformers folder is what ``save_pretrained`` writes: ``config.json`` (its ``model_type``
names the family) and ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Reading needs neither torch nor transformers: the config is
JSON and the tensors are memory-mapped (``seqlab.interop.safetensors_io``).

Each family is a module of ``seqlab.interop`` (``FAMILIES``: model_type -> module) with

    MODEL_TYPES: tuple[str, ...]
    model_config(hf: dict) -> ModelConfig          # InteropError for what seqlab lacks
    to_seqlab(hf, tensors) -> {seqlab variable name: array}
    transformers_config(cfg: ModelConfig, vocab_size) -> dict   # export, where supported
    to_transformers(cfg, arrays) -> {transformers name: array}

The model is built from the ``ModelConfig`` by ``seqlab.build_model`` (so it is an ordinary
seqlab model made of seqlab modules, and ``seqlab convert`` can write it as a seqlab export),
shapes only (``nnx.eval_shape``), then its variables are set from the checkpoint: nothing is
initialised randomly first.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from seqlab.config import Config, ModelConfig, TaskInfo
from seqlab.interop.safetensors_io import CheckpointTensors

FAMILIES = {
    "llama": "seqlab.interop.llama",
    "qwen2": "seqlab.interop.llama",
    "mamba2": "seqlab.interop.mamba2",
    "deepseek_v3": "seqlab.interop.deepseek",
    "deepseek_v2": "seqlab.interop.deepseek",
    "qwen3_next": "seqlab.interop.qwen3_next",
}
CONFIG = "config.json"
# transformers buffers and bookkeeping stored in some checkpoints; they are not parameters
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
# transformers >= 5 writes the floats JSON lacks as {"__float__": "Infinity"}
# (PreTrainedConfig._encode_special_floats); read_config turns them back into floats
SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _special_float(obj: dict):
    if set(obj) == {"__float__"} and obj["__float__"] in SPECIAL_FLOATS:
        return SPECIAL_FLOATS[obj["__float__"]]
    return obj


class InteropError(ValueError):
    """A transformers checkpoint or config that seqlab cannot represent exactly, or a seqlab
    model that a transformers family cannot hold."""


def is_transformers_folder(path: str | epath.PathLike) -> bool:
    """Whether ``path`` looks like a ``save_pretrained`` folder (config.json with a
    model_type, and not a seqlab export or workdir)."""
    path = epath.Path(path)
    if not (path / CONFIG).is_file() or (path / "config.yaml").exists():
        return False
    try:
        return "model_type" in json.loads((path / CONFIG).read_text())
    except ValueError:
        return False


def read_config(folder: str | epath.PathLike) -> dict:
    """The folder's config.json as a dict."""
    path = epath.Path(folder) / CONFIG
    try:
        hf = json.loads(path.read_text(), object_hook=_special_float)
    except ValueError as e:
        raise InteropError(f"{path} is not valid JSON ({e}); the checkpoint is damaged.") from None
    if "model_type" not in hf:
        raise InteropError(f"{path} has no 'model_type', so its family is unknown; it is not "
                           "a transformers model config.")
    return hf


def family(model_type: str) -> ModuleType:
    """The module implementing ``model_type`` (InteropError when seqlab has none)."""
    if model_type not in FAMILIES:
        raise InteropError(
            f"transformers model_type {model_type!r} is not supported by seqlab; supported: "
            f"{', '.join(sorted(FAMILIES))} (docs/interop.md)."
        )
    return importlib.import_module(FAMILIES[model_type])


def task_info(hf: dict) -> TaskInfo:
    """The language-modelling task of a transformers causal LM config."""
    vocab = hf["vocab_size"]
    return TaskInfo(task="token", n_classes=vocab, vocab_size=vocab, input_dim=None,
                    max_length=int(hf.get("max_position_embeddings") or 2**20), causal=True)


def check_fields(hf: dict, supported: Mapping[str, Any], family_name: str) -> None:
    """InteropError for a config field whose value is not the one seqlab implements:
    ``supported`` maps a field to its one supported value, or to a callable that says whether
    a value is supported. A field absent from ``hf`` passes."""
    for key, ok in supported.items():
        if key not in hf:
            continue
        value = hf[key]
        good = ok(value) if callable(ok) else value == ok
        if not good:
            want = "a supported value" if callable(ok) else repr(ok)
            raise InteropError(
                f"{family_name} config field {key!r} = {value!r} is not implemented in seqlab "
                f"(it implements {want}); a model built without it would compute something "
                f"else than the checkpoint. See docs/interop.md for what each family supports."
            )


def decoder_ends(tensors: Mapping[str, np.ndarray], tie_embeddings: bool
                 ) -> dict[str, np.ndarray]:
    """The parts every transformers decoder LM names alike: the token embedding, the final
    norm and the output layer (``lm_head.weight`` [V, d] -> ``head.kernel`` [d, V]; none when
    tied, where a stored copy must equal the embedding)."""
    out = {"embed.embedding": tensors["model.embed_tokens.weight"],
           "backbone.final_norm.norm.scale": tensors["model.norm.weight"]}
    if not tie_embeddings:
        out["head.kernel"] = np.asarray(tensors["lm_head.weight"]).T
    elif "lm_head.weight" in tensors and not np.array_equal(tensors["lm_head.weight"],
                                                            out["embed.embedding"]):
        raise InteropError("tie_word_embeddings is true but lm_head.weight differs from the "
                           "embedding; the config and the weights disagree.")
    return out


def swiglu_to_seqlab(tensors: Mapping[str, np.ndarray], src: str, dst: str
                     ) -> dict[str, np.ndarray]:
    """A transformers SwiGLU MLP under ``src`` (``gate_proj``, ``up_proj``, ``down_proj``,
    torch [out, in]) -> seqlab ``FFN("glu")`` names under ``dst``: ``w_in.kernel`` =
    [gate^T | up^T] [d, 2h], ``w_out.kernel`` = down^T."""
    return {f"{dst}w_in.kernel": np.concatenate(
                [np.asarray(tensors[f"{src}gate_proj.weight"]).T,
                 np.asarray(tensors[f"{src}up_proj.weight"]).T], axis=1),
            f"{dst}w_out.kernel": np.asarray(tensors[f"{src}down_proj.weight"]).T}


def decoder_ends_to_transformers(arrays: Mapping[str, np.ndarray], tie_embeddings: bool
                                 ) -> dict[str, np.ndarray]:
    """The inverse of :func:`decoder_ends`: embedding, final norm, output layer (none when
    tied)."""
    out = {"model.embed_tokens.weight": arrays["embed.embedding"],
           "model.norm.weight": arrays["backbone.final_norm.norm.scale"]}
    if not tie_embeddings:
        out["lm_head.weight"] = np.asarray(arrays["head.kernel"]).T
    return out


def swiglu_to_transformers(arrays: Mapping[str, np.ndarray], src: str, dst: str
                           ) -> dict[str, np.ndarray]:
    """The inverse of :func:`swiglu_to_seqlab`: seqlab ``FFN("glu")`` under ``src`` ->
    ``gate_proj`` / ``up_proj`` / ``down_proj`` (torch [out, in]) under ``dst``."""
    gate, up = np.split(np.asarray(arrays[f"{src}w_in.kernel"]), 2, axis=1)
    return {f"{dst}gate_proj.weight": gate.T, f"{dst}up_proj.weight": up.T,
            f"{dst}down_proj.weight": np.asarray(arrays[f"{src}w_out.kernel"]).T}


def experts_to_seqlab(tensors: Mapping[str, np.ndarray], src: str, n_experts: int
                      ) -> dict[str, np.ndarray]:
    """A transformers routed-experts MLP under ``src`` ("model.layers.3.mlp.") -> the
    ``MoE`` router and expert weights (``router.kernel`` [d, E], ``w_in`` [E, d, 2 hidden] =
    [gate | up], ``w_out`` [E, hidden, d]). The router is ``gate.weight`` [E, d]; the experts
    either fused as transformers >= 5 writes them (``experts.gate_up_proj`` [E, 2 hidden, d],
    ``experts.down_proj`` [E, d, hidden]) or one module per expert
    (``experts.{e}.gate_proj.weight``, ... as the published DeepSeek and Qwen checkpoints)."""
    out = {"router.kernel": np.asarray(tensors[f"{src}gate.weight"]).T}
    if f"{src}experts.gate_up_proj" in tensors:
        out["w_in"] = np.asarray(tensors[f"{src}experts.gate_up_proj"]).transpose(0, 2, 1)
        out["w_out"] = np.asarray(tensors[f"{src}experts.down_proj"]).transpose(0, 2, 1)
        return out
    name = f"{src}experts.{{}}.{{}}_proj.weight".format
    out["w_in"] = np.stack([np.concatenate([np.asarray(tensors[name(e, "gate")]).T,
                                            np.asarray(tensors[name(e, "up")]).T], axis=1)
                            for e in range(n_experts)])
    out["w_out"] = np.stack([np.asarray(tensors[name(e, "down")]).T for e in range(n_experts)])
    return out


def experts_to_transformers(moe: Mapping[str, np.ndarray], dst: str) -> dict[str, np.ndarray]:
    """The inverse of :func:`experts_to_seqlab`, one module per expert: the layout of the
    published checkpoints, and the one transformers 5.25's ``save_pretrained`` writes."""
    out = {f"{dst}gate.weight": np.asarray(moe["router.kernel"]).T}
    for e, (w_in, w_out) in enumerate(zip(moe["w_in"], moe["w_out"], strict=True)):
        gate, up = np.split(np.asarray(w_in), 2, axis=1)
        out |= {f"{dst}experts.{e}.gate_proj.weight": gate.T,
                f"{dst}experts.{e}.up_proj.weight": up.T,
                f"{dst}experts.{e}.down_proj.weight": np.asarray(w_out).T}
    return out


def _fill(model: nnx.Module, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Set the variables of an abstract model (``nnx.eval_shape``) from ``arrays``; RNG
    streams get fixed keys (a loaded model is used in eval mode)."""
    flat = nnx.to_flat_state(nnx.state(model))
    new, names = [], set()
    for path, var in flat:
        name = ".".join(map(str, path))
        shape = var.get_value().shape
        if isinstance(var, nnx.RngKey):
            new.append((path, var.replace(jax.random.key(0))))
            continue
        if isinstance(var, nnx.RngCount):
            new.append((path, var.replace(jnp.zeros(shape, jnp.uint32))))
            continue
        names.add(name)
        if name not in arrays:
            raise InteropError(f"{source}: the checkpoint gives no value for seqlab's {name}.")
        value = arrays[name]
        if tuple(value.shape) != tuple(shape):
            raise InteropError(f"{source}: {name} has shape {tuple(value.shape)} in the "
                               f"checkpoint, {tuple(shape)} in the model built from its config; "
                               "config.json and the weights disagree.")
        new.append((path, var.replace(jnp.asarray(value, copy=False))))
    extra = sorted(set(arrays) - names)
    if extra:  # a family mapping that produced names the model does not have: a bug
        raise RuntimeError(f"{source}: mapped names not in the model: {extra[:5]}")
    nnx.update(model, nnx.from_flat_state(new))


def load_transformers(folder: str | epath.PathLike, *, dtype: str | None = None
                      ) -> tuple[nnx.Module, Config]:
    """The seqlab ``LanguageModel`` of a transformers folder, in eval mode, and its config.

    dtype: None or "float32" casts the weights to float32 (seqlab's parameter dtype; compute
    in float32); "bfloat16" keeps them in bfloat16 (half the memory) and computes in bfloat16.
    """
    folder = epath.Path(folder)
    if dtype not in (None, *DTYPES):
        raise InteropError(f"dtype must be one of {list(DTYPES)} (or None), got {dtype!r}.")
    hf = read_config(folder)
    fam = family(hf["model_type"])
    mcfg = fam.model_config(hf)
    if dtype == "bfloat16":
        mcfg = dataclasses.replace(mcfg, dtype="bfloat16")
    info = task_info(hf)
    tensors = CheckpointTensors(folder)
    arrays = fam.to_seqlab(hf, tensors)
    unused = sorted(n for n in set(tensors) - tensors.used
                    if not n.endswith(IGNORED_SUFFIXES))
    if unused:
        raise InteropError(
            f"{folder}: {len(unused)} checkpoint tensors have no place in seqlab's "
            f"{hf['model_type']} model ({unused[:4]}...): the checkpoint has parts seqlab does "
            f"not implement (see docs/interop.md), so the model would not compute what it "
            f"computes."
        )
    cast = DTYPES[dtype or "float32"]
    arrays = {k: np.asarray(v).astype(cast, copy=False) for k, v in arrays.items()}

    from seqlab.models import build_model

    model = nnx.eval_shape(lambda: build_model(mcfg, info, rngs=nnx.Rngs(0)))
    _fill(model, arrays, str(folder))
    model.eval()
    return model, Config(model=mcfg)


def _export_family(cfg: ModelConfig, vocab_size: int) -> tuple[str, dict]:
    """The first family that can hold ``cfg`` and its config.json; InteropError naming why
    each family cannot, otherwise."""
    reasons = []
    for model_type, module in FAMILIES.items():
        fam = importlib.import_module(module)
        if not hasattr(fam, "transformers_config") or model_type != fam.MODEL_TYPES[0]:
            continue
        try:
            return model_type, fam.transformers_config(cfg, vocab_size)
        except InteropError as e:
            reasons.append(f"{model_type}: {e}")
    raise InteropError("this model fits no transformers family seqlab writes. "
                       + " ".join(reasons))


def save_transformers(model: nnx.Module, cfg: Config | ModelConfig,
                      out: str | epath.PathLike) -> epath.Path:
    """Write ``model`` (a seqlab ``LanguageModel`` built from ``cfg``) as a transformers
    folder (config.json + model.safetensors, float32) that ``AutoModelForCausalLM.
    from_pretrained(out)`` opens; returns ``out``. Nothing is overwritten."""
    from safetensors.numpy import save_file

    from seqlab.models import LanguageModel
    from seqlab.saving import flat_variables

    mcfg = cfg.model if isinstance(cfg, Config) else cfg
    out = epath.Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; export into a new directory.")
    if not isinstance(model, LanguageModel) or not model.causal:
        raise InteropError("only causal language models (seqlab LanguageModel) can be written "
                           f"as transformers checkpoints, got {type(model).__name__}.")
    vocab = model.embed.num_embeddings
    model_type, hf = _export_family(mcfg, vocab)
    arrays = flat_variables(model)
    tensors = family(model_type).to_transformers(mcfg, arrays)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
