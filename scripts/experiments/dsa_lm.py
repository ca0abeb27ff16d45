"""DeepSeek Sparse Attention (DeepSeek-V3.2 tech report, 2025, Sec. 2.1-2.2): after a dense
warm-up that trains only the lightning indexer (eq. 3: KL from the dense attention distribution,
summed over heads and L1-normalised, to softmax of the indexer scores) and a sparse training stage
(each query attends to the indexer's top-k keys, eq. 2; the indexer is trained by the eq. 4 KL on
the selected set, its input detached; the main model by the LM loss), DSA's language-modelling
loss stays close to dense attention, and its cost at long length is lower.

Protocol (the paper's, at CPU scale), per seed, byte-level LM on the Python standard library's
source (``scripts/experiments/_lm.py``; d_model 64, 2 layers, MLA with 4 heads of 16,
kv_lora_rank 64, RoPE key 8, no query compression; length 512, batch 4):

1. Dense pre-training of the MLA model, ``--pretrain`` steps (``_lm.train``: AdamW, warm-up and
   cosine decay to 10% of 3e-3). The paper starts from the dense DeepSeek-V3.1-Terminus.
2. Its weights are copied into the base of a ``seqlab.layers.sparse.DSA(base="mla")`` model
   (indexer: 4 heads of 16, RoPE on 8 dims, top-k 64 of up to 512 keys; the layer attends in
   MLA's shared-KV / MQA form as V3.2 does). Dense warm-up: ``--warmup`` steps in which only the
   indexer's parameters are differentiated and updated (main weights frozen, as the paper; this
   loop passes ``nnx.DiffState(0, indexer)``, which ``seqlab.Trainer`` does with
   ``train.train_only``), the layer in its own warm-up stage (dense output,
   eq. 3 KL sown as ``aux_loss`` and collected by ``seqlab.train.steps.forward_with_aux``);
   constant lr 1e-3 (the paper's).
3. Sparse stage: ``--sparse`` steps on every parameter (LM loss + the sown eq. 4 KL, which reaches
   only the indexer); the DSA layer switches by its own ``indexer_step`` counter. The dense
   control continues training the pre-trained model for the same steps on the same batches with
   the same optimiser (AdamW, constant lr 3e-4 = the end of the pre-training schedule).

Validation bits/byte on 32 fixed held-out windows of 512 bytes; the gap is paired per seed (both
arms share the pre-trained weights and the data). Margin: 0.02 bits/byte, about the seed-to-seed
std of these small LMs (row 9 of docs/reproductions.md: 0.018-0.032) and ~0.7% of the loss; DSA is
"within the margin" only if the mean paired gap plus its std over seeds is below it.
Indexer recall: the share of the dense attention mass (the eq. 3 target p_t) on the indexer's
top-k set, on queries t >= k (where selection drops keys), beside the best possible top-k share.
Timing: batch 1 at lengths 4096 and 8192, the same 2-layer architecture (indexer block 1024),
median of 3 interleaved rounds after one warm-up call each, in one process: forward (inference
path) and forward+backward for dense MLA, DSA as trained (LM + eq. 4 KL) and DSA on the LM loss
alone; the indexer's share is the indexer's top-k selection alone over the time of the whole
``dsa`` op of one layer.

Budget: 30 minutes on the 2-core CPU (3 seeds x (300 dense + 60 warm-up + 2 x 120) steps, then
the timing): measured 680 s at a load average of 4.9 falling to 3.7 (46 minutes at 14 -> 3);
``--seeds 0``: the timing alone (its plot goes to the temporary directory); ``--smoke``: one
seed of 0 + 1 + 1 + 1 steps at tiny sizes, no timing (37 s at load 2-4: compiling the DSA train
step twice dominates).

    PYTHONPATH=. nice -n 19 .venv/bin/python scripts/experiments/dsa_lm.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scripts.experiments._common import Clock, figure_path, pyplot, spread
from scripts.experiments._lm import LOG2E, Corpus, LMSetup, TinyLM, loss_fn, n_params, train
from seqlab.data.stdlib_text import corpus_info
from seqlab.layers.mla import MLA
from seqlab.layers.sparse import DSA
from seqlab.ops.attention import attention, dsa, dsa_indexer
from seqlab.train.steps import forward_with_aux

INDEXER = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in ("wq_idx", "wk_idx",
                                                                      "w_idx"))))


@dataclasses.dataclass(frozen=True)
class Arch:
    """The attention sizes shared by the dense and the DSA model."""

    d_model: int = 64
    n_heads: int = 4
    kv_rank: int = 64
    topk: int = 64
    index_heads: int = 4
    index_head_dim: int = 16
    block_size: int = 256

    def dense(self, rngs: nnx.Rngs) -> MLA:
        return MLA(self.d_model, n_heads=self.n_heads, kv_lora_rank=self.kv_rank, rngs=rngs)

    def sparse(self, rngs: nnx.Rngs, warmup: int = 0, block_size: int | None = None) -> DSA:
        return DSA(self.d_model, base="mla", n_heads=self.n_heads, kv_lora_rank=self.kv_rank,
                   topk=self.topk, index_heads=self.index_heads,
                   index_head_dim=self.index_head_dim, indexer_warmup_steps=warmup,
                   block_size=block_size or self.block_size, rngs=rngs)


class LM(TinyLM):
    """``_lm.TinyLM`` with the ``(inputs, mask)`` call of seqlab's models, so that
    ``seqlab.train.steps.forward_with_aux`` collects the sown indexer KL."""

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return super().__call__(tokens)


def build(make, arch: Arch, setup: LMSetup, d_ff: int, seed: int) -> LM:
    return LM(make, d_model=arch.d_model, n_layers=setup.n_layers, d_ff=d_ff,
              rngs=nnx.Rngs(seed))


def dense_to_dsa(dense: LM, sparse: LM) -> None:
    """Copy every weight of the dense model into the DSA model (its MLA bases); the indexer
    keeps its initialisation."""
    for name in ("embed", "norm1", "norm2", "ff_in", "ff_out", "norm_f", "head"):
        nnx.update(getattr(sparse, name), nnx.state(getattr(dense, name)))
    for mixer, src in zip(sparse.mixers, dense.mixers, strict=True):
        nnx.update(mixer.attn, nnx.state(src))


@functools.lru_cache(maxsize=16)
def _val_fn(graphdef: nnx.GraphDef):
    return jax.jit(lambda s, x, y: loss_fn(nnx.merge(graphdef, s), x, y))


def evaluate(model: LM, corpus: Corpus) -> float:
    """Validation bits/byte (``_lm.evaluate``, compiled once per model structure); inference
    mode, so DSA attends to its top-k keys."""
    model.eval()
    graphdef, state = nnx.split(model)
    return float(_val_fn(graphdef)(state, *map(jnp.asarray, corpus.val))) * LOG2E


@functools.lru_cache(maxsize=8)
def _adamw(lr: float) -> optax.GradientTransformation:
    """AdamW (b2 0.95, weight decay 0.1, clip 1.0) at a constant ``lr`` (one object per lr, so
    that the optimiser's graph, and the compiled step, are shared by the seeds)."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1))


@functools.lru_cache(maxsize=16)
def _stage_step(graphdef: nnx.GraphDef, wrt):
    """The jitted update on the parameters selected by ``wrt``: the loss is the next-byte
    cross-entropy plus every sown ``aux_loss`` (``seqlab.train.steps.forward_with_aux``)."""

    @jax.jit
    def step(state, x, y):
        m, o = nnx.merge(graphdef, state)
        m.train()

        def f(mm):
            logits, aux = forward_with_aux(mm, {"inputs": x, "mask": None})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + aux, (ce, aux)

        (_, (ce, aux)), grads = nnx.value_and_grad(
            f, argnums=nnx.DiffState(0, wrt), has_aux=True)(m)
        o.update(m, grads)
        return nnx.state((m, o)), ce, aux

    return step


def run_stage(model: LM, wrt, lr: float, batches, steps: int, corpus: Corpus,
              eval_every: int) -> tuple[LM, dict]:
    """``steps`` updates; train CE and KL (nats) per step, val bits/byte every ``eval_every``."""
    graphdef, state = nnx.split((model, nnx.Optimizer(model, _adamw(lr), wrt=wrt)))
    step = _stage_step(graphdef, wrt)
    ce, kl, val, t0, t_eval = [], [], [], None, 0.0
    for i in range(steps):
        state, c, a = step(state, *next(batches))
        if i == 0:
            c.block_until_ready()
            t0 = time.perf_counter()
        ce.append(c)
        kl.append(a)
        if eval_every and (i + 1) % eval_every == 0:
            jax.block_until_ready(state)
            te = time.perf_counter()
            val.append((i + 1, evaluate(nnx.merge(graphdef, state)[0], corpus)))
            t_eval += time.perf_counter() - te
    model = nnx.merge(graphdef, state)[0]
    model.eval()
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t0 - t_eval) / max(1, steps - 1)
    return model, {"ce": np.asarray(jax.device_get(ce)), "kl": np.asarray(jax.device_get(kl)),
                   "val": val, "s_per_step": per_step}


