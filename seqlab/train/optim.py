"""Optimiser: AdamW with parameter groups, linear warmup + cosine decay, gradient clipping.

Groups (the rule S4 and S5 train with; tests check which parameter lands where):
  "ssm":      every ``SSMParam`` (A, B, dt, Lambda, log-dt, ...): lr ``train.ssm_lr``, no decay.
  "no_decay": other parameters with ndim <= 1 (biases, norm scales, D skips): lr ``train.lr``.
  "decay":    the rest (projection matrices, embeddings): lr ``train.lr``, ``weight_decay``.

``train.train_only`` (steps n, names): the parameters none of whose path parts is one of the
names are frozen for the first n steps (``optax.transforms.conditionally_mask``: zero updates, their
optimiser state, schedule included, left as it is), then trained as their group says.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from seqlab.config import ConfigError, TrainConfig
from seqlab.layers.common import SSMParam

GROUPS = ("ssm", "no_decay", "decay")


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path(path) -> tuple[str, ...]:
    names = tuple(_key_name(k) for k in path)
    return names[:-1] if names and names[-1] == "value" else names


def param_groups(model: nnx.Module) -> dict[tuple[str, ...], str]:
    """Map each parameter path of ``model`` to its group name (see module docstring)."""
    ssm = {tuple(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, SSMParam))}
    groups = {}
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = tuple(map(str, p))
        if key in ssm:
            groups[key] = "ssm"
        elif v[...].ndim <= 1:
            groups[key] = "no_decay"
        else:
            groups[key] = "decay"
    return groups


def schedule(peak: float, cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, cosine decay to
    ``peak * end_lr_ratio`` at ``steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
        end_value=peak * cfg.end_lr_ratio,
    )


def frozen_first(paths: set[tuple[str, ...]], cfg: TrainConfig) -> set[tuple[str, ...]]:
    """Those of the parameter ``paths`` that ``train.train_only`` freezes for its first steps."""
    only = cfg.train_only
    if only.steps == 0:
        return set()
    trained = {p for p in paths if set(p) & set(only.params)}
    if not trained:
        examples = ", ".join(".".join(p) for p in sorted(paths)[:4])
        raise ConfigError(
            f"train.train_only.params {list(only.params)} match no parameter of the model; "
            f"each must equal a part (a module or attribute name) of a parameter path, as in "
            f"{examples}."
        )
    return paths - trained


def make_tx(model: nnx.Module, cfg: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation for ``model`` under ``cfg`` (clip, then per-group AdamW; the
    parameters that ``train.train_only`` freezes get the same AdamW after its steps)."""
    groups = param_groups(model)
    frozen = frozen_first(set(groups), cfg)

    def label(path) -> str:
        return groups[path] + ("/frozen" if path in frozen else "")

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda p, _: label(_path(p)), params)

    ssm_lr = cfg.lr if cfg.ssm_lr is None else cfg.ssm_lr
    adam = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    txs = {
        "ssm": optax.adamw(schedule(ssm_lr, cfg), weight_decay=0.0, **adam),
        "no_decay": optax.adamw(schedule(cfg.lr, cfg), weight_decay=0.0, **adam),
        "decay": optax.adamw(schedule(cfg.lr, cfg), weight_decay=cfg.weight_decay, **adam),
    }
    n = cfg.train_only.steps
    for name in {groups[p] for p in frozen}:
        txs[name + "/frozen"] = optax.transforms.conditionally_mask(
            txs[name], lambda step: step >= n)
    tx = optax.multi_transform(txs, labels)
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx
