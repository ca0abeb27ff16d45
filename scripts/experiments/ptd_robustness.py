"""S4-PTD vs S4D-LegS vs S4 under the reference's in-layer noise, on a pixel-sequence image task:
a CPU-scale version of the robustness experiment of Yu, Mahoney, Erichson 2023 ('Robustifying
State-space Models for Long Sequences via Approximate Diagonalization', Sec. 6).

Probe (AnnanYu/Approximate_Diagonal, ``S4-PTD/robustness.py`` lines 200-209 at commit ec98d6a,
and ``S4-PTD/models/s4/s4_PTD.py`` lines 184-186): at test time, inside every SSM layer, the
signal ``n[b, l, h] = a * U[b, h] * cos(325.4 * dt_h * l)`` is added to the input of the SSM
convolution (not to the skip term ``D u``): U ~ U(0, 1) per example and channel, constant over
the sequence; ``dt_h`` the channel's trained step size, so each channel sees the same
continuous-time frequency (325.4 rad per unit time); ``a = 0.1`` in the reference. Validation is
clean; the test set is noisy. Here the layer runs on ``u + n`` and ``D n`` is subtracted, which
is the same thing; ``--amplitudes`` also evaluates larger ``a``.

Task (offline, generated): 16 x 16 images of one of 4 strokes (horizontal, vertical, diagonal,
anti-diagonal; random position and length 6-12, pixel noise 0.3), flattened row by row to 256
pixels (the sequential-image setting of the reference's sCIFAR at 1/4 of the length). Model:
linear encoder, 2 prenorm residual blocks (SSM, GELU, GLU), mean pool, linear head; AdamW;
trained on clean images only.

S4-PTD is the shipped reference-quality perturbation for ``--d-state`` (``ops.hippo.ptd``);
S4D-LegS has the theorem's B/2 and ``b_clip`` 2; S4 is ``seqlab.layers.S4`` (HiPPO-LegS DPLR,
bilinear). Every seed draws its own data, initialisation and batch order; the test noise
depends on the seed only. Prints mean ± std per model and column and Welch's t-test (two-sided)
of S4-PTD against each other model.

    PYTHONPATH=. nice -n 19 python scripts/experiments/ptd_robustness.py --seeds 0 1 2 3 4
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

N_CLASSES = 4
FREQ = 325.4  # the reference's continuous-time frequency (rad per unit time)
MODELS = {
    "S4D-LegS": (S4D, dict(init="legs")),
    "S4-PTD": (S4PTD, dict()),
    "S4 (DPLR)": (S4, dict(measure="legs")),
}
COLORS = {"S4D-LegS": "tab:blue", "S4-PTD": "tab:red", "S4 (DPLR)": "tab:green"}


def make_images(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x [n, side * side, 1] (row-major pixels, standardised), y [n] in [0, 4): the stroke."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    img = np.zeros((n, side, side))
    steps = {0: (0, 1), 1: (1, 0), 2: (1, 1), 3: (1, -1)}
    for i in range(n):
        length = rng.integers(6, 13)
        dr, dc = steps[int(y[i])]
        r0 = rng.integers(0, side - length * abs(dr) + 1) if dr else rng.integers(0, side)
        lo, hi = (length - 1, side) if dc < 0 else (0, side - length * abs(dc) + 1)
        c0 = rng.integers(lo, hi) if dc else rng.integers(0, side)
        k = np.arange(length)
        img[i, r0 + dr * k, c0 + dc * k] = 1.0
    img = img + 0.3 * rng.standard_normal(img.shape)
    x = (img - img.mean()) / img.std()
    return x.reshape(n, side * side, 1).astype(np.float32), y


class Classifier(nnx.Module):
    """Encoder, ``n_layers`` prenorm residual blocks ``h + GLU(gelu(SSM(norm(h) + n) - D n))``
    (n: the probe, zero when clean), mean pool, linear head. [batch, L, 1] -> [batch, 4]."""

    def __init__(self, mixer: type, d_model: int, *, rngs: nnx.Rngs, n_layers: int = 2,
                 **mixer_args):
        self.encoder = nnx.Linear(1, d_model, rngs=rngs)
        self.mixers = nnx.List([mixer(d_model, rngs=rngs, activation="identity", out="none",
                                      causal=False, **mixer_args) for _ in range(n_layers)])
        self.norms = nnx.List([nnx.LayerNorm(d_model, rngs=rngs) for _ in range(n_layers)])
        self.glus = nnx.List([nnx.Linear(d_model, 2 * d_model, rngs=rngs)
                              for _ in range(n_layers)])
        self.head = nnx.Linear(d_model, N_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array, u: jax.Array | None = None, amp: float = 0.0) -> jax.Array:
        """u [batch, n_layers, d_model]: the probe's U(0, 1) draws; amp: its amplitude."""
        h = self.encoder(x)
        pos = jnp.arange(x.shape[1])[None, :, None]
        for i, (mix, norm, glu) in enumerate(zip(self.mixers, self.norms, self.glus,
                                                  strict=True)):
            z = norm(h)
            if u is None:
                s = mix(z)
            else:  # the reference's probe: inside the SSM's convolution input only
                dt = jnp.exp(mix.log_dt[...])
                n = amp * u[:, i, None, :] * jnp.cos(FREQ * dt * pos)
                s = mix(z + n) - mix.D[...] * n
            g = glu(jax.nn.gelu(s))
            h = h + g[..., : h.shape[-1]] * jax.nn.sigmoid(g[..., h.shape[-1]:])
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


