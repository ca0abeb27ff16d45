"""A small byte-level language model over any seqlab mixer, and a plain optax training loop.

Data: the Python standard library's source (``seqlab.data.stdlib_text``), the first
``corpus_bytes`` bytes: the last ``val_bytes`` of them are held out for validation. Training
batches are windows at uniformly random offsets (seeded); validation is a fixed set of windows.

Model: byte embedding -> ``n_layers`` x [x + mixer(RMSNorm(x)); x + MLP(RMSNorm(x))] -> RMSNorm
-> linear head over 256 bytes. ``d_ff`` (the MLP width) is the knob that equalises parameter
counts across mixers (:func:`d_ff_for_params`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqlab.data.stdlib_text import stdlib_bytes

VOCAB = 256
LOG2E = 1.4426950408889634


@dataclasses.dataclass(frozen=True)
class LMSetup:
    """Sizes of the model, the data and the optimiser (defaults: the 2-core CPU budget)."""

    d_model: int = 128
    n_layers: int = 2
    length: int = 128
    batch: int = 32
    steps: int = 800
    lr: float = 3e-3
    warmup: int = 50
    corpus_bytes: int = 8_000_000
    val_bytes: int = 500_000
    val_windows: int = 64


class Corpus:
    """Train / validation byte windows: inputs [batch, length], labels (the next bytes)."""

    def __init__(self, setup: LMSetup):
        data = stdlib_bytes(setup.corpus_bytes)
        self.data, self.length = data, setup.length
        self.train = data[: len(data) - setup.val_bytes]
        val = data[len(data) - setup.val_bytes:]
        span = setup.length + 1
        starts = np.linspace(0, len(val) - span, setup.val_windows).astype(np.int64)
        w = np.stack([val[s: s + span] for s in starts]).astype(np.int32)
        self.val = (w[:, :-1], w[:, 1:])

    def batches(self, batch: int, seed: int):
        rng = np.random.default_rng(seed)
        span = self.length + 1
        while True:
            s = rng.integers(0, len(self.train) - span, batch)
            w = self.train[s[:, None] + np.arange(span)].astype(np.int32)
            yield w[:, :-1], w[:, 1:]


class TinyLM(nnx.Module):
    """tokens [batch, length] int in [0, vocab) -> logits [batch, length, n_classes]."""

    def __init__(self, make_mixer: Callable[[nnx.Rngs], nnx.Module], *, d_model: int,
                 n_layers: int, d_ff: int, rngs: nnx.Rngs, vocab: int = VOCAB,
                 n_classes: int = VOCAB):
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
        self.mixers = nnx.List([make_mixer(rngs) for _ in range(n_layers)])
        self.norm1 = nnx.List([nnx.RMSNorm(d_model, rngs=rngs) for _ in range(n_layers)])
        self.norm2 = nnx.List([nnx.RMSNorm(d_model, rngs=rngs) for _ in range(n_layers)])
        self.ff_in = nnx.List([nnx.Linear(d_model, d_ff, rngs=rngs) for _ in range(n_layers)])
        self.ff_out = nnx.List([nnx.Linear(d_ff, d_model, rngs=rngs) for _ in range(n_layers)])
        self.norm_f = nnx.RMSNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, n_classes, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        for mix, n1, n2, fi, fo in zip(self.mixers, self.norm1, self.norm2, self.ff_in,
                                       self.ff_out, strict=True):
            x = x + mix(n1(x))
            x = x + fo(jax.nn.gelu(fi(n2(x))))
        return self.head(self.norm_f(x))


def n_params(module: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def d_ff_for_params(make_mixer: Callable[[nnx.Rngs], nnx.Module], target: int,
                    setup: LMSetup) -> int:
    """The MLP width that brings the model's parameter count closest to ``target``."""
    def count(d_ff: int) -> int:
        m = nnx.eval_shape(lambda: TinyLM(make_mixer, d_model=setup.d_model,
                                          n_layers=setup.n_layers, d_ff=d_ff, rngs=nnx.Rngs(0)))
        return n_params(m)

    base, per = count(1), count(2) - count(1)
    return max(1, round(1 + (target - base) / per))


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy in nats."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def evaluate(model: nnx.Module, corpus: Corpus) -> float:
    """Validation loss in bits per byte over the fixed validation windows."""
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x, y: loss_fn(nnx.merge(graphdef, s), x, y))
    return float(f(state, *map(jnp.asarray, corpus.val))) * LOG2E


def train(model: nnx.Module, corpus: Corpus, setup: LMSetup, seed: int, steps: int | None = None,
          lr: float | None = None, warmup: int | None = None,
          log_every: int = 0) -> tuple[nnx.Module, dict]:
    """:func:`fit` on random training windows of ``corpus`` (seeded by ``seed``); ``steps``,
    ``lr``, ``warmup`` default to the setup's. Losses are reported in bits per byte."""
    steps = setup.steps if steps is None else steps
    lr = setup.lr if lr is None else lr
    warmup = setup.warmup if warmup is None else warmup
    model, info = fit(model, corpus.batches(setup.batch, seed), steps, lr, warmup, log_every)
    return model, {**info, "loss": info["loss"] * LOG2E}


@functools.lru_cache(maxsize=64)
def _step_fn(graphdef: nnx.GraphDef, steps: int, lr: float, warmup: int):
    """(optimiser, jitted train step) for a model structure and schedule: cached, so that seeds
    of one configuration compile once."""
    warm = min(warmup, max(1, steps // 2))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1), lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1))

    @jax.jit
    def step(params, rest, opt_state, x, y):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p, rest), x, y)

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


def fit(model: nnx.Module, batches: Iterator, steps: int, lr: float, warmup: int,
        log_every: int = 0) -> tuple[nnx.Module, dict]:
    """Minimise :func:`loss_fn` over ``steps`` batches ``(x, y)`` of ``batches``: AdamW (b2 0.95,
    weight decay 0.1, clip 1.0), linear warm-up then cosine decay to 10% of ``lr``.
    Returns the trained model and {"loss": train losses per step (nats), "s_per_step"}."""
    if steps == 0:
        return model, {"loss": np.zeros(0), "s_per_step": 0.0}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, step = _step_fn(graphdef, steps, lr, warmup)
    opt_state = tx.init(params)
    losses, t0 = [], None
    for i in range(steps):
        x, y = next(batches)
        params, opt_state, loss = step(params, rest, opt_state, x, y)
        if i == 0:
            loss.block_until_ready()
            t0 = time.perf_counter()  # the first step includes compilation
        losses.append(loss)
        if log_every and (i + 1) % log_every == 0:
            print(f"    step {i + 1}: train loss {float(loss):.4f}", flush=True)
    losses = np.asarray(jax.device_get(losses))
    s_per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    return nnx.merge(graphdef, params, rest), {"loss": losses, "s_per_step": s_per_step}
