"""DeepSeek-V2 (DeepSeek-AI 2024, Sec. 2.1, Table 1, Appendix D) claim for MLA: a KV cache per
token of ``d_c + d_h^R`` numbers (4.5 d_h at the paper's ``d_c = 4 d_h``, ``d_h^R = d_h / 2``:
GQA with 2.25 groups), against ``2 n_h d_h`` (MHA), ``2 n_g d_h`` (GQA) and ``2 d_h`` (MQA), with
language-modelling quality at least that of MHA.

Cache: measured from each layer's real decode cache (``init_cache(1, T)``: the numbers stored per
token, i.e. the arrays with a time axis, divided by T), per layer.
Loss: a small byte-level LM (``scripts/experiments/_lm.py``: d_model 64, 2 layers, 4 query heads
of 16 dims, MLP, length 64, batch 16) on the Python standard library's source, every variant at
the parameter count of the MHA model (the MLP width absorbs the difference), AdamW with the same
schedule, 3 seeds; validation bits per byte on held-out windows.
MHA: 4 KV heads; GQA: 2; MQA: 1; MLA: kv_lora_rank 64 (= 4 d_h), RoPE key 8 (= d_h / 2), no query
compression (seqlab's defaults scale this way with d_model / n_heads).

Budget: 30 minutes on the 2-core CPU (12 runs of 400 steps): measured 140 s at a load average
near 4 (1,853 s near 18); ``--smoke``: seconds.

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/mla_cache_loss.py
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import (
    Corpus,
    LMSetup,
    TinyLM,
    d_ff_for_params,
    evaluate,
    n_params,
    train,
)
from seqlab.data.stdlib_text import corpus_info
from seqlab.layers.attention import MultiHeadAttention
from seqlab.layers.mla import MLA


def variants(d_model: int, n_heads: int) -> dict:
    """name -> (mixer factory, the paper's cache formula per token and layer)."""
    dh = d_model // n_heads
    out = {}
    for name, kv in (("MHA", n_heads), ("GQA", n_heads // 2), ("MQA", 1)):
        out[name] = (
            lambda r, kv=kv: MultiHeadAttention(d_model, n_heads=n_heads, n_kv_heads=kv, rngs=r),
            2 * kv * dh,
        )
    out["MLA"] = (lambda r: MLA(d_model, n_heads=n_heads, kv_lora_rank=4 * dh, rngs=r),
                  4 * dh + dh // 2)
    return out


def cache_per_token(layer: nnx.Module, max_length: int = 16) -> int:
    """Numbers a layer's decode cache stores per token (arrays with a time axis / T)."""
    cache = jax.eval_shape(lambda: layer.init_cache(1, max_length))
    timed = [x for x in jax.tree.leaves(cache) if x.ndim >= 2 and x.shape[1] == max_length]
    return sum(int(np.prod(x.shape)) for x in timed) // max_length


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    setup = LMSetup(d_model=a.d_model, length=64, batch=16, steps=a.steps)
    if a.smoke:
        a.seeds, a.d_model, a.n_heads = 1, 16, 4
        setup = dataclasses.replace(setup, d_model=16, n_layers=1, length=16, batch=2, steps=1,
                                    corpus_bytes=20_000, val_bytes=2_000, val_windows=2)
    clock = Clock()
    corpus = Corpus(setup)
    print(corpus_info(corpus.data))
    vs = variants(a.d_model, a.n_heads)
    mha = TinyLM(vs["MHA"][0], d_model=a.d_model, n_layers=setup.n_layers,
                 d_ff=4 * a.d_model, rngs=nnx.Rngs(0))
    if a.smoke:  # compile time dominates: one variant
        vs = {"MLA": vs["MLA"]}
    target = n_params(mha)
    rows = {}
    for name, (make, formula) in vs.items():
        cache = cache_per_token(make(nnx.Rngs(0)))
        d_ff = d_ff_for_params(make, target, setup)
        vals, curves, speed = [], [], []
        for seed in range(a.seeds):
            model = TinyLM(make, d_model=a.d_model, n_layers=setup.n_layers, d_ff=d_ff,
                           rngs=nnx.Rngs(seed))
            params = n_params(model)
            model, info = train(model, corpus, setup, seed)
            vals.append(evaluate(model, corpus))
            curves.append(info["loss"])
            speed.append(info["s_per_step"])
            print(f"  {name} seed {seed}: val {vals[-1]:.4f} bits/byte", flush=True)
        rows[name] = {"cache": cache, "formula": formula, "params": params, "d_ff": d_ff,
                      "val": vals, "curves": np.stack(curves), "s_per_step": float(np.mean(speed))}
        print(f"{name}: cache {cache} numbers/token/layer (paper formula {formula}), params "
              f"{params:,} (d_ff {d_ff}), val {spread(vals)} bits/byte, "
              f"{rows[name]['s_per_step']:.3f} s/step", flush=True)
    mha_cache = cache_per_token(variants(a.d_model, a.n_heads)["MHA"][0](nnx.Rngs(0)))
    print("\nvariant  cache/token/layer  vs MHA  params   val bits/byte (mean ± std over seeds)")
    for name, r in rows.items():
        print(f"{name:7s}  {r['cache']:17d}  {r['cache'] / mha_cache:6.3f}  "
              f"{r['params']:7,d}  {spread(r['val'])}")
    clock.report()
    plt = pyplot()
    if plt is not None:
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
        for i, (name, r) in enumerate(rows.items()):
            ax0.errorbar(r["cache"], np.mean(r["val"]), yerr=np.std(r["val"]), fmt="o",
                         color=f"C{i}", capsize=3, label=f"{name} ({r['params']:,} params)")
            m = r["curves"].mean(0)
            k = max(1, len(m) // 50)
            ax1.plot(np.convolve(m, np.ones(k) / k, "valid"), color=f"C{i}", label=name)
        ax0.set(xlabel="KV cache per token per layer (numbers, measured)",
                ylabel="validation bits / byte",
                title=f"equal parameters, {a.seeds} seeds, {setup.steps} steps")
        ax0.legend(fontsize=8)
        ax1.set(xlabel="step", ylabel="train bits / byte (mean over seeds)",
                title="training curves",
                ylim=(None, float(next(iter(rows.values()))["curves"][:, -1].mean() + 1.5)))
        ax1.legend()
        fig.tight_layout()
        out = figure_path("repro_mla_cache", a.smoke)
        fig.savefig(out, dpi=110)
        print(f"plot: {out}")
    return rows


if __name__ == "__main__":
    main()
