"""Llama and Qwen2 checkpoints: transformers' logits and greedy tokens from seqlab's modules;
the way back (seqlab -> transformers folder); sharded and bfloat16 checkpoints; clear errors."""

from __future__ import annotations

import json

import numpy as np
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
from seqlab.interop import InteropError, save_transformers

VOCAB = 97


def llama_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaConfig(**{**base, **kw})


def qwen2_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5)
    return transformers.Qwen2Config(**{**base, **kw})


CASES = {
    "llama-gqa": (transformers.LlamaForCausalLM, llama_config()),
    "llama-tied-bias-llama3": (transformers.LlamaForCausalLM, llama_config(
        tie_word_embeddings=True, attention_bias=True, head_dim=12,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    "qwen2": (transformers.Qwen2ForCausalLM, qwen2_config()),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    cls, config = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(cls, config, folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg, folder


def test_logits_equal(pair):
    hf, model, _, _ = pair
    tokens = random_tokens(VOCAB, (2, 37))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL


def test_logits_equal_with_padding(pair):
    """Left padding in row 0 (transformers' generation layout), right padding in row 1: the
    real positions' logits agree."""
    hf, model, _, _ = pair
    assert padded_logits_error(hf, model, VOCAB) <= RTOL


def test_greedy_decode_equal(pair):
    hf, model, _, _ = pair
    assert_greedy_equal(hf, model, VOCAB)


def test_round_trip_to_transformers(pair, tmp_path):
    """seqlab -> transformers folder -> from_pretrained: the same logits, the same config."""
    hf, model, cfg, folder = pair
    out = save_transformers(model, cfg, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    tokens = random_tokens(VOCAB, (2, 19), seed=3)
    assert rel_err(hf_logits(back, tokens), hf_logits(hf, tokens)) <= RTOL
    original, written = (json.loads((f / "config.json").read_text()) for f in (folder, out))
    for key in ("model_type", "hidden_size", "num_key_value_heads", "tie_word_embeddings"):
        assert written[key] == original[key], key
    with pytest.raises(FileExistsError):
        save_transformers(model, cfg, out)


def test_convert_then_load_export(pair, tmp_path):
    """A transformers folder -> seqlab export -> seqlab.load: bit-identical logits."""
    _, model, cfg, folder = pair
    from seqlab.cli import main

    assert main(["convert", str(folder), str(tmp_path / "exp")]) == 0
    again, cfg2 = seqlab.load(tmp_path / "exp")
    tokens = random_tokens(VOCAB, (1, 11), seed=4)
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(model(tokens)))
    assert cfg2.model == cfg.model


def test_sharded_and_bfloat16(tmp_path):
    hf = save_tiny(transformers.LlamaForCausalLM, llama_config(), tmp_path / "one")
    hf.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    tokens = random_tokens(VOCAB, (2, 13))
    model, _ = seqlab.load(tmp_path / "shards")
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL
    hf.to(transformers.modeling_utils.torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model16, cfg16 = seqlab.load(tmp_path / "bf16", dtype="bfloat16")
    assert cfg16.model.dtype == "bfloat16"
    assert str(model16.embed.embedding[...].dtype) == "bfloat16"
    model32, _ = seqlab.load(tmp_path / "bf16")  # cast to float32: the bf16 weights exactly
    hf32 = hf.float()
    assert rel_err(model32(tokens), hf_logits(hf32, tokens)) <= RTOL
    assert rel_err(model16(tokens), hf_logits(hf32, tokens)) <= 5e-2


def test_unsupported_features_are_refused(tmp_path):
    save_tiny(transformers.LlamaForCausalLM, llama_config(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    def rewrite(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))

    rewrite(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(InteropError, match="dynamic"):
        seqlab.load(tmp_path)
    rewrite(hidden_act="gelu")
    with pytest.raises(InteropError, match="hidden_act"):
        seqlab.load(tmp_path)
    rewrite(model_type="gpt2")
    with pytest.raises(InteropError, match="gpt2.*not supported"):
        seqlab.load(tmp_path)
    rewrite(num_hidden_layers=1)  # the checkpoint's layer 1 has no place
    with pytest.raises(InteropError, match="no place"):
        seqlab.load(tmp_path)


def test_cli_refuses_with_exit_2(tmp_path, capsys):
    from seqlab.cli import main

    save_tiny(transformers.LlamaForCausalLM, llama_config(), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert main(["convert", str(tmp_path / "m"), str(tmp_path / "out")]) == 2
    assert "bert" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
