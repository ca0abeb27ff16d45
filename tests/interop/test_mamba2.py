"""Mamba-2 checkpoints (transformers ``Mamba2ForCausalLM``): seqlab's Mamba2 mixer against
transformers' ``Mamba2Mixer`` (its pure-torch path) with mapped weights; whole models' logits,
padding and greedy tokens; the way back (seqlab -> transformers folder); clear errors."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from _hf_helpers import (
    RTOL,
    assert_greedy_equal,
    hf_logits,
    padding_mask,
    perturb,
    random_tokens,
    rel_err,
    save_tiny,
    torch,
    transformers,
)
from flax import nnx

import seqlab
from seqlab.interop import InteropError, mamba2, save_transformers
from seqlab.interop.hf import read_config

VOCAB = 97
D_CONV = 4


def mamba2_config(**kw):
    """Tiny: 8 heads of 8 in 2 groups, chunks of 8 (so 19- and 37-token inputs span several
    chunks and end in a partial one)."""
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=16, expand=2,
                head_dim=8, num_heads=8, n_groups=2, chunk_size=8, conv_kernel=D_CONV)
    return transformers.Mamba2Config(**{**base, **kw})


def _fill(module: nnx.Module, arrays: dict) -> None:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    assert {".".join(map(str, p)) for p, _ in flat} == set(arrays)
    nnx.update(module, nnx.from_flat_state(
        [(p, v.replace(jnp.asarray(arrays[".".join(map(str, p))]))) for p, v in flat]))


LAYER_CASES = {
    "default": {},
    # every option at once; the clamp binds for some steps (dt_bias is ~ -4.6 .. -2.2)
    "bias-noconvbias-eps-clamp": dict(use_bias=True, use_conv_bias=False,
                                      layer_norm_epsilon=1e-2, time_step_limit=(0.02, 0.06)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_mixer_equals_transformers_mixer(case):
    """seqlab's Mamba2 with Mamba2Mixer's weights mapped by ``mixer_to_seqlab``: the same
    output on the same input (batch 2, 19 steps), and the same outputs through each one's
    cache: a prefill of 11 steps, two single steps, a chunk of 6 from the cached state."""
    from transformers.cache_utils import DynamicCache
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = mamba2_config(num_hidden_layers=1, **LAYER_CASES[case])
    torch.manual_seed(0)
    theirs = Mamba2Mixer(config, layer_idx=0).eval()
    perturb(theirs)
    args = mamba2.model_config(config.to_dict()).mixer_args
    ours = nnx.eval_shape(lambda: seqlab.layers.Mamba2(32, rngs=nnx.Rngs(0), **args))
    _fill(ours, mamba2.mixer_to_seqlab(
        args, {k: v.numpy() for k, v in theirs.state_dict().items()}, ""))
    x = torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(x).numpy()
    assert rel_err(nnx.jit(lambda m, u: m(u))(ours, jnp.asarray(x.numpy())), want) <= RTOL
    if case != "default":
        # transformers' one-token step (mamba2_selective_state_update) does not apply
        # time_step_limit, its chunked scan does: its decode is not its forward with a clamp
        return
    cache, steps = DynamicCache(config=config), []
    seq_cache, decode = ours.init_cache(2, 19), nnx.jit(lambda m, u, c: m.decode(u, c))
    with torch.no_grad():  # prefill, two single steps, then a chunk from the cached state
        for t0, t1 in ((0, 11), (11, 12), (12, 13), (13, 19)):
            y, seq_cache = decode(ours, jnp.asarray(x[:, t0:t1].numpy()), seq_cache)
            steps.append((np.asarray(y), theirs(x[:, t0:t1], cache=cache).numpy()))
    assert rel_err(np.concatenate([s[0] for s in steps], 1),
                   np.concatenate([s[1] for s in steps], 1)) <= RTOL
    assert rel_err(np.concatenate([s[0] for s in steps], 1), want) <= RTOL


CASES = {
    "groups-untied": dict(),
    "bias-tied-noconvbias": dict(use_bias=True, tie_word_embeddings=True,
                                 use_conv_bias=False, layer_norm_epsilon=1e-3),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(transformers.Mamba2ForCausalLM, mamba2_config(**CASES[request.param]),
                   folder)
    model, cfg = seqlab.load(folder)
    return hf, model, cfg, folder


def test_logits_and_greedy_decode_equal(pair):
    hf, model, _, _ = pair
    tokens = random_tokens(VOCAB, (2, 37))
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= RTOL
    assert_greedy_equal(hf, model, VOCAB)


def test_padding(pair):
    """Left padding in row 0, right padding in row 1. seqlab's real positions equal the
    unpadded sequences' logits; transformers' do too without in_proj biases, but with them
    (use_bias) its left padding leaks in_proj's bias into the convolution of the first real
    tokens (it zeroes in_proj's input, not its output), so there only the right-padded row
    is compared with transformers' masked forward."""
    hf, model, cfg, _ = pair
    tokens = random_tokens(VOCAB, (2, 21), seed=1)
    mask = padding_mask(tokens.shape)
    ours = np.asarray(model(tokens, mask))
    for row, real in ((0, slice(5, None)), (1, slice(None, 15))):
        alone = hf_logits(hf, tokens[row:row + 1, real])[0]
        assert rel_err(ours[row, real], alone) <= RTOL
    theirs = hf_logits(hf, tokens, mask)
    rows = [1] if cfg.model.mixer_args["use_bias"] else [0, 1]
    assert rel_err(ours[rows][mask[rows]], theirs[rows][mask[rows]]) <= RTOL


def test_round_trip_to_transformers(pair, tmp_path):
    """transformers -> seqlab -> transformers folder -> from_pretrained: the same logits and
    config; and a seqlab-built Mamba-2 (random parameters) written the same way."""
    hf, model, cfg, folder = pair
    out = save_transformers(model, cfg, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    tokens = random_tokens(VOCAB, (2, 19), seed=3)
    assert rel_err(hf_logits(back, tokens), hf_logits(hf, tokens)) <= RTOL
    original, written = (json.loads((f / "config.json").read_text()) for f in (folder, out))
    for key in ("model_type", "hidden_size", "num_heads", "head_dim", "n_groups", "state_size",
                "use_bias", "use_conv_bias", "layer_norm_epsilon", "tie_word_embeddings",
                "time_step_limit", "chunk_size"):
        assert written[key] == original[key], key
    with pytest.raises(FileExistsError):
        save_transformers(model, cfg, out)


def test_seqlab_model_to_transformers(tmp_path):
    """A Mamba-2 built by seqlab (random parameters, a binding dt_limit) written as a
    transformers folder: from_pretrained gives seqlab's logits."""
    from seqlab.config import ModelConfig
    from seqlab.interop.hf import task_info
    from seqlab.models import build_model

    cfg = ModelConfig(mixer="mamba2", d_model=32, n_layers=2, norm="rms", norm_eps=1e-5,
                      bias=False, mixer_args=dict(d_state=8, head_dim=16, n_groups=2,
                                                  chunk_size=8, dt_limit=(0.0, 0.05)))
    model = build_model(cfg, task_info({"vocab_size": VOCAB}), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # constants differ too
        var.set_value(var.get_value() + 0.1 * rng.standard_normal(var.get_value().shape))
    out = save_transformers(model, cfg, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert back.config.time_step_limit[1] == 0.05
    tokens = random_tokens(VOCAB, (2, 19), seed=5)
    assert rel_err(nnx.jit(lambda m, t: m(t))(model, tokens), hf_logits(back, tokens)) <= RTOL


def test_unsupported_is_refused(tmp_path):
    save_tiny(transformers.Mamba2ForCausalLM, mamba2_config(num_hidden_layers=1), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    def rewrite(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))

    rewrite(hidden_act="gelu")
    with pytest.raises(InteropError, match="hidden_act"):
        seqlab.load(tmp_path)
    rewrite(num_heads=4)
    with pytest.raises(InteropError, match="num_heads"):
        seqlab.load(tmp_path)
    rewrite(time_step_limit=[0.1, 0.01])
    with pytest.raises(InteropError, match="time_step_limit"):
        seqlab.load(tmp_path)
    rewrite(state_size=8)  # the weights say 16
    with pytest.raises(InteropError, match="disagree"):
        seqlab.load(tmp_path)


def test_export_refuses_what_transformers_cannot_hold(tmp_path):
    from seqlab.config import ModelConfig

    base = dict(mixer="mamba2", d_model=32, n_layers=1, norm="rms", bias=False,
                mixer_args=dict(d_state=8, head_dim=16))
    with pytest.raises(InteropError, match="layer_norm_epsilon"):  # 1e-6 vs the mixer's 1e-5
        mamba2.transformers_config(ModelConfig(**base), VOCAB)
    with pytest.raises(InteropError, match="ffn"):
        mamba2.transformers_config(ModelConfig(**{**base, "norm_eps": 1e-5, "ffn": "glu"}),
                                   VOCAB)
    hf = mamba2.transformers_config(ModelConfig(**{**base, "norm_eps": 1e-5}), VOCAB)
    assert hf["time_step_limit"] == [0.0, {"__float__": "Infinity"}]
    (tmp_path / "config.json").write_text(json.dumps(hf))  # read back as a loader reads it
    read = read_config(tmp_path)
    assert math.isinf(read["time_step_limit"][1])
    assert mamba2.model_config(read).mixer_args.get("dt_limit") is None
