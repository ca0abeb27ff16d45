"""seqlab's ops against JAX implementations from the package index, same inputs, same backend.

    SEQLAB_S5_PATH=/path/to/lindermanlab-S5 python scripts/bench/bench_jax_peers.py \
        [--lengths 2048 4096 8192] [--repeats 3] [--rounds 2] [--pairs ssd gdn scan s5]

Each peer is imported when installed (adapters in ``seqlab.bench.peers_jax``, which
``seqlab bench`` also shows as peer columns); an absent one is reported as such (nothing is
required). For every pair the outputs and the gradients are first checked equal (relative error
printed), then forward and forward+backward are timed in alternation (``--rounds`` rounds, each
side's best median of ``--repeats`` calls, ``seqlab.bench.timing.time_fn``; gradients w.r.t.
every input, or for the scans w.r.t. (a, b) and for the S5 layer (parameters, input)).
Ratio = peer time / seqlab time (> 1: seqlab is faster).

- SSD (Mamba-2 chunked scan): ``seqlab.ops.ssd.ssd`` vs mamba2-jax ``modeling.ssd_forward``
  (B=1, H=4, P=N=64, chunk 64; the peer takes per-head B, C, given broadcast, and applies
  softplus to dt: it computes ``log(expm1(dt))`` first).
- Gated delta rule: ``seqlab.ops.delta.delta_product`` (n=1, gated) vs deltanet-tpu
  ``variants.chunk_gdn(fallback_scan=True, precision="fp32")`` (its pure-JAX form; it requires
  K = V = 128 and chunk 128) and MaxText ``models.qwen3.jax_chunk_gated_delta_rule``
  (compute_dtype float32, chunk 64). B=1, H=4, K=V=128.
- Diagonal linear scan ``h_t = a_t h_{t-1} + b_t`` (S5's and RG-LRU's recurrence, real):
  ``seqlab.ops.scan.linear_scan`` vs recurrentgemma ``jax.scan.linear_scan`` (B=1, D=1024).
- S5 layer: ``seqlab.layers.S5`` (nothing after the SSM) vs lindermanlab/S5's ``S5SSM`` from a
  checkout (not packaged; ``$SEQLAB_S5_PATH``) with the same parameters, B=4, H=128,
  P=256 (128 modes kept by conjugate symmetry): lindermanlab/S5's Retrieval and Path-X sizes
  (``bin/run_experiments/run_lra_aan.sh``, ``run_lra_pathx.sh``; batch 32 there); gradients
  w.r.t. the parameters and the input.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from seqlab.bench import peers_jax
from seqlab.bench.timing import fwd_bwd, time_fn


def _rel(a, b) -> float:
    """The largest relative error over the leaves of two pytrees of arrays."""
    def one(a, b):
        a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(a), 1e-30))

    return max(jax.tree.leaves(jax.tree.map(one, a, b)))


def _absent(what: str) -> str:
    return f"not available (install {what})"


def ssd_pair(t: int, key):
    from seqlab.bench.specs_base import Dims
    from seqlab.bench.specs_ssm import _ssd_inputs
    from seqlab.ops.ssd import ssd

    args = _ssd_inputs(Dims(1, t, 256, n_heads=4, head_dim=64, d_state=64), key)
    peer = peers_jax.mamba2_jax_ssd(64)
    return "SSD", lambda *a: ssd(*a, chunk_size=64)[0], args, {
        "mamba2-jax ssd_forward": (peer, args) if peer else _absent("mamba2-jax")}


def gdn_pair(t: int, key):
    from seqlab.bench.specs_base import Dims
    from seqlab.bench.specs_delta import _delta_inputs
    from seqlab.ops.delta import delta_product

    args = _delta_inputs(Dims(1, t, 512, n_heads=4, head_dim=128), key, 1, True)
    tpu, mt = peers_jax.deltanet_tpu_gdn(), peers_jax.maxtext_gdn(64)
    return "gated delta rule", lambda *a: delta_product(*a, num_householder=1)[0], args, {
        "deltanet-tpu chunk_gdn (fallback_scan)": (tpu, args) if tpu else _absent("deltanet-tpu"),
        "MaxText jax_chunk_gated_delta_rule": (mt, args) if mt else _absent("maxtext")}


def scan_pair(t: int, key):
    from seqlab.ops.scan import linear_scan

    k1, k2 = jax.random.split(key)
    args = (jax.random.uniform(k1, (1, t, 1024), minval=0.5, maxval=1.0),
            jax.random.normal(k2, (1, t, 1024)))
    peer = peers_jax.recurrentgemma_scan()
    return "linear scan", linear_scan, args, {
        "recurrentgemma linear_scan": (peer, args) if peer else _absent("recurrentgemma")}


def s5_pair(t: int, key, batch: int = 4, H: int = 128, P: int = 256):
    """seqlab's S5 layer against lindermanlab/S5's ``S5SSM`` (SSM + D u, zoh, conjugate
    symmetry, no clipping: its defaults) with the same parameters: ours is built with
    ``out="none", activation="identity"`` (nothing after the SSM), theirs is initialised and its
    parameters replaced by ours. Gradients w.r.t. the parameters and the input."""
    from flax import nnx

    from seqlab.layers.s5 import S5

    ours = S5(H, d_state=P, rngs=nnx.Rngs(0), out="none", activation="identity")
    graph, state, rest = nnx.split(ours, nnx.Param, ...)  # rest: the dropout's RNG state
    u = jax.random.normal(key, (batch, t, H))
    label = f"S5 layer (B={batch}, H={H}, P={P})"

    def f_ours(state, u):
        return nnx.merge(graph, state, rest)(u)

    cls = peers_jax.s5_module()
    if cls is None:
        where = f"a lindermanlab/S5 checkout: ${peers_jax.S5_PATH_VAR}"
        return label, f_ours, (state, u), {"lindermanlab/S5 S5SSM": _absent(where)}
    import numpy as np

    M = ours.n_modes
    module = cls(Lambda_re_init=ours.Lambda_re[...], Lambda_im_init=ours.Lambda_im[...],
                 V=jnp.eye(2 * M, M), Vinv=jnp.eye(M, 2 * M), H=H, P=M,  # replaced below
                 C_init="trunc_standard_normal",
                 discretization="zoh", dt_min=1e-3, dt_max=1e-1, conj_sym=True)
    init = module.init(jax.random.PRNGKey(1), u[0])["params"]  # Lambda already ours
    theirs = {"params": dict(init, B=ours.B[...], C=ours.C[...][0], D=ours.D[...],
                             log_step=ours.log_dt[...][:, None])}
    assert all(np.shape(theirs["params"][k]) == np.shape(v) for k, v in init.items())

    def f_theirs(params, u):
        return jax.vmap(lambda x: module.apply(params, x))(u)

    return label, f_ours, (state, u), {"lindermanlab/S5 S5SSM": (f_theirs, (theirs, u))}


def _grads_comparable(which: str, grads):
    """The S5 pair's input and parameter gradients of either side as one flat dict (the other
    pairs' gradients are already alike)."""
    if which != "s5":
        return grads
    params, du = grads
    if isinstance(params, dict):  # lindermanlab/S5's
        p = params["params"]
        return {"u": du, "Lambda_re": p["Lambda_re"], "Lambda_im": p["Lambda_im"], "B": p["B"],
                "C": p["C"], "D": p["D"], "log_dt": p["log_step"][:, 0]}
    p = {k: v.get_value() if hasattr(v, "get_value") else v.value for k, v in params.items()}
    return {"u": du, "Lambda_re": p["Lambda_re"], "Lambda_im": p["Lambda_im"], "B": p["B"],
            "C": p["C"][0], "D": p["D"], "log_dt": p["log_dt"]}


