"""The config path: ``build_model(cfg, info, rngs=...)`` builds the modules of
``seqlab.models.blocks`` and ``seqlab.models.tasks`` from a ``ModelConfig``, finding mixers by
their registered name (``seqlab.layers.MIXERS``).

It is exactly the module path written out: for the same ``rngs`` it draws the same parameters
as this code (tests/models/test_compose.py checks it)::

    embed = nnx.Embed(vocab_size, d, rngs=rngs)         # nnx.Linear(input_dim, d) for features
    blocks = [Block(build_mixer(name, d, args, rngs=rngs), d, norm=..., ffn=..., rngs=rngs)
              for name, args in layers]
    backbone = Backbone(blocks, final_norm=Norm(norm, d, rngs=rngs) if prenorm else None)
    model = Classifier(embed, backbone, nnx.Linear(d, n_classes, rngs=rngs), pool=..., rngs=rngs)
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
from flax import nnx

from seqlab.config import ModelConfig, TaskInfo
from seqlab.layers import MIXERS, check_renamed
from seqlab.models.blocks import Backbone, Block, ModelBuildError, Norm
from seqlab.models.tasks import POOLS, Classifier, DualEncoder, LanguageModel, MLPHead
from seqlab.utils import did_you_mean

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_NOT_ARGS = ("rngs", "dtype")  # passed by the builder; d_model is the first positional one


def get_mixer(name: str) -> type[nnx.Module]:
    """The mixer class registered as ``name``."""
    if name not in MIXERS:
        raise ModelBuildError(
            f"unknown mixer {name!r}.{did_you_mean(name, MIXERS)} "
            f"Registered mixers: {', '.join(sorted(MIXERS))}. A mixer of your own is "
            f"registered with @seqlab.layers.register_mixer and imported with "
            f"seqlab train --import MODULE (or imports: [MODULE] in the config)."
        )
    return MIXERS[name]


def _named_params(init) -> list[inspect.Parameter]:
    """Parameters of ``init`` that a config can set: not self, not the first positional one
    (d_model, whatever its name), not rngs / dtype, not ``*args`` / ``**options``."""
    params = list(inspect.signature(init).parameters.values())[1:]  # drop self
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    return [p for p in params if p.name not in _NOT_ARGS
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _takes(cls: type, name: str) -> bool:
    """Whether ``cls.__init__`` has a parameter ``name`` or takes ``**options``."""
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def accepted_args(cls: type) -> list[str]:
    """Keyword arguments of a mixer class, following ``**options`` up its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or init is object.__init__:
            continue
        names += [p.name for p in _named_params(init) if p.name not in names]
    return names


def check_mixer_args(name: str, args: dict) -> None:
    """Raise a clear error for a keyword the mixer class ``name`` does not accept (naming the
    new name of a renamed argument the class does not take itself)."""
    cls = get_mixer(name)
    accepted = accepted_args(cls)
    check_renamed(f"mixer {name!r}", [k for k in args if k not in accepted])
    if any(p.kind is inspect.Parameter.VAR_KEYWORD
           for p in inspect.signature(cls.__init__).parameters.values()):
        return
    valid = [p.name for p in _named_params(cls.__init__)]
    for key in args:
        if key not in valid:
            raise ModelBuildError(
                f"mixer {name!r} has no argument {key!r}.{did_you_mean(key, valid)} "
                f"Valid arguments: {', '.join(valid)}."
            )


def build_mixer(name: str, d_model: int, args: dict | None = None, *, dtype=jnp.float32,
                rngs: nnx.Rngs) -> nnx.Module:
    """The registered mixer ``name`` built as ``Cls(d_model, rngs=rngs, dtype=dtype, **args)``
    (``dtype`` left out for a class without that argument when it is float32)."""
    args = dict(args or {})
    check_mixer_args(name, args)
    cls = get_mixer(name)
    if _takes(cls, "dtype"):
        args["dtype"] = dtype
    elif dtype != jnp.float32:
        raise ModelBuildError(
            f"mixer {name!r} takes no dtype argument, so it cannot compute in "
            f"{jnp.dtype(dtype).name}; add dtype=jnp.float32 to its __init__ or use "
            f"model.dtype float32."
        )
    try:
        return cls(d_model, rngs=rngs, **args)
    except TypeError as e:  # an unknown keyword reaching a class that takes **options
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelBuildError(
            f"mixer {name!r}: {e}. Valid arguments: {', '.join(accepted_args(cls))}."
        ) from None


