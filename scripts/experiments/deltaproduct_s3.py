"""DeltaProduct (Siems et al. 2025) on the S3 word problem: one layer, n_h = 2, beta in [0, 2]
plateaued at a per-position accuracy of 0.42 with the setup that ``synthetic/s3_deltaproduct``
first shipped (no start token, no length curriculum). Is that the layer or the setup? (The
setup: the config now has a start token, a curriculum and linear keys, and learns S3.)

The claim (Siems et al. 2025, Sec. 4-5; Grazzi et al. 2025, Thm. 3): one layer with n_h = n - 1
Householder factors per token and eigenvalues in [-1, 1] solves S_n; n_h = 1 cannot solve S3
(a 3-cycle is a rotation, a product of two reflections).

1. Representation (no training): :func:`exact_layer` sets by hand every weight of one library
   ``DeltaProduct`` layer (its SiLU + L2-normalised keys, short convolutions, output gate and
   norm unchanged) so that it tracks S3 with n_h = 2, or A5 / S5 with n_h = 4, at any length:
   keys = the unit normals (e_a - e_b)/sqrt(2) of the transpositions whose product is the token
   (in the permutation representation), beta = 2, values v = C^T k so that S - C is multiplied
   by the permutation matrix, a fixed query, and a linear (nearest-output) readout. The keys'
   SiLU is no obstacle: the L2 norm removes the scale, so a key entry of -0.25 next to +0.25
   (pre-activations -0.81 and 0.42, where SiLU' != 0) gives the normal; only the norm's eps
   (1e-6) keeps |k| just below 1, a contraction of ~1e-6 per reflection (spread over 10 copies
   of the coordinates). :func:`check_exact_layer` runs it at lengths 32, 256, 1024.
2. Training, one layer, d_model 64, 2 heads of 32 dims, MLP, AdamW lr 3e-3 (warm-up 10%, cosine),
   batch 32, train length 32, tested on 500 sequences each at 32, 64 and 128 (the val split and
   two test splits of ``seqlab.data.synthetic.permutation``), 3 seeds. Variants (``--variants``):

   - ``shipped``: the shipped setup (4,000 fixed training sequences of length 32);
   - ``fresh``: new random sequences every step (no data limit), same everything else;
   - ``fresh, linear keys``: as ``fresh`` with the key (and query) SiLU removed before the L2
     norm (the layer's ``qk_activation="identity"``);
   - ``fresh, linear keys, n_h=1``: the control the claim says fails;
   - ``fresh, linear keys, start token``: a start token (label: the identity) first;
   - ``S3 start+curr, linear keys, n_h=1..4`` (the default): start token, linear keys and a
     length curriculum (lengths 4, 8, 16 for 10% of the steps each, then 32);
   - ``S3 start+curr, SiLU keys, n_h=2``: the same with the library layer as it is;
   - ``A5 start+curr, linear keys, n_h=2 / 4``: the A5 word problem (60 classes);
   - ``S5 start+curr, linear keys, n_h=4``: the S5 word problem (120 classes).

Budget: 30 minutes on the 2-core CPU; the default (12 runs of 1,500 steps) measured 601 s at
load 3.8 -> 4.3 (46 minutes at load 7.5 -> 12.2); one variant at 4,000 steps (3 runs) 10
minutes (load 10 -> 8); ``--construction-only``: 4 s at load 2; ``--smoke``: seconds.
``--variants``: a subset.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/deltaproduct_s3.py
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import TinyLM, fit
from scripts.experiments.neg_eigval import _predict, batches
from seqlab.data import synthetic
from seqlab.layers.deltanet import DeltaProduct

SILU_MIN = -0.2784645427610738  # min of z * sigmoid(z), at z = -1.2784645...


def silu_inverse(y: np.ndarray) -> np.ndarray:
    """A pre-activation z with SiLU(z) = y (y >= SILU_MIN): the branch z >= -1.278 (bisection)."""
    y = np.asarray(y, np.float64)
    if np.any(y < SILU_MIN):
        raise ValueError("SiLU cannot reach values below -0.2785")
    lo, hi = np.full(y.shape, -1.2784645427610738), np.maximum(y, 0.0) + 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        below = mid / (1 + np.exp(-mid)) < y
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(y == 0, 0.0, (lo + hi) / 2)


def transpositions(perm: tuple[int, ...]) -> list[tuple[int, int]]:
    """Transpositions t_1..t_m (t_1 applied first) with perm = t_m o ... o t_1, m = n - #cycles."""
    g, found = list(perm), []
    while any(g[i] != i for i in range(len(g))):
        i = next(i for i in range(len(g)) if g[i] != i)
        a, b = i, g[i]  # left-multiply by (a b): (a b) o g fixes i
        g = [b if x == a else a if x == b else x for x in g]
        found.append((a, b))
    return found[::-1]  # g = found_1 o found_2 o ... : the last found acts first


