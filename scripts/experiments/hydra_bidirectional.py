"""Hydra (Hwang, Lahoti, Dao, Gu 2024, 'Hydra: Bidirectional State Space Models Through
Generalized Matrix Mixers', Sec. 4 and the ablation of bidirectional methods in Sec. 5): the
quasiseparable mixer beats the heuristic ways of making a causal SSM bidirectional (a forward
and a backward Mamba-2 combined by addition, concatenation or element-wise product) at equal
parameter counts.

Variants (``seqlab.layers``): ``Hydra``; ``Bidirectional(combine=add | concat | mul)`` of two
Mamba-2 copies with ``expand=1`` (each copy about half of Hydra's ``expand=2`` layer); and one
causal ``Mamba2`` (``expand=2``) as the lower-bound control. All share d_state and head_dim;
the MLP width ``d_ff`` of the small model (``scripts/experiments/_lm.py``: embedding,
``n_layers`` x [mixer, MLP], head) brings every model to the Hydra model's parameter count.

Tasks:
(a) nearest markers, a synthetic task that needs both directions: random sequences of noise
    tokens with sparse marker tokens carrying a value in [0, K); the label at every position is
    ``(value of the nearest marker to the left + value of the nearest marker to the right) mod
    K`` (0 where there is none). A causal model sees only the left marker, so it is at chance
    (1/K) except near the end; markers are on average ``1 / p`` tokens apart, beyond the short
    convolutions. Metric: per-position accuracy on 512 held-out sequences.
(b) masked byte-level language modelling on the Python standard library's source
    (``seqlab.data.stdlib_text``; the last 500,000 of 8,000,000 bytes held out): 15% of the
    input bytes replaced by a mask token (id 256; no 80/10/10 split), the loss on the masked
    positions only. Metric: bits per masked byte on 64 held-out windows with a fixed mask.

Every model is trained with AdamW (the schedule of ``_lm.fit``) for the same number of steps,
3 seeds each (the seed sets the initialisation and the data order). Mean ± std over seeds.

Budget: 30 minutes on the 2-core CPU (30 runs of 400 steps at d_model 32): measured 824 s at a
load average of 4.6-5.6 (2,748 s at 10-14); ``--smoke``: seconds (one variant, compiled once).

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/hydra_bidirectional.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import LOG2E, Corpus, LMSetup, TinyLM, d_ff_for_params, n_params
from seqlab.data.stdlib_text import corpus_info
from seqlab.layers import Bidirectional, Hydra, Mamba2

MASK_ID, MASK_P = 256, 0.15
PAPER = ("the paper's ablation of bidirectional methods (Sec. 5) reports that the "
         "quasiseparable mixer (Hydra) reaches the best MLM pretraining and GLUE scores of "
         "add / concat / mult / quasiseparable at matched parameters; the exact table values "
         "were not available to this script's author and are not quoted")


def variants(d_model: int, d_state: int, head_dim: int) -> dict[str, Callable]:
    """name -> mixer factory ``make(rngs)``."""
    ssm = dict(d_state=d_state, head_dim=head_dim)
    out = {"Hydra": lambda r: Hydra(d_model, expand=2, rngs=r, **ssm)}
    for c in ("add", "concat", "mul"):
        out[c] = lambda r, c=c: Bidirectional(d_model, combine=c, expand=1, rngs=r, **ssm)
    out["causal Mamba-2"] = lambda r: Mamba2(d_model, expand=2, rngs=r, **ssm)
    return out


# ---- (a) nearest markers ---------------------------------------------------------------------
def markers_batch(rng: np.random.Generator, batch: int, length: int, k: int, noise: int,
                  p: float) -> tuple[np.ndarray, np.ndarray]:
    """tokens [batch, length] (markers 0..k-1 carry their value; noise k..k+noise-1), labels
    [batch, length]: (nearest marker value on the left + on the right) mod k, 0 where none."""
    is_marker = rng.random((batch, length)) < p
    tokens = np.where(is_marker, rng.integers(0, k, (batch, length)),
                      rng.integers(k, k + noise, (batch, length)))
    pos = np.arange(length)
    left = np.zeros((batch, length), np.int64)
    right = np.zeros((batch, length), np.int64)
    for b in range(batch):
        where = np.flatnonzero(is_marker[b])
        if len(where) == 0:
            continue
        i = np.searchsorted(where, pos, side="left") - 1  # nearest marker at s < t
        left[b] = np.where(i >= 0, tokens[b, where[np.clip(i, 0, None)]], 0)
        j = np.searchsorted(where, pos, side="right")  # nearest marker at s > t
        right[b] = np.where(j < len(where), tokens[b, where[np.clip(j, None, len(where) - 1)]],
                            0)
    return tokens.astype(np.int32), ((left + right) % k).astype(np.int32)


# ---- (b) masked byte-level LM ----------------------------------------------------------------
def mask_bytes(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs with MASK_P of the bytes replaced by MASK_ID, weights: 1.0 at masked bytes)."""
    m = rng.random(x.shape) < MASK_P
    return np.where(m, MASK_ID, x).astype(np.int32), m.astype(np.float32)


