"""Load a trained model for use, and export it small: ``seqlab.load`` and ``seqlab.export``.

An export is a directory holding the model's variables only (parameters and normalisation
statistics; no optimiser state, no RNG streams) plus what builds the model again, so it loads
without the training data:

    OUT/config.yaml         the run's config (its model section builds the model)
    OUT/task.json           the TaskInfo the model was built for
    OUT/params/             the variables as an Orbax checkpoint
    OUT/model.safetensors   optional: the same variables as a flat safetensors file
                            (names "backbone.blocks.0.mixer.A_re", ...), for use outside JAX

    model, cfg = seqlab.load("runs/lm")             # a workdir: its best checkpoint
    seqlab.export("runs/lm", "lm-export")
    model, cfg = seqlab.load("lm-export")           # bit-identical logits
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath
from flax import nnx

from seqlab.config import Config, MeshConfig, TaskInfo, dump_config, import_modules

VARIABLES = nnx.Not(nnx.RngState)  # what an export keeps
SAFETENSORS = "model.safetensors"


def flat_variables(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's variables (not its RNG streams) by dotted path, as numpy arrays."""
    return {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(model, VARIABLES))}


def set_variables(model: nnx.Module, arrays: dict[str, np.ndarray], source: str) -> None:
    """Set every variable of ``model`` from ``arrays`` (names of ``flat_variables``)."""
    flat = nnx.to_flat_state(nnx.state(model, VARIABLES))
    names = [".".join(map(str, p)) for p, _ in flat]
    missing, extra = set(names) - set(arrays), set(arrays) - set(names)
    if missing or extra:
        raise ValueError(
            f"{source} does not fit the model: {len(missing)} variables missing "
            f"({sorted(missing)[:3]}...), {len(extra)} unknown ({sorted(extra)[:3]}...). It was "
            f"written for a different model."
        )
    new = []
    for (path, var), name in zip(flat, names, strict=True):
        value = np.asarray(arrays[name])
        if value.shape != var[...].shape:
            raise ValueError(f"{source}: {name} has shape {value.shape}, the model "
                             f"{var[...].shape}; it was written for a different model.")
        new.append((path, var.replace(value.astype(var[...].dtype))))
    nnx.update(model, nnx.from_flat_state(new))


def _is_export(path: epath.Path) -> bool:
    return (path / "params").is_dir() or (path / SAFETENSORS).is_file()