def recall(model: LM, x: jax.Array, topk: int) -> tuple[float, float]:
    """(indexer recall, best top-k share): the dense attention mass p_t (softmax of the main
    attention logits, summed over heads, L1-normalised: eq. 3's target) on the indexer's top-k
    keys, and the mass of p_t's own top-k, averaged over layers and queries t >= topk."""
    t = x.shape[1]
    h = model.embed(x)
    got, best = [], []
    for mix, n1, n2, fi, fo in zip(model.mixers, model.norm1, model.norm2, model.ff_in,
                                   model.ff_out, strict=True):
        z = n1(h)
        pos = jnp.arange(t)
        q, k, _ = mix.attn.qkv(z, pos)
        logits = jnp.einsum("bthd,bshd->bhts", q, k) * mix.attn.scale
        logits = jnp.where(jnp.tri(t, dtype=bool), logits, -jnp.inf)
        p = jax.nn.softmax(logits, -1).sum(1)
        p = p / p.sum(-1, keepdims=True)
        idx = dsa_indexer(*mix.indexer_inputs(z, pos), topk=topk)
        hit = jnp.take_along_axis(p, jnp.maximum(idx, 0), -1) * (idx >= 0)
        got.append(hit.sum(-1)[:, topk:].mean())
        best.append(lax_topk_sum(p, topk)[:, topk:].mean())
        h = h + mix(z)
        h = h + fo(jax.nn.gelu(fi(n2(h))))
    return float(np.mean(got)), float(np.mean(best))


