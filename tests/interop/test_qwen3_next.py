"""Qwen3-Next checkpoints: transformers' Gated DeltaNet layer and whole models (dense, and with
the sparse mixture-of-experts MLP) against seqlab's modules (logits, padding, greedy decode,
round trip); clear errors for what is missing.

On the CPU transformers runs its own torch forms of the delta rule and the short convolution
(``integrations/hub_kernels.py``: fla and causal-conv1d only for cuda/xpu/... inputs), so the
reference is the plain recurrence/chunked torch code of ``modeling_qwen3_next.py``.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from _hf_helpers import (
    RTOL,
    assert_greedy_equal,
    hf_logits,
    padded_logits_error,
    perturb,
    random_tokens,
    rel_err,
    save_tiny,
    torch,
    transformers,
)
from flax import nnx

import seqlab
from seqlab.interop import InteropError, save_transformers
from seqlab.interop import qwen3_next as family
from seqlab.layers.deltanet import GatedDeltaNet

VOCAB = 97
modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")


def config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                linear_value_head_dim=12, num_experts=0, max_position_embeddings=256,
                layer_types=["linear_attention", "full_attention", "linear_attention"],
                rope_parameters={"rope_type": "default", "rope_theta": 1000.0,
                                 "partial_rotary_factor": 0.5})
    return transformers.Qwen3NextConfig(**{**base, **kw})


def test_gated_deltanet_layer_equals_transformers():
    """One layer, mapped weights: forward on [2, 13] and token-by-token decode."""
    cfg = config()
    torch.manual_seed(0)
    theirs = modeling.Qwen3NextGatedDeltaNet(cfg, layer_idx=0).float().eval()
    perturb(theirs)
    hf = cfg.to_dict()
    ours = GatedDeltaNet(32, rngs=nnx.Rngs(0), chunk_size=4, **family._deltanet_args(hf))
    weights = family._deltanet(hf, {k: v.numpy() for k, v in theirs.state_dict().items()}, "")
    nnx.update(ours, nnx.from_flat_state({tuple(k.split(".")): v for k, v in weights.items()}))
    x = np.random.default_rng(0).standard_normal((2, 13, 32)).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.tensor(x)).numpy()
    assert rel_err(jax.jit(lambda m, x: m(x))(ours, x), want) <= RTOL
    step, cache, ys = jax.jit(lambda m, x, c: m.decode(x, c)), ours.init_cache(2), []
    for t in range(13):
        y, cache = step(ours, x[:, t : t + 1], cache)
        ys.append(np.asarray(y))
    assert rel_err(np.concatenate(ys, 1), want) <= RTOL


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_next")
    hf = save_tiny(transformers.Qwen3NextForCausalLM, config(), folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg, folder


def test_logits_equal(pair):
    hf, model, cfg, _ = pair
    assert cfg.model.pattern == ("gated-deltanet", "mha", "gated-deltanet")
    tokens = random_tokens(VOCAB, (2, 37))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL


def test_logits_equal_with_padding(pair):
    """Left padding in row 0, right padding in row 1: the real positions' logits agree."""
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
    for key in ("model_type", "layer_types", "linear_num_value_heads", "linear_value_head_dim",
                "head_dim", "rope_parameters", "rms_norm_eps"):
        assert written[key] == original[key], key
    plain = dataclasses.replace(cfg.model, mixer_args={
        **cfg.model.mixer_args, "mha": {**cfg.model.mixer_args["mha"], "output_gate": False}})
    with pytest.raises(InteropError, match=r"mha options \['output_gate'\]"):
        family.transformers_config(plain, VOCAB)


MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=24, decoder_sparse_step=1, mlp_only_layers=[0])


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory):
    """Layer 0 dense, layers 1-2 sparse (4 experts, top 2, a gated shared expert)."""
    folder = tmp_path_factory.mktemp("qwen3_next_moe")
    hf = save_tiny(transformers.Qwen3NextForCausalLM, config(**MOE), folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg, folder


def test_moe_logits_decode_and_round_trip(moe_pair, tmp_path):
    hf, model, cfg, folder = moe_pair
    assert cfg.model.moe_first_layer == 1 and cfg.model.moe["shared_gate"]
    tokens = random_tokens(VOCAB, (2, 29), seed=4)
    want = hf_logits(hf, tokens)
    assert rel_err(model(tokens), want) <= RTOL
    # the routing varies over these tokens: several experts are chosen first
    x = np.asarray(model.embed(tokens))
    gates = np.asarray(model.backbone.blocks[1].ffn.gates(x))
    assert len(np.unique(gates.argmax(-1))) > 1
    assert_greedy_equal(hf, model, VOCAB, n=10, seed=5)
    out = save_transformers(model, cfg, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert rel_err(hf_logits(back, tokens), want) <= RTOL
    written = json.loads((out / "config.json").read_text())
    assert written["mlp_only_layers"] == [0] and written["num_experts"] == 4
    assert rel_err(seqlab.load(out)[0](tokens), want) <= RTOL


def test_moe_experts_fused(moe_pair, tmp_path):
    """transformers 5.25 writes one module per expert (``experts.{e}.gate_proj.weight``, as the
    published checkpoints; the fixture's folder) but holds them fused in memory
    (``experts.gate_up_proj`` [E, 2 hidden, d], ``experts.down_proj``): that layout written to a
    file loads to the same logits."""
    safetensors = pytest.importorskip("safetensors.numpy")
    hf, model, _, folder = moe_pair
    tensors = {k: np.ascontiguousarray(v.numpy()) for k, v in hf.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in tensors
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    safetensors.save_file(tensors, tmp_path / "model.safetensors")
    fused, _ = seqlab.load(tmp_path)
    tokens = random_tokens(VOCAB, (1, 17), seed=6)
    assert rel_err(fused(tokens), model(tokens)) <= 1e-6


def test_unsupported_features_are_refused(pair, tmp_path):
    _, _, _, folder = pair
    hf = json.loads((folder / "config.json").read_text())
    moe = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
           "shared_expert_intermediate_size": 8}
    assert family.model_config({**hf, **moe}).moe_first_layer == 0  # every layer sparse
    family.model_config({**hf, **moe, "mlp_only_layers": [0, 1, 2]})  # all dense
    with pytest.raises(InteropError, match=r"layers \[1\] use the routed mixture"):
        family.model_config({**hf, **moe, "decoder_sparse_step": 2})
    with pytest.raises(InteropError, match=r"layers \[0, 2\] use the routed mixture"):
        family.model_config({**hf, **moe, "mlp_only_layers": [1]})
    with pytest.raises(InteropError, match="shared_expert_intermediate_size"):
        family.model_config({**hf, **moe, "shared_expert_intermediate_size": 0})
    with pytest.raises(InteropError, match="layer_types"):
        family.model_config({**hf, "layer_types": ["linear_attention", "sliding_attention",
                                                   "linear_attention"]})
    with pytest.raises(InteropError, match="RoPE scaling"):
        family.model_config({**hf, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                       "rope_theta": 1e4}})
    with pytest.raises(InteropError, match="hidden_act"):
        family.model_config({**hf, "hidden_act": "gelu"})