def exact_layer(group: str = "S3", n_householder: int | None = None, d_model: int = 64,
                n_heads: int = 2, scale_v: float = 0.35) -> tuple[DeltaProduct, np.ndarray]:
    """One library ``DeltaProduct`` layer whose weights track ``group`` exactly, and its inputs.

    Token g enters as the one-hot row g of the returned [|G|, d_model] matrix. The short
    convolutions pass the current token through (last tap 1); beta = 2 sigmoid(20) = 2 exactly in
    float32. In head 0 (the others stay zero) the n_h keys of token g are the unit normals
    (e_a - e_b)/sqrt(2) of the transpositions whose product is g (the permutation matrix of g,
    acting on key coordinates 0..n-1), and zero keys (exact identity factors) for the rest; each
    key's pre-norm vector is +-0.25 there, inside SiLU's range (the L2 norm removes the scale). The
    values are v = C^T k, so that S <- C + H (S - C) per Householder step H: from S_0 = 0,
    S_t = C - P_t C with P_t the permutation of the prefix. The query is a fixed vector q with
    distinct entries, so o_t = C^T (q - P_t^T q) / sqrt(K) is a different vector for every P_t.
    """
    table = synthetic.group_table(group)
    n = int(group[1])
    perms = list(itertools.permutations(range(n)))
    if group.startswith("A"):
        perms = [p for p in perms if sum(p[i] > p[j] for i in range(n) for j in range(i)) % 2 == 0]
    assert len(perms) == len(table)
    need = n - 1
    n_h = need if n_householder is None else n_householder
    if n_h < max(len(transpositions(p)) for p in perms):
        raise ValueError(f"{group} needs n_householder >= {need} in the permutation representation")
    hd = d_model // n_heads
    layer = nnx.eval_shape(lambda: DeltaProduct(d_model, n_heads=n_heads, n_householder=n_h,
                                                rngs=nnx.Rngs(0)))  # every weight set below
    h, n_g = n_heads, len(perms)
    wk = np.zeros((d_model, n_h, h, hd))
    wv = np.zeros((d_model, n_h, h, hd))
    m = hd // n  # copies of the n permuted coordinates: key coordinate i + n*r, r < m
    c = np.zeros((hd, hd))  # C: [K, V], constant along the copies (so S - C stays in them)
    for i in range(n):
        c[np.ix_([i + n * r for r in range(m)], [i + n * r for r in range(m)])] = scale_v / m
    for g, p in enumerate(perms):
        for j, (a, b) in enumerate(transpositions(p)):
            x = np.zeros(hd)
            x[[a + n * r for r in range(m)]] = 0.25
            x[[b + n * r for r in range(m)]] = -0.25
            wk[g, j, 0] = silu_inverse(x)
            k = x / np.sqrt(np.sum(x * x) + 1e-6)  # the layer's key after its L2 norm
            wv[g, j, 0] = silu_inverse(c.T @ k)
    q = np.tile(0.1 * (1.0 + np.arange(n)) ** 2, m)  # distinct entries, on every copy
    q = np.pad(q, (0, hd - len(q)))
    wq = np.zeros((d_model, h, hd))
    wq[:n_g, 0] = silu_inverse(q)
    w = np.zeros((layer.q_conv.kernel_size, 1))
    w[-1] = 1.0  # the short convolutions pass the current token through
    params = [
        (layer.q_proj.kernel, wq.reshape(d_model, -1)),
        (layer.k_proj.kernel, wk.reshape(d_model, -1)),
        (layer.v_proj.kernel, wv.reshape(d_model, -1)),
        (layer.b_proj.kernel, np.full(layer.b_proj.kernel.shape, 20.0)),  # beta = 2 sigmoid(20)
        (layer.g_proj.kernel, np.ones(layer.g_proj.kernel.shape)),  # output gate SiLU(1)
        (layer.o_proj.kernel, np.eye(h * hd, d_model)),
        (layer.o_norm.weight, np.ones(layer.o_norm.weight.shape)),
    ] + [(c.weight, np.broadcast_to(w, c.weight.shape))
         for c in (layer.q_conv, layer.k_conv, layer.v_conv)]
    for var, value in params:
        var.set_value(jnp.asarray(value, jnp.float32))
    leaves = jax.tree.leaves(nnx.state(layer))
    assert len(params) == len(leaves) and not any(isinstance(x, jax.ShapeDtypeStruct)
                                                  for x in leaves), "a weight was left unset"
    return layer, np.eye(n_g, d_model, dtype=np.float32)


