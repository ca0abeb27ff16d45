"""``seqlab lra``: run a Long Range Arena task x model grid, then tabulate and plot it.

Each run trains the shipped ``seqlab/configs/lra/<task>/<model>.yaml`` (or those of ``--configs
DIR``) in ``WORKDIR/<task>/<model>`` with ``seqlab.train.run.train``. The grid is resumable: a
run with a finished ``results.json`` is skipped, an unfinished one resumes from its last
checkpoint. After the runs (or with ``--report``), ``WORKDIR/results.md`` lists test accuracy
next to the published numbers and ``WORKDIR/curves.png`` plots every run's ``metrics.jsonl``
(training loss, validation accuracy).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from etils import epath

from seqlab.train.metrics import read_metrics

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
MODELS = ("s4", "s4d", "s4-ptd", "s5", "s5-ptd", "hydra", "deltaproduct", "mla", "topk")
TASK_TITLES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X"}

# Published test accuracy (%), in TASKS order; None = failed (chance) or not reported.
PUBLISHED: dict[str, tuple[tuple[float | None, ...], str]] = {
    "Transformer": ((36.37, 64.27, 57.46, 42.44, 71.40, None),
                    "Tay et al. 2021, LRA Table 1 (Path-X: fail)"),
    "S4 (v1)": ((58.35, 76.02, 87.09, 87.26, 86.05, 88.10), "Gu et al. 2022a, first version"),
    "S4-LegS": ((59.60, 86.82, 90.90, 88.65, 94.20, 96.35),
                "Gu et al. 2022a (final) / Gu et al. 2023, 'How to Train Your HiPPO'"),
    "S4D-LegS": ((60.47, 86.18, 89.46, 88.19, 93.06, 91.95), "Gu et al. 2022b, Table 3"),
    "S4D-Inv": ((60.18, 87.34, 91.09, 87.83, 93.78, 92.80), "Gu et al. 2022b, Table 3"),
    "S5": ((62.15, 89.31, 91.40, 88.00, 95.33, 98.58),
           "Smith et al. 2023, Table 1; seqlab/configs/lra/*/s5.yaml"),
    "S4-PTD": ((60.65, 88.32, 91.07, 88.27, 94.79, 96.39), "Yu et al. 2023, Table 2"),
}
PUBLISHED_AVERAGE_ONLY = {"S5-PTD": (87.6, "Yu et al. 2023 (average of the six tasks); "
                                           "seqlab/configs/lra/*/s5-ptd.yaml")}


def default_configs() -> Path:
    """The LRA configs shipped inside the package (seqlab/configs/lra)."""
    from seqlab.config import CONFIGS

    return CONFIGS / "lra"


def _pick(values: Sequence[str], valid: tuple[str, ...], what: str) -> list[str]:
    items = [v for item in values for v in item.split(",") if v]
    if items in ([], ["all"]):
        return list(valid)
    bad = [v for v in items if v not in valid]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; valid: {', '.join(valid)} or all")
    return items


def read_results(run_dir: epath.Path) -> dict | None:
    """A run's ``results.json`` if it finished, else None."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results if results.get("finished") else None


def run_grid(tasks: Sequence[str], models: Sequence[str], workdir: epath.Path,
             overrides: Sequence[str] = (), configs: Path | None = None,
             imports: Sequence[str] = ()) -> dict:
    """Train every (task, model) run that has not finished. Returns {(task, model): status}."""
    from seqlab.config import load_config
    from seqlab.train.run import train

    configs = configs or default_configs()
    status = {}
    for task in tasks:
        for model in models:
            run_dir = workdir / task / model
            if read_results(run_dir) is not None:
                status[task, model] = "done (skipped)"
                print(f"lra: {task}/{model}: finished earlier, skipped")
                continue
            config = configs / task / f"{model}.yaml"
            print(f"lra: {task}/{model}: training {config} in {run_dir}"
                  + (" (resuming)" if (run_dir / "config.yaml").exists() else ""))
            try:
                cfg = load_config(config, overrides)
                extra = tuple(m for m in imports if m not in cfg.imports)
                cfg = dataclasses.replace(cfg, imports=cfg.imports + extra)
                result = train(cfg, run_dir)
            except Exception as e:  # one failed run must not stop the grid
                status[task, model] = f"failed: {e}"
                print(f"lra: {task}/{model} failed: {e}", file=sys.stderr)
                if not isinstance(e, (ValueError, FileNotFoundError)):
                    traceback.print_exc()
                continue
            status[task, model] = "done" if result.get("finished") else "paused"
    return status


def _fmt(x: float | None) -> str:
    return "fail" if x is None else f"{x:.2f}"


def _average(values: Sequence[float | None], fail: float | None = 50.0) -> str:
    """Mean of ``values``; a failed task (None) counts as ``fail`` (None: left out)."""
    nums = [fail if v is None else v for v in values]
    nums = [v for v in nums if v is not None]
    return f"{sum(nums) / len(nums):.2f}" if nums else ""


