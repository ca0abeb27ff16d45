"""Grazzi et al. 2025 ('Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues')
claim: with beta in [0, 1] (state-transition eigenvalues in [0, 1]) DeltaNet and Gated DeltaNet
cannot track parity or count modulo m; with beta in [0, 2] (eigenvalues in [-1, 1]) they can,
and the solution extrapolates to longer sequences.

Tasks (``seqlab.data.synthetic``, labels at every position = the prefix's parity / sum mod 3):
parity with 1 layer, counting mod 3 with 2 layers; trained at length 32 on 10,000 sequences
(300 steps), tested on 200 sequences of length 128 (4x). Model: the TinyLM of
``scripts/experiments/_lm.py`` (embedding, residual blocks [mixer, MLP], head), d_model 32,
4 heads of 8 dims (the mixers' default); ``allow_neg_eigval`` is the beta range. AdamW lr 3e-3,
batch 32, 3 seeds per configuration. Reported: per-position accuracy at the training length
(validation) and at 4x (test), mean ± std over seeds, and the training loss over the last 10% of
the steps (a plateau check).

Counting mod 3 needs a rotation by 120 degrees per token, a product of two reflections: one
DeltaNet step per token cannot give it in one layer, DeltaProduct with n_h = 2 can (Siems et al.
2025, Sec. 4; the S3 construction of ``deltaproduct_s3.py`` restricted to the 3-cycles).
``--mixers "DeltaProduct n_h=2" "DeltaProduct n_h=3" --layers 1`` runs that (the library layer:
SiLU keys, output gate on, as its defaults).

Budget: measured 25 minutes on the 2-core CPU under a load average near 20 (the parity-only
run with ``--steps 1000``: 16 minutes); one DeltaProduct layer on mod 3, 3 runs of 4,000 steps:
3 minutes at a load average of 2-5; ``--smoke``: seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/neg_eigval.py
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import TinyLM, fit
from seqlab.data import synthetic
from seqlab.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet

TASKS = {"parity": (synthetic.parity, {}, 1), "mod3": (synthetic.modular, {"modulus": 3}, 2)}
MIXERS = {"DeltaNet": DeltaNet, "Gated DeltaNet": GatedDeltaNet,
          **{f"DeltaProduct n_h={n}": functools.partial(DeltaProduct, n_householder=n)
             for n in (2, 3)}}
DEFAULT_MIXERS = ["DeltaNet", "Gated DeltaNet"]


def arrays(task: str, split: str, size: int, length: int, test_length: int):
    fn, opts, _ = TASKS[task]
    s = fn(split, size=size, length=length, test_length=test_length, **opts)
    return (np.asarray(s.data["inputs"], np.int32), np.asarray(s.data["label"], np.int32),
            s.info.n_classes)


@functools.lru_cache(maxsize=64)
def _predict(graphdef: nnx.GraphDef):
    """Jitted argmax prediction for a model structure (cached: seeds compile once)."""
    return jax.jit(lambda s, x: jnp.argmax(nnx.merge(graphdef, s)(x), -1))


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch: int = 100) -> float:
    """Per-position accuracy over all positions of all sequences."""
    graphdef, state = nnx.split(model)
    f = _predict(graphdef)
    hits = [np.asarray(f(state, x[i: i + batch])) == y[i: i + batch]
            for i in range(0, len(x), batch)]
    return float(np.concatenate(hits).mean())


def batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        i = rng.integers(0, len(x), batch)
        yield x[i], y[i]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--test-length", type=int, default=128)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS, choices=list(MIXERS))
    p.add_argument("--layers", type=int, default=0,
                   help="layers per model (0: the task's default, parity 1, mod3 2)")
    p.add_argument("--betas", nargs="+", default=["[0, 1]", "[0, 2]"],
                   choices=["[0, 1]", "[0, 2]"], help="the beta ranges to run")
    p.add_argument("--plot", default="repro_neg_eigval", help="plot name under docs/")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    n_test = 200
    if a.smoke:
        a.seeds, a.steps, a.length, a.test_length, a.train_size, n_test = 1, 2, 8, 16, 64, 8
        a.tasks = ["parity"]
    clock = Clock()
    res = {}
    for task in a.tasks:
        xtr, ytr, n_cls = arrays(task, "train", a.train_size, a.length, a.test_length)
        xva, yva, _ = arrays(task, "val", n_test, a.length, a.test_length)
        xte, yte, _ = arrays(task, "test", n_test, a.length, a.test_length)
        n_layers = a.layers or TASKS[task][2]
        mixers = {"DeltaNet": DeltaNet} if a.smoke else {m: MIXERS[m] for m in a.mixers}
        for name, cls in mixers.items():  # smoke: one configuration, compile time dominates
            for neg in ((True,) if a.smoke else [b == "[0, 2]" for b in a.betas]):
                def make(r, cls=cls, neg=neg):
                    return cls(a.d_model, allow_neg_eigval=neg, rngs=r)

                val, test, tails = [], [], []
                for seed in range(a.seeds):
                    model = TinyLM(make, d_model=a.d_model, n_layers=n_layers,
                                   d_ff=4 * a.d_model, vocab=n_cls, n_classes=n_cls,
                                   rngs=nnx.Rngs(seed))
                    model, info = fit(model, batches(xtr, ytr, 32, seed), a.steps, 3e-3, 50)
                    tails.append(float(info["loss"][-max(1, a.steps // 10):].mean()))
                    val.append(accuracy(model, xva, yva))
                    test.append(accuracy(model, xte, yte))
                key = (task, name, "[0, 2]" if neg else "[0, 1]")
                res[key] = {"val": val, "test": test}
                print(f"{task:6s} {name:18s} beta in {key[2]}, {n_layers} layer(s): "
                      f"acc@{a.length} {spread(val)}, acc@{a.test_length} {spread(test)}, "
                      f"train loss (last 10% of steps) {np.mean(tails):.3f}", flush=True)
    print(f"\nchance: parity 0.5, mod3 0.333 (per position); {a.steps} steps, {a.seeds} seeds")
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{t}\n{n}\nbeta {b}" for t, n, b in res]
        xs = np.arange(len(res))
        for off, key, c in ((-0.18, "val", "C0"), (0.18, "test", "C1")):
            ax.bar(xs + off, [np.mean(r[key]) for r in res.values()], 0.36,
                   yerr=[np.std(r[key]) for r in res.values()], capsize=3, color=c,
                   label=f"length {a.length if key == 'val' else a.test_length}")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set(ylabel="per-position accuracy", ylim=(0, 1.05),
               title=f"negative eigenvalues: train length {a.length}, {a.seeds} seeds")
        ax.legend()
        fig.tight_layout()
        out = figure_path(a.plot, a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return res


if __name__ == "__main__":
    main()
