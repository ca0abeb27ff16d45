"""Sampling against numpy: ``filter_logits`` and the distribution ``generate`` draws from.

The reference applies the definitions directly (temperature divides the logits; top-k keeps the
k largest; top-p keeps the smallest set of most likely tokens whose mass reaches p, Holtzman et
al. 2020, applied after top-k as in HF transformers), so an error in seqlab's filter cannot be
shared by the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

import seqlab
from seqlab.sampling import filter_logits


def filtered_probs(logits: np.ndarray, temperature: float, top_k, top_p) -> np.ndarray:
    """Sampling distribution [B, V] (float64) of one row of logits per example."""
    out = np.zeros(logits.shape)
    for b, row in enumerate(np.asarray(logits, np.float64)):
        z = row / temperature
        keep = np.ones(row.size, bool)
        order = sorted(range(row.size), key=lambda i: -z[i])
        if top_k is not None:
            keep[:] = False
            keep[order[:top_k]] = True
        if top_p is not None:
            p = np.exp(z - z[keep].max()) * keep
            p /= p.sum()
            mass, kept = 0.0, np.zeros(row.size, bool)
            for i in order:
                if not keep[i] or mass >= top_p:
                    continue
                kept[i] = True
                mass += p[i]
            keep = kept
        p = np.exp(z - z[keep].max()) * keep
        out[b] = p / p.sum()
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(0.5, None, None), (2.0, None, None), (0.7, 6, None), (1.5, None, 0.8), (0.6, 5, 0.9),
     (3.0, 7, 0.5), (1.0, 1, None)],
)
def test_filter_logits_matches_numpy(temperature, top_k, top_p):
    logits = np.random.default_rng(0).standard_normal((3, 11)) * 2
    got = np.asarray(jax.jit(filter_logits, static_argnums=(1, 2, 3))(
        jnp.asarray(logits, jnp.float32), temperature, top_k, top_p))
    want = filtered_probs(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(got), want > 0)  # the kept set
    probs = _softmax(np.where(np.isfinite(got), got, -np.inf))
    assert_close(probs, want, rtol=1e-5, atol=1e-7)


class FixedLM(nnx.Module):
    """A causal 'model' whose next-token logits are the same fixed vector at every step."""

    def __init__(self, logits: np.ndarray):
        self.logits = nnx.Variable(jnp.asarray(logits, jnp.float32))

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> dict:
        return {"pos": jnp.zeros((), jnp.int32)}

    def decode(self, tokens, cache):
        b, t = tokens.shape
        logits = jnp.broadcast_to(self.logits[...], (b, t, self.logits.shape[-1]))
        return logits, {"pos": cache["pos"] + t}


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.5, None, None), (2.0, 5, 0.9)])
def test_generate_draws_from_the_filtered_distribution(temperature, top_k, top_p):
    """Empirical frequencies of 3 x 3000 draws against the numpy distribution (each within
    5 binomial standard deviations: a wrong temperature moves some token by > 20 of them)."""
    logits = np.array([2.0, 1.2, 0.9, 0.3, 0.0, -0.4, -1.0, -2.5])
    want = filtered_probs(logits[None], temperature, top_k, top_p)[0]
    n = 3000
    out = seqlab.generate(FixedLM(logits), jnp.zeros((n, 1), jnp.int32), 3,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=1)
    draws = np.asarray(out[:, 1:]).ravel()
    freq = np.bincount(draws, minlength=logits.size) / draws.size
    sd = np.sqrt(want * (1 - want) / draws.size)
    assert np.all(freq[want == 0] == 0), freq
    assert np.all(np.abs(freq - want) <= 5 * sd + 1e-12), (freq, want)


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"top_p": -0.5}, {"top_p": 1.5}, {"top_k": 0},
                                 {"temperature": -1.0}])
def test_bad_sampling_arguments_are_clear_errors(bad):
    """The boundaries of _check: top_p in (0, 1], top_k >= 1, temperature >= 0."""
    kwargs = dict({"temperature": 1.0, "top_k": None, "top_p": None}, **bad)
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        seqlab.generate(FixedLM(np.zeros(4)), jnp.zeros((1, 1), jnp.int32), 1, **kwargs)
    if bad == {"top_p": 1.5}:  # while the upper end itself is allowed
        seqlab.generate(FixedLM(np.zeros(4)), jnp.zeros((1, 1), jnp.int32), 1, top_p=1.0)


def test_generate_lengths():
    """0 new tokens returns the prompt; 1 returns one more (the prefill's sample alone)."""
    prompt = jnp.array([[3, 1]], jnp.int32)
    lm = FixedLM(np.array([0.0, 0.0, 9.0, 0.0]))
    np.testing.assert_array_equal(seqlab.generate(lm, prompt, 0), prompt)
    np.testing.assert_array_equal(seqlab.generate(lm, prompt, 1, temperature=0.0), [[3, 1, 2]])
