"""State tracking with Householder transitions: which configurations solve which task.

DeltaNet and DeltaProduct (n_h in {1, 2, 3}), beta in [0, 1] vs [0, 2], on parity and the word
problems of S3 and S5, each trained at length ``--length`` and tested at ``--test-length``
(per-position accuracy over whole sequences). Prints the accuracy table next to the papers'
claims for one layer:

- Grazzi et al. 2025: with beta in [0, 1] (eigenvalues in [0, 1]) a linear RNN cannot solve
  parity; beta in [0, 2] (eigenvalues in [-1, 1]) lets DeltaNet solve it.
- Siems et al. 2025: DeltaProduct with beta in [0, 2] and n_h Householders per token solves
  S_n with n_h = n - 1 (S3 from n_h = 2; S5 needs n_h = 4, beyond this grid); beta in [0, 1]
  does not solve S3 or S5.

    .venv/bin/python scripts/experiments/state_tracking.py              # full grid (long on CPU)
    .venv/bin/python scripts/experiments/state_tracking.py --tasks parity --steps 300

Runs through ``seqlab.train.run.train`` on ``seqlab/configs/synthetic/*_deltaproduct.yaml``
with the mixer, its options and the budget overridden; work directories go under ``--workdir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from seqlab.config import CONFIGS, load_config
from seqlab.train.run import train

TASKS = {"parity": "parity_deltaproduct.yaml", "S3": "s3_deltaproduct.yaml",
         "S5": "s5_deltaproduct.yaml"}
MODELS = {  # label -> (mixer, mixer_args)
    "DeltaNet      beta[0,1]": ("deltanet", dict(allow_neg_eigval=False)),
    "DeltaNet      beta[0,2]": ("deltanet", dict(allow_neg_eigval=True)),
    "DeltaProd n=2 beta[0,1]": ("deltaproduct", dict(n_householder=2, allow_neg_eigval=False)),
    "DeltaProd n=2 beta[0,2]": ("deltaproduct", dict(n_householder=2, allow_neg_eigval=True)),
    "DeltaProd n=3 beta[0,1]": ("deltaproduct", dict(n_householder=3, allow_neg_eigval=False)),
    "DeltaProd n=3 beta[0,2]": ("deltaproduct", dict(n_householder=3, allow_neg_eigval=True)),
}


def claim(task: str, mixer_args: dict) -> str:
    """What the papers predict for one layer: 'solves' or 'fails'."""
    neg, n = mixer_args["allow_neg_eigval"], mixer_args.get("n_householder", 1)
    if task == "parity":
        return "solves" if neg else "fails"
    group_n = int(task[1])
    return "solves" if neg and n >= group_n - 1 else "fails"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--test-length", type=int, default=256)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--workdir", default="/tmp/seqlab_state_tracking")
    args = p.parse_args()
    config_dir = CONFIGS / "synthetic"

    rows = []
    for task in args.tasks:
        for label, (mixer, mixer_args) in MODELS.items():
            base = load_config(config_dir / TASKS[task])
            mixer_args = {**base.model.mixer_args, **mixer_args}
            if mixer == "deltanet":
                mixer_args.pop("n_householder", None)
            cfg = dataclasses.replace(
                base,
                model=dataclasses.replace(base.model, mixer=mixer, mixer_args=mixer_args,
                                          d_model=args.d_model),
                data=dataclasses.replace(
                    base.data,
                    sizes={**base.data.sizes, "train": args.train_size},
                    options={**base.data.options, "length": args.length,
                             "test_length": args.test_length}),
                train=dataclasses.replace(
                    base.train, steps=args.steps, warmup_steps=args.steps // 10,
                    curriculum=tuple((n, max(1, k * args.steps // base.train.steps))
                                     for n, k in base.train.curriculum),
                    eval_every=max(1, args.steps // 4), checkpoint_every=args.steps,
                    progress=False),
            )
            tag = "-".join(map(str, mixer_args.values()))
            workdir = Path(args.workdir) / f"{task}-{mixer}-{tag}"
            shutil.rmtree(workdir, ignore_errors=True)
            result = train(cfg, workdir)
            rows.append((task, label, result["val"]["accuracy"], result["test"]["accuracy"],
                         claim(task, mixer_args)))
            print(f"{task:7s} {label}  val {rows[-1][2]:.3f}  test {rows[-1][3]:.3f}", flush=True)

    print(f"\n{'task':7s} {'model':24s} {'val@' + str(args.length):>8s} "
          f"{'test@' + str(args.test_length):>9s}  paper (1 layer)")
    for task, label, val, test, expected in rows:
        print(f"{task:7s} {label:24s} {val:8.3f} {test:9.3f}  {expected}")


if __name__ == "__main__":
    main()
