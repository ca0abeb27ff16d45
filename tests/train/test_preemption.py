"""SIGTERM mid-run: the run finishes its step, checkpoints, flushes its metrics and exits with
EXIT_PREEMPTED; the same command resumes with the same batches and losses as a run that was
never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqlab.config import load_config
from seqlab.train.metrics import read_metrics
from seqlab.train.preemption import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 150


def _config(tmp: Path) -> Path:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (80, 10))
    y = ((x == 3).sum(1) > (x == 2).sum(1)).astype(np.int64)
    np.savez(tmp / "d.npz", x_train=x[:48], y_train=y[:48], x_val=x[48:64], y_val=y[48:64],
             x_test=x[64:], y_test=y[64:])
    cfg = {
        "model": {"mixer": "s4d", "d_model": 8, "n_layers": 1, "norm": "layer", "dropout": 0.1,
                  "mixer_args": {"d_state": 4, "init": "inv"}},
        "data": {"name": "arrays", "path": str(tmp / "d.npz"), "pad_to": "max"},
        # never reaches its end: the run is stopped by the signal, resumed with stop_after
        "train": {"steps": 10**6, "batch_size": 8, "lr": 0.01, "eval_every": 10**6,
                  "checkpoint_every": 10**6, "log_every": 1, "seed": 0, "progress": False},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_checkpoints_and_resumes_exactly(tmp_path, sig):
    from seqlab.train.run import train

    config = _config(tmp_path)
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "seqlab.cli", "train", str(config), "--workdir", str(workdir)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(_losses(workdir)) < 3:  # mid-run: a few steps done, compiled and running
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err and err.endswith("\n") and "resume" in err
    stopped = json.loads(out.strip().splitlines()[-1])
    step = stopped["step"]
    assert stopped["preempted"] == signal.Signals(sig).name and not stopped["finished"]
    assert sorted(_losses(workdir)) == list(range(1, step + 1))  # flushed up to the last step
    assert (workdir / "checkpoints" / str(step)).is_dir()
    # the same command resumes (stop_after may change between invocations) ...
    resumed = subprocess.run(cmd + ["--set", f"train.stop_after={step + 3}"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # ... with the losses of a run that never stopped (same batches, dropout keys, updates)
    straight = tmp_path / "straight"
    cfg = load_config(str(config), [f"train.stop_after={step + 3}"])
    train(cfg, straight)
    got, ref = _losses(workdir), _losses(straight)
    assert sorted(got) == sorted(ref) == list(range(1, step + 4))
    np.testing.assert_array_equal([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)])
    # a checkpoint that cannot be restored: one clear line, no second traceback from orbax's
    # background thread, and the line ends with a newline
    latest = workdir / "checkpoints" / str(step + 3)
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f.relative_to(latest)):
            f.write_bytes(b"garbage")
    broken = subprocess.run(cmd + ["--set", f"train.stop_after={step + 4}"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert broken.returncode == 2
    lines = [line for line in broken.stderr.splitlines(True) if not line.startswith(("W0", "I0"))]
    assert len(lines) == 1 and "cannot be restored" in lines[0], broken.stderr[-3000:]
    assert lines[0].endswith("\n") and "Traceback" not in broken.stderr


def test_stop_requests_record_the_first_signal_and_interrupt_on_the_second():
    import signal as signal_lib

    from seqlab.train.preemption import StopRequests

    before = signal_lib.getsignal(signal.SIGINT)
    with StopRequests() as stops:
        assert not stops.stop()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stops.stop() and stops.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal_lib.getsignal(signal.SIGINT) is before  # handlers restored
