"""Downloaded LRA sources without their files and without network: one clear paragraph that
names the files and the folder, at once (no hub retries), and exit 2 from the CLI."""

import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from seqlab.data import load
from seqlab.data import lra as lra_lib

# The in-process bound: the hub probe waits at most HUB_PROBE_SECONDS (1 s); reading a missing
# folder takes milliseconds. 2 s is the bound.
BOUND_S = 2.0


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Not declared offline, but the hub endpoint refuses connections; load_dataset must not be
    reached at all."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")

    def never(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(datasets, "load_dataset", never)
    return tmp_path


@pytest.mark.parametrize("task, files", [
    ("text", r"aclImdb/\{train,test\}/\{pos,neg\}/\*\.txt"),
    ("retrieval", r"new_aan_pairs\.train\.tsv"),
    ("image", r"cifar-10-batches-py/\{data_batch_1\.\.5,test_batch\}"),
])
def test_no_network_one_paragraph_at_once(no_network, task, files):
    root = no_network / "lra"
    root.mkdir()
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=files) as err:
        load(task, "train", root=str(root))
    assert time.perf_counter() - start < BOUND_S
    message = str(err.value)
    assert str(root) in message and "\n" not in message
    if task != "retrieval":
        assert "cannot be reached" in message


def test_unroutable_hub_is_bounded(no_network, monkeypatch):
    """A hub address whose packets go nowhere: the probe gives up after HUB_PROBE_SECONDS."""
    monkeypatch.setattr(lra_lib, "_hub_endpoint", lambda: "https://10.255.255.1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="cannot be reached"):
        load("image", "test")
    assert time.perf_counter() - start < BOUND_S


@pytest.mark.parametrize("config", ["lra/text/s4d", "lra/image/s4d",
                                    "lra/retrieval/s4d"])
def test_cli_check_without_network_exits_2(tmp_path, config):
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
               HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
               HF_DATASETS_CACHE=str(tmp_path / "cache"))
    env.pop("SEQLAB_DEBUG", None)
    out = subprocess.run(
        [sys.executable, "-m", "seqlab.cli", "check", config, "--set",
         f"data.root={tmp_path}"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.endswith("\n")
    assert out.stderr.count("\n") == 1 and str(tmp_path) in out.stderr


# ---------------------------------------------------------------- CIFAR-10 pickles


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reader_reads_plain_batches(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 7], b"batch_label": b"x",
                     b"filenames": [b"a.png", b"b.png"]}, f, protocol=protocol)
    batch = lra_lib.read_cifar_batch(path)
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"labels"] == [3, 7] and batch[b"filenames"] == [b"a.png", b"b.png"]


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: np.array([p], dtype=object)],
                         ids=["reduce", "object-array"])
def test_cifar_reader_refuses_code(tmp_path, wrap):
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": wrap(_Payload(marker)), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"not a CIFAR-10 python batch \(it refers to "
                       r"(posix|nt)\.system|dtype object") as err:
        lra_lib.read_cifar_batch(path)
    assert str(path) in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)
    assert not marker.exists()
    with open(path, "rb") as f:  # the file does carry the payload: plain pickle runs it
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("config", ["lra/text/s4d", "lra/retrieval/s4d", "lra/image/s4d"])
def test_check_no_data_builds_the_model_without_files(no_network, config, capsys):
    from seqlab.cli import main

    root = no_network / "empty"
    root.mkdir()
    assert main(["check", config, "--no-data", "--set", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "# ok:" in out and "not read" in out
    assert not any(root.iterdir())
