"""Where an LRA training run spends its time, and the loop's overhead over the model's own work.

Runs ``Trainer.fit`` on a shipped LRA config (default ``lra/listops/s4d``: S4D 6 x 256, batch
32) for --steps steps, with every part of the loop timed: the next batch from the data stream,
placing it on the mesh, the compiled train step (waited for), metric logging, validation and
checkpoints. Then times, at the same batch shape, (a) the compiled train step called alone on
one fixed batch, and (b) the forward+backward of each part of the model alone (embedding,
each block, pooling and head), and reports

  loop overhead = (loop time per step - step alone) / step alone
  layers' share = sum of the parts' forward+backward / step alone  (the rest is the optimiser
                  update, the loss and what XLA fuses across parts)

    .venv/bin/python scripts/bench/bench_train_step.py --steps 40 --length 512
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
from flax import nnx

import seqlab.train.trainer as trainer_mod
from seqlab.config import load_config
from seqlab.train.checkpoint import Checkpoints
from seqlab.train.inputs import TrainStream, load_split
from seqlab.train.progress import Progress
from seqlab.train.run import make_trainer

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn, block: bool = False):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if block:
            jax.block_until_ready(out)
        TIMES[name].append(time.perf_counter() - t)
        return out
    return wrapper


def median_time(f, repeats: int) -> float:
    jax.block_until_ready(f())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def part_times(model, batch, repeats: int) -> dict[str, float]:
    """Forward+backward of each part alone (w.r.t. its parameters and its input)."""
    x = model.embed(jnp.asarray(batch["inputs"]))
    mask = jnp.asarray(batch["mask"])
    out = {}

    def fb(module, inp, fn, wrt=(0, 1)):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        g = jax.jit(jax.grad(lambda p, i: jnp.sum(fn(nnx.merge(graphdef, p, rest), i)), wrt))
        return median_time(lambda: g(params, inp), repeats)

    out["embedding"] = fb(model.embed, jnp.asarray(batch["inputs"]), lambda m, i: m(i), 0)
    for i, block in enumerate(model.backbone.blocks):
        out[f"block {i}"] = fb(block, x, lambda m, h: m(h, mask))
        x = block(x, mask)
    out["pool + head"] = fb(model, x, lambda m, h: m.head(
        jnp.sum(h * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="lra/listops/s4d")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--length", type=int, default=512, help="data max_length (CPU scale)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    cfg = load_config(a.config, [f"data.max_length={a.length}", "data.min_length=16",
                                 "data.sizes={train: 2000, val: 200, test: 200}"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=a.steps, eval_every=a.steps // 2, checkpoint_every=a.steps // 2,
        log_every=10, warmup_steps=5))
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    TrainStream.__next__ = timed("data: next batch", TrainStream.__next__)
    trainer_mod.shard_batch = timed("data: place on mesh", trainer_mod.shard_batch)
    Checkpoints.save = timed("checkpoint save", Checkpoints.save)
    Progress.flush = timed("metrics: log", Progress.flush)
    trainer_mod.Trainer._validate = timed("validation", trainer_mod.Trainer._validate)
    with tempfile.TemporaryDirectory() as workdir:
        tr = make_trainer(cfg, train.info, workdir, train_data=train, val_data=val)
        tr.train_step = timed("train step (waited)", tr.train_step, block=True)
        t = time.perf_counter()
        tr.fit()
        total = time.perf_counter() - t
    steps = a.steps
    first = TIMES["train step (waited)"][0]
    print(f"{a.config}, data max_length {a.length}, batch {cfg.train.batch_size}, {steps} "
          f"steps: fit {total:.1f} s (first step, compile included: {first:.1f} s)")
    rest = total - first
    for name, ts in sorted(TIMES.items(), key=lambda kv: -sum(kv[1])):
        s = sum(ts) - (first if name.startswith("train step") else 0)
        print(f"  {name:22s} {s:7.2f} s  ({100 * s / rest:5.1f}% of the loop after step 1; "
              f"{len(ts)} calls)")
    per_step_loop = rest / (steps - 1)
    batch = next(TrainStream(train, cfg.train.batch_size, seed=1, pad_to=cfg.data.pad_to))
    state = tr.state
    step_fn = trainer_mod.make_train_step(tr.graphdef, tr.shardings)
    placed = trainer_mod.shard_batch(batch, tr.mesh, cfg.train.batch_size)
    holder = [state]

    def one_step():  # the step donates its state: feed it its own output
        holder[0], m = step_fn(holder[0], placed)
        return m

    with jax.set_mesh(tr.mesh):
        alone = median_time(one_step, a.repeats)
    model = nnx.merge(tr.graphdef, holder[0])[0]  # the trainer's own state was donated
    model.eval()  # BatchNorm: running statistics, as the parts are timed alone
    parts = part_times(model, batch, a.repeats)
    print(f"train step alone (one batch of length {batch['inputs'].shape[1]}): {alone:.3f} s; "
          f"loop per step after step 1: {per_step_loop:.3f} s -> overhead "
          f"{100 * (per_step_loop - alone) / alone:+.1f}% (batches differ in length: pow2 "
          f"padding)")
    for name, s in parts.items():
        print(f"  fwd+bwd {name:12s} {s:.3f} s")
    print(f"  sum of parts {sum(parts.values()):.3f} s = {100 * sum(parts.values()) / alone:.0f}% "
          "of the step alone")


if __name__ == "__main__":
    main()
