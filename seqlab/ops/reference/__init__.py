"""Slow, obviously-right references of the ops, written as loops from the papers' equations.

Shared by the tests and ``seqlab bench`` (as flash-linear-attention keeps a ``naive.py`` beside
each kernel). They use ``lax.scan`` or Python loops, so they are differentiable and run in
float64 under ``jax.enable_x64``; they never call the fast paths they check.

- ``scan``: the linear recurrence h_t = a_t h_{t-1} + b_t one step at a time.
- ``ssd``: Mamba-2's selective scan one step at a time; Hydra's quasiseparable mixer from two
  such scans.
- ``ssm``: the diagonal SSM recurrence; S4's DPLR kernel from the dense state matrix.
- ``attention``: softmax attention with masks; top-k attention; DSA's indexer selection.

The delta family's sequential reference is ``seqlab.ops.delta.delta_product_recurrent``.
"""