def layer_mixers(mixer: str, n_layers: int, pattern: tuple[str, ...] | None) -> list[str]:
    """The mixer name of each layer: ``mixer`` n times, or ``pattern`` repeated to n layers."""
    if pattern:
        return [pattern[i % len(pattern)] for i in range(n_layers)]
    return [mixer] * n_layers


def mixer_args_for(name: str, mixer_args: dict, pattern: tuple[str, ...] | None) -> dict:
    """With a pattern, ``mixer_args`` maps mixer name -> kwargs; otherwise it is the kwargs."""
    if not pattern:
        return dict(mixer_args)
    unknown = set(mixer_args) - set(pattern)
    if unknown:
        raise ModelBuildError(
            f"with model.pattern, model.mixer_args maps mixer names of the pattern to their "
            f"arguments; {sorted(unknown)} are not in the pattern {list(pattern)}."
        )
    return dict(mixer_args.get(name) or {})


def build_embedding(info: TaskInfo, d_model: int, *, dtype=jnp.float32,
                    rngs: nnx.Rngs) -> nnx.Module:
    """nnx.Embed for token inputs, nnx.Linear for feature inputs [..., input_dim]."""
    if info.vocab_size is not None:
        return nnx.Embed(info.vocab_size, d_model, dtype=dtype, rngs=rngs)
    if info.input_dim is not None:
        return nnx.Linear(info.input_dim, d_model, dtype=dtype, rngs=rngs)
    raise ModelBuildError("TaskInfo has neither vocab_size nor input_dim.")


def build_backbone(cfg: ModelConfig, *, rngs: nnx.Rngs) -> Backbone:
    """``cfg.n_layers`` blocks of ``cfg.mixer`` (or of ``cfg.pattern``), final norm if pre-norm."""
    dtype, d = DTYPES[cfg.dtype], cfg.d_model
    names = layer_mixers(cfg.mixer, cfg.n_layers, cfg.pattern)
    args = [mixer_args_for(m, cfg.mixer_args, cfg.pattern) for m in names]
    blocks = [
        Block(build_mixer(m, d, a, dtype=dtype, rngs=rngs), d, norm=cfg.norm,
              prenorm=cfg.prenorm, dropout=cfg.dropout, ffn=cfg.ffn, ffn_expand=cfg.ffn_expand,
              ffn_hidden=cfg.ffn_hidden, bias=cfg.bias, norm_eps=cfg.norm_eps,
              moe=cfg.moe if i >= cfg.moe_first_layer else None, dtype=dtype, rngs=rngs)
        for i, (m, a) in enumerate(zip(names, args, strict=True))
    ]
    final_norm = Norm(cfg.norm, d, eps=cfg.norm_eps, rngs=rngs) if cfg.prenorm else None
    return Backbone(blocks, final_norm=final_norm)


def build_model(cfg: ModelConfig, info: TaskInfo, *,
                rngs: nnx.Rngs) -> Classifier | DualEncoder | LanguageModel:
    """The model of ``cfg`` for the task ``info``: a ``LanguageModel`` for token tasks, a
    ``DualEncoder`` for retrieval, a ``Classifier`` otherwise."""
    if cfg.pool not in POOLS:
        raise ModelBuildError(f"unknown pool {cfg.pool!r}; valid: {', '.join(POOLS)}.")
    dtype, d = DTYPES[cfg.dtype], cfg.d_model
    if cfg.tie_embeddings and (info.task != "token" or info.vocab_size != info.n_classes):
        raise ModelBuildError(
            "model.tie_embeddings uses the token embedding as the output layer, so it needs a "
            "token task whose classes are its input tokens (language modelling); set it to "
            "false for this task."
        )
    embed = build_embedding(info, d, dtype=dtype, rngs=rngs)
    backbone = build_backbone(cfg, rngs=rngs)
    if info.task == "token":
        head = None if cfg.tie_embeddings else nnx.Linear(
            d, info.n_classes, use_bias=cfg.bias, dtype=dtype, rngs=rngs)
        return LanguageModel(embed, backbone, head, causal=info.causal)
    if info.task == "retrieval":
        head = MLPHead(4 * d, d, info.n_classes, dtype=dtype, rngs=rngs)
        return DualEncoder(embed, backbone, head, pool=cfg.pool, rngs=rngs)
    head = nnx.Linear(d, info.n_classes, use_bias=cfg.bias, dtype=dtype, rngs=rngs)
    return Classifier(embed, backbone, head, pool=cfg.pool, rngs=rngs)