@nnx.jit(static_argnums=3)
def _logits(model: Classifier, x: jax.Array, u: jax.Array | None, amp: float) -> jax.Array:
    return model(x, u, amp)


def accuracy(model: Classifier, x: np.ndarray, y: np.ndarray, u=None, amp: float = 0.0) -> float:
    logits = _logits(model, jnp.asarray(x), None if u is None else jnp.asarray(u), amp)
    return float((np.asarray(logits).argmax(-1) == y).mean())


def run_seed(seed: int, a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train every model on one seed's data; test accuracy {model: {column: acc}}."""
    x_tr, y_tr = make_images(a.n_train, a.side, seed)
    x_te, y_te = make_images(a.n_test, a.side, seed + 1000)
    u = np.random.default_rng(seed + 2000).uniform(size=(a.n_test, a.layers, a.d_model))
    table = {}
    for name, (cls, kw) in MODELS.items():
        print(f"seed {seed}: training {name}", flush=True)
        model = Classifier(cls, a.d_model, rngs=nnx.Rngs(seed), n_layers=a.layers,
                           d_state=a.d_state, **kw)
        if isinstance(model.mixers[0], S4PTD):
            mixer = model.mixers[0]
            print(f"  kappa(V) {mixer.cond_V:.3g}, ||E||/||A|| {mixer.rel_norm_E:.3g}")
        train(model, x_tr, y_tr, a.steps, 32, seed)
        model.eval()
        row = {"clean": accuracy(model, x_te, y_te)}
        for amp in a.amplitudes:
            row[f"a={amp:g}"] = accuracy(model, x_te, y_te, u, amp)
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
    """Accuracy per column (clean, then each amplitude) per model: mean, ± std band, seeds."""
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
    ax.axhline(1 / N_CLASSES, color="gray", ls=":", lw=1, label="chance")
    ax.set_xticks(xs, cols)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("test-time noise in every SSM layer: a U(0,1) cos(325.4 dt_h l)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{a.side}x{a.side} strokes as {a.side**2} pixels; {a.steps} steps, d_model "
                 f"{a.d_model}, N = {a.d_state}; mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--side", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--amplitudes", type=float, nargs="+", default=[0.1, 1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = ap.parse_args(argv)
    if a.smoke:
        a.steps, a.side, a.d_model, a.d_state, a.layers = 1, 16, 8, 8, 1
        a.n_train, a.n_test, a.seeds = 64, 64, [0]
    clock = Clock()
    runs = [run_seed(s, a) for s in a.seeds]
    cols = list(runs[0][next(iter(MODELS))])
    acc = {name: np.array([[r[name][c] for c in cols] for r in runs]) for name in MODELS}
    print(f"\ntest accuracy, the reference's in-layer noise, seeds {a.seeds}:")
    print(f"{'model':12s}" + "".join(f"{c:>20s}" for c in cols))
    for name, v in acc.items():
        print(f"{name:12s}" + "".join(f"{spread(v[:, j]):>20s}" for j in range(len(cols))))
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
