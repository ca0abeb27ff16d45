"""TransMLA on a real architecture: a transformers Llama checkpoint, loaded by seqlab, every
GQA layer converted to MLA: exact at full rank (logits and greedy tokens equal to
transformers'), the same KV numbers per token, a smaller cache and a larger error at lower
ranks, and the converted model exports and loads like any seqlab model."""

from __future__ import annotations

import numpy as np
import pytest
from _hf_helpers import RTOL, hf_greedy, hf_logits, random_tokens, rel_err, save_tiny, transformers

import seqlab
from seqlab.models.transmla import kv_cache_per_token, transmla

VOCAB = 89


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    hf = save_tiny(transformers.LlamaForCausalLM, config, folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg


def test_full_rank_is_exact(llama, tmp_path):
    hf, model, cfg = llama
    calib = random_tokens(VOCAB, (4, 32), seed=5)
    mla, mla_cfg = transmla(model, cfg, calib_tokens=calib)
    assert mla_cfg.model.mixer == "mla"
    assert kv_cache_per_token(model) == kv_cache_per_token(mla) == 2 * 2 * 2 * 8
    tokens = random_tokens(VOCAB, (2, 23), seed=6)
    assert rel_err(mla(tokens), hf_logits(hf, tokens)) <= RTOL
    prompt = random_tokens(VOCAB, (2, 5), seed=7)
    np.testing.assert_array_equal(np.asarray(seqlab.generate(mla, prompt, 10, temperature=0)),
                                  hf_greedy(hf, prompt, 10))
    seqlab.export(mla, tmp_path / "mla", config=mla_cfg,
                  info=seqlab.interop.hf.task_info({"vocab_size": VOCAB}))
    again, _ = seqlab.load(tmp_path / "mla")  # rebuilt from the config alone
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(mla(tokens)))


def test_rank_curve(llama):
    hf, model, cfg = llama
    calib = random_tokens(VOCAB, (4, 32), seed=8)
    tokens = random_tokens(VOCAB, (2, 23), seed=9)
    want = hf_logits(hf, tokens)
    errors, caches = [], []
    for rank in (4, 8, 16):  # full rank: (n_kv_heads - rope_heads) * 8 + n_kv_heads * 8 = 16
        mla, _ = transmla(model, cfg, kv_lora_rank=rank, calib_tokens=calib)
        errors.append(rel_err(mla(tokens), want))
        caches.append(kv_cache_per_token(mla))
    assert caches == [2 * (r + 2 * 8) for r in (4, 8, 16)]
    assert errors[0] > errors[1] > errors[2] and errors[0] > 1e-2 and errors[2] <= RTOL, errors
    one, _ = transmla(model, cfg, rope_heads=1, calib_tokens=calib)  # the paper's RoRoPE
    assert rel_err(one(tokens), want) > 1e-3


def test_refuses_what_mla_cannot_hold(tmp_path):
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2)
    save_tiny(transformers.Qwen2ForCausalLM, config, tmp_path)
    model, cfg = seqlab.load(tmp_path)
    with pytest.raises(ValueError, match="biases in wq, wk, wv"):
        transmla(model, cfg)
