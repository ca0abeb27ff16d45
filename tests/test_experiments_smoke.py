"""The reproduction scripts' ``--smoke`` modes (tiny sizes: they must run, not reproduce) and
the standard-library corpus helper."""

import importlib
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from seqlab.data.stdlib_text import corpus_info, stdlib_bytes, stdlib_files

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["s4d_legs_kernel", "hippo_reconstruction", "mla_cache_loss", "transmla_finetune",
           "neg_eigval", "deltaproduct_s3", "ptd_transfer", "hydra_bidirectional",
           "s4d_listops", "ptd_robustness", "dsa_lm", "transmla_llama"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke(name, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(f"scripts.experiments.{name}")
    assert module.main(["--smoke"])
    sys.modules.pop(f"scripts.experiments.{name}", None)
    assert not jax.config.jax_enable_x64  # a script must not leave float64 on for later tests


def test_stdlib_bytes_deterministic_prefix_with_headers():
    files = stdlib_files()
    assert files == sorted(files) and files and all(f.endswith(".py") for f in files)
    assert not any("site-packages" in f or "__pycache__" in f for f in files)
    a = stdlib_bytes(5000)
    assert a.dtype == np.uint8 and a.shape == (5000,)
    np.testing.assert_array_equal(a, stdlib_bytes(5000))
    assert bytes(a).startswith(f"# file: {files[0]}\n".encode())
    assert "5,000 bytes" in corpus_info(a)


def test_stdlib_bytes_bad_input(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_bytes(0)
    with pytest.raises(ValueError, match="does not exist"):
        stdlib_bytes(10, root=str(tmp_path / "missing"))