# ---- training ------------------------------------------------------------------------------
def weighted_ce(model: nnx.Module, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
    """Cross-entropy (nats) averaged over the positions with weight 1."""
    ce = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


# XLA without its expensive optimisation passes (--smoke: compile time dominates)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=32)
def _step_fn(graphdef: nnx.GraphDef, steps: int, lr: float, warmup: int, fast: bool = False):
    """AdamW with the schedule of ``_lm.fit`` (cached per structure: seeds compile once)."""
    jit = functools.partial(jax.jit, compiler_options=FAST if fast else None)
    warm = min(warmup, max(1, steps // 2))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1), lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1))

    @jit
    def step(params, rest, opt_state, x, y, w):
        loss, grads = jax.value_and_grad(
            lambda p: weighted_ce(nnx.merge(graphdef, p, rest), x, y, w))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jit
    def scores(params, rest, x, y, w):
        logits = nnx.merge(graphdef, params, rest)(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        hit = (logits.argmax(-1) == y).astype(jnp.float32)
        return (ce * w).sum() / w.sum(), (hit * w).sum() / w.sum()

    return tx, step, scores


def fit(model: nnx.Module, batches: Iterator, steps: int, lr: float, warmup: int,
        val: tuple, fast: bool = False) -> dict:
    """Train on ``batches`` of (x, y, w); return train losses, s/step and the validation
    (cross-entropy in nats, accuracy) on ``val`` = (x, y, w)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, step, scores = _step_fn(graphdef, steps, lr, warmup, fast)
    opt_state = tx.init(params)
    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, rest, opt_state, *next(batches))
        if i == 0:
            loss.block_until_ready()
            t0 = time.perf_counter()  # the first step includes compilation
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses))
    s_per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    ce, acc = scores(params, rest, *map(jnp.asarray, val))
    return {"loss": losses, "val_ce": float(ce), "val_acc": float(acc), "s_per_step": s_per_step}


@dataclasses.dataclass
class Task:
    name: str
    vocab: int
    n_classes: int
    batches: Callable[[int], Iterator]  # seed -> iterator of (x, y, w)
    val: tuple


def markers_task(a: argparse.Namespace) -> Task:
    def batches(seed: int):
        rng = np.random.default_rng(seed)
        while True:
            x, y = markers_batch(rng, a.batch, a.length, a.k, a.noise, a.p)
            yield x, y, np.ones(y.shape, np.float32)

    x, y = markers_batch(np.random.default_rng(10**6), a.val_size, a.length, a.k, a.noise, a.p)
    return Task("nearest markers", a.k + a.noise, a.k, batches,
                (x, y, np.ones(y.shape, np.float32)))


def mlm_task(a: argparse.Namespace, setup: LMSetup) -> Task:
    corpus = Corpus(setup)
    print(corpus_info(corpus.data))

    def batches(seed: int):
        rng = np.random.default_rng(seed + 7)
        for x, _ in corpus.batches(setup.batch, seed):
            xin, w = mask_bytes(rng, x)
            yield xin, x, w

    xin, w = mask_bytes(np.random.default_rng(12345), corpus.val[0])
    return Task("masked byte LM", MASK_ID + 1, 256, batches, (xin, corpus.val[0], w))


def builder(make: Callable, task: Task, d_ff: int, a: argparse.Namespace) -> Callable:
    """seed -> TinyLM, initialised in one compiled call (eager initialisation compiles every
    distinct random op on its own: slow on CPU); the same parameters as ``nnx.Rngs(seed)``."""
    def new(rngs: nnx.Rngs) -> TinyLM:
        return TinyLM(make, d_model=a.d_model, n_layers=a.n_layers, d_ff=d_ff, rngs=rngs,
                      vocab=task.vocab, n_classes=task.n_classes)

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: new(nnx.Rngs(0))))
    init = jax.jit(lambda key: nnx.state(new(nnx.Rngs(key))),
                   compiler_options=FAST if a.smoke else None)
    return lambda seed: nnx.merge(graphdef, init(jax.random.key(seed)))


def run_task(task: Task, makes: dict, d_ffs: dict, a: argparse.Namespace) -> dict:
    rows = {}
    for name, make in makes.items():
        vals, accs, curves, speed = [], [], [], []
        build = builder(make, task, d_ffs[name], a)
        for seed in range(a.seeds):
            model = build(seed)
            params = n_params(model)
            info = fit(model, task.batches(seed), a.steps, a.lr, a.warmup, task.val, a.smoke)
            vals.append(info["val_ce"] * LOG2E)
            accs.append(info["val_acc"])
            curves.append(info["loss"] * LOG2E)
            speed.append(info["s_per_step"])
            print(f"  {task.name} | {name} seed {seed}: val {vals[-1]:.4f} bits, "
                  f"acc {accs[-1]:.4f}", flush=True)
        rows[name] = {"params": params, "d_ff": d_ffs[name], "bits": vals, "acc": accs,
                      "curves": np.stack(curves), "s_per_step": float(np.mean(speed))}
        print(f"{task.name} | {name}: params {params:,} (d_ff {d_ffs[name]}), accuracy "
              f"{spread(accs)}, bits {spread(vals)}, {rows[name]['s_per_step']:.3f} s/step",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--k", type=int, default=4, help="marker values (chance = 1/k)")
    p.add_argument("--noise", type=int, default=12, help="noise token kinds")
    p.add_argument("--p", type=float, default=0.08, help="marker probability per position")
    p.add_argument("--val-size", type=int, default=512)
    p.add_argument("--tasks", default="markers,mlm")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    setup = LMSetup(d_model=a.d_model, n_layers=a.n_layers, length=a.length, batch=a.batch)
    if a.smoke:
        a.seeds, a.steps, a.d_model, a.n_layers, a.d_state, a.head_dim = 1, 2, 8, 1, 4, 8
        a.length, a.batch, a.val_size = 16, 2, 2
        setup = dataclasses.replace(setup, d_model=8, n_layers=1, length=16, batch=2,
                                    corpus_bytes=20_000, val_bytes=2_000, val_windows=2)
    clock = Clock()
    makes = variants(a.d_model, a.d_state, a.head_dim)
    target = n_params(nnx.eval_shape(lambda: TinyLM(
        makes["Hydra"], d_model=a.d_model, n_layers=a.n_layers, d_ff=4 * a.d_model,
        rngs=nnx.Rngs(0))))
    d_ffs = {name: d_ff_for_params(make, target, setup) for name, make in makes.items()}
    mixer_params = {name: n_params(nnx.eval_shape(lambda m=make: m(nnx.Rngs(0))))
                    for name, make in makes.items()}
    print("parameters per mixer layer: " + ", ".join(f"{k} {v:,}" for k, v in
                                                      mixer_params.items()))
    results = {}
    for t in a.tasks.split(","):
        task = markers_task(a) if t == "markers" else mlm_task(a, setup)
        run = makes
        if a.smoke:  # compile time dominates: one variant, one shape (compiled once)
            run = {"add": makes["add"]}
            task = dataclasses.replace(task, vocab=MASK_ID + 1, n_classes=256)
        results[task.name] = run_task(task, run, d_ffs, a)
    print(f"\nPaper: {PAPER}.")
    for tname, rows in results.items():
        metric = "accuracy" if tname == "nearest markers" else "bits / masked byte"
        print(f"\n{tname}: variant, params, {metric} (mean ± std over seeds)")
        for name, r in rows.items():
            v = r["acc"] if tname == "nearest markers" else r["bits"]
            print(f"  {name:15s} {r['params']:8,d}  {spread(v, '.4f')}")
    clock.report()
    _plot(results, a)
    return results


def _plot(results: dict, a: argparse.Namespace) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2 * len(results), figsize=(6 * len(results) + 2, 4),
                             squeeze=False)
    for i, (tname, rows) in enumerate(results.items()):
        ax, axc = axes[0, 2 * i], axes[0, 2 * i + 1]
        key = "acc" if tname == "nearest markers" else "bits"
        for j, (name, r) in enumerate(rows.items()):
            v = np.asarray(r[key])
            ax.bar(j, v.mean(), yerr=v.std(), color=f"C{j}", capsize=4, alpha=0.7)
            ax.plot(np.full(len(v), j), v, "k.", ms=4)
            m = r["curves"].mean(0)
            k = max(1, len(m) // 40)
            axc.plot(np.convolve(m, np.ones(k) / k, "valid"), color=f"C{j}", label=name)
        ax.set_xticks(range(len(rows)), [f"{n}\n{r['params']:,}" for n, r in rows.items()],
                      fontsize=7)
        if key == "acc":
            ax.axhline(1 / a.k, color="gray", ls="--", lw=1, label="chance")
            ax.legend(fontsize=7)
        ax.set(title=f"{tname}: held-out, {a.seeds} seeds",
               ylabel="accuracy" if key == "acc" else "bits / masked byte")
        if key == "bits":
            lo = min(np.min(r["bits"]) for r in rows.values())
            ax.set_ylim(lo - 0.3, None)
        axc.set(title=f"{tname}: training", xlabel="step", ylabel="train bits (mean of seeds)")
        axc.legend(fontsize=7)
    fig.tight_layout()
    out = figure_path("repro_hydra_bidirectional", a.smoke)
    fig.savefig(out, dpi=100)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
