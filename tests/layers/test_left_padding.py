"""Every registered mixer: padding on the left (and on both sides) leaves the outputs at real
positions equal to those of the unpadded sequence, whatever the padded positions hold.

Left padding is what batched decoding and prompt batches use; a mixer that lets a padded
position leak into its state (a short convolution over the pad, a decay that runs over it, an
attention row that sees it, a position offset) fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _assert import assert_close
from flax import nnx

from seqlab.layers import MIXERS

D_MODEL, REAL, TOTAL = 32, 9, 14

# name -> small constructor arguments (one causal and, where the mixer has one, one
# bidirectional variant).
CASES = {
    "s4d": {"d_state": 8},
    "s4d-bidirectional": {"d_state": 8, "causal": False},
    "s4-ptd": {"d_state": 8},
    "s4": {"d_state": 8},
    "s4-bidirectional": {"d_state": 8, "causal": False},
    "s5": {"d_state": 8, "blocks": 2},
    "s5-bidirectional": {"d_state": 8, "blocks": 2, "causal": False},
    "hydra": {"d_state": 8, "head_dim": 16, "chunk_size": 5},
    "mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 5},
    "bidirectional": {"combine": "concat", "d_state": 8, "head_dim": 16, "chunk_size": 5},
    "deltanet": {"chunk_size": 4},
    "gated-deltanet": {"chunk_size": 4},
    "deltaproduct": {"chunk_size": 4},
    "mha": {"n_heads": 4},
    "mha-bidirectional": {"n_heads": 4, "causal": False},
    "mla": {"n_heads": 4},
    "mla-bidirectional": {"n_heads": 4, "causal": False},
    "topk": {"topk": 4},
    "dsa": {"topk": 4, "index_heads": 2, "index_head_dim": 8, "block_size": 8},
}


def test_every_mixer_has_a_case():
    assert {name.split("-bidirectional")[0] for name in CASES} == set(MIXERS)


def _apply(name: str):
    mixer = MIXERS[name.split("-bidirectional")[0]](D_MODEL, rngs=nnx.Rngs(3), **CASES[name])
    graphdef, state = nnx.split(mixer)

    @jax.jit
    def apply(x, mask):
        return nnx.merge(graphdef, state)(x, mask=mask)

    return apply


@pytest.mark.parametrize("name", sorted(CASES))
def test_left_padding_is_exact(name):
    apply = _apply(name)
    keys = jax.random.split(jax.random.key(0), 2)
    real = jax.random.normal(keys[0], (2, REAL, D_MODEL))
    garbage = 5.0 * jax.random.normal(keys[1], (2, TOTAL, D_MODEL))
    y_ref = apply(real, jnp.ones((2, REAL), bool))
    # row 0: all padding on the left; row 1: 2 on the left and 3 on the right
    starts = np.array([TOTAL - REAL, 2])
    pos = np.arange(TOTAL)
    mask = (pos[None] >= starts[:, None]) & (pos[None] < starts[:, None] + REAL)
    x = np.array(garbage)
    for b, s in enumerate(starts):
        x[b, s:s + REAL] = real[b]
    y = np.asarray(apply(jnp.asarray(x), jnp.asarray(mask)))
    for b, s in enumerate(starts):
        # float32 sums over <= 14 positions of O(1) terms reordered by a different length
        # (FFT size, chunk boundaries): differences ~1e-6; a leak of the padding is O(1).
        assert_close(y[b, s:s + REAL], y_ref[b], rtol=2e-5, atol=2e-5,
                                   err_msg=f"{name}, row {b}")


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_classifier_pool_on_left_padded_batches(pool):
    """A classifier reads the same features from a left-padded, a right-padded and an unpadded
    sequence: ``pool: last`` takes the last real position, not ``mask.sum() - 1``."""
    from seqlab.config import ModelConfig, TaskInfo
    from seqlab.models import build_model

    cfg = ModelConfig(mixer="s4d", d_model=16, n_layers=1, mixer_args={"d_state": 4},
                      pool=pool)
    info = TaskInfo(task="classify", n_classes=3, vocab_size=11, input_dim=None, max_length=16)
    model = build_model(cfg, info, rngs=nnx.Rngs(0))
    model.eval()
    apply = jax.jit(lambda x, m: model(x, m))
    tokens = jax.random.randint(jax.random.key(1), (2, REAL), 1, 11)
    ref = apply(tokens, jnp.ones((2, REAL), bool))
    pad = jnp.full((2, TOTAL - REAL), 7)  # padding holds real-looking tokens
    mask_real, mask_pad = jnp.ones((2, REAL), bool), jnp.zeros((2, TOTAL - REAL), bool)
    left = apply(jnp.concatenate([pad, tokens], 1), jnp.concatenate([mask_pad, mask_real], 1))
    right = apply(jnp.concatenate([tokens, pad], 1), jnp.concatenate([mask_real, mask_pad], 1))
    assert_close(left, ref, rtol=2e-5, atol=2e-5)
    assert_close(right, ref, rtol=2e-5, atol=2e-5)
