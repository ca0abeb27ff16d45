"""MLA against transformers' DeepSeek-V3 and DeepSeek-V2 attention layers (torch float32, CPU,
eager): weights mapped by seqlab.interop.deepseek, the same input, equal outputs; decoding token
by token (absorb and naive) equals transformers' full-sequence output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqlab.interop.deepseek import attention_to_seqlab, mixer_args
from seqlab.layers.mla import MLA

torch = pytest.importorskip("torch", reason="needs torch (pip install seqlab[test])")
transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3  # noqa: E402

D, T = 32, 13
YARN = {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0,
        "original_max_position_embeddings": 4, "beta_fast": 8, "beta_slow": 1,
        "mscale": 0.9, "mscale_all_dim": 0.7}
CASES = {  # (family, config keywords)
    "v3-interleave-qlora-yarn": ("v3", dict(q_lora_rank=12, rope_parameters=YARN)),
    "v3-rotate-half-bias": ("v3", dict(q_lora_rank=None, rope_interleave=False,
                                       attention_bias=True)),
    "v2-qlora-bias-yarn": ("v2", dict(q_lora_rank=12, attention_bias=True,
                                      rope_parameters=YARN)),
}


def build(case):
    family, kw = CASES[case]
    mod = v3 if family == "v3" else v2
    cls = transformers.DeepseekV3Config if family == "v3" else transformers.DeepseekV2Config
    config = cls(hidden_size=D, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=10,
                 qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5,
                 max_position_embeddings=16, **kw)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    attn = getattr(mod, f"Deepseek{family.upper()}Attention")(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in attn.parameters():  # norm weights and biases away from their constants
            p.add_(0.1 * torch.randn_like(p))
    rotary = getattr(mod, f"Deepseek{family.upper()}RotaryEmbedding")(config)
    return family, config, attn, rotary


def hf_output(family, attn, rotary, x):
    xt = torch.tensor(x)
    pos = torch.arange(x.shape[1])[None]
    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        emb = rotary(xt, pos)
        if family == "v3":
            y, _ = attn(xt, position_embeddings=emb, attention_mask=mask)
        else:
            y, _ = attn(xt, attention_mask=mask, position_embeddings=emb)
    return y.numpy()


def seqlab_layer(config, attn, decode_mode="absorb"):
    hf = config.to_dict()
    args = mixer_args(hf)
    layer = MLA(D, **args, decode_mode=decode_mode, rngs=nnx.Rngs(0))
    tensors = {k: v.numpy() for k, v in attn.state_dict().items()}
    mapped = attention_to_seqlab(args, tensors, "")
    state = nnx.state(layer, nnx.Param)
    flat = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(state)}
    assert set(flat) == set(mapped), (sorted(flat), sorted(mapped))
    for name, var in flat.items():
        assert var.get_value().shape == mapped[name].shape, name
        var.set_value(jnp.asarray(mapped[name], jnp.float32))
    nnx.update(layer, state)
    return layer


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mla_equals_transformers_attention(case):
    family, config, attn, rotary = build(case)
    x = np.random.default_rng(1).standard_normal((2, T, D)).astype(np.float32)
    ref = hf_output(family, attn, rotary, x)
    for mode in ("absorb", "naive"):
        layer = seqlab_layer(config, attn, mode)
        assert rel(layer(jnp.asarray(x)), ref) <= 1e-5, mode
        cache, step = layer.init_cache(2, T + 2), jax.jit(layer.decode)
        y0, cache = step(jnp.asarray(x[:, :4]), cache)  # a prefill, then one token at a time
        ys = [y0]
        for t in range(4, T):
            yt, cache = step(jnp.asarray(x[:, t : t + 1]), cache)
            ys.append(yt)
        assert rel(jnp.concatenate(ys, 1), ref) <= 1e-5, mode
