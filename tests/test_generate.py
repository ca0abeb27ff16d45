"""seqlab.generate (seqlab/sampling.py): cached decoding == recomputing the prefix; filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqlab
from seqlab.config import ModelConfig, TaskInfo
from seqlab.models import build_model
from seqlab.sampling import filter_logits

INFO = TaskInfo(task="token", n_classes=13, vocab_size=13, input_dim=None, max_length=32,
                causal=True)


def lm(mixer, **args):
    cfg = ModelConfig(mixer=mixer, d_model=16, n_layers=2, mixer_args=args, ffn="mlp")
    return build_model(cfg, INFO, rngs=nnx.Rngs(0))


def reference(model, prompt, n, temperature, seed, **filters):
    """No cache: run the full causal model over the whole prefix for every new token (one fixed
    buffer of length prompt + n, so one compile; later slots cannot affect earlier logits)."""
    full = jax.jit(lambda t: model(t, jnp.ones(t.shape, bool)))
    keys = jax.random.split(jax.random.key(seed), n)
    b, p = prompt.shape
    tokens = jnp.zeros((b, p + n), jnp.int32).at[:, :p].set(prompt)
    for i in range(n):
        logits = full(tokens)[:, p + i - 1]
        if temperature == 0:
            nxt = jnp.argmax(logits, -1)
        else:
            nxt = jax.random.categorical(keys[i], filter_logits(logits, temperature, **filters))
        tokens = tokens.at[:, p + i].set(nxt.astype(jnp.int32))
    return tokens


@pytest.mark.parametrize("mixer,args", [("mha", {"n_kv_heads": 2}),
                                        ("dsa", {"base": "mla", "topk": 3, "block_size": 4})])
def test_generate_with_cache_equals_recomputation(mixer, args):
    model = lm(mixer, **args)
    prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, 13)
    greedy = seqlab.generate(model, prompt, 6, temperature=0.0)
    np.testing.assert_array_equal(greedy, reference(model, prompt, 6, 0.0, 0))
    if mixer == "mha":
        sampled = seqlab.generate(model, prompt, 6, temperature=0.8, top_k=5, top_p=0.9, seed=3)
        want = reference(model, prompt, 6, 0.8, 3, top_k=5, top_p=0.9)
        np.testing.assert_array_equal(sampled, want)
        assert sampled.shape == (2, 11) and np.all(sampled[:, :5] == prompt)


def test_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keep = np.isfinite(np.asarray(filter_logits(logits, 1.0, top_k=None, top_p=0.7)))
    np.testing.assert_array_equal(keep, [[True, True, False, False]])
    keep = np.isfinite(np.asarray(filter_logits(logits, 1.0, top_k=3, top_p=None)))
    np.testing.assert_array_equal(keep, [[True, True, True, False]])
    with pytest.raises(ValueError, match="top_p"):
        seqlab.generate(lm("mha"), jnp.zeros((1, 2), jnp.int32), 2, top_p=1.5)
