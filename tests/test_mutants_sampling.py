"""generate's defaults and argument checks that mutation testing (scripts/mutation.py) found
unchecked."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqlab


class FixedLM(nnx.Module):
    """Next-token logits are the same fixed vector at every step."""

    def __init__(self, logits):
        self.logits = nnx.Variable(jnp.asarray(logits, jnp.float32))

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> dict:
        return {"pos": jnp.zeros((), jnp.int32)}

    def decode(self, tokens, cache):
        b, t = tokens.shape
        return jnp.broadcast_to(self.logits[...], (b, t, self.logits.shape[-1])), cache


def test_generate_defaults_are_temperature_1_and_seed_0():
    lm = FixedLM([0.0, 1.0, 2.0, 3.0])
    prompt = jnp.zeros((8, 1), jnp.int32)
    default = np.asarray(seqlab.generate(lm, prompt, 6))
    np.testing.assert_array_equal(default, seqlab.generate(lm, prompt, 6, temperature=1.0, seed=0))
    # the draws depend on both (else the check above could not fail)
    assert (default != np.asarray(seqlab.generate(lm, prompt, 6, seed=1))).any()
    assert (default != np.asarray(seqlab.generate(lm, prompt, 6, temperature=2.0))).any()


@pytest.mark.parametrize("shape", [(1, 0), (3,)])
def test_prompt_must_be_batch_by_length_at_least_1(shape):
    with pytest.raises(ValueError, match="prompt_tokens"):
        seqlab.generate(FixedLM(np.zeros(4)), jnp.zeros(shape, jnp.int32), 1)


def test_negative_max_new_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="max_new_tokens"):
        seqlab.generate(FixedLM(np.zeros(4)), jnp.zeros((1, 1), jnp.int32), -1)
