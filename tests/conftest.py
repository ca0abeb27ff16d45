"""Test session setup, before JAX starts: 8 simulated CPU devices for the sharding tests, and
XLA:CPU code generation without LLVM's expensive optimisations. The suite's time is mostly
compilation of small programs that then run for milliseconds, so the unoptimised code halves the
suite's wall time (the same 48 model, CLI, example and training tests: 192 s -> 89 s on the
2-core CPU). No fast-math either way, but float32 results may differ in the last bits from the
optimised code's (one finite-difference tolerance in test_s4d.py says so); subprocesses started
by tests inherit the flags."""

import os

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