def _build(cfg: Config, info: TaskInfo) -> nnx.Module:
    from seqlab.models import build_model

    import_modules(cfg.imports)
    seed = cfg.train.seed
    return build_model(cfg.model, info, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _read_export(path: epath.Path, model: nnx.Module) -> None:
    import orbax.checkpoint as ocp

    if (path / "params").is_dir():
        shapes = flat_variables(model)
        target = {k: np.zeros(v.shape, v.dtype) for k, v in shapes.items() if v.size}
        with ocp.StandardCheckpointer() as ckptr:
            arrays = ckptr.restore((path / "params").absolute(), target)
        # empty variables (e.g. MLA's W_UK when every key dimension keeps RoPE) hold no numbers;
        # Orbax refuses to save them, so exports leave them out
        arrays.update({k: np.zeros(v.shape, v.dtype) for k, v in shapes.items() if not v.size})
    else:
        from safetensors.numpy import load

        arrays = load((path / SAFETENSORS).read_bytes())
    set_variables(model, arrays, str(path))


def _load_workdir(path: epath.Path, checkpoint: str, model: nnx.Module | None) -> tuple:
    from seqlab.train.inputs import load_split
    from seqlab.train.run import make_trainer
    from seqlab.train.trainer import Trainer
    from seqlab.train.workdir import load_workdir_config, read_task_info

    if (path / "config.yaml").exists():
        cfg = load_workdir_config(path)
        cfg = dataclasses.replace(cfg, mesh=MeshConfig())  # one device is enough to use it
        info = read_task_info(path) or load_split(cfg, "train").info  # older workdirs
        trainer = make_trainer(cfg, info, path) if model is None else None
    elif model is not None:
        cfg = None
    else:
        raise ValueError(
            f"{path} is neither a seqlab workdir (no config.yaml) nor an export (no params/ or "
            f"{SAFETENSORS}). A model trained from Python loads with seqlab.load(path, "
            f"model=a_model_of_the_same_structure)."
        )
    if model is not None:
        if checkpoint != "best":
            raise ValueError("seqlab.load(..., model=...) reads the best checkpoint only")
        trainer = Trainer(model, workdir=path)
    trainer.restore(checkpoint)
    return trainer.model, cfg


def load(path: str | epath.PathLike, checkpoint: str = "best", *,
         model: nnx.Module | None = None, dtype: str | None = None
         ) -> tuple[nnx.Module, Config | None]:
    """The trained model of a workdir (its ``best`` or ``latest`` checkpoint), of an export or
    of a Hugging Face transformers folder (``config.json`` + safetensors, as ``save_pretrained``
    writes; docs/interop.md), in eval mode, ready for ``model(inputs, mask)`` and
    ``seqlab.generate``; and its config.

    model: a freshly built model of the same structure, for workdirs and exports written
    without a config (models trained or exported from Python); its variables are replaced.
    dtype: transformers folders only: None / "float32" (weights cast to float32) or
    "bfloat16" (weights and compute in bfloat16).
    """
    path = epath.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; give a workdir, an export or a "
                                "transformers model directory.")
    from seqlab.interop import is_transformers_folder, load_transformers

    if is_transformers_folder(path):
        if model is not None or checkpoint != "best":
            raise ValueError(f"{path} is a transformers folder: it holds one set of weights "
                             "and its config builds the model; pass neither model= nor "
                             "checkpoint=.")
        return load_transformers(path, dtype=dtype)
    if dtype is not None:
        raise ValueError("dtype= applies to transformers folders only; a seqlab model keeps "
                         "the compute dtype of its config (model.dtype).")
    if _is_export(path):
        from seqlab.train.workdir import load_workdir_config, read_task_info

        cfg = load_workdir_config(path) if (path / "config.yaml").exists() else None
        if model is None:
            if cfg is None:
                raise ValueError(f"{path} holds no config.yaml; pass model=... to load it into")

            info = read_task_info(path)
            if info is None:
                raise ValueError(f"{path} holds no task.json; pass model=... to load it into")
            model = _build(cfg, info)
        _read_export(path, model)
    else:
        model, cfg = _load_workdir(path, checkpoint, model)
    model.eval()
    return model, cfg


def export(source: str | epath.PathLike | nnx.Module, out: str | epath.PathLike, *,
           checkpoint: str = "best", safetensors: bool = False, config: Config | None = None,
           info: TaskInfo | None = None, format: str = "seqlab") -> epath.Path:
    """Write the export of ``source`` (a workdir, or a model with optionally its ``config`` and
    ``info``) to the new directory ``out``; returns ``out``. Nothing is overwritten.

    format: "seqlab" (the layout above) or "transformers": a Hugging Face folder that
    transformers' ``from_pretrained`` opens (causal language models of the families in
    docs/interop.md; ``config`` is required with a model ``source``)."""
    import orbax.checkpoint as ocp

    from seqlab.train.workdir import read_task_info, save_task_info

    if format not in ("seqlab", "transformers"):
        raise ValueError(f"unknown export format {format!r}; valid: seqlab, transformers.")
    out = epath.Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; export into a new directory.")
    if isinstance(source, nnx.Module):
        model = source
    else:
        model, config = load(source, checkpoint)
        info = read_task_info(source)
    if format == "transformers":
        from seqlab.interop import save_transformers

        if config is None:
            raise ValueError("a transformers export needs the model's config: pass config=.")
        return save_transformers(model, config, out)
    arrays = flat_variables(model)
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (out / "config.yaml").write_text(dump_config(config))
    if info is not None:
        save_task_info(out, info)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((out / "params").absolute(), {k: v for k, v in arrays.items() if v.size})
    if safetensors:
        from safetensors.numpy import save

        contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        (out / SAFETENSORS).write_bytes(save(contiguous))
    return out