def _best(fns, args, rounds: int, repeats: int) -> list[float]:
    best = [float("inf")] * len(fns)
    for _ in range(rounds):  # alternate the sides: drift on a shared machine hits both
        for i, (fn, a) in enumerate(zip(fns, args, strict=True)):
            best[i] = min(best[i], time_fn(fn, *a, repeats=repeats).median_s)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", nargs="+", default=["ssd", "gdn", "scan", "s5"],
                    choices=["ssd", "gdn", "scan", "s5"])
    args = ap.parse_args()
    print(f"jax {jax.__version__} backend={jax.default_backend()} "
          f"device={jax.devices()[0].device_kind} load={os.getloadavg()[0]:.1f}")
    print(f"{'op':34} {'peer':40} {'T':>5} {'rel.err':>8} {'ours fwd':>9} {'peer fwd':>9} "
          f"{'ratio':>6} {'ours f+b':>9} {'peer f+b':>9} {'ratio':>6}")
    pairs = {"ssd": ssd_pair, "gdn": gdn_pair, "scan": scan_pair, "s5": s5_pair}
    for t in args.lengths:
        for which in args.pairs:
            label, ours, ours_args, peers = pairs[which](t, jax.random.PRNGKey(t))
            wrt = (0, 1) if which in ("scan", "s5") else tuple(range(len(ours_args)))
            for name, peer in peers.items():
                if isinstance(peer, str):
                    print(f"{label:34} {name:40} {t:5d} {peer}")
                    continue
                theirs, their_args = peer
                grads = [_grads_comparable(which, jax.jit(fwd_bwd(fn, wrt))(*a))
                         for fn, a in ((ours, ours_args), (theirs, their_args))]
                err = max(_rel(jax.jit(ours)(*ours_args), jax.jit(theirs)(*their_args)),
                          _rel(*grads))
                f = _best([ours, theirs], [ours_args, their_args], args.rounds, args.repeats)
                fb = _best([fwd_bwd(ours, wrt), fwd_bwd(theirs, wrt)],
                           [ours_args, their_args], args.rounds, args.repeats)
                print(f"{label:34} {name:40} {t:5d} {err:8.1e} {f[0] * 1e3:8.1f}ms "
                      f"{f[1] * 1e3:8.1f}ms {f[1] / f[0]:5.2f}x {fb[0] * 1e3:8.1f}ms "
                      f"{fb[1] * 1e3:8.1f}ms {fb[1] / fb[0]:5.2f}x  load="
                      f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
