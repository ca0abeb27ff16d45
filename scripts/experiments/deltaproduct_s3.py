"""DeltaProduct (Siems et al. 2025) on the S3 word problem: why does the shipped configuration
(``configs/synthetic/s3_deltaproduct.yaml``: one layer, n_h = 2, beta in [0, 2]) plateau at a
per-position accuracy of 0.42 when one DeltaProduct layer with n_h = 2 can represent S3 exactly?

The claim (Siems et al. 2025, Sec. 5; Grazzi et al. 2025, Thm. 3): one layer with n_h = n - 1
Householder factors per token and eigenvalues in [-1, 1] solves S_n; n_h = 1 cannot solve S3
(a 3-cycle is a rotation, a product of two reflections).

A representation argument: S3 acts on the plane by the reflections in three axes at 60 degrees,
whose unit normals satisfy k_3 = k_2 - k_1 (the A2 roots). Two such unit vectors with no negative
entries cannot differ by a third one with none (k_2 >= k_1 entry-wise forces k_2 = k_1), so one
transposition needs a key with negative entries of the same size as the positive ones. seqlab's
delta-rule mixers (like the FLA reference) compute keys as ``l2norm(SiLU(conv(W x)))``: SiLU's
outputs are >= -0.278, so such a key exists only with pre-activations pinned at SiLU's minimum
(zero gradient there). The experiment separates this from data and budget:

- ``shipped``: the shipped setup (4,000 fixed training sequences of length 32);
- ``fresh``: new random sequences every step (no data limit), same everything else;
- ``fresh, linear keys``: as ``fresh`` with the key (and query) SiLU removed before the L2 norm
  (a subclass in this script; the library layer is unchanged);
- ``fresh, linear keys, n_h=1``: the control the claim says fails;
- ``fresh, linear keys, start token``: a start token (label: the identity) before every
  sequence, so that the layer has a marked position to write its initial state at.

One layer, d_model 64, 2 heads of 32 dims, MLP, train length 32, test length 64 (500 sequences
each), AdamW lr 3e-3, batch 32, 3 seeds. Reported: per-position accuracy at 32 and 64 (chance
1/6).

Budget: measured 49 minutes on the 2-core CPU under a load average near 20 (12 runs of 1,000
steps; over the 30-minute target at that load: ``--variants`` runs a subset); ``--smoke``: seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/deltaproduct_s3.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import TinyLM, fit
from scripts.experiments.neg_eigval import _predict, batches
from seqlab.data import synthetic
from seqlab.layers.deltanet import DeltaProduct, _l2norm


class LinearKeyDeltaProduct(DeltaProduct):
    """DeltaProduct with q and k L2-normalised without the SiLU before (keys of any sign)."""

    def _qkv(self, q, k, v):
        b, t, _ = q.shape
        h, n = self.n_heads, self.n_householder
        q = q.astype(jnp.float32).reshape(b, t, h, self.head_dim)
        k = k.astype(jnp.float32).reshape(b, t * n, h, self.head_dim)
        v = jax.nn.silu(v).reshape(b, t * n, h, self.v_dim)
        return _l2norm(q).astype(self.dtype), _l2norm(k).astype(self.dtype), v


START = 6  # the start token (index past S3's six elements); its label is the identity, 0


def with_start(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prepend the start token (label: the empty product, the identity) to every sequence."""
    n = len(x)
    return (np.concatenate([np.full((n, 1), START, x.dtype), x], 1),
            np.concatenate([np.zeros((n, 1), y.dtype), y], 1))


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, start: bool) -> float:
    """Per-position accuracy over the sequences' own positions (a start token is not counted)."""
    if start:
        x, _ = with_start(x, y)
    graphdef, state = nnx.split(model)
    pred = np.concatenate([np.asarray(_predict(graphdef)(state, x[i: i + 100]))
                           for i in range(0, len(x), 100)])
    return float((pred[:, int(start):] == y).mean())


