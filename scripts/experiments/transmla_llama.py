"""TransMLA on a real architecture, through a transformers checkpoint (Meng et al. 2025 convert
pretrained Llama / Qwen models).

Per seed: a byte-level Llama (seqlab's modules in Llama's arrangement: GQA attention with
rotate-half RoPE, RMSNorm, SwiGLU MLP, no biases; d_model 64, 2 layers, 4 query and 2 KV heads
of 16) is trained on the Python standard library's source, written as a transformers
checkpoint (``seqlab.export(..., format="transformers")``), read back from that folder with
``seqlab.load`` (and, when transformers is installed, its logits checked against
``LlamaForCausalLM.from_pretrained``), then every layer is converted to MLA with
``seqlab.models.transmla.transmla``, calibrated on 4 training batches: all rotated KV heads
roped at kv_lora_rank 32 (full: exact), 24, 16, 8, and the paper's RoRoPE (one roped head) at
its full rank 48. Reported per rank: KV numbers per token (all layers, from the real caches),
the logits' relative error against the checkpoint, validation bits per byte; 3 seeds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/transmla_llama.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

import seqlab
from scripts.experiments._common import Clock, spread
from scripts.experiments._lm import Corpus, LMSetup, evaluate, train
from seqlab.config import Config, ModelConfig, TaskInfo
from seqlab.data.stdlib_text import corpus_info
from seqlab.models import build_model
from seqlab.models.transmla import kv_cache_per_token, transmla

LLAMA = ModelConfig(mixer="mha", d_model=64, n_layers=2, norm="rms", norm_eps=1e-5, ffn="glu",
                    ffn_hidden=128, bias=False,
                    mixer_args={"n_heads": 4, "n_kv_heads": 2, "head_dim": 16})
INFO = TaskInfo(task="token", n_classes=256, vocab_size=256, input_dim=None, max_length=4096,
                causal=True)


def transformers_logits(folder: Path, tokens: np.ndarray) -> np.ndarray | None:
    """transformers' logits of the written checkpoint (None when it is not installed)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    hf = transformers.LlamaForCausalLM.from_pretrained(folder).float().eval()
    with torch.no_grad():
        return hf(torch.tensor(tokens)).logits.numpy()


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    setup = LMSetup(d_model=64, length=128, batch=16, steps=a.steps)
    if a.smoke:
        a.seeds, setup = 1, LMSetup(d_model=64, length=16, batch=2, steps=2,
                                    corpus_bytes=20_000, val_bytes=2_000, val_windows=2)
    clock, corpus = Clock(), Corpus(setup)
    print(f"data: {corpus_info(corpus.data)}")
    variants = [("GQA (checkpoint)", None, None), ("full rank 32", 32, None), ("rank 24", 24, None),
                ("rank 16", 16, None), ("rank 8", 8, None), ("RoRoPE, rank 48", 48, 1)]
    if a.smoke:
        variants = [variants[0], variants[1], variants[4]]
    res: dict[str, dict[str, list]] = {v[0]: {"cache": [], "err": [], "bpb": []} for v in variants}
    checks = []
    for seed in range(a.seeds):
        model = build_model(LLAMA, INFO, rngs=nnx.Rngs(seed))
        model, _ = train(model, corpus, setup, seed)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "llama"
            seqlab.export(model, folder, config=Config(model=LLAMA), format="transformers")
            loaded, cfg = seqlab.load(folder)
            probe = corpus.val[0][:4]
            want = np.asarray(loaded(jnp.asarray(probe)))
            theirs = transformers_logits(folder, probe)
        checks.append((rel(model(jnp.asarray(probe)), want),
                       None if theirs is None else rel(want, theirs)))
        batches = corpus.batches(setup.batch, seed=12345)
        calib = np.concatenate([next(batches)[0] for _ in range(4)])
        for name, rank, rope_heads in variants:
            m = loaded if rank is None else transmla(loaded, cfg, kv_lora_rank=rank,
                                                     rope_heads=rope_heads, calib_tokens=calib)[0]
            res[name]["cache"].append(kv_cache_per_token(m))
            res[name]["err"].append(rel(m(jnp.asarray(probe)), want))
            res[name]["bpb"].append(evaluate(m, corpus))
        print(f"seed {seed}: GQA {res['GQA (checkpoint)']['bpb'][-1]:.3f} bits/byte")
    print("checkpoint written and read back: max rel. logits error vs the trained model "
          f"{max(c[0] for c in checks):.1e}; vs transformers "
          + (f"{max(c[1] for c in checks):.1e}" if checks[0][1] is not None else "not installed"))
    print("variant             KV/token  rel. logits err      val bits/byte")
    for name, r in res.items():
        print(f"{name:18s}  {r['cache'][0]:8d}  {spread(r['err'], '.1e'):>18s}  "
              f"{spread(r['bpb'])}")
    print(clock.report())
    return {"checks": checks, "results": res}


if __name__ == "__main__":
    main()
