"""scripts/multihost_launch.sh's process set-up, checked without accelerators: PYTHON is a stub
that records what each process was started with (environment and arguments), so the GPU mode
(one process per GPU group) is checked on a machine without GPUs. The CPU mode runs for real in
tests/train/test_multiprocess.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("CUDA_VISIBLE_DEVICES", "XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID")

STUB = """#!{python}
import json, os, sys, time
keys = {keys!r}
record = {{k: os.environ.get(k) for k in keys}}
record["argv"] = sys.argv[1:]
path = os.path.join({out!r}, "p%s.json" % os.environ.get("JAX_PROCESS_ID", "x"))
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)  # whole or absent, even if a TERM comes right after
if os.environ.get("JAX_PROCESS_ID") == "1" and os.environ.get("STUB_EXIT"):
    # fail only once process 0 has recorded its start: the launcher stops the others (TERM)
    # when one fails, which could otherwise come before process 0 writes its record
    for _ in range(400):
        if os.path.exists(os.path.join({out!r}, "p0.json")):
            break
        time.sleep(0.05)
    sys.exit(int(os.environ["STUB_EXIT"]))
"""


def _launch(tmp_path: Path, **env_extra: str) -> tuple[int, list[dict]]:
    stub = tmp_path / "python"
    stub.write_text(STUB.format(python=sys.executable, keys=KEYS, out=str(tmp_path)))
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in KEYS and k != "JAX_PLATFORMS"}
    env.update(PYTHON=str(stub), WORKDIR=str(tmp_path / "w"), COORDINATOR_PORT="12345",
               **env_extra)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "multihost_launch.sh"), "demo",
                           "--set", "train.steps=5"], env=env, cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("p*.json"))]
    return proc.returncode, records


def test_gpu_mode_gives_each_process_its_own_gpus(tmp_path):
    rc, records = _launch(tmp_path, LOCAL_PROCESSES="3", GPUS_PER_PROCESS="2", MESH_DATA="6")
    assert rc == 0
    assert [r["JAX_PROCESS_ID"] for r in records] == ["0", "1", "2"]
    assert [r["CUDA_VISIBLE_DEVICES"] for r in records] == ["0,1", "2,3", "4,5"]
    for r in records:
        assert r["JAX_NUM_PROCESSES"] == "3" and r["XLA_FLAGS"] is None
        assert r["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:12345"
        assert r["argv"] == ["-m", "seqlab.cli", "train", "demo", "--workdir",
                             str(tmp_path / "w"), "--set", "mesh.distributed=true", "--set",
                             "mesh.data=6", "--set", "train.steps=5"]


def test_cpu_mode_simulates_devices(tmp_path):
    rc, records = _launch(tmp_path, LOCAL_PROCESSES="2", DEVICES_PER_PROCESS="3",
                          JAX_PLATFORMS="cpu")
    assert rc == 0 and len(records) == 2
    for r in records:
        assert r["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
        assert r["CUDA_VISIBLE_DEVICES"] is None


def test_one_process_per_host_mode_execs_seqlab_once(tmp_path):
    # Without LOCAL_PROCESSES (a pod slice, a multi-node job): this host's one process, with
    # JAX left to find the coordinator and its id.
    rc, records = _launch(tmp_path)
    assert rc == 0 and len(records) == 1
    assert records[0]["JAX_PROCESS_ID"] is None and records[0]["JAX_NUM_PROCESSES"] is None


def test_a_failing_process_sets_the_exit_status(tmp_path):
    rc, records = _launch(tmp_path, LOCAL_PROCESSES="2", GPUS_PER_PROCESS="1", STUB_EXIT="2")
    assert rc == 2 and len(records) == 2