def fresh_batches(batch: int, length: int, seed: int, start: bool = False):
    """New S3 word problems every step: tokens [batch, length], prefix products as labels
    (with ``start``, a start token first)."""
    table = synthetic.group_table("S3")
    rng = np.random.default_rng([seed, 777])
    while True:
        x = rng.integers(0, len(table), (batch, length))
        y = np.empty_like(x)
        acc = x[:, 0]
        y[:, 0] = acc
        for t in range(1, length):
            acc = table[x[:, t], acc]
            y[:, t] = acc
        x, y = x.astype(np.int32), y.astype(np.int32)
        yield with_start(x, y) if start else (x, y)


def split(name: str, size: int, length: int, test_length: int):
    s = synthetic.permutation(name, size=size, length=length, test_length=test_length,
                              group="S3")
    return np.asarray(s.data["inputs"], np.int32), np.asarray(s.data["label"], np.int32)


VARIANTS = {  # name -> (layer class, n_h, fresh data, start token)
    "shipped": (DeltaProduct, 2, False, False),
    "fresh": (DeltaProduct, 2, True, False),
    "fresh, linear keys": (LinearKeyDeltaProduct, 2, True, False),
    "fresh, linear keys, n_h=1": (LinearKeyDeltaProduct, 1, True, False),
    "fresh, linear keys, start token": (LinearKeyDeltaProduct, 2, True, True),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--test-length", type=int, default=64)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    p.add_argument("--plot", default="repro_deltaproduct_s3", help="plot name under docs/")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    d, n_train, n_eval = 64, 4000, 500
    if a.smoke:
        a.seeds, a.steps, a.length, a.test_length, n_train, n_eval = 1, 2, 8, 16, 64, 8
        a.variants, d = ["fresh, linear keys, start token"], 16
    clock = Clock()
    xtr, ytr = split("train", n_train, a.length, a.test_length)
    xva, yva = split("val", n_eval, a.length, a.test_length)
    xte, yte = split("test", n_eval, a.length, a.test_length)
    res = {}
    for name in a.variants:
        cls, n_h, fresh, start = VARIANTS[name]

        def make(r, cls=cls, n_h=n_h):
            return cls(d, n_heads=2, n_householder=n_h, allow_neg_eigval=True, rngs=r)

        val, test, curves = [], [], []
        for seed in range(a.seeds):
            model = TinyLM(make, d_model=d, n_layers=1, d_ff=4 * d, vocab=6 + start, n_classes=6,
                           rngs=nnx.Rngs(seed))
            data = (fresh_batches(32, a.length, seed, start) if fresh
                    else batches(xtr, ytr, 32, seed))
            model, info = fit(model, data, a.steps, 3e-3, max(1, a.steps // 10))
            val.append(accuracy(model, xva, yva, start))
            test.append(accuracy(model, xte, yte, start))
            curves.append(info["loss"])
        res[name] = {"val": val, "test": test, "curves": np.stack(curves)}
        print(f"{name:26s} acc@{a.length} {spread(val)}  acc@{a.test_length} {spread(test)}",
              flush=True)
    print(f"chance 0.167; {a.steps} steps, batch 32, {a.seeds} seeds")
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
        for i, (name, r) in enumerate(res.items()):
            m = r["curves"].mean(0)
            k = max(1, len(m) // 50)
            ax0.plot(np.convolve(m, np.ones(k) / k, "valid"), color=f"C{i}", label=name)
            ax1.bar(i - 0.18, np.mean(r["val"]), 0.36, yerr=np.std(r["val"]), color="C0",
                    capsize=3, label=f"length {a.length}" if i == 0 else None)
            ax1.bar(i + 0.18, np.mean(r["test"]), 0.36, yerr=np.std(r["test"]), color="C1",
                    capsize=3, label=f"length {a.test_length}" if i == 0 else None)
        ax0.set(xlabel="step", ylabel="train loss (nats, mean over seeds)", title="S3, one layer")
        ax0.legend(fontsize=8)
        ax1.set_xticks(range(len(res)), [n.replace(", ", "\n") for n in res], fontsize=7)
        ax1.axhline(1 / 6, color="k", lw=0.6, ls=":")
        ax1.set(ylabel="per-position accuracy", ylim=(0, 1.05), title=f"{a.seeds} seeds")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        out = figure_path(a.plot, a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return res


if __name__ == "__main__":
    main()
