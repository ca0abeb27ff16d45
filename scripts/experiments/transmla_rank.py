"""TransMLA (Meng et al. 2025): GQA -> MLA conversion error against the latent rank.

A GQA layer (d_model 128, 8 query heads, 2 KV heads of 16 dims: 64 cached numbers per token)
is converted with ``seqlab.layers.convert.gqa_to_mla`` for a range of ``kv_lora_rank``, with
RoPE kept on all rotated KV heads (exact at full rank) and on one (the paper's RoRoPE choice).
Inputs have a decaying spectrum (x = z A, as activations of a trained model have), the PCAs are
calibrated on one batch and the error is measured on another: ||y_mla - y_gqa|| / ||y_gqa||.

    .venv/bin/python scripts/experiments/transmla_rank.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.convert import gqa_to_mla


def main() -> None:
    d, hq, hk, dh = 128, 8, 2, 16
    gqa = MultiHeadAttention(d, n_heads=hq, n_kv_heads=hk, head_dim=dh, rngs=nnx.Rngs(0))
    mix = np.asarray(jax.random.normal(jax.random.key(1), (d, d))) * 0.95 ** np.arange(d)[:, None]
    calib = np.asarray(jax.random.normal(jax.random.key(2), (8, 128, d))) @ mix
    test = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(3), (4, 128, d))) @ mix,
                       jnp.float32)
    want = gqa(test)
    print(f"GQA cache: {2 * hk * dh} numbers/token")
    print("rope_heads  kv_lora_rank  cache/token  rel_error")
    for rope_heads in (hk, 1):
        full = (hk - rope_heads) * dh + hk * dh
        for rank in sorted({4, 8, 16, 24, 32, 48, full} & set(range(1, full + 1))):
            mla = gqa_to_mla(gqa, rank, rope_heads=rope_heads, calib_x=calib.reshape(-1, d))
            y = jax.jit(lambda x, m=mla: m(x))(test)
            err = float(jnp.linalg.norm(y - want) / jnp.linalg.norm(want))
            print(f"{rope_heads:10d}  {rank:12d}  {rank + rope_heads * dh:11d}  {err:9.2e}")


if __name__ == "__main__":
    main()