def check_exact_layer(group: str = "S3", lengths: tuple[int, ...] = (32, 256, 1024),
                      n_seq: int = 8, seed: int = 0) -> dict[int, tuple[float, float]]:
    """Run :func:`exact_layer` on random words of each length; read out with the nearest of the
    |G| outputs of one-token words (a linear map plus bias: argmax_g f_g . y - |f_g|^2 / 2).
    Returns {length: (per-position accuracy, max |y_t - f_(label t)|)}."""
    layer, emb = exact_layer(group)
    table = synthetic.group_table(group)
    graphdef, state = nnx.split(layer)
    # the weights go in as an argument: with them closed over as constants, XLA:CPU (jax 0.10.2)
    # returned all zeros for a batch of 14 words of length 256 (an XLA constant-folding fault)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    rng = np.random.default_rng([seed, 31])
    out = {}
    for length in lengths:
        x = rng.integers(0, len(table), (len(table) + n_seq, length))
        x[: len(table), 0] = np.arange(len(table))  # word g...: position 0 gives f_g
        y = synthetic._prefix_products(x, table)
        h = np.asarray(run(state, jnp.asarray(emb[x])))
        f = h[: len(table), 0]  # [|G|, d_model]: the output after the one-token word g
        pred = np.argmax(h @ f.T - 0.5 * (f * f).sum(1), -1)
        out[length] = (float((pred == y).mean()), float(np.abs(h - f[y]).max()))
    return out


