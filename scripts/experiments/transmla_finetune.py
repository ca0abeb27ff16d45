"""TransMLA (Meng et al. 2025) claim: a trained GQA model converted to MLA is exact at full rank,
and at a lower latent rank (smaller KV cache) its loss gap closes with a short fine-tune.

Per seed: a small byte-level LM with GQA attention (``scripts/experiments/_lm.py``: d_model 64,
2 layers, 4 query heads and 2 KV heads of 16 dims: 64 cached numbers per token and layer) is
trained on the Python standard library's source. Every attention layer is converted with
``seqlab.layers.convert.gqa_to_mla``, its PCAs calibrated on that layer's real inputs (4 training
batches): (i) all rotated heads roped at full rank (exact by construction), (ii) the paper's
RoRoPE choice (RoPE on one rotated head) at kv_lora_rank 48 (full), 24, 16 and 8 (cache 64, 40,
32, 24). Each converted model is fine-tuned for ``--ft-steps`` steps; the GQA model is trained
for the same steps as the control, so the gap after fine-tuning compares equal training.
Reported: validation bits per byte, the gap to GQA before and after fine-tuning, 3 seeds.

Budget: about 30 minutes on the 2-core CPU under a load average near 18; ``--smoke``: seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/transmla_finetune.py
"""

from __future__ import annotations

import argparse
import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import Corpus, LMSetup, TinyLM, evaluate, train
from seqlab.data.stdlib_text import corpus_info
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.convert import gqa_to_mla


def attention_inputs(model: TinyLM, corpus: Corpus, batch: int, n_batches: int) -> list:
    """Per layer, the inputs its attention saw on ``n_batches`` training batches: [N, d_model]."""
    batches = corpus.batches(batch, seed=12345)
    out = [[] for _ in model.mixers]
    for _ in range(n_batches):
        x = model.embed(jnp.asarray(next(batches)[0]))
        for i, (mix, n1, n2, fi, fo) in enumerate(zip(model.mixers, model.norm1, model.norm2,
                                                      model.ff_in, model.ff_out, strict=True)):
            h = n1(x)
            out[i].append(np.asarray(h).reshape(-1, h.shape[-1]))
            x = x + mix(h)
            x = x + fo(nnx.gelu(fi(n2(x))))
    return [np.concatenate(o) for o in out]


def converted(model: TinyLM, calib: list, rank: int | None, rope_heads: int | None) -> TinyLM:
    """A copy of ``model`` with every attention layer replaced by its MLA conversion."""
    new = nnx.clone(model)
    for i, layer in enumerate(model.mixers):
        new.mixers[i] = gqa_to_mla(layer, rank, rope_heads=rope_heads, calib_x=calib[i])
    return new


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400, help="GQA pre-training steps")
    p.add_argument("--ft-steps", type=int, default=100, help="fine-tuning steps")
    p.add_argument("--ranks", type=int, nargs="+", default=[48, 24, 16, 8])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    setup = LMSetup(d_model=64, length=64, batch=16, steps=a.steps)
    d, hq, hk = 64, 4, 2
    if a.smoke:
        a.seeds, a.ft_steps, a.ranks, d = 1, 0, [8], 16  # compile time dominates: no fine-tune
        setup = dataclasses.replace(setup, d_model=16, n_layers=1, length=16, batch=2, steps=1,
                                    corpus_bytes=20_000, val_bytes=2_000, val_windows=2)
    ft_lr = setup.lr / 3
    clock = Clock()
    corpus = Corpus(setup)
    print(corpus_info(corpus.data))

    def make(r):
        return MultiHeadAttention(d, n_heads=hq, n_kv_heads=hk, rngs=r)

    dh = d // hq
    configs = [("full, RoPE on all", None, hk)] + [(f"r={r}, RoPE on 1", r, 1) for r in a.ranks]
    caches = {name: (rank if rank is not None else 2 * hk * dh - rh * dh) + rh * dh
              for name, rank, rh in configs}
    res = {name: {"before": [], "after": []} for name, _, _ in configs}
    gqa_before, gqa_after, exact = [], [], []
    for seed in range(a.seeds):
        gqa = TinyLM(make, d_model=d, n_layers=setup.n_layers, d_ff=4 * d, rngs=nnx.Rngs(seed))
        gqa, _ = train(gqa, corpus, setup, seed)
        base = evaluate(gqa, corpus)
        print(f"  seed {seed}: GQA trained, val {base:.4f} bits/byte", flush=True)
        calib = attention_inputs(gqa, corpus, setup.batch, 4)
        ctrl, _ = train(nnx.clone(gqa), corpus, setup, seed + 1000, steps=a.ft_steps, lr=ft_lr,
                            warmup=10)
        gqa_before.append(base)
        gqa_after.append(evaluate(ctrl, corpus))
        for name, rank, rope_heads in configs:
            mla = converted(gqa, calib, rank, rope_heads)
            before = evaluate(mla, corpus)
            if rank is None:
                x = jnp.asarray(corpus.val[0][:4])
                exact.append(float(jnp.abs(mla(x) - gqa(x)).max()))
            tuned, _ = train(mla, corpus, setup, seed + 1000, steps=a.ft_steps, lr=ft_lr,
                            warmup=10)
            res[name]["before"].append(before - base)
            res[name]["after"].append(evaluate(tuned, corpus) - gqa_after[-1])
        print(f"seed {seed}: GQA {base:.4f} -> {gqa_after[-1]:.4f} bits/byte after "
              f"{a.ft_steps} more steps; gaps before / after fine-tuning: "
              + ", ".join(f"{n}: {r['before'][-1]:+.4f} / {r['after'][-1]:+.4f}"
                          for n, r in res.items()), flush=True)
    print(f"\nGQA: cache {2 * hk * dh} numbers/token/layer, val {spread(gqa_before)} bits/byte; "
          f"after {a.ft_steps} more steps {spread(gqa_after)}")
    print(f"full-rank conversion: max |logits_MLA - logits_GQA| = {max(exact):.2e}")
    print("conversion          cache  gap before fine-tune   gap after (vs GQA trained equally)")
    for name, r in res.items():
        print(f"{name:18s}  {caches[name]:5d}  {spread(r['before'], '+.4f'):>22s}"
              f"  {spread(r['after'], '+.4f'):>22s}")
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = [caches[n] for n in res]
        for key, style in (("before", "o-"), ("after", "s-")):
            ax.errorbar(xs, [np.mean(res[n][key]) for n in res],
                        yerr=[np.std(res[n][key]) for n in res], fmt=style, capsize=3,
                        label=f"{key} {a.ft_steps}-step fine-tune")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="MLA KV cache per token per layer (GQA: 64)",
               ylabel="val bits/byte minus GQA's",
               title=f"GQA -> MLA (TransMLA), {a.seeds} seeds", yscale="symlog")
        ax.legend()
        fig.tight_layout()
        out = figure_path("repro_transmla", a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return {"gqa": gqa_before, "gqa_ft": gqa_after, "gaps": res, "exact": exact}


if __name__ == "__main__":
    main()
