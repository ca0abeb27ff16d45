"""DeepSeek-V3 and DeepSeek-V2 checkpoints with dense layers: transformers' logits (with and
without padding) and greedy tokens from seqlab's MLA (latent cache) and GLU blocks; clear errors
for what seqlab does not implement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _hf_helpers import (
    RTOL,
    hf_greedy,
    hf_logits,
    random_tokens,
    rel_err,
    save_tiny,
    transformers,
)

import seqlab
from seqlab.interop import InteropError

VOCAB = 97
SHAPES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=10, qk_nope_head_dim=6,
              qk_rope_head_dim=4, v_head_dim=5, max_position_embeddings=64,
              first_k_dense_replace=2, n_routed_experts=4, rms_norm_eps=1e-5)
CASES = {
    # DeepSeek-V3's layout: query latent, interleaved RoPE, YaRN with mscale_all_dim (positions
    # up to 37 > original 8, so the scaling acts)
    "deepseek_v3": (transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config(
        **SHAPES, q_lora_rank=12, tie_word_embeddings=True,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000.0, "factor": 8.0,
                         "original_max_position_embeddings": 8, "beta_fast": 8, "beta_slow": 1,
                         "mscale": 0.9, "mscale_all_dim": 0.7})),
    # DeepSeek-V2-Lite's: no query latent; complex (interleaved) RoPE; attention biases
    "deepseek_v2": (transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config(
        **SHAPES, q_lora_rank=None, attention_bias=True)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    cls, config = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(cls, config, folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg, folder


def test_logits_equal(pair):
    hf, model, cfg, _ = pair
    assert cfg.model.mixer == "mla"
    tokens = random_tokens(VOCAB, (2, 37))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL


def test_logits_equal_with_padding(pair):
    """Left padding in row 0, right padding in row 1: the real positions' logits agree."""
    hf, model, _, _ = pair
    tokens = random_tokens(VOCAB, (2, 21), seed=1)
    mask = np.ones(tokens.shape, bool)
    mask[0, :5] = False
    mask[1, 15:] = False
    ours = np.asarray(model(tokens, mask))
    assert rel_err(ours[mask], hf_logits(hf, tokens, mask)[mask]) <= RTOL


def test_greedy_decode_equal(pair):
    """Through MLA's latent cache (absorb mode, the default)."""
    hf, model, _, _ = pair
    prompt = random_tokens(VOCAB, (2, 7), seed=2)
    ours = np.asarray(seqlab.generate(model, prompt, 12, temperature=0))
    np.testing.assert_array_equal(ours, hf_greedy(hf, prompt, 12))


def test_unsupported_features_are_refused(tmp_path):
    cls, config = CASES["deepseek_v3"]
    save_tiny(cls, config, tmp_path)
    original = json.loads((tmp_path / "config.json").read_text())

    def refused(match, **changes):
        (tmp_path / "config.json").write_text(json.dumps({**original, **changes}))
        with pytest.raises(InteropError, match=match):
            seqlab.load(tmp_path)

    refused("mixture-of-experts", first_k_dense_replace=1)
    refused("dynamic", rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4,
                                        "factor": 2.0})
    refused("mscale_all_dim", rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                               "factor": 2.0, "mscale_all_dim": 1.0})
    refused("hidden_act", hidden_act="gelu")
    refused("num_key_value_heads", num_key_value_heads=2)
    refused("mlp_bias", model_type="deepseek_v2", mlp_bias=True)
