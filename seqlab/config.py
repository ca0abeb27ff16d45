"""Experiment configuration: frozen dataclasses loaded from YAML, with dotted overrides, and
``TaskInfo``, what a model needs to know about its task.

``load_config("demo", ["model.d_model=256", "train.lr=1e-3"])``. Unknown keys and wrong types
raise ``ConfigError`` naming the key, the closest valid key and the valid choices.

This module imports neither the models, the trainer nor the data sources: all three read it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from seqlab.utils import did_you_mean


class ConfigError(ValueError):
    """A user error in a config file or an override."""


# Ranges of the numeric fields, checked on construction (YAML and Python alike):
# (low, high, low_open, high_open); None = unbounded on that side. Optional fields may be None.
_RANGES: dict[str, dict[str, tuple]] = {
    "model": {"d_model": (1, 2**16, False, False), "n_layers": (1, 4096, False, False),
              "dropout": (0.0, 1.0, False, True), "ffn_expand": (1, 64, False, False),
              "ffn_hidden": (1, 2**20, False, False), "norm_eps": (0.0, 1.0, True, True),
              "moe_first_layer": (0, 4096, False, False)},
    "train": {"steps": (0, None, False, False), "batch_size": (1, None, False, False),
              "eval_batch_size": (1, None, False, False), "lr": (0.0, None, False, False),
              "ssm_lr": (0.0, None, False, False), "weight_decay": (0.0, None, False, False),
              "warmup_steps": (0, None, False, False), "end_lr_ratio": (0.0, 1.0, False, False),
              "b1": (0.0, 1.0, False, True), "b2": (0.0, 1.0, False, True),
              "eps": (0.0, None, True, False), "grad_clip": (0.0, None, False, False),
              "eval_every": (1, None, False, False), "checkpoint_every": (1, None, False, False),
              "keep_checkpoints": (1, None, False, False), "log_every": (1, None, False, False),
              "stop_after": (0, None, False, False)},
    "mesh": {"data": (1, None, False, False), "fsdp": (1, None, False, False)},
}


def _check_ranges(obj: Any, section: str) -> None:
    """Raise ConfigError for a numeric field outside its range (NaN and inf included)."""
    for key, (low, high, low_open, high_open) in _RANGES[section].items():
        value = getattr(obj, key)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        bad = value != value or value in (float("inf"), float("-inf"))
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and (value >= high if high_open else value > high))
        if bad:
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
            raise ConfigError(
                f"config key '{section}.{key}' must lie in {interval}, got {value!r}."
            )


Task = Literal["classify", "retrieval", "token"]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a model needs to know about a task to build its encoder and head.

    task: "classify" (one label per sequence), "retrieval" (one label per pair of sequences,
      LRA's dual encoder) or "token" (one label per position, -1 = no target; language
      modelling is a token task whose labels are the next tokens).
    n_classes: number of output classes (the vocabulary size for language modelling).
    vocab_size: inputs are integer tokens in [0, vocab_size); None when inputs are features.
    input_dim: channels of float feature inputs; None for token inputs.
    max_length: the longest sequence in the task.
    causal: True when the task must only see the past (language modelling).
    """

    task: Task
    n_classes: int
    vocab_size: int | None
    input_dim: int | None
    max_length: int
    causal: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: ``n_layers`` residual blocks of ``mixer`` (or of ``pattern`` repeated).

    mixer_args: keyword arguments of the mixer class; with ``pattern``, a mapping from each
      mixer name in the pattern to its keyword arguments.
    norm: "layer" | "rms" | "rms_offset" | "batch" (``rms_offset``: RMSNorm whose scale is
      stored as w with y = x / rms(x) * (1 + w), w initialised to 0, as Gemma and Qwen3-Next);
      norm_eps: its epsilon (None: 1e-6 for layer / rms / rms_offset, 1e-5 for batch).
      prenorm: normalise before (True) or after the residual add.
    ffn: channel mixer after the sequence mixer in each block: "none" | "mlp" | "glu";
      ffn_hidden: its hidden width (None: ffn_expand * d_model).
    moe: the routed mixture-of-experts FFN's arguments (``seqlab.models.moe.MoE``: n_experts,
      top_k, hidden, n_shared, scoring, ...) or None; layers ``moe_first_layer`` and later use
      it instead of ``ffn`` (DeepSeek's first_k_dense_replace).
    bias: biases in the blocks' FFN linear maps and the language-model / classifier head
      (pretrained transformers checkpoints have none).
    tie_embeddings: a language model's head is the token embedding transposed (no head
      parameters); token tasks only.
    pool: how classification heads reduce the sequence: "mean" | "last" | "cls".
    dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
    """

    mixer: str = "s4d"
    d_model: int = 128
    n_layers: int = 4
    mixer_args: dict = dataclasses.field(default_factory=dict)
    pattern: tuple[str, ...] | None = None
    norm: Literal["layer", "rms", "rms_offset", "batch"] = "layer"
    norm_eps: float | None = None
    prenorm: bool = True
    dropout: float = 0.0
    ffn: Literal["none", "mlp", "glu"] = "none"
    ffn_expand: int = 2
    ffn_hidden: int | None = None
    moe: dict | None = None
    moe_first_layer: int = 0
    bias: bool = True
    tie_embeddings: bool = False
    pool: Literal["mean", "last", "cls"] = "mean"
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _check_ranges(self, "model")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data source ``name`` (see ``seqlab.data.SOURCES``) and its options.

    sizes: examples per split, e.g. {train: 4000, val: 500}; passed as the source's ``size``.
    options: every other key under ``data:`` in YAML, passed to the source as keyword options.
    pad_to: per-batch padding of the loader: "pow2" | "max" | "none".
    """

    name: str = "listops"
    root: str | None = None
    sizes: dict = dataclasses.field(default_factory=dict)
    pad_to: Literal["pow2", "max", "none"] = "pow2"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainOnlyConfig:
    """For the first ``steps`` steps, update only the parameters with one of ``params`` among
    the parts of their path, module or attribute names (e.g. DSA's indexer, DeepSeek-V3.2's
    dense warm-up: ``[wq_idx, wk_idx, w_idx]``); the others are frozen: no update, no weight
    decay, their Adam moments and learning-rate schedule untouched until step ``steps``, where
    their schedule starts (warm-up included)."""

    steps: int = 0
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"config key 'train.train_only.steps' must be >= 0, got "
                              f"{self.steps}.")
        if self.steps and not self.params:
            raise ConfigError(
                "train.train_only.steps > 0 needs train.train_only.params: the names (parts of "
                "parameter paths) that train first, e.g. params: [wq_idx, wk_idx, w_idx]."
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the loop. ``stop_after`` ends this invocation after that step with the
    schedule unchanged (how tests and schedulers simulate preemption); re-running resumes.

    curriculum: a length curriculum for causal token tasks, ``[[length, steps], ...]``: the
    first ``steps`` steps train on the first ``length`` positions of every batch, the next
    stage's steps on its length, and so on; after the last stage, whole sequences. A prefix of a
    causal token task keeps its labels (a label at t depends on positions <= t only), so the
    stages need no other data. Stages past ``steps`` are not reached.

    train_only: a first phase that updates only some parameters (``TrainOnlyConfig``)."""

    steps: int = 1000
    batch_size: int = 32
    eval_batch_size: int | None = None
    lr: float = 1e-3
    ssm_lr: float | None = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 0
    end_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    stop_after: int | None = None
    progress: bool = True
    curriculum: tuple[tuple[int, ...], ...] = ()
    train_only: TrainOnlyConfig = dataclasses.field(default_factory=TrainOnlyConfig)

    def __post_init__(self) -> None:
        _check_ranges(self, "train")
        if isinstance(self.train_only, dict):  # from Python: train_only={"steps": ..., ...}
            object.__setattr__(self, "train_only", TrainOnlyConfig(**self.train_only))
        stages = tuple(tuple(stage) for stage in self.curriculum)  # lists from Python, too
        object.__setattr__(self, "curriculum", stages)
        for i, stage in enumerate(stages):
            if len(stage) != 2 or not all(isinstance(v, int) and v >= 1 for v in stage):
                raise ConfigError(
                    f"config key 'train.curriculum[{i}]' must be a pair [length, steps] of "
                    f"integers >= 1, got {list(stage)}; e.g. curriculum: [[8, 500], [16, 500]]."
                )

    def curriculum_length(self, step: int) -> int | None:
        """The prefix length that step ``step`` (0-based) trains on; None: whole sequences."""
        end = 0
        for length, steps in self.curriculum:
            end += steps
            if step < end:
                return length
        return None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh: ``data`` x ``fsdp`` devices; batches shard on data, parameters on fsdp.
    distributed: call ``jax.distributed.initialize()`` first (multi-host launches)."""

    data: int = 1
    fsdp: int = 1
    distributed: bool = False

    def __post_init__(self) -> None:
        _check_ranges(self, "mesh")


@dataclasses.dataclass(frozen=True)
class Config:
    """A run. imports: Python modules imported before the model is built (where mixers of
    your own register themselves with ``seqlab.layers.register_mixer``): dotted module names
    (the current directory is searched too) or paths to .py files."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    imports: tuple[str, ...] = ()


# Keys under ``data:`` that are DataConfig fields; every other key is a source option.
_DATA_FIELDS = ("name", "root", "sizes", "pad_to")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, list ->
    tuple). Raise ConfigError naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key {key!r} must be one of {_type_name(tp)}, got {value!r}.")
    elif origin is tuple:
        if isinstance(value, list | tuple):
            (inner, *_) = typing.get_args(tp)
            return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(
        f"config key {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})."
    )


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix!r} must be a mapping, got {raw!r}.")
    raw = dict(raw)
    if cls is DataConfig:
        options = {k: raw.pop(k) for k in list(raw) if k not in _DATA_FIELDS}
        options.update(raw.pop("options", None) or {})
        raw["options"] = options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(
                f"unknown config key {full!r}.{did_you_mean(key, fields)} "
                f"Valid keys of {prefix or 'the config'}: {', '.join(fields)}."
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full)
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def config_from_dict(raw: dict) -> Config:
    """Build and type-check a Config from nested dicts (as read from YAML)."""
    return _build(Config, raw, "")


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section.")
        node = node[k]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.d_model=256"`` -> ("model.d_model", 256); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like section.key=value, e.g. train.lr=1e-3."
        )
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot read the value as YAML ({e}).") from None


CONFIGS = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with seqlab (``demo``, ``lra/listops/s4d``, ...)."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def resolve_config(name: str | Path) -> Path:
    """A config file: ``name`` itself when it is a file, else the shipped config of that name
    (``lra/listops/s4d`` -> seqlab/configs/lra/listops/s4d.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIGS / path, CONFIGS / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file {str(name)!r} does not exist, and no shipped config has that name."
        f"{did_you_mean(str(name), packaged_configs())} Shipped configs: "
        f"{', '.join(c for c in packaged_configs() if '/' not in c)}, lra/<task>/<model>, ..."
    )


def import_modules(names: typing.Iterable[str]) -> None:
    """Import each module of ``names`` (a dotted name, searched from the current directory
    too, or a path to a .py file), so that the mixers it registers can be built."""
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise FileNotFoundError(name)
                loaded = sys.modules.get(path.stem)
                if loaded is not None and getattr(loaded, "__file__", None) == str(path):
                    continue  # imported before: its mixers are registered
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                if "" not in sys.path and os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                importlib.import_module(name)
        except (ImportError, FileNotFoundError) as e:
            raise ConfigError(
                f"cannot import {name!r} (imports / --import): {e}. Give an importable module "
                f"name (installed, on PYTHONPATH or under the current directory) or the path "
                f"of a .py file."
            ) from None


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (a path, or the name of a shipped config such as ``demo`` or
    ``lra/listops/s4d``) and apply ``section.key=value`` overrides."""
    path = resolve_config(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections.")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
    cfg = config_from_dict(raw)
    # a relative .py import is a file next to the config
    beside = [str((path.parent / m).resolve())
              if m.endswith(".py") and (path.parent / m).is_file() else m for m in cfg.imports]
    return dataclasses.replace(cfg, imports=tuple(beside))


def config_to_dict(cfg: Config) -> dict:
    """The YAML-ready nested dict of ``cfg`` (data options flattened back under ``data``)."""
    raw = dataclasses.asdict(cfg)
    raw["data"].update(raw["data"].pop("options"))
    if raw["model"]["pattern"] is not None:
        raw["model"]["pattern"] = list(raw["model"]["pattern"])
    raw["imports"] = list(raw["imports"])
    return raw


def dump_config(cfg: Config) -> str:
    """``cfg`` as YAML text (what WORKDIR/config.yaml holds)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
