"""The ``seqlab`` command: train, eval, check, export, convert, lra, bench. Thin: parses,
validates, calls train/ and data/. User errors print one paragraph and exit 2 (SEQLAB_DEBUG=1
shows tracebacks); a training run stopped by SIGTERM/SIGINT exits 3 after checkpointing (the
same command resumes). With many processes, process 0 alone prints results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from seqlab.utils import UserError

# Bad configs, data, files and checkpoints; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, UserError)


def _config(args):
    """The config of ``args.config`` with the ``--set`` overrides and ``--import`` modules."""
    import dataclasses

    from seqlab.config import load_config

    cfg = load_config(args.config, args.set)
    # a .py file is recorded by its absolute path, so the run's config works from anywhere
    given = [os.path.abspath(m) if m.endswith(".py") else m for m in args.imports]
    extra = tuple(m for m in given if m not in cfg.imports)
    return dataclasses.replace(cfg, imports=cfg.imports + extra)


def _default_workdir(config: str) -> str:
    """runs/<stem> for a config file, runs/<name> for a shipped one (runs/lra/listops/s4d)."""
    if os.path.isfile(config):
        return os.path.join("runs", os.path.splitext(os.path.basename(config))[0])
    return os.path.join("runs", config.removesuffix(".yaml"))


def _train(args) -> int:
    from seqlab.train.run import train

    cfg = _config(args)
    workdir = args.workdir or _default_workdir(args.config)
    result = train(cfg, workdir)
    import jax

    if jax.process_index() == 0:
        print(json.dumps(result))
    if result.get("preempted"):
        from seqlab.train.preemption import EXIT_PREEMPTED

        print(f"seqlab train: stopped by {result['preempted']} after step {result['step']}; a "
              "checkpoint was written. Run the same command to resume.", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _export(args) -> int:
    from seqlab.config import import_modules
    from seqlab.saving import export

    import_modules(args.imports)
    out = export(args.workdir, args.out, checkpoint=args.checkpoint,
                 safetensors=args.safetensors, format=args.format)
    print(json.dumps({"export": str(out), "format": args.format}))
    return 0


def _convert(args) -> int:
    from seqlab.interop.hf import load_transformers, read_config, task_info
    from seqlab.saving import export

    model, cfg = load_transformers(args.folder, dtype=args.dtype)
    out = export(model, args.out, config=cfg, info=task_info(read_config(args.folder)),
                 safetensors=args.safetensors)
    print(json.dumps({"export": str(out), "from": str(args.folder)}))
    return 0


def _eval(args) -> int:
    from seqlab.config import import_modules
    from seqlab.train.run import evaluate

    import_modules(args.imports)
    print(json.dumps(evaluate(args.workdir, args.split, args.checkpoint)))
    return 0


def _check(args) -> int:
    import jax
    from flax import nnx

    from seqlab.config import dump_config, import_modules
    from seqlab.models import build_model
    from seqlab.train.inputs import check_batch_size, check_labels, load_split

    cfg = _config(args)
    import_modules(cfg.imports)
    check_batch_size(cfg.train.batch_size, cfg.train.eval_batch_size, cfg.mesh)
    if args.no_data:  # the task's description from the data options alone
        from seqlab.data import task_info

        options = dict(cfg.data.options)
        info, examples = task_info(cfg.data.name, cfg.data.root, **options), "not read"
    else:
        split = load_split(cfg, "train")
        check_labels(split, "train")
        info, examples = split.info, f"{len(split)} train examples"
    model = nnx.eval_shape(lambda: build_model(cfg.model, info, rngs=nnx.Rngs(0)))
    n_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(dump_config(cfg), end="")
    print(
        f"# ok: {cfg.model.n_layers} layers of {cfg.model.pattern or cfg.model.mixer}, "
        f"{n_params:,} parameters; data {cfg.data.name}: {examples}, "
        f"task {info.task}, {info.n_classes} classes"
    )
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(module).cli_main(argv)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML file, or the name of a shipped config: demo, "
                   "lra/listops/s4d, ... (seqlab/configs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.d_model=256 (repeatable)",
    )
    _import_arg(p, " (repeatable; recorded as imports: in the run's config)")


def _import_arg(p: argparse.ArgumentParser, note: str = " (repeatable)") -> None:
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (dotted name or .py path) first, e.g. one registering a mixer of "
        f"your own with @seqlab.layers.register_mixer{note}",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqlab",
        description="Train and evaluate long-sequence models (S4, S4D, S5, Hydra, DeltaProduct, "
        "MLA, sparse attention) and run the Long Range Arena.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a run of a YAML config")
    _config_args(t)
    t.add_argument(
        "--workdir", help="run directory (default runs/<config name>, e.g. runs/lra/listops/s4d); "
        "an existing one is resumed"
    )
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint; prints one JSON object")
    e.add_argument("workdir")
    e.add_argument("--split", default="val", choices=["train", "val", "test"])
    e.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    _import_arg(e)
    e.set_defaults(fn=_eval)

    c = sub.add_parser("check", help="validate a config; build its model (shapes only) and data")
    _config_args(c)
    c.add_argument("--no-data", action="store_true",
                   help="validate the config and the model alone: the task's description comes "
                   "from the data options; nothing is read, downloaded or generated")
    c.set_defaults(fn=_check)

    x = sub.add_parser("export", help="write a run's model (parameters and config, no optimiser "
                       "state) to a new directory that seqlab.load reads without the data")
    x.add_argument("workdir")
    x.add_argument("out", help="a new directory")
    x.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    x.add_argument("--safetensors", action="store_true",
                   help="also write model.safetensors (flat names, for use outside JAX)")
    x.add_argument("--format", default="seqlab", choices=["seqlab", "transformers"],
                   help="seqlab: an export seqlab.load reads; transformers: a Hugging Face "
                   "folder (config.json + model.safetensors) that transformers' "
                   "from_pretrained opens (language models of the families in "
                   "docs/interop.md)")
    _import_arg(x)
    x.set_defaults(fn=_export)
    v = sub.add_parser("convert", help="write a Hugging Face transformers checkpoint folder "
                       "(config.json + safetensors) as a seqlab export (docs/interop.md)")
    v.add_argument("folder", help="a folder written by transformers' save_pretrained")
    v.add_argument("out", help="a new directory")
    v.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="parameter and compute dtype (default float32)")
    v.add_argument("--safetensors", action="store_true",
                   help="also write model.safetensors (flat names, for use outside JAX)")
    v.set_defaults(fn=_convert)

    sub.add_parser("lra", help="run a Long Range Arena task x model grid (see seqlab lra --help)")
    sub.add_parser("bench", help="benchmark mixers against references, peers and the device's "
                   "physical bound (see seqlab bench --help)")
    return p


DELEGATED = {"lra": "seqlab.train.lra", "bench": "seqlab.bench.harness"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # seqlab's own bars stay
    command = argv[0] if argv else ""
    try:
        if command in DELEGATED:  # these commands own their whole argument list
            return _delegate(DELEGATED[command], argv[1:])
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except USER_ERRORS as e:
        if os.environ.get("SEQLAB_DEBUG"):
            raise
        message = str(e).rstrip("\n") or type(e).__name__
        sys.stderr.write(f"seqlab {command}: error: {message}\n")
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
