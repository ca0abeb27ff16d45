"""DeepSeek-V3 and DeepSeek-V2 checkpoints (a dense layer, then routed mixture-of-experts
layers): transformers' logits (with and without padding) and greedy tokens from seqlab's MLA
(latent cache), GLU and MoE blocks; all-dense checkpoints; clear errors for what seqlab does not
implement."""

from __future__ import annotations

import json

import pytest
from _hf_helpers import (
    RTOL,
    assert_greedy_equal,
    hf_logits,
    padded_logits_error,
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
              qk_rope_head_dim=4, v_head_dim=5, max_position_embeddings=64, rms_norm_eps=1e-5,
              first_k_dense_replace=1, n_routed_experts=8, moe_intermediate_size=16,
              n_shared_experts=1, n_group=4, topk_group=2)
CASES = {
    # DeepSeek-V3's layout: query latent, interleaved RoPE, YaRN with mscale_all_dim (positions
    # up to 37 > original 8, so the scaling acts)
    "deepseek_v3": (transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config(
        **SHAPES, q_lora_rank=12, tie_word_embeddings=True, num_experts_per_tok=3,
        norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000.0, "factor": 8.0,
                         "original_max_position_embeddings": 8, "beta_fast": 8, "beta_slow": 1,
                         "mscale": 0.9, "mscale_all_dim": 0.7})),
    # DeepSeek-V2-Lite's: no query latent; complex (interleaved) RoPE; attention biases; softmax
    # gates, group-limited
    "deepseek_v2": (transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config(
        **SHAPES, q_lora_rank=None, attention_bias=True, num_experts_per_tok=2,
        topk_method="group_limited_greedy", routed_scaling_factor=1.5)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    cls, config = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(cls, config, folder)
    for name, buf in hf.named_buffers():  # DeepSeek-V3's selection bias is a buffer
        if name.endswith("e_score_correction_bias"):
            buf.copy_(0.1 * transformers.modeling_utils.torch.randn(buf.shape))
    hf.save_pretrained(folder)
    model, cfg = seqlab.load(folder)
    assert cfg.model.moe and cfg.model.moe_first_layer == 1
    return hf, model, cfg, folder


def test_logits_equal(pair):
    hf, model, cfg, _ = pair
    assert cfg.model.mixer == "mla"
    tokens = random_tokens(VOCAB, (2, 37))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL


def test_logits_equal_with_padding(pair):
    """Left padding in row 0, right padding in row 1: the real positions' logits agree."""
    hf, model, _, _ = pair
    assert padded_logits_error(hf, model, VOCAB) <= RTOL


def test_greedy_decode_equal(pair):
    """Through MLA's latent cache (absorb mode, the default)."""
    hf, model, _, _ = pair
    assert_greedy_equal(hf, model, VOCAB)


def test_unsupported_features_are_refused(tmp_path):
    cls, config = CASES["deepseek_v3"]
    save_tiny(cls, config, tmp_path)
    original = json.loads((tmp_path / "config.json").read_text())

    def refused(match, **changes):
        (tmp_path / "config.json").write_text(json.dumps({**original, **changes}))
        with pytest.raises(InteropError, match=match):
            seqlab.load(tmp_path)

    refused("scoring_func", scoring_func="softmax")
    refused("top_k", num_experts_per_tok=5)  # more than the 2 groups of 2 experts hold
    refused("dynamic", rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4,
                                        "factor": 2.0})
    refused("mscale_all_dim", rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                               "factor": 2.0, "mscale_all_dim": 1.0})
    refused("hidden_act", hidden_act="gelu")
    refused("num_key_value_heads", num_key_value_heads=2)
    refused("mlp_bias", model_type="deepseek_v2", mlp_bias=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_all_dense_layers(case, tmp_path):
    """first_k_dense_replace = num_hidden_layers: no routed layer, the ModelConfig has no MoE."""
    cls, config = CASES[case]
    config = type(config)(**{**config.to_dict(), "first_k_dense_replace": 2})
    hf = save_tiny(cls, config, tmp_path)
    model, cfg = seqlab.load(tmp_path)
    assert cfg.model.moe is None
    tokens = random_tokens(VOCAB, (2, 13), seed=5)
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL
