"""How fast ``seqlab.load`` reads a transformers checkpoint, against a plain read of its files.

Writes a random Llama checkpoint (config.json + safetensors shards, float32 or bfloat16;
numpy only, no torch) of about --size-mb, then times, alternately, in fresh processes:
  read:   every shard read into memory and kept (``Path.read_bytes``), the floor for any
          loader (which must hold the weights too);
  seqlab: ``seqlab.load(folder)`` until every parameter is a JAX array on the device
          (after ``import seqlab``: the time of the load, not of importing JAX).
Both read from the page cache after the first round (the files were just written), so the
numbers are memory-bound reads; ``--drop-caches`` (root, Linux) drops the cache before each
run to measure disk reads instead. Reports MB/s of checkpoint bytes and the ratio.

    .venv/bin/python scripts/bench/bench_load.py --size-mb 400 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

READ = "import sys, pathlib, time; t = time.perf_counter(); data = [p.read_bytes() for p in " \
       "sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors'))]; print(time.perf_counter() - t)"
LOAD = "import sys, time, jax, seqlab; from flax import nnx; t = time.perf_counter(); " \
       "m, _ = seqlab.load(sys.argv[1]); jax.block_until_ready(nnx.state(m)); " \
       "print(time.perf_counter() - t)"


def write_checkpoint(folder: Path, size_mb: float, dtype: str, shard_mb: float = 200) -> int:
    """A Llama checkpoint of about size_mb (d_model 1024, GQA 16/4 heads, MLP 2816, vocab
    32000, as many layers as fit); returns its bytes."""
    d, ff, vocab, hq, hk = 1024, 2816, 32000, 16, 4
    dh = d // hq
    item = 2 if dtype == "bfloat16" else 4
    per_layer = (2 * d * d + 2 * d * hk * dh + 3 * d * ff + 2 * d) * item
    layers = max(1, int((size_mb * 2**20 - (2 * vocab * d + d) * item) // per_layer))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": vocab, "hidden_size": d, "intermediate_size": ff,
              "num_hidden_layers": layers, "num_attention_heads": hq,
              "num_key_value_heads": hk, "head_dim": dh, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 4096}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    shapes = {"model.embed_tokens.weight": (vocab, d), "lm_head.weight": (vocab, d),
              "model.norm.weight": (d,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight":
                       (hk * dh, d), p + "self_attn.v_proj.weight": (hk * dh, d),
                       p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight":
                       (ff, d), p + "mlp.up_proj.weight": (ff, d), p + "mlp.down_proj.weight":
                       (d, ff), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    shards, current, weight_map, total = [], {}, {}, 0
    for name, shape in shapes.items():
        current[name] = (0.02 * rng.standard_normal(shape, np.float32)).astype(np_dtype)
        total += current[name].nbytes
        if sum(a.nbytes for a in current.values()) > shard_mb * 2**20:
            shards.append(current)
            current = {}
    shards.append(current)
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def timed(code: str, folder: Path, drop: bool) -> float:
    if drop:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
    out = subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=float, default=400)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--drop-caches", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama"
        nbytes = write_checkpoint(folder, args.size_mb, args.dtype)
        mb = nbytes / 2**20
        times: dict[str, list[float]] = {"read": [], "seqlab": []}
        for _ in range(args.rounds):
            times["read"].append(timed(READ, folder, args.drop_caches))
            times["seqlab"].append(timed(LOAD, folder, args.drop_caches))
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"checkpoint: {mb:.0f} MB {args.dtype}, "
              f"{len(list(folder.glob('*.safetensors')))} shards")
        for k in times:
            print(f"{k:7s} best {best[k]:.2f} s ({mb / best[k]:.0f} MB/s), median {med[k]:.2f} s, "
                  f"all {[round(t, 2) for t in times[k]]}")
        print(f"seqlab.load / plain read: {best['seqlab'] / best['read']:.2f}x (best), "
              f"{med['seqlab'] / med['read']:.2f}x (median)")


if __name__ == "__main__":
    main()
