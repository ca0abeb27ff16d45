"""Multi-process training for real: two processes on this machine, 4 simulated CPU devices
each, connected by jax.distributed over loopback with gloo CPU collectives, against one process
with 8 devices.

The two-process run pauses at step 3 (``train.stop_after``) and resumes to step 6, so one test
covers: equal losses, process-0-only writes, and both processes resuming from the same step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from _assert import assert_close

from seqlab.config import load_config
from seqlab.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150  # per launch; a launch takes ~10-25 s on 2 loaded cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (96, 12))
    y = ((x == 3).sum(1) > (x == 2).sum(1)).astype(np.int64)
    np.savez(tmp / "d.npz", x_train=x[:64], y_train=y[:64], x_val=x[64:80], y_val=y[64:80],
             x_test=x[80:], y_test=y[80:])
    cfg = {
        "model": {"mixer": "s4d", "d_model": 16, "n_layers": 1, "norm": "layer",
                  "mixer_args": {"d_state": 8, "init": "inv"}},
        "data": {"name": "arrays", "path": str(tmp / "d.npz"), "pad_to": "max"},
        "train": {"steps": 6, "batch_size": 16, "lr": 0.01, "warmup_steps": 1,
                  "eval_every": 3, "checkpoint_every": 3, "log_every": 1, "seed": 0,
                  "progress": False},
        "mesh": {"data": 8, "fsdp": 1},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, workdir: Path, *overrides: str) -> str:
    """Two processes through scripts/multihost_launch.sh (LOCAL_PROCESSES=2, 4 CPU devices
    each, a free loopback port); the whole process group is killed whatever happens."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", LOCAL_PROCESSES="2", DEVICES_PER_PROCESS="4",
               COORDINATOR_PORT=str(_free_port()), WORKDIR=str(workdir), PYTHON=sys.executable,
               PYTHONPATH=str(ROOT),
               # the second launch (and the second process) reuse the first one's compilations
               JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cmd = ["bash", str(ROOT / "scripts" / "multihost_launch.sh"), str(config)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    timed_out = False
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()  # what the processes printed before they were killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not timed_out, f"the launch ran past {TIMEOUT_S} s; its stderr ends:\n{err[-6000:]}"
    assert proc.returncode == 0, err[-3000:]
    return err


def _train_losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def _files(workdir: Path) -> set[str]:
    """Paths under workdir, without orbax's per-process shard files and the event files'
    host-specific names."""
    out = set()
    for p in workdir.rglob("*"):
        rel = p.relative_to(workdir).as_posix()
        if "ocdbt.process_" in rel or rel.startswith("tensorboard/events") or \
                "/d/" in rel or rel.endswith("/d") or "array_metadatas" in rel:
            continue
        out.add(rel)
    return out


def test_two_processes_equal_one_process(tmp_path):
    from seqlab.train.run import train

    config = _config(tmp_path)
    reference = tmp_path / "one"
    train(load_config(str(config)), reference)  # in this process: 8 devices (conftest)
    multi = tmp_path / "two"
    _launch(config, multi, "train.stop_after=3")
    assert sorted(_train_losses(multi)) == [1, 2, 3]
    _launch(config, multi)  # both processes resume from the step-3 checkpoint
    ref, got = _train_losses(reference), _train_losses(multi)
    assert sorted(got) == list(range(1, 7))
    # The same global batches on the same 8-way data mesh; only the order in which the 8 shards'
    # gradients are summed differs (in-process all-reduce vs gloo), a float32 rounding of
    # ~1e-7 relative per step that the optimiser carries over 6 steps.
    assert_close([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5)
    assert ref[6] != ref[1]
    # process 0 alone wrote metrics, configs, results: the same files and records as one process
    assert len(read_metrics(multi)) == len(read_metrics(reference))
    assert _files(multi) - {"rolled_back"} == _files(reference)
    results = json.loads((multi / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["best_step"] == expected["best_step"]
    assert_close(results["test"]["loss"], expected["test"]["loss"], rtol=1e-5)
