"""Benchmarks built into seqlab: ``seqlab bench`` (harness), timing, device probe, peers.

``seqlab.bench.timing`` is the small API every benchmark script uses (``time_fn``, ``Timing``).
"""
