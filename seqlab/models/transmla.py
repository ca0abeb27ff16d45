"""TransMLA on a whole language model: every GQA attention layer becomes MLA.

Meng et al. 2025 convert pretrained Llama / Qwen models; ``transmla`` does it for any seqlab
``LanguageModel`` whose mixers are causal ``MultiHeadAttention`` layers (for instance a Llama
checkpoint read by ``seqlab.load``), layer by layer with ``seqlab.layers.convert.gqa_to_mla``.
The PCAs of each layer are calibrated on that layer's own inputs (the normalised hidden states
of the original model on ``calib_tokens``). Everything else (embedding, norms, MLPs, head) is
kept as it is. The result is an ordinary seqlab model with the config to rebuild it (mixer
``mla``), so it exports, loads and decodes through MLA's latent cache.

    model, cfg = seqlab.load("llama-folder")
    mla_model, mla_cfg = transmla(model, cfg, kv_lora_rank=None)   # full rank: exact
    kv_cache_per_token(model), kv_cache_per_token(mla_model)        # equal at full rank
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.config import Config, ModelConfig
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.convert import gqa_to_mla
from seqlab.models.blocks import ModelBuildError
from seqlab.models.tasks import LanguageModel


def kv_cache_per_token(model: LanguageModel) -> int:
    """Numbers cached per token over the attention layers of a causal model (the arrays of
    their decode caches, [batch, max_length, ...]: keys and values, or MLA's latent and RoPE
    key), from the caches the layers really allocate."""
    total = 0
    for block in model.backbone.blocks:
        cache = block.init_cache(1, 1)
        if isinstance(cache, dict) and "pos" in cache:  # a cache with one slot per position
            total += sum(int(np.prod(a.shape[2:])) for n, a in cache.items() if n != "pos")
    return total


def layer_inputs(model: LanguageModel, tokens: np.ndarray) -> list[np.ndarray]:
    """The input of each block's mixer (its pre-norm output) on ``tokens`` [batch, length]:
    one [batch * length, d_model] float64 array per block."""
    h = model.embed(jnp.asarray(tokens))
    out = []
    for block in model.backbone.blocks:
        if not block.prenorm:
            raise ModelBuildError("transmla calibrates on pre-norm blocks' mixer inputs; this "
                                  "model's blocks are post-norm.")
        out.append(np.asarray(block.norm(h), np.float64).reshape(-1, h.shape[-1]))
        h = block(h)
    return out


def transmla(model: LanguageModel, cfg: Config | ModelConfig, *,
             kv_lora_rank: int | None = None, rope_heads: int | None = None,
             calib_tokens: np.ndarray | None = None, decode_mode: str = "absorb",
             ) -> tuple[LanguageModel, Config | ModelConfig]:
    """(the model with each GQA layer converted to MLA, the config that builds it).

    kv_lora_rank: the latent size of every layer (None: full rank, exact with rope_heads None).
    rope_heads: rotated key heads that keep RoPE (None: all, exact; 1: the paper's RoRoPE).
    calib_tokens: [batch, length] tokens for the PCAs (None: isotropic inputs, i.e. PCAs of the
      weights alone). The input model is left unchanged.
    """
    mcfg = cfg.model if isinstance(cfg, Config) else cfg
    blocks = model.backbone.blocks
    if mcfg.pattern or mcfg.mixer != "mha" or not all(
            isinstance(b.mixer, MultiHeadAttention) for b in blocks):
        raise ModelBuildError("transmla converts models whose every layer is 'mha' "
                              f"(MultiHeadAttention); this one has {mcfg.pattern or mcfg.mixer}.")
    calib = (layer_inputs(model, calib_tokens) if calib_tokens is not None
             else [None] * len(blocks))
    new = nnx.clone(model)
    for block, x in zip(new.backbone.blocks, calib, strict=True):
        block.mixer = gqa_to_mla(block.mixer, kv_lora_rank, rope_heads=rope_heads, calib_x=x,
                                 decode_mode=decode_mode)
    first = new.backbone.blocks[0].mixer
    args = {"n_heads": first.n_heads, "kv_lora_rank": first.rank,
            "qk_nope_head_dim": first.nope, "rope_dim": first.rope_dim,
            "v_head_dim": first.dv, "rope_heads": first.rope_heads, "kv_norm": False,
            "softmax_scale": float(first.scale), "decode_mode": decode_mode,
            "rope_base": float(first.rope_base)}
    new_mcfg = dataclasses.replace(mcfg, mixer="mla", mixer_args=args)
    new.eval()
    if isinstance(cfg, Config):
        return new, dataclasses.replace(cfg, model=new_mcfg)
    return new, new_mcfg