def results_table(workdir: epath.Path, tasks: Sequence[str], models: Sequence[str]) -> str:
    """Markdown: our test accuracy per (model, task), then the published rows."""
    head = "| model | " + " | ".join(TASK_TITLES[t] for t in tasks) + " | avg |"
    rule = "|---" * (len(tasks) + 2) + "|"
    lines = ["## Test accuracy (%)", "", head, rule]
    for model in models:
        cells, values = [], []
        for task in tasks:
            results = read_results(workdir / task / model)
            if results is None:
                partial = (workdir / task / model / "config.yaml").exists()
                cells.append("running" if partial else "—")
                continue
            acc = 100 * results["test"]["accuracy"]
            values.append(acc)
            cells.append(f"{acc:.2f}")
        avg = _average(values) if len(values) == len(tasks) else ""
        lines.append(f"| **{model}** (seqlab) | " + " | ".join(cells) + f" | {avg} |")
    for name, (accs, source) in PUBLISHED.items():
        row = [accs[TASKS.index(t)] for t in tasks]
        lines.append(f"| {name} ({source}) | " + " | ".join(map(_fmt, row)) + " | "
                     + _average(row, None if name == "Transformer" else 50.0) + " |")
    for name, (avg, source) in PUBLISHED_AVERAGE_ONLY.items():
        shown = avg if len(tasks) == len(TASKS) else "—"  # an average of all six tasks
        lines.append(f"| {name} ({source}) | " + " | ".join("—" for _ in tasks)
                     + f" | {shown} |")
    lines += ["", "Published averages count a failed task as 50% (chance), except the "
              "Transformer's, which is over the five tasks it did not fail."]
    return "\n".join(lines) + "\n"


def plot_curves(workdir: epath.Path, tasks: Sequence[str], models: Sequence[str],
                path: epath.Path) -> epath.Path | None:
    """Training loss and validation accuracy against step, one column per task."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("lra: matplotlib is not installed (pip install 'seqlab[bench]'); no plot",
              file=sys.stderr)
        return None
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), squeeze=False)
    for col, task in enumerate(tasks):
        for model in models:
            records = read_metrics(workdir / task / model)
            for row, (split, key) in enumerate((("train", "loss"), ("val", "accuracy"))):
                pts = [(r["step"], r[key]) for r in records
                       if r.get("split") == split and isinstance(r.get(key), (int, float))
                       and math.isfinite(r[key])]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    axes[row, col].plot(xs, ys, label=model)
        axes[0, col].set_title(TASK_TITLES[task])
        axes[0, col].set_ylabel("train loss")
        axes[1, col].set_ylabel("val accuracy")
        axes[1, col].set_xlabel("step")
        if axes[1, col].lines:
            axes[1, col].legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()  # through epath, so that a gs:// grid directory works too
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path.write_bytes(png.getvalue())
    return path


def report(workdir: epath.Path, tasks: Sequence[str], models: Sequence[str]) -> None:
    """results.md and curves.png (written by process 0 only, when runs span many processes)."""
    import jax

    if jax.process_index() != 0:
        return
    table = results_table(workdir, tasks, models)
    (workdir / "results.md").write_text(table)
    print(table)
    plot = plot_curves(workdir, tasks, models, workdir / "curves.png")
    print(f"lra: wrote {workdir / 'results.md'}" + (f" and {plot}" if plot else ""))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqlab lra",
        description="Train a Long Range Arena grid (seqlab/configs/lra/<task>/<model>.yaml), "
        "resumably, and write WORKDIR/results.md (test accuracy next to published numbers) and "
        "WORKDIR/curves.png.")
    p.add_argument("--tasks", nargs="+", default=["all"],
                   help=f"tasks (space or comma separated): {', '.join(TASKS)} or all")
    p.add_argument("--models", nargs="+", default=["all"],
                   help=f"models: {', '.join(MODELS)} or all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run's config, e.g. train.steps=1000")
    p.add_argument("--workdir", default="runs/lra", help="grid directory (default runs/lra)")
    p.add_argument("--configs", default=None,
                   help="directory of <task>/<model>.yaml (default: the shipped "
                   "seqlab/configs/lra)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first in every run (e.g. one registering a mixer of "
                   "your own; its configs go in a --configs directory)")
    p.add_argument("--report", action="store_true",
                   help="only rebuild results.md and curves.png from existing runs")
    return p


def cli_main(argv: list[str]) -> int:
    """``seqlab lra ...``; returns the exit status (1 when a run failed)."""
    args = build_parser().parse_args(argv)
    configs = Path(args.configs) if args.configs else default_configs()
    tasks = _pick(args.tasks, TASKS, "task")
    own = sorted({p.stem for p in configs.glob("*/*.yaml")} - set(MODELS))
    models = _pick(args.models, MODELS + tuple(own), "model")
    workdir = epath.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.report:
        status = run_grid(tasks, models, workdir, args.set, configs, args.imports)
        failed = [f"{t}/{m}: {s}" for (t, m), s in status.items() if s.startswith("failed")]
    report(workdir, tasks, models)
    if failed:
        print("lra: failed runs:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0
