"""Many processes and generated data: process 0 generates a split into the shared ``data.root``
and the other process reads that copy instead of generating its own; when process 0 fails, the
other stops at once with process 0's error instead of waiting.

Two real processes connected by jax.distributed over loopback (no model, no compilation: a few
seconds each). Each process runs a small script that counts calls of the ListOps generator.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 90

WORKER = r"""
import hashlib, importlib, json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
listops_module = importlib.import_module("seqlab.data.listops")  # the module, not the function
from seqlab.config import config_from_dict
from seqlab.train.inputs import load_split
from seqlab.utils import UserError

calls = []
generate = listops_module.generate

def counting(*args, **kwargs):
    calls.append(args[0])
    if os.environ.get("FAIL_ON_0") and jax.process_index() == 0:
        raise ValueError("no space left on device (simulated)")
    return generate(*args, **kwargs)

listops_module.generate = counting
cfg = config_from_dict({
    "model": {"mixer": "s4d", "d_model": 8, "n_layers": 1},
    "data": {"name": "listops", "root": sys.argv[3], "sizes": {"train": 64, "val": 16},
             "min_length": 8, "max_length": 32, "max_depth": 3},
    "train": {"batch_size": 8, "steps": 1},
    "mesh": {"data": 2, "distributed": True},
})
try:
    out = {}
    for split in ("train", "val"):
        s = load_split(cfg, split)
        rows = s.data.with_format("numpy")["inputs"]
        out[split] = hashlib.sha256(b"".join(r.tobytes() for r in rows)).hexdigest()
    print(json.dumps({"process": jax.process_index(), "generated": calls, **out}), flush=True)
except (ValueError, UserError) as e:
    print(json.dumps({"process": jax.process_index(), "error": str(e)}), flush=True)
    sys.exit(2)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, **env_extra: str) -> list[tuple[int, dict]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **env_extra)
    procs = [subprocess.Popen([sys.executable, str(script), address, str(i),
                               str(tmp_path / "shared")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for i in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            assert lines, err[-3000:]
            results.append((p.returncode, json.loads(lines[-1])))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return results


def test_process_zero_generates_and_the_other_reads_its_copy(tmp_path):
    (rc0, first), (rc1, second) = _run(tmp_path)
    assert rc0 == rc1 == 0, (first, second)
    assert first["generated"] == ["train", "val"]
    assert second["generated"] == []  # it read process 0's copy from the shared root
    assert first["train"] == second["train"] and first["val"] == second["val"]


def test_process_zero_failure_stops_the_other_with_its_error(tmp_path):
    (rc0, first), (rc1, second) = _run(tmp_path, FAIL_ON_0="1")
    assert rc0 == rc1 == 2
    assert "no space left on device" in first["error"]
    assert "process 0 could not prepare the train split" in second["error"]
    assert "no space left on device (simulated)" in second["error"]
