"""Your own training loop over seqlab layers: a hand-written nnx.Module mixing an S4D layer and
an attention layer, trained with plain optax on a task that needs the whole sequence (does
token 3 occur more often than token 2?). No seqlab trainer, config or data source involved.

    python examples/optax_loop.py            # ~1 minute on a laptop CPU
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seqlab.layers import S4D, MultiHeadAttention


class Net(nnx.Module):
    """Embedding -> [S4D, attention] with pre-norm residuals -> mean pool -> 2 logits."""

    def __init__(self, vocab: int, d_model: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
        self.mixers = nnx.List([S4D(d_model, d_state=16, causal=False, rngs=rngs),
                                MultiHeadAttention(d_model, n_heads=2, causal=False, rngs=rngs)])
        self.norms = nnx.List([nnx.LayerNorm(d_model, rngs=rngs) for _ in self.mixers])
        self.head = nnx.Linear(d_model, 2, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)                                   # [batch, length, d_model]
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            x = x + mixer(norm(x))
        return self.head(x.mean(axis=1))                         # [batch, 2]


def make_task(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 4, size=(n, length))
    return x, ((x == 3).sum(1) > (x == 2).sum(1)).astype(np.int32)


def main(steps: int = 300, d_model: int = 32, length: int = 32, batch: int = 32,
         seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    model = Net(4, d_model, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=0.01), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = []
    for _ in range(steps):
        losses.append(float(step(model, optimizer, *make_task(rng, batch, length))))
    x, y = make_task(rng, 256, length)
    accuracy = float((jnp.argmax(nnx.jit(lambda m, x: m(x))(model, x), -1) == y).mean())
    return {"first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
            "accuracy": accuracy}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    print(main(p.parse_args().steps))
