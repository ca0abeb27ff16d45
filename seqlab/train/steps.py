"""The compiled train and eval steps (functional: nnx.merge -> update -> nnx.state).

Auxiliary losses: a module adds a scalar to the training objective with
``self.sow(nnx.Intermediate, "aux_loss", value)`` (DSA's indexer KL does, in training mode).
The train step runs the forward under ``nnx.capture(..., nnx.Intermediate)``, adds the sum of
every sown ``aux_loss`` to the differentiated loss and reports it as ``metrics["aux_loss"]``.
Captured values live only inside the step, so the returned state never holds Intermediate
variables and its structure is the same every step. The eval step captures and discards them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

AUX_LOSS = "aux_loss"


def forward(model: nnx.Module, batch: dict) -> jax.Array:
    """Logits of ``model`` on a batch (the format of seqlab/data/types.py):
    ``model(inputs, mask)``, or ``model(inputs, mask, inputs2, mask2)`` for pairs."""
    if "inputs2" in batch:
        return model(batch["inputs"], batch["mask"], batch["inputs2"], batch["mask2"])
    return model(batch["inputs"], batch["mask"])


def forward_with_aux(model: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
    """-> (logits, aux): aux is the float32 sum of every scalar sown as ``aux_loss`` during the
    forward (0 when none); sown values of other names are ignored."""
    logits, sown = nnx.capture(forward, nnx.Intermediate)(model, batch)
    aux = jnp.zeros((), jnp.float32)
    for path, var in nnx.to_flat_state(sown):
        if path[-1] != AUX_LOSS:
            continue
        for value in jax.tree.leaves(var.get_value()):  # one per call of the module
            if jnp.ndim(value) != 0:
                name = "/".join(map(str, path))
                raise ValueError(f"{name}: an aux_loss must be a scalar, got shape "
                                 f"{jnp.shape(value)}")
            aux = aux + jnp.asarray(value, jnp.float32)
    return logits, aux


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


def make_train_step(graphdef: nnx.GraphDef, state_shardings: Any) -> Callable:
    """(state, batch) -> (state, metrics); the state is donated and keeps its shardings, so
    the step compiles once per batch shape. ``metrics["loss"]`` is the differentiated loss
    (cross-entropy + ``aux_loss``); ``loss_sum / count`` is the cross-entropy alone."""

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=(state_shardings, None))
    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def loss_fn(m):
            logits, aux = forward_with_aux(m, batch)
            loss, sums = loss_and_counts(logits, batch)
            return loss + aux, (sums, aux)

        (loss, (sums, aux)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        metrics = dict(sums, loss=loss, aux_loss=aux, grad_norm=optax.tree.norm(grads))
        return nnx.state((model, optimizer)), metrics

    return train_step


def make_eval_step(model_graphdef: nnx.GraphDef) -> Callable:
    """(model_state, batch) -> sums {loss_sum, correct, count}."""

    @jax.jit
    def eval_step(model_state, batch):
        model = nnx.merge(model_graphdef, model_state)
        model.eval()
        logits, _ = forward_with_aux(model, batch)  # anything sown is discarded
        return loss_and_counts(logits, batch)[1]

    return eval_step