def lax_topk_sum(p: jax.Array, k: int) -> jax.Array:
    return jax.lax.top_k(p, k)[0].sum(-1)


def median_times(calls: dict, repeats: int = 3) -> dict:
    """name -> median wall time of ``f(*args)`` for ``calls`` {name: (f, args)}: one warm-up
    call each, then ``repeats`` rounds that time every call in turn (interleaved, so that a
    change of the machine's load hits all of them alike)."""
    for f, args in calls.values():
        jax.block_until_ready(f(*args))
    ts = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (f, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            ts[name].append(time.perf_counter() - t0)
    return {name: float(np.median(v)) for name, v in ts.items()}


def _grad_fn(graphdef: nnx.GraphDef, train_mode: bool):
    """Forward+backward of the LM loss (+ the sown indexer KL when ``train_mode``)."""

    def grad(s, x):
        m = nnx.merge(graphdef, s)
        if train_mode:
            m.train()

        def f(mm):
            logits, aux = forward_with_aux(mm, {"inputs": x, "mask": None})
            return optax.softmax_cross_entropy_with_integer_labels(logits, x).mean() + aux

        return nnx.grad(f)(m)

    return jax.jit(grad)


def timing(arch: Arch, setup: LMSetup, d_ff: int, length: int, repeats: int) -> dict:
    """Seconds per forward and per forward+backward at ``length`` (batch 1), dense vs DSA, and
    the indexer's share of one layer's ``dsa`` op (indexer block 1024)."""
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, length)), jnp.int32)
    models = {"dense": build(arch.dense, arch, setup, d_ff, 0),
              "dsa": build(lambda r: arch.sparse(r, block_size=1024), arch, setup, d_ff, 0)}
    calls = {}
    for name, model in models.items():
        graphdef, state = nnx.split(model)
        calls[f"{name} fwd"] = (jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x)), (state, x))
        if name == "dense":
            calls["dense fwd+bwd"] = (_grad_fn(graphdef, False), (state, x))
        else:
            calls["dsa fwd+bwd"] = (_grad_fn(graphdef, True), (state, x))
            calls["dsa LM only fwd+bwd"] = (_grad_fn(graphdef, False), (state, x))
    # one layer's attention op: dense MLA attention, the whole dsa op, its indexer selection
    layer = arch.sparse(nnx.Rngs(0), block_size=1024)
    z = jax.random.normal(jax.random.key(1), (1, length, arch.d_model))
    pos = jnp.arange(length)
    index = layer.indexer_inputs(z, pos)
    bs, scale = layer.block_size, layer.attn.scale

    def select(q_idx, k_idx, w_idx):
        return [dsa_indexer(q_idx[:, t0:t0 + bs], k_idx[:, :t0 + bs], w_idx[:, t0:t0 + bs],
                            topk=arch.topk, q_offset=t0)
                for t0 in range(0, length, bs) if min(t0 + bs, length) > arch.topk]

    calls["op dense"] = (jax.jit(lambda q, k, v: attention(q, k, v, scale=scale)),
                         layer.attn.qkv(z, pos))
    calls["op dsa"] = (jax.jit(lambda *a: dsa(*a, topk=arch.topk, scale=scale, block_size=bs)),
                       (*layer._qkv(z, pos), *index))
    calls["op indexer"] = (jax.jit(select), index)
    out = median_times(calls, repeats)
    print(f"  T={length}: " + ", ".join(f"{k} {v:.3f} s" for k, v in out.items()), flush=True)
    print(f"  T={length} one layer: dense attention {out['op dense']:.3f} s, dsa "
          f"{out['op dsa']:.3f} s, of which indexer top-k {out['op indexer']:.3f} s "
          f"({out['op indexer'] / out['op dsa']:.0%})", flush=True)
    return out


