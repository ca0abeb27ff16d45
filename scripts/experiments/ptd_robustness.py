"""S4-PTD vs S4D-LegS vs S4 under Fourier-mode input noise: a small version of the robustness
experiment of Yu, Mahoney, Erichson 2023 ('Robustifying State-space Models for Long Sequences via
Approximate Diagonalization', Sec. 6; the reference repository's ``robustness.py`` protocol), on
CPU.

Task: classify which of K frequencies a noisy sinusoid of length L carries. The three models
(encoder, 2 residual SSM layers, mean pool, linear head) are trained identically on clean data,
then evaluated with a perturbation ``a * rms(x) * cos(2 pi m t / L + phi)`` added to every test
input, for several Fourier modes m (1, L/16, L/4, L/2 - 1). The paper's claim: S4D-LegS's
transfer function only converges weakly to HiPPO-LegS's, so it can be far more sensitive to some
Fourier modes than S4-PTD, whose transfer function converges strongly, and than S4 (DPLR), which
is HiPPO-LegS itself.

S4-PTD is the published recipe (``ops.hippo.ptd``: the optimised perturbation shipped for
``--d-state``, all modes, reflection, V^-1 B folded into C); S4D-LegS has the theorem's B/2 and
``b_clip`` 2; S4 is ``seqlab.layers.S4`` (HiPPO-LegS in DPLR form, bilinear). Every seed draws
its own training/test data, initialisation and batch order; the noise phases depend on the mode
only. With several seeds the script prints mean ± std per model and mode and Welch's t-test of
S4-PTD against each other model (two-sided p).

Budget: 5 seeds x 3 models, L = 128, 150 steps: 7 minutes on the 2-core CPU at load 8-9 (3
seeds: about 4); ``--smoke``: seconds (most of it compilation).

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/ptd_robustness.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from seqlab.layers import S4
from seqlab.layers.s4d import S4D, S4PTD

FREQS = (3, 5, 7, 9)
MODELS = {
    "S4D-LegS": (S4D, dict(init="legs")),
    "S4-PTD": (S4PTD, dict()),
    "S4 (DPLR)": (S4, dict(measure="legs")),
}
COLORS = {"S4D-LegS": "tab:blue", "S4-PTD": "tab:red", "S4 (DPLR)": "tab:green"}


def make_data(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x [n, length, 1]: sin(2 pi f_y t / L + phase) + 0.5 N(0, 1); y [n] in [0, len(FREQS))."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(FREQS), n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    x = np.sin(2 * np.pi * np.asarray(FREQS)[y][:, None] * t + phase)
    x = x + 0.5 * rng.standard_normal((n, length))
    return x[..., None].astype(np.float32), y


class Classifier(nnx.Module):
    """Linear encoder, ``n_layers`` (2) prenorm residual SSM layers, mean pool, linear head."""

    def __init__(self, mixer: type, d_model: int, *, rngs: nnx.Rngs, n_layers: int = 2,
                 **mixer_args):
        self.encoder = nnx.Linear(1, d_model, rngs=rngs)
        self.mixers = nnx.List(
            [mixer(d_model, rngs=rngs, **mixer_args) for _ in range(n_layers)]
        )
        self.norms = nnx.List([nnx.LayerNorm(d_model, rngs=rngs) for _ in range(n_layers)])
        self.head = nnx.Linear(d_model, len(FREQS), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.encoder(x)
        for mix, norm in zip(self.mixers, self.norms, strict=True):
            h = h + mix(norm(h))
        return self.head(h.mean(axis=1))


def train(model: Classifier, x: np.ndarray, y: np.ndarray, steps: int, batch: int,
          seed: int) -> None:
    """AdamW (cosine from 4e-3, weight decay 0.01) on cross-entropy, random batches."""
    opt = nnx.Optimizer(model, optax.adamw(optax.cosine_decay_schedule(4e-3, steps), 0.01),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.integers(0, len(x), batch)
        loss = step(model, opt, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        if (i + 1) % max(1, steps // 4) == 0:
            print(f"  step {i + 1}/{steps} loss {float(loss):.3f}", flush=True)


@nnx.jit
def _logits(model: Classifier, x: jax.Array) -> jax.Array:
    return model(x)


def accuracy(model: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(_logits(model, jnp.asarray(x))).argmax(-1) == y).mean())


def fourier_noise(x: np.ndarray, mode: int, amplitude: float, seed: int) -> np.ndarray:
    """x + amplitude * rms(x) * cos(2 pi mode t / L + random phase), per example."""
    n, length, _ = x.shape
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, (n, 1, 1))
    t = np.arange(length)[None, :, None] / length
    rms = np.sqrt((x**2).mean(axis=(1, 2), keepdims=True))
    return (x + amplitude * rms * np.cos(2 * np.pi * mode * t + phase)).astype(np.float32)


def run_seed(seed: int, a: argparse.Namespace, modes: list[int]) -> dict[str, dict[str, float]]:
    """Train every model on one seed's data; test accuracy {model: {column: acc}}."""
    L = a.length
    x_tr, y_tr = make_data(a.n_train, L, seed)
    x_te, y_te = make_data(a.n_test, L, seed + 1)
    table = {}
    for name, (cls, kw) in MODELS.items():
        print(f"seed {seed}: training {name}", flush=True)
        if cls is S4PTD:
            kw = dict(kw, ptd_lambda=a.ptd_lambda)
        model = Classifier(cls, a.d_model, rngs=nnx.Rngs(seed), n_layers=a.layers,
                           d_state=a.d_state, **kw)
        if isinstance(model.mixers[0], S4PTD):
            mixer = model.mixers[0]
            print(f"  kappa(V) {mixer.cond_V:.3g}, ||E||/||A|| {mixer.rel_norm_E:.3g}")
        train(model, x_tr, y_tr, a.steps, 32, seed)
        model.eval()
        row = {"clean": accuracy(model, x_te, y_te)}
        for m in modes:
            row[f"mode {m}"] = accuracy(model, fourier_noise(x_te, m, a.amplitude, m), y_te)
        table[name] = row
        print("  " + "  ".join(f"{c} {v:.3f}" for c, v in row.items()), flush=True)
    return table


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of Welch's t-test (nan with fewer than 2 values or zero spread)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def plot(acc: dict[str, np.ndarray], cols: list[str], a: argparse.Namespace, path) -> None:
    """Accuracy vs noise column per model: mean line, ± std band, seed points."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = np.arange(len(cols))
    for k, (name, v) in enumerate(acc.items()):
        mean, std = v.mean(0), v.std(0)
        ax.plot(xs, mean, "-o", color=COLORS[name], label=f"{name} (n={len(v)})")
        ax.fill_between(xs, mean - std, mean + std, color=COLORS[name], alpha=0.18)
        for row in v:
            ax.plot(xs + (k - 1) * 0.06, row, ".", color=COLORS[name], alpha=0.5, ms=4)
    ax.axhline(1 / len(FREQS), color="gray", ls=":", lw=1, label="chance")
    ax.set_xticks(xs, cols)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"test input noise: {a.amplitude:g} x rms(x) x cos(2 pi m t / L + phi), "
                  f"L = {a.length}")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Trained on clean inputs ({a.steps} steps, d_model {a.d_model}, "
                 f"N = {a.d_state}); mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--ptd-lambda", type=float, default=None,
                    help="S4-PTD's weight of ||E|| (default: the shipped one for --d-state)")
    ap.add_argument("--amplitude", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = ap.parse_args(argv)
    if a.smoke:
        a.steps, a.length, a.d_model, a.d_state, a.layers = 1, 32, 8, 8, 1
        a.n_train, a.n_test, a.seeds = 64, 64, [0]
    clock = Clock()
    L = a.length
    modes = [1, L // 16, L // 4, L // 2 - 1]
    runs = [run_seed(s, a, modes) for s in a.seeds]
    cols = list(runs[0][next(iter(MODELS))])
    acc = {name: np.array([[r[name][c] for c in cols] for r in runs]) for name in MODELS}
    print(f"\ntest accuracy, Fourier-mode noise of amplitude {a.amplitude} x rms(input), "
          f"seeds {a.seeds}:")
    print(f"{'model':12s}" + "".join(f"{c:>24s}" for c in cols))
    for name, v in acc.items():
        print(f"{name:12s}" + "".join(f"{spread(v[:, j]):>24s}" for j in range(len(cols))))
    ref = acc["S4-PTD"]
    for name, v in acc.items():
        if name != "S4-PTD":
            ps = [welch_p(ref[:, j], v[:, j]) for j in range(len(cols))]
            print(f"Welch p, S4-PTD vs {name:9s}" + "".join(f"{c} {p:.3f}  "
                                                          for c, p in zip(cols, ps, strict=True)))
    plot(acc, cols, a, figure_path("repro_ptd_robustness", a.smoke))
    clock.report()
    return {name: v.tolist() for name, v in acc.items()}


if __name__ == "__main__":
    main()
