"""The compiled train and eval steps (functional: nnx.merge -> update -> nnx.state)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def forward(model, batch: dict) -> jax.Array:
    return model(batch["inputs"], batch["mask"], batch.get("inputs2"), batch.get("mask2"))


def loss_and_counts(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Weighted cross-entropy. Sequence tasks: one target per example (weight = batch weight);
    token tasks: every position with label >= 0 at a real position.

    Returns (mean loss, sums) with sums = {loss_sum, correct, count} for exact aggregation."""
    labels, weights = batch["labels"], batch["weights"].astype(jnp.float32)
    if labels.ndim == 2:  # token task: [B, L]
        w = weights[:, None] * ((labels >= 0) & batch["mask"]).astype(jnp.float32)
    else:
        w = weights
    safe = jnp.maximum(labels, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    correct = (jnp.argmax(logits, -1) == safe).astype(jnp.float32)
    count = w.sum()
    sums = {"loss_sum": (nll * w).sum(), "correct": (correct * w).sum(), "count": count}
    return sums["loss_sum"] / jnp.maximum(count, 1.0), sums


def make_train_step(graphdef, state_shardings):
    """(state, batch) -> (state, metrics); the state is donated and keeps its shardings, so
    the step compiles once per batch shape."""

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=(state_shardings, None))
    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def loss_fn(m):
            return loss_and_counts(forward(m, batch), batch)

        (loss, sums), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        metrics = dict(sums, loss=loss, grad_norm=optax.tree.norm(grads))
        return nnx.state((model, optimizer)), metrics

    return train_step


def make_eval_step(model_graphdef):
    """(model_state, batch) -> sums {loss_sum, correct, count}."""

    @jax.jit
    def eval_step(model_state, batch):
        model = nnx.merge(model_graphdef, model_state)
        model.eval()
        return loss_and_counts(forward(model, batch), batch)[1]

    return eval_step
