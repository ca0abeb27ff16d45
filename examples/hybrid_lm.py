"""A hybrid byte-level language model composed from modules, trained with ``seqlab.Trainer``,
exported, loaded back and sampled. Re-runnable: the run in ``--out`` resumes (a finished one
trains no further) and its export, one per best step, is reused.

The model is a list comprehension of blocks: S4D layers (a long convolution, causal) with one
attention layer in the middle; ``LanguageModel`` adds the byte embedding and the head. Any text
file is the corpus (this repository's README by default).

    python examples/hybrid_lm.py --text README.md --steps 300 --out runs/hybrid_lm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

import seqlab
from seqlab.config import TrainConfig
from seqlab.layers import S4D, MultiHeadAttention
from seqlab.models import Backbone, Block, LanguageModel, Norm

VOCAB = 256


def hybrid_lm(d_model: int, n_layers: int, *, rngs: nnx.Rngs) -> LanguageModel:
    """n_layers blocks: attention in the middle one, S4D elsewhere; GLU channel mixers."""

    def mixer(i: int) -> nnx.Module:
        if i == n_layers // 2:
            return MultiHeadAttention(d_model, n_heads=4, rngs=rngs)
        return S4D(d_model, d_state=32, rngs=rngs)

    blocks = [Block(mixer(i), d_model, norm="rms", ffn="glu", rngs=rngs) for i in range(n_layers)]
    return LanguageModel(nnx.Embed(VOCAB, d_model, rngs=rngs),
                         Backbone(blocks, final_norm=Norm("rms", d_model, rngs=rngs)),
                         nnx.Linear(d_model, VOCAB, rngs=rngs))


def byte_batches(text: bytes, length: int, batch_size: int, n_batches: int,
                 seed: int) -> list[dict]:
    """Random windows of the text: inputs = bytes t..t+length-1, labels = the next bytes."""
    data = np.frombuffer(text, np.uint8).astype(np.int32)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - length - 1, size=(n_batches, batch_size))
    windows = data[starts[..., None] + np.arange(length + 1)]      # [n, batch, length + 1]
    return [{"inputs": w[:, :-1], "labels": w[:, 1:]} for w in windows]


def main(text: str = "README.md", out: str = "runs/hybrid_lm", steps: int = 300,
         d_model: int = 64, n_layers: int = 3, length: int = 64, batch_size: int = 16,
         prompt: str = "The ", new_tokens: int = 80) -> dict:
    corpus = Path(text).read_bytes()
    train = byte_batches(corpus, length, batch_size, 64, seed=0)
    val = byte_batches(corpus, length, batch_size, 2, seed=1)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, ssm_lr=1e-3,
                         warmup_steps=steps // 10, eval_every=max(steps // 3, 1),
                         checkpoint_every=max(steps // 3, 1), log_every=max(steps // 10, 1))
    trainer = seqlab.Trainer(lambda: hybrid_lm(d_model, n_layers, rngs=nnx.Rngs(0)), train,
                             config, val_data=val, workdir=Path(out) / "train", pad_to="none")
    result = trainer.fit()  # a finished run in ``out`` is resumed as finished: nothing to train
    # one export per best step: run again, the same best model is already there and is reused
    export = Path(out) / f"export-step{trainer.best_step}"
    if not export.exists():
        seqlab.export(trainer.best_model(), export)
    # loading a model composed in Python: give it a model of the same structure to fill
    model, _ = seqlab.load(export, model=hybrid_lm(d_model, n_layers, rngs=nnx.Rngs(1)))
    tokens = seqlab.generate(model, jnp.asarray([list(prompt.encode())]), new_tokens,
                             temperature=0.8, top_k=40)
    sample = bytes(np.asarray(tokens[0]).astype(np.uint8).tolist()).decode(errors="replace")
    return {"train": result["train"], "best_val_accuracy": trainer.best_accuracy,
            "sample": sample, "tokens": tokens, "export": export, "model": model,
            "trained": trainer.best_model()}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default="README.md")
    p.add_argument("--out", default="runs/hybrid_lm")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    out = main(args.text, args.out, args.steps)
    print(f"train {out['train']}\nbest val accuracy {out['best_val_accuracy']:.3f}\n"
          f"sample: {out['sample']!r}")