def with_start(x: np.ndarray, y: np.ndarray, token: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Prepend the start token (index |G|; label: the empty product, the identity 0)."""
    n = len(x)
    return (np.concatenate([np.full((n, 1), token, x.dtype), x], 1),
            np.concatenate([np.zeros((n, 1), y.dtype), y], 1))


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, start: bool,
             n_group: int = 6) -> float:
    """Per-position accuracy over the sequences' own positions (a start token is not counted)."""
    if start:
        x, _ = with_start(x, y, n_group)
    graphdef, state = nnx.split(model)
    pred = np.concatenate([np.asarray(_predict(graphdef)(state, x[i: i + 100]))
                           for i in range(0, len(x), 100)])
    return float((pred[:, int(start):] == y).mean())


def curriculum_lengths(steps: int, length: int) -> list[int]:
    """Train length per step: 4, 8, ... doubling up to ``length``; the stages below ``length``
    get 10% of the steps each (at most half of all steps), the final length the rest."""
    stages = [4]
    while stages[-1] * 2 < length:
        stages.append(stages[-1] * 2)
    stages = [s for s in stages if s < length]
    per = min(steps // 10, steps // (2 * max(1, len(stages))))
    plan = [s for s in stages for _ in range(per)]
    return plan + [length] * (steps - len(plan))


def fresh_batches(batch: int, length: int | list[int], seed: int, start: bool = False,
                  group: str = "S3"):
    """New word problems every step: tokens [batch, length], prefix products as labels (with
    ``start``, a start token first). ``length``: one length, or one per step (a curriculum)."""
    table = synthetic.group_table(group)
    rng = np.random.default_rng([seed, 777])
    plan = iter(length) if isinstance(length, list) else None
    while True:
        n = length if plan is None else next(plan)
        x = rng.integers(0, len(table), (batch, n))
        y = synthetic._prefix_products(x, table)
        x, y = x.astype(np.int32), y.astype(np.int32)
        yield with_start(x, y, len(table)) if start else (x, y)


def split(name: str, size: int, length: int, test_length: int, group: str = "S3"):
    s = synthetic.permutation(name, size=size, length=length, test_length=test_length,
                              group=group)
    return np.asarray(s.data["inputs"], np.int32), np.asarray(s.data["label"], np.int32)


LK, SILU = "identity", "silu"  # qk_activation: linear keys (either sign) or the default
VARIANTS = {  # name -> (qk_activation, n_h, fresh data, start token, curriculum, group)
    "shipped": (SILU, 2, False, False, False, "S3"),
    "fresh": (SILU, 2, True, False, False, "S3"),
    "fresh, linear keys": (LK, 2, True, False, False, "S3"),
    "fresh, linear keys, n_h=1": (LK, 1, True, False, False, "S3"),
    "fresh, linear keys, start token": (LK, 2, True, True, False, "S3"),
    **{f"S3 start+curr, linear keys, n_h={n}": (LK, n, True, True, True, "S3")
       for n in (1, 2, 3, 4)},
    "S3 start+curr, SiLU keys, n_h=2": (SILU, 2, True, True, True, "S3"),
    **{f"A5 start+curr, linear keys, n_h={n}": (LK, n, True, True, True, "A5") for n in (2, 4)},
    "S5 start+curr, linear keys, n_h=4": (LK, 4, True, True, True, "S5"),
}
DEFAULT = [f"S3 start+curr, linear keys, n_h={n}" for n in (1, 2, 3, 4)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    p.add_argument("--plot", default="repro_deltaproduct_s3_curriculum",
                   help="plot name under docs/")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    p.add_argument("--construction-only", action="store_true",
                   help="only the hand-built layer's check (seconds), no training")
    a = p.parse_args(argv)
    d, n_train, n_eval, lengths = 64, 4000, 500, (32, 256, 1024)
    if a.smoke:
        a.seeds, a.steps, a.length, n_train, n_eval = 1, 2, 8, 64, 8
        a.variants, d = ["S3 start+curr, linear keys, n_h=2"], 16
    clock = Clock()
    # smoke: no construction check (tests/layers/test_deltaproduct_s3_construction.py has it)
    for length, (acc, dev) in (check_exact_layer("S3", lengths) if not a.smoke else {}).items():
        print(f"hand-built DeltaProduct layer (library class, n_h=2), S3 at length {length}: "
              f"accuracy {acc:.3f}, max deviation from the class output {dev:.1e}", flush=True)
    if a.construction_only:
        clock.report()
        return {"construction": True}
    tests = (a.length,) if a.smoke else (a.length, 2 * a.length, 4 * a.length)
    data, res = {}, {}
    for name in a.variants:
        qk, n_h, fresh, start, curr, group = VARIANTS[name]
        n_group = len(synthetic.group_table(group))
        if group not in data:  # val split at the train length, test splits at 2x and 4x
            data[group] = [split("val", n_eval, a.length, a.length, group)] + [
                split("test", n_eval, a.length, t, group) for t in tests[1:]]
        if not fresh and group + "train" not in data:
            data[group + "train"] = split("train", n_train, a.length, a.length, group)

        def make(r, qk=qk, n_h=n_h):
            return DeltaProduct(d, n_heads=2, n_householder=n_h, allow_neg_eigval=True,
                                qk_activation=qk, rngs=r)

        accs, curves = [], []
        for seed in range(a.seeds):
            model = TinyLM(make, d_model=d, n_layers=1, d_ff=4 * d, vocab=n_group + start,
                           n_classes=n_group, rngs=nnx.Rngs(seed))
            plan = curriculum_lengths(a.steps, a.length) if curr else a.length
            batches_ = (fresh_batches(32, plan, seed, start, group) if fresh
                        else batches(*data[group + "train"], 32, seed))
            model, info = fit(model, batches_, a.steps, 3e-3, max(1, a.steps // 10))
            accs.append([accuracy(model, x, y, start, n_group) for x, y in data[group]])
            curves.append(info["loss"])
        accs = np.asarray(accs)  # [seeds, 3]
        res[name] = {"acc": accs, "curves": np.stack(curves), "group": group}
        tail = np.stack(curves)[:, -a.steps // 10:].mean()
        print(f"{name:34s} " + "  ".join(f"acc@{t} {spread(accs[:, i])}"
                                         for i, t in enumerate(tests))
              + f"  loss(last 10%) {tail:.3f}", flush=True)
        print(f"{'':34s} per seed @{tests[0]}: " + " ".join(f"{v:.3f}" for v in accs[:, 0])
              + f"; @{tests[-1]}: " + " ".join(f"{v:.3f}" for v in accs[:, -1]), flush=True)
    print(f"chance 1/|G| (S3 0.167, A5 0.017, S5 0.008); {a.steps} steps, batch 32, "
          f"{a.seeds} seeds")
    clock.report()
    plot(res, tests, a)
    return res


def plot(res: dict, tests: tuple[int, ...], a: argparse.Namespace) -> None:
    """Training loss per variant (mean over seeds) and accuracy at 1x / 2x / 4x length."""
    plt = pyplot()
    if plt is None:
        return
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, r) in enumerate(res.items()):
        m = r["curves"].mean(0)
        k = max(1, len(m) // 50)
        ax0.plot(np.convolve(m, np.ones(k) / k, "valid"), color=f"C{i}", label=name)
        for j, t in enumerate(tests):
            x = i + (j - 1) * 0.27
            ax1.bar(x, r["acc"][:, j].mean(), 0.27, yerr=r["acc"][:, j].std(),
                    color=f"C{j}", capsize=2, label=f"length {t}" if i == 0 else None)
            ax1.plot([x] * len(r["acc"]), r["acc"][:, j], "k.", ms=3)  # each seed
        chance = 1 / len(synthetic.group_table(r["group"]))
        ax1.hlines(chance, i - 0.45, i + 0.45, color="k", lw=0.6, ls=":")
    ax0.set(xlabel="step", ylabel="train loss (nats, mean over seeds)", yscale="log",
            title="one layer; curriculum variants: length 4 -> train length")
    ax0.legend(fontsize=7)
    ax1.set_xticks(range(len(res)), [n.replace(", ", "\n") for n in res], fontsize=6)
    ax1.set(ylabel="per-position accuracy", ylim=(0, 1.05),
            title=f"{a.seeds} seeds (dots: each seed; dotted: chance 1/|G|)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    out = figure_path(a.plot, a.smoke)
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
