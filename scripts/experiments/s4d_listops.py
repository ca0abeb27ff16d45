"""S4D (Gu, Gupta, Goel, Ré 2022, 'On the Parameterization and Initialization of Diagonal State
Space Models', Sec. 5, Table 3) claim: the diagonal S4D variants S4D-LegS, S4D-Inv and S4D-Lin
train as well as S4 (DPLR HiPPO-LegS) on the Long Range Arena tasks. Their ListOps test accuracy
(%): S4D-LegS 60.47, S4D-Inv 60.18, S4D-Lin 60.52, S4 59.60 (docs/lra.md; S4D-Lin's from the S4D
paper's table).

Measured here at CPU scale: all four trained on seqlab's ListOps generator
(``seqlab.data.listops.generate``, the LRA recipe: depth <= 10, <= 10 arguments) with expressions
of 64-256 tokens instead of LRA's 500-2000, 20,000 training / 1,000 validation / 1,000 test
examples (data seed 0, the same for every run), each model built by ``seqlab.build_model`` from
the published ListOps recipe (``seqlab/configs/lra/listops/s4d.yaml`` and ``s4.yaml``: N = 4,
bidirectional, GELU + GLU output, BatchNorm post-norm, mean pooling; AdamW lr 0.01, weight decay
0.05, SSM parameters at lr 1e-3 without decay, batch 32, linear warmup then cosine decay,
``seqlab.train.optim.make_tx``), scaled down to d_model 32 and 4 layers, 1,000 steps (1.6 epochs)
instead of 6 layers of 256 and 120,000 steps. Model seeds 0, 1, 2 (init and batch order).
The test accuracy of the final model is reported as mean ± std over seeds; the plot shows it per
model with the seed points, and the validation curves.

Budget: 30 minutes on the 2-core CPU; measured 1,265 s at load 0.8 -> 4.8 (the CPU shared with
other training runs; 58 minutes at load 7.5-15 earlier), 12 runs; ``--smoke``: seconds (most
of it compilation).

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/s4d_listops.py
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from seqlab.config import ModelConfig, TaskInfo, TrainConfig
from seqlab.data.listops import VOCAB, generate
from seqlab.models import build_model
from seqlab.train.optim import make_tx

COMMON = dict(d_state=4, causal=False, activation="gelu", out="glu", dt_min=1e-3, dt_max=0.1)
MODELS = {  # name: (mixer, its arguments); as seqlab/configs/lra/listops/{s4d,s4}.yaml
    "S4D-LegS": ("s4d", dict(COMMON, init="legs", disc="zoh")),
    "S4D-Inv": ("s4d", dict(COMMON, init="inv", disc="zoh")),
    "S4D-Lin": ("s4d", dict(COMMON, init="lin", disc="zoh")),
    "S4 (DPLR)": ("s4", dict(COMMON, measure="legs")),
}
PAPER = {"S4D-LegS": 60.47, "S4D-Inv": 60.18, "S4D-Lin": 60.52, "S4 (DPLR)": 59.60}
COLORS = {"S4D-LegS": "tab:blue", "S4D-Inv": "tab:orange", "S4D-Lin": "tab:purple",
          "S4 (DPLR)": "tab:green"}


def padded(split: str, size: int, a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """One ListOps split padded to ``a.max_length``: tokens [n, L] int32 (0 = padding), mask
    [n, L] bool, labels [n]."""
    flat, offsets, labels = generate(split, size, min_length=a.min_length,
                                     max_length=a.max_length, max_depth=10, max_args=10, seed=0)
    lengths = np.diff(offsets)
    mask = np.arange(a.max_length)[None, :] < lengths[:, None]
    tokens = np.zeros(mask.shape, np.int32)
    tokens[mask] = flat
    return tokens, mask, labels


@nnx.jit
def _train_step(model, opt, x, m, y):
    def loss_fn(mod):
        return optax.softmax_cross_entropy_with_integer_labels(mod(x, m), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


@nnx.jit
def _correct(model, x, m, y):
    return (model(x, m).argmax(-1) == y).sum()


def accuracy(model, data: tuple[np.ndarray, np.ndarray, np.ndarray], batch: int = 250) -> float:
    """Accuracy of ``model`` (in eval mode: BatchNorm running statistics) on a padded split."""
    model.eval()
    x, m, y = data
    correct = sum(int(_correct(model, jnp.asarray(x[i:i + batch]), jnp.asarray(m[i:i + batch]),
                               jnp.asarray(y[i:i + batch]))) for i in range(0, len(y), batch))
    model.train()
    return correct / len(y)


def run(name: str, seed: int, a: argparse.Namespace, train_data, val_data, test_data
        ) -> tuple[float, list[tuple[int, float]]]:
    """Train one model from seed; (final test accuracy, [(step, val accuracy)])."""
    mixer, args = MODELS[name]
    cfg = ModelConfig(mixer=mixer, d_model=a.d_model, n_layers=a.layers, mixer_args=args,
                      norm="batch", prenorm=False, dropout=0.0, ffn="none", pool="mean")
    info = TaskInfo(task="classify", n_classes=10, vocab_size=len(VOCAB), input_dim=None,
                    max_length=a.max_length)
    model = build_model(cfg, info, rngs=nnx.Rngs(seed))
    tcfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=0.01, ssm_lr=1e-3,
                       weight_decay=0.05, warmup_steps=a.steps // 10, seed=seed)
    opt = nnx.Optimizer(model, make_tx(model, tcfg), wrt=nnx.Param)
    model.train()
    x, m, y = train_data
    rng = np.random.default_rng(seed)
    curve = []
    for i in range(1, a.steps + 1):
        idx = rng.integers(0, len(y), a.batch)
        loss = float(_train_step(model, opt, jnp.asarray(x[idx]), jnp.asarray(m[idx]),
                                 jnp.asarray(y[idx])))
        if not np.isfinite(loss):
            raise FloatingPointError(f"{name} seed {seed}: loss {loss} at step {i}")
        if i % a.eval_every == 0 or i == a.steps:
            curve.append((i, accuracy(model, val_data)))
            print(f"  {name} seed {seed} step {i} loss {loss:.3f} val {curve[-1][1]:.3f}",
                  flush=True)
    return accuracy(model, test_data), curve


def plot(test: dict[str, list[float]], curves: dict[str, list], a: argparse.Namespace,
         path) -> None:
    """Left: final test accuracy per model (seed points, mean ± std). Right: validation curves."""
    plt = pyplot()
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (name, v) in enumerate(test.items()):
        v = 100 * np.asarray(v)
        ax.errorbar(k, v.mean(), v.std(), fmt="s", color=COLORS[name], capsize=6, ms=8)
        ax.plot(np.full(len(v), k) + np.linspace(-0.12, 0.12, len(v)), v, "o",
                color=COLORS[name], alpha=0.5, ms=5)
        ax.plot(k, PAPER[name], "*", color="k", ms=10, label="paper (LRA, length 2000)"
                if k == 0 else None)
    ax.axhline(100 * a.majority, color="gray", ls=":", lw=1, label="majority class")
    ax.set_xticks(range(len(test)), list(test))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ListOps {a.min_length}-{a.max_length} tokens, {a.steps} steps, "
                 f"d_model {a.d_model} x {a.layers} layers, N = 4", fontsize=9)
    ax.legend(fontsize=8)
    for name, runs in curves.items():
        steps = [s for s, _ in runs[0]]
        v = 100 * np.array([[acc for _, acc in r] for r in runs])
        bx.plot(steps, v.mean(0), "-", color=COLORS[name], label=f"{name} (n={len(runs)})")
        bx.fill_between(steps, v.mean(0) - v.std(0), v.mean(0) + v.std(0), color=COLORS[name],
                        alpha=0.15)
    bx.set_xlabel("step")
    bx.set_ylabel("validation accuracy (%)")
    bx.set_title("validation accuracy, mean ± std over seeds", fontsize=9)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--min-length", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=20_000)
    ap.add_argument("--n-eval", type=int, default=1000, help="validation and test examples each")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = ap.parse_args(argv)
    if a.smoke:
        a.steps, a.eval_every, a.batch, a.d_model, a.layers = 2, 2, 8, 8, 1
        a.min_length, a.max_length, a.n_train, a.n_eval, a.seeds = 8, 32, 64, 16, [0]
    clock = Clock()
    train_data = padded("train", a.n_train, a)
    val_data, test_data = padded("val", a.n_eval, a), padded("test", a.n_eval, a)
    a.majority = float(np.bincount(test_data[2], minlength=10).max() / len(test_data[2]))
    print(f"ListOps {a.min_length}-{a.max_length} tokens: train {len(train_data[2])}, mean "
          f"length {train_data[1].sum(1).mean():.0f}; test majority class {a.majority:.3f}",
          flush=True)
    test: dict[str, list[float]] = {n: [] for n in a.models}
    curves: dict[str, list] = {n: [] for n in a.models}
    for seed in a.seeds:
        for name in a.models:
            acc, curve = run(name, seed, a, train_data, val_data, test_data)
            test[name].append(acc)
            curves[name].append(curve)
            print(f"{name} seed {seed}: test {acc:.4f}", flush=True)
    print(f"\nListOps test accuracy (%), final model, {a.steps} steps, seeds {a.seeds}:")
    print(f"{'model':12s}{'seqlab (this scale)':>26s}{'paper (LRA)':>14s}")
    for name, v in test.items():
        print(f"{name:12s}{spread(100 * np.asarray(v), '.2f'):>26s}{PAPER[name]:14.2f}")
    means = [np.mean(v) for v in test.values()]
    stds = [np.std(v) for v in test.values()]
    print(f"range of the model means: {100 * (max(means) - min(means)):.2f} points; largest "
          f"seed std {100 * max(stds):.2f}")
    plot(test, curves, a, figure_path("repro_s4d_listops", a.smoke))
    clock.report()
    return test


if __name__ == "__main__":
    main()
