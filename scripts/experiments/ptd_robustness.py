"""S4-PTD vs S4D-LegS under Fourier-mode input noise: a small version of the robustness experiment
of Yu et al. 2023 ('Robustifying State-space Models for Long Sequences via Approximate
Diagonalization', Sec. 6), on CPU in a few minutes.

Task: classify which of K frequencies a noisy sinusoid of length L carries. Both models (encoder,
2 residual SSM layers, mean pool, linear head) are trained identically on clean data, then
evaluated with a perturbation ``a * rms(x) * cos(2 pi m t / L + phi)`` added to every test input,
for several Fourier modes m. The paper's claim: S4D-LegS's transfer function only converges
weakly to HiPPO-LegS's, so it can be far more sensitive to some Fourier modes than S4-PTD.

    .venv/bin/python scripts/experiments/ptd_robustness.py [--steps 300] [--length 256]

S4-PTD is the published recipe (``ops.hippo.ptd``: the optimised perturbation shipped for
``--d-state``, all modes, reflection, V^-1 B folded into C).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqlab.layers.s4d import S4D, S4PTD

FREQS = (3, 5, 7, 9)


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
    def __init__(self, mixer: type, d_model: int, *, rngs: nnx.Rngs, **mixer_args):
        self.encoder = nnx.Linear(1, d_model, rngs=rngs)
        self.mixers = nnx.List(
            [mixer(d_model, rngs=rngs, **mixer_args) for _ in range(2)]
        )
        self.norms = nnx.List([nnx.LayerNorm(d_model, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(d_model, len(FREQS), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.encoder(x)
        for mix, norm in zip(self.mixers, self.norms, strict=True):
            h = h + mix(norm(h))
        return self.head(h.mean(axis=1))


def train(model: Classifier, x: np.ndarray, y: np.ndarray, steps: int, batch: int, seed: int):
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


def accuracy(model: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    logits = nnx.jit(lambda m, xb: m(xb))(model, jnp.asarray(x))
    return float((np.asarray(logits).argmax(-1) == y).mean())


def fourier_noise(x: np.ndarray, mode: int, amplitude: float, seed: int) -> np.ndarray:
    """x + amplitude * rms(x) * cos(2 pi mode t / L + random phase), per example."""
    n, length, _ = x.shape
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, (n, 1, 1))
    t = np.arange(length)[None, :, None] / length
    rms = np.sqrt((x**2).mean(axis=(1, 2), keepdims=True))
    return (x + amplitude * rms * np.cos(2 * np.pi * mode * t + phase)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--ptd-lambda", type=float, default=None,
                    help="S4-PTD's weight of ||E|| (default: the shipped one for --d-state)")
    ap.add_argument("--amplitude", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    L = args.length
    x_tr, y_tr = make_data(4000, L, args.seed)
    x_te, y_te = make_data(1000, L, args.seed + 1)
    modes = [1, L // 16, L // 4, L // 2 - 1]
    models = {
        "S4D-LegS": (S4D, dict(init="legs")),
        "S4-PTD": (S4PTD, dict(ptd_lambda=args.ptd_lambda)),
    }
    table = {}
    for name, (cls, kw) in models.items():
        print(f"training {name}", flush=True)
        model = Classifier(cls, args.d_model, rngs=nnx.Rngs(args.seed), d_state=args.d_state,
                           **kw)
        if isinstance(model.mixers[0], S4PTD):
            mixer = model.mixers[0]
            print(f"  kappa(V) {mixer.cond_V:.3g}, ||E||/||A|| {mixer.rel_norm_E:.3g}")
        train(model, x_tr, y_tr, args.steps, 32, args.seed)
        model.eval()
        row = {"clean": accuracy(model, x_te, y_te)}
        for m in modes:
            row[f"mode {m}"] = accuracy(model, fourier_noise(x_te, m, args.amplitude, m), y_te)
        table[name] = row
    cols = list(next(iter(table.values())))
    print(f"\ntest accuracy, Fourier-mode noise of amplitude {args.amplitude} x rms(input):")
    print(f"{'model':24s}" + "".join(f"{c:>11s}" for c in cols))
    for name, row in table.items():
        print(f"{name:24s}" + "".join(f"{row[c]:11.3f}" for c in cols))


if __name__ == "__main__":
    main()