def one_seed(seed: int, arch: Arch, setup: LMSetup, a, corpus: Corpus) -> dict:
    """Pre-train dense, then the dense control and DSA (warm-up, sparse) from the same weights."""
    d_ff = 4 * arch.d_model
    dense = build(arch.dense, arch, setup, d_ff, seed)
    dense, _ = train(dense, corpus, setup, seed, steps=a.pretrain)
    r = {"pre": evaluate(dense, corpus), "params_dense": n_params(dense)}
    sparse = build(lambda rr: arch.sparse(rr, warmup=a.warmup), arch, setup, d_ff, seed)
    r["params_dsa"] = n_params(sparse)
    r["params_indexer"] = sum(int(np.prod(p.shape))
                              for p in jax.tree.leaves(nnx.state(sparse, INDEXER)))
    dense_to_dsa(dense, sparse)
    xv = jnp.asarray(corpus.val[0][: a.recall_windows])
    probe = nnx.clone(sparse)
    probe.train()  # warm-up stage: dense output; must equal the dense model's logits
    logits, _ = forward_with_aux(probe, {"inputs": xv, "mask": None})  # collects the sown KL
    r["warmup_match"] = float(jnp.max(jnp.abs(logits - dense(xv))))
    r["dsa_untrained_indexer"] = evaluate(sparse, corpus)  # sparse inference, random indexer
    nan = (float("nan"), float("nan"))  # --smoke: recall measured at the end only
    r["recall_init"] = nan if a.smoke else recall(sparse, xv, arch.topk)
    every = max(1, a.sparse // 6)
    frozen = nnx.All(nnx.Param, nnx.Not(INDEXER))
    before = jax.tree.leaves(nnx.state(sparse, frozen))
    sparse, w = run_stage(sparse, INDEXER, a.warmup_lr, corpus.batches(setup.batch, seed + 2000),
                          a.warmup, corpus, 0)
    r["warmup_kl"] = w["kl"]
    r["frozen_change"] = max(float(jnp.max(jnp.abs(u - v))) for u, v in
                             zip(before, jax.tree.leaves(nnx.state(sparse, frozen)), strict=True))
    r["dsa_after_warmup"] = evaluate(sparse, corpus)
    r["recall_warm"] = nan if a.smoke else recall(sparse, xv, arch.topk)
    dense, d = run_stage(dense, nnx.Param, a.lr, corpus.batches(setup.batch, seed + 1000),
                         a.sparse, corpus, every)
    sparse, s = run_stage(sparse, nnx.Param, a.lr, corpus.batches(setup.batch, seed + 1000),
                          a.sparse, corpus, every)
    r.update(dense=evaluate(dense, corpus), dsa=evaluate(sparse, corpus),
             recall_final=recall(sparse, xv, arch.topk), curve_dense=d["val"],
             curve_dsa=s["val"], sparse_kl=s["kl"], s_step_dense=d["s_per_step"],
             s_step_dsa=s["s_per_step"], s_step_warm=w["s_per_step"],
             steps_done=int(sparse.mixers[0].indexer_step[...]))
    print(f"  seed {seed}: pre-trained {r['pre']:.4f}; DSA untrained indexer "
          f"{r['dsa_untrained_indexer']:.4f}, after warm-up {r['dsa_after_warmup']:.4f}; final "
          f"dense {r['dense']:.4f} / DSA {r['dsa']:.4f} bits/byte "
          f"(gap {r['dsa'] - r['dense']:+.4f})"
          f"; recall {r['recall_init'][0]:.3f} -> {r['recall_warm'][0]:.3f} -> "
          f"{r['recall_final'][0]:.3f} (best {r['recall_final'][1]:.3f}); warm-up KL "
          f"{w['kl'][0]:.3f} -> {w['kl'][-1]:.3f} nats; s/step dense {d['s_per_step']:.3f}, "
          f"warm-up {w['s_per_step']:.3f}, sparse {s['s_per_step']:.3f}", flush=True)
    return r


def plot(runs: list[dict], times: dict, a, out) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, key in enumerate(("dense", "dsa") if runs else ()):
        steps = np.array([s for s, _ in runs[0][f"curve_{key}"]])
        v = np.array([[b for _, b in r[f"curve_{key}"]] for r in runs])
        steps = np.concatenate([[0], steps])
        v = np.concatenate([[[r["pre"] if key == "dense" else r["dsa_after_warmup"]]
                             for r in runs], v], 1)
        m, sd = v.mean(0), v.std(0)
        label = "dense MLA" if key == "dense" else f"DSA on MLA (top-{a.topk})"
        ax0.plot(steps, m, "o-", color=f"C{i}", label=f"{label}, n={len(runs)}")
        ax0.fill_between(steps, m - sd, m + sd, color=f"C{i}", alpha=0.25)
    ax0.set(xlabel=f"step of the sparse stage (after {a.pretrain} dense + {a.warmup} "
                   "indexer warm-up steps)", ylabel="validation bits / byte",
            title=f"byte LM, length {a.length}: mean ± std over seeds")
    ax0.legend()
    if times:
        labels = ["fwd", "fwd+bwd"]
        width = 0.2
        for j, length in enumerate(sorted(times)):
            t = times[length]
            bars = {"dense": [t["dense fwd"], t["dense fwd+bwd"]],
                    "DSA (LM + eq. 4 KL)": [t["dsa fwd"], t["dsa fwd+bwd"]],
                    "DSA (LM only)": [t["dsa fwd"], t["dsa LM only fwd+bwd"]]}
            for i, (name, vals) in enumerate(bars.items()):
                xs = np.arange(2) + 2.5 * j + (i - 1) * width
                ax1.bar(xs, vals, width, color=f"C{i}", label=name if j == 0 else None)
        ax1.set_xticks([x + 2.5 * j for j in range(len(times)) for x in range(2)],
                       [f"{lab}\nT={n}" for n in sorted(times) for lab in labels])
        ax1.set(ylabel="seconds (median of repeats, batch 1)", yscale="log",
                title="time per call, 2-core CPU")
        ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--pretrain", type=int, default=300)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--sparse", type=int, default=120)
    p.add_argument("--lr", type=float, default=3e-4, help="both arms after pre-training")
    p.add_argument("--warmup-lr", type=float, default=1e-3)
    p.add_argument("--recall-windows", type=int, default=8)
    p.add_argument("--time-lengths", type=int, nargs="*", default=[4096, 8192])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, plot to a temp dir")
    a = p.parse_args(argv)
    arch = Arch(topk=a.topk)
    setup = LMSetup(d_model=arch.d_model, length=a.length, batch=a.batch, steps=a.pretrain,
                    val_windows=32)
    if a.smoke:
        a.seeds, a.length, a.topk, a.pretrain, a.warmup, a.sparse = 1, 32, 8, 0, 1, 1
        a.recall_windows, a.time_lengths, a.repeats = 1, [], 1
        arch = Arch(d_model=16, kv_rank=16, topk=8, index_heads=2, index_head_dim=8,
                    block_size=16)
        setup = dataclasses.replace(setup, d_model=16, n_layers=1, length=32, batch=2,
                                    steps=2, corpus_bytes=20_000, val_bytes=2_000,
                                    val_windows=2)
    clock = Clock()
    corpus = Corpus(setup)
    print(corpus_info(corpus.data))
    print(f"length {a.length}, top-k {a.topk} (the last query keeps {a.topk / a.length:.1%} of "
          f"its keys), batch {setup.batch}; {a.pretrain} dense + {a.warmup} warm-up + "
          f"{a.sparse} sparse steps; {a.seeds} seeds", flush=True)
    runs = [one_seed(s, arch, setup, a, corpus) for s in range(a.seeds)]
    gaps = np.zeros(0)
    if runs:  # --seeds 0: the timing only
        r0 = runs[0]
        print(f"\nparameters: dense {r0['params_dense']:,}; DSA {r0['params_dsa']:,} = dense + "
              f"indexer {r0['params_indexer']:,} (identical otherwise; max |Δlogits| of the DSA "
              f"model in its warm-up stage vs dense: {max(r['warmup_match'] for r in runs):.1e}; "
              f"largest change of a non-indexer weight during warm-up: "
              f"{max(r['frozen_change'] for r in runs):.1e})")
        col = {k: [r[k] for r in runs] for k in ("pre", "dsa_untrained_indexer", "dsa_after_warmup",
                                                 "dense", "dsa")}
        gaps = np.array(col["dsa"]) - np.array(col["dense"])
        for k, v in col.items():
            print(f"  {k:22s} {spread(v, '.4f')} bits/byte")
        print(f"  gap DSA - dense (paired) {spread(gaps, '+.4f')} bits/byte; within the 0.02 "
              f"margin: {bool(gaps.mean() + gaps.std() < 0.02)}")
        uniform = np.mean(a.topk / np.arange(a.topk + 1, a.length + 1))
        for k in ("recall_init", "recall_warm", "recall_final"):
            print(f"  {k:13s} indexer top-{a.topk} share of dense attention mass "
                  f"{spread([r[k][0] for r in runs])} (best possible "
                  f"{spread([r[k][1] for r in runs])}; a random choice {uniform:.3f})")
        curve = np.array([[b for _, b in r["curve_dsa"]] for r in runs]) - np.array(
            [[b for _, b in r["curve_dense"]] for r in runs])
        print("  gap during the sparse stage (step: mean ± std) " + ", ".join(
            f"{s}: {m:+.4f} ± {d:.4f}" for (s, _), m, d in
            zip(runs[0]["curve_dsa"], curve.mean(0), curve.std(0), strict=True)))
        for k in ("s_step_dense", "s_step_warm", "s_step_dsa"):
            print(f"  {k}: {spread([r[k] for r in runs])} s per training step (length {a.length})")
    times = {}
    for length in a.time_lengths:
        times[length] = timing(arch, setup, 4 * arch.d_model, length, a.repeats)
    clock.report()
    # --seeds 0 (the timing alone) never overwrites the figure of a full run
    plot(runs, times, a, figure_path("repro_dsa_lm", a.smoke or not runs))
    return {"runs": runs, "gaps": gaps, "times": times}


if __name__ == "__main__":
    main()
