"""Per-mixer benchmark specs: the op call, its naive reference, its peers and the work it must do.

For every registered mixer name, a :class:`MixerSpec` says
- ``op``: how to call the mixer's core op from ``seqlab.ops`` at the benchmark's sizes;
- ``reference``: the naive form of the same computation (the "speedup" denominator);
- ``peers``: other implementations of the same core (flash-linear-attention's torch references
  on CPU / Triton on GPU, ``jax.nn.dot_product_attention``, a tutorial-style S4D, and the JAX
  peers of :mod:`seqlab.bench.peers_jax` where installed: recurrentgemma's and
  lindermanlab/S5's scans, mamba2-jax's SSD, deltanet-tpu's and MaxText's gated delta rule);
- ``core_cost``: the FLOPs and bytes the core *must* do (the minimal arithmetic of the
  recurrence or attention, not what a given algorithm happens to do), for the physical bound;
- ``complexity``: the asymptotic cost in the length, for the scaling plot.

Each builder imports its op lazily and may raise ImportError / AttributeError: the harness turns
that into a "skipped: ..." note, so the table degrades gracefully while ops are still landing.
The sizes of the core call (heads, head dim, state size, top-k, ...) are read from the mixer
instance when it exposes them (:func:`dims_of`), else from the spec's defaults.

The types live in :mod:`seqlab.bench.specs_base`, the per-family builders in
:mod:`seqlab.bench.specs_ssm`, :mod:`seqlab.bench.specs_delta` and
:mod:`seqlab.bench.specs_attention`; this module assembles :data:`SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable

from seqlab.bench.specs_attention import (
    _attn_cost,
    _dense_op,
    _dense_ref,
    _dsa_cost,
    _dsa_op,
    _fla_attn,
    _fla_dsa,
    _jax_sdpa,
    _naive_attn,
    _topk_cost,
    _topk_op,
)
from seqlab.bench.specs_base import Builder, Call, Dims, MixerSpec, dims_of
from seqlab.bench.specs_delta import _delta_spec
from seqlab.bench.specs_ssm import (
    _bare_fft_conv,
    _hydra_op,
    _hydra_ref,
    _s4_cost,
    _s4_op,
    _s4d_cost,
    _s4d_op,
    _s4d_tutorial,
    _s5_cost,
    _s5_lindermanlab,
    _s5_op,
    _s5_recurrentgemma,
    _s5_ref,
    _ssd_cost,
    _ssd_mamba2_jax,
    _ssd_op,
    _ssd_ref,
)

__all__ = ["Dims", "Call", "MixerSpec", "SPECS", "spec_for", "dims_of"]


def _conv_spec(cost: Callable[[Dims], tuple[float, float]], op: Builder) -> MixerSpec:
    return MixerSpec("L log L", cost, op=op, reference=_bare_fft_conv, peers=(_s4d_tutorial,))


SPECS: dict[str, MixerSpec] = {
    "s4d": _conv_spec(_s4d_cost, _s4d_op),
    "s4-ptd": _conv_spec(_s4d_cost, _s4d_op),
    "s4": _conv_spec(_s4_cost, _s4_op),
    "s5": MixerSpec("L", _s5_cost, op=_s5_op, reference=_s5_ref,
                    peers=(_s5_recurrentgemma, _s5_lindermanlab)),
    "deltanet": _delta_spec(1, gated=False),
    "gated-deltanet": _delta_spec(1, gated=True),
    "deltaproduct": _delta_spec(2, gated=True),
    "mamba2": MixerSpec("L", _ssd_cost(1), op=_ssd_op, reference=_ssd_ref,
                        peers=(_ssd_mamba2_jax,)),
    "hydra": MixerSpec("L", _ssd_cost(2), op=_hydra_op, reference=_hydra_ref),
    # two Mamba-2 passes (the default inner mixer), one per direction
    "bidirectional": MixerSpec("L", _ssd_cost(2), op=_ssd_op, reference=_ssd_ref),
    "mha": MixerSpec("L^2", _attn_cost, op=_dense_op, reference=_naive_attn,
                     peers=(_jax_sdpa, _fla_attn)),
    "mla": MixerSpec("L^2", _attn_cost, op=_dense_op, reference=_naive_attn,
                     peers=(_jax_sdpa,)),
    "topk": MixerSpec("L^2", _topk_cost, op=_topk_op, reference=_dense_ref),
    "dsa": MixerSpec("L^2", _dsa_cost, op=_dsa_op, reference=_dense_ref, peers=(_fla_dsa,)),
}
"""Known mixers. A mixer registered under another name gets :data:`GENERIC` (no op-level rows;
its bound then comes from XLA's own cost analysis, marked as such)."""

GENERIC = MixerSpec("?", lambda d: (0.0, 0.0))


def spec_for(name: str) -> MixerSpec:
    """The spec of a mixer name (``GENERIC`` for unknown names)."""
    return SPECS.get(name, GENERIC)
