"""Autoregressive sampling from any causal language model with decode caches.

The model follows the LM API of ``seqlab.models``: ``model.init_cache(batch_size, max_length,
dtype)`` and ``model.decode(tokens [B, t] int32, cache) -> (logits [B, t, vocab], cache)``.
One compiled prefill consumes the prompt; one compiled ``lax.scan`` then samples every new token
(one decode step per token), so the cost per token is one cached decode step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def filter_logits(
    logits: jax.Array, temperature: float, top_k: int | None, top_p: float | None
) -> jax.Array:
    """logits [B, vocab] -> the logits to sample from (filtered entries set to -inf).

    Divides by ``temperature``; keeps the ``top_k`` largest; keeps the smallest set of most
    likely tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020).
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is below top_p (the first is always kept)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order
        ].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _check(prompt: jax.Array, max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_tokens must be [batch, length >= 1] int, got {prompt.shape}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p}")


def generate(
    model: nnx.Module,
    prompt_tokens: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> jax.Array:
    """Sample ``max_new_tokens`` tokens after ``prompt_tokens`` [batch, prompt_length] (int).

    temperature 0 is greedy decoding (argmax); otherwise tokens are drawn from
    ``softmax(logits / temperature)`` after the optional top-k / top-p filters, with the random
    stream of ``seed``. Returns [batch, prompt_length + max_new_tokens] int32 (prompt included).
    The model runs in eval mode (dropout off) on a merged copy; the caller's model is untouched.
    """
    prompt = jnp.asarray(prompt_tokens, jnp.int32)
    _check(prompt, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return prompt
    batch, length = prompt.shape
    graphdef, state = nnx.split(model)

    def sample(logits: jax.Array, key: jax.Array) -> jax.Array:
        if temperature == 0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = filter_logits(logits, temperature, top_k, top_p)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    @jax.jit
    def run(state, prompt, key):
        m = nnx.merge(graphdef, state)
        m.eval()
        cache = m.init_cache(batch, length + max_new_tokens)
        logits, cache = m.decode(prompt, cache)  # prefill
        keys = jax.random.split(key, max_new_tokens)
        first = sample(logits[:, -1], keys[0])

        def step(carry, key):
            token, cache = carry
            logits, cache = m.decode(token[:, None], cache)
            nxt = sample(logits[:, -1], key)
            return (nxt, cache), nxt

        _, rest = lax.scan(step, (first, cache), keys[1:])
        return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)

    return run(state, prompt, jax.random.key(seed))
