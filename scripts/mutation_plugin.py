"""pytest plugin for scripts/mutation.py's coverage map (``-p mutation_plugin``).

JAX traces a jitted function once per signature and then reuses the compiled code, so a test
that calls a function another test already traced would execute none of its Python lines and
would not be recorded as reaching them. Clearing JAX's caches before every test makes each test
trace (and so cover) everything it calls. Each test's duration is written to
``$SEQLAB_MUTATION_DURATIONS.<worker>.json`` so that mutants run their fastest tests first.
"""

from __future__ import annotations

import json
import os
import time

import jax
import pytest

_durations: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    jax.clear_caches()
    start = time.perf_counter()
    yield
    _durations[item.nodeid] = time.perf_counter() - start


def pytest_sessionfinish(session, exitstatus):
    prefix = os.environ.get("SEQLAB_MUTATION_DURATIONS")
    if prefix and _durations:  # each pytest-xdist worker writes its own file
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(f"{prefix}.{worker}.json", "w") as f:
            json.dump(_durations, f, indent=0)
