"""TransMLA: convert a trained GQA attention layer into MLA with the same KV cache size.

Meng et al. 2025, 'TransMLA: Multi-Head Latent Attention Is All You Need'. Steps (numpy float64):

1. RoRoPE (their section 4.1). RoPE rotates the pair (i, i + D/2) of every key head by the same
   angle, so any orthogonal mix U_i of the ``n_kv_heads`` heads applied to frequency i's pair
   commutes with RoPE. Per frequency we take U_i = the principal axes (PCA over the calibration
   inputs) of the keys across heads, so "rotated head" 0 carries the most key energy, head 1
   the next, ... Each query head is expanded to all rotated heads with the matching row of U_i,
   so q.k is unchanged.
2. Only the first ``rope_heads`` rotated heads keep RoPE; they become MLA's decoupled RoPE keys
   (``rope_heads`` keys of ``head_dim`` dims, shared by all query heads). The other rotated heads
   become NoPE key dimensions (the paper keeps RoPE in one head; dropping it from the rest is the
   approximation it then fine-tunes away). Our default keeps all ``n_kv_heads`` rotated heads
   roped, which is exact; ``rope_heads=1`` is the paper's choice.
3. BKV-PCA (their section 4.3): the NoPE keys and the values, [alpha W_K_nope, W_V] with alpha
   balancing their norms, are compressed jointly to ``kv_lora_rank`` latent dimensions by PCA
   under the calibration covariance: W_DKV = M P, W_UK, W_UV from P^T.
KV cache per token: ``kv_lora_rank + rope_heads * head_dim``; at full rank
(``(n_kv_heads - rope_heads) * head_dim + n_kv_heads * head_dim``) it equals GQA's
``2 n_kv_heads head_dim``, and with ``rope_heads = n_kv_heads`` the outputs are identical.
FreqFold (grouping similar frequencies) is not implemented.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.mla import MLA


def _top_eigvecs(cov: np.ndarray) -> np.ndarray:
    """Eigenvectors of a symmetric matrix, columns by decreasing eigenvalue."""
    w, u = np.linalg.eigh(cov)
    return u[:, np.argsort(-w, kind="stable")]


def gqa_to_mla(
    layer: MultiHeadAttention,
    kv_lora_rank: int | None = None,
    *,
    rope_heads: int | None = None,
    calib_x: np.ndarray | jnp.ndarray | None = None,
    decode_mode: str = "absorb",
) -> MLA:
    """An MLA layer computing (approximately, or exactly at full rank) what ``layer`` computes.

    layer: a causal ``MultiHeadAttention`` with RoPE on the whole head (any n_kv_heads: MHA, GQA,
      MQA).
    kv_lora_rank: latent size; default (and maximum) the full rank
      ``(n_kv_heads - rope_heads) * head_dim + n_kv_heads * head_dim``.
    rope_heads: rotated key heads that keep RoPE, 1..n_kv_heads (default n_kv_heads: exact).
    calib_x: [N, d_model] inputs of the layer for the PCAs (default: isotropic inputs, i.e. PCA
      of the weights themselves).
    """
    if (not isinstance(layer, MultiHeadAttention) or layer.rope_dim != layer.head_dim
            or not layer.causal or layer.rope_layout != "rotate_half"):
        raise ValueError("gqa_to_mla converts a causal MultiHeadAttention layer with rotate-half "
                         "RoPE on the whole head (rope_dim=None, rope_layout='rotate_half')")
    biased = [n for n in ("wq", "wk", "wv", "wo") if getattr(layer, n).bias is not None]
    if biased or layer.rope_scaling is not None:
        raise ValueError(
            f"gqa_to_mla converts attention without projection biases and with plain RoPE "
            f"frequencies; this layer has {'biases in ' + ', '.join(biased) if biased else ''}"
            f"{' and ' if biased and layer.rope_scaling else ''}"
            f"{'rope_scaling' if layer.rope_scaling else ''}, which MLA does not represent."
        )
    d, hq, hk, dh = layer.d_model, layer.n_heads, layer.n_kv_heads, layer.head_dim
    rope_heads = hk if rope_heads is None else rope_heads
    if not 1 <= rope_heads <= hk:
        raise ValueError(f"rope_heads must be in 1..n_kv_heads={hk}, got {rope_heads}")
    full = (hk - rope_heads) * dh + hk * dh
    rank = full if kv_lora_rank is None else kv_lora_rank
    if not 1 <= rank <= full:
        raise ValueError(f"kv_lora_rank must be in 1..{full} (full rank), got {kv_lora_rank}")
    sigma = np.eye(d) if calib_x is None else np.cov(np.asarray(calib_x, np.float64).T, bias=True)
    if calib_x is not None:
        mean = np.asarray(calib_x, np.float64).mean(0)
        sigma = sigma + np.outer(mean, mean)  # second moment E[x x^T], not the centred covariance
    wq = np.asarray(layer.wq.kernel[...], np.float64).reshape(d, hq, dh)
    wk = np.asarray(layer.wk.kernel[...], np.float64).reshape(d, hk, dh)
    wv = np.asarray(layer.wv.kernel[...], np.float64).reshape(d, hk, dh)
    group = np.arange(hq) // (hq // hk)

    # 1. RoRoPE: per frequency i, rotate the kv heads by the principal axes U_i
    wk_rot = np.empty((d, hk, dh))  # [d, rotated head j, dim]
    wq_rot = np.empty((d, hq, hk, dh))  # [d, query head, rotated head j, dim]
    for i in range(dh // 2):
        pair = [i, i + dh // 2]
        cov = sum(wk[:, :, p].T @ sigma @ wk[:, :, p] for p in pair)
        u = _top_eigvecs(cov)  # [hk, hk]
        for p in pair:
            wk_rot[:, :, p] = wk[:, :, p] @ u
            wq_rot[:, :, :, p] = wq[:, :, p][:, :, None] * u[group][None]
    # 2. the first rope_heads rotated heads keep RoPE, the rest become NoPE dimensions
    w_rope_k = wk_rot[:, :rope_heads].reshape(d, -1)
    w_nope_k = wk_rot[:, rope_heads:].reshape(d, -1)
    w_q = np.concatenate(  # per query head: [NoPE dims | rope_heads x head_dim roped dims]
        [wq_rot[:, :, rope_heads:].reshape(d, hq, -1),
         wq_rot[:, :, :rope_heads].reshape(d, hq, -1)], axis=-1,
    )
    # 3. BKV-PCA of [alpha K_nope, V]
    w_v = wv.reshape(d, -1)

    def energy(w):
        return float(np.sqrt(np.trace(w.T @ sigma @ w))) if w.size else 0.0

    alpha = energy(w_v) / energy(w_nope_k) if w_nope_k.size and energy(w_nope_k) > 0 else 1.0
    m = np.concatenate([alpha * w_nope_k, w_v], axis=1)  # [d, full]
    p = np.eye(full) if rank == full else _top_eigvecs(m.T @ sigma @ m)[:, :rank]  # [full, rank]
    up = p.T  # [rank, full]: [alpha K_nope, V] ~ c_kv @ up
    nope = w_nope_k.shape[1]
    wk_b = np.broadcast_to((up[:, :nope] / alpha)[:, None, :], (rank, hq, nope))
    wv_b = up[:, nope:].reshape(rank, hk, dh)[:, group, :]

    mla = MLA(
        d, n_heads=hq, kv_lora_rank=rank, qk_nope_head_dim=nope, rope_dim=dh,
        v_head_dim=dh, rope_heads=rope_heads, kv_norm=False, softmax_scale=layer.scale,
        decode_mode=decode_mode, rope_base=layer.rope_base, rngs=nnx.Rngs(0), dtype=layer.dtype,
    )
    mla.wq.kernel[...] = jnp.asarray(w_q.reshape(d, -1), jnp.float32)
    mla.wkv_a.kernel[...] = jnp.asarray(np.concatenate([m @ p, w_rope_k], axis=1), jnp.float32)
    mla.wk_b[...] = jnp.asarray(wk_b, jnp.float32)
    mla.wv_b[...] = jnp.asarray(wv_b, jnp.float32)
    mla.wo.kernel[...] = layer.wo.kernel[...]
    return mla
