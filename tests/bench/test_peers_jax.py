"""seqlab.bench.peers_jax: absent peers are None (nothing required), and the lindermanlab/S5
adapter reads a checkout from $SEQLAB_S5_PATH and computes the op's recurrence."""

import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from _assert import assert_close

from seqlab.bench import peers_jax
from seqlab.ops.scan import linear_scan

# the recurrence's combine as lindermanlab/S5 s5/ssm.py writes it (vmapped over the state)
FAKE_SSM = '''
import jax

@jax.vmap
def binary_operator(q_i, q_j):
    A_i, b_i = q_i
    A_j, b_j = q_j
    return A_j * A_i, A_j * b_i + b_j

S5SSM = object
'''


def test_absent_peers_are_none(monkeypatch, tmp_path):
    monkeypatch.delenv(peers_jax.S5_PATH_VAR, raising=False)
    assert peers_jax.s5_scan() is None and peers_jax.s5_module() is None
    monkeypatch.setenv(peers_jax.S5_PATH_VAR, str(tmp_path))  # no s5/ inside
    assert peers_jax.s5_scan() is None
    monkeypatch.setattr(peers_jax, "importlib", SimpleNamespace(import_module=_raise))
    assert peers_jax.recurrentgemma_scan() is None and peers_jax.mamba2_jax_ssd(64) is None
    assert peers_jax.deltanet_tpu_gdn() is None and peers_jax.maxtext_gdn(64) is None


def _raise(name):
    raise ImportError(name)


def test_s5_checkout_is_imported_from_the_path(monkeypatch, tmp_path):
    (tmp_path / "s5").mkdir()
    (tmp_path / "s5" / "__init__.py").write_text("")
    (tmp_path / "s5" / "ssm.py").write_text(FAKE_SSM)
    monkeypatch.setenv(peers_jax.S5_PATH_VAR, str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(jnp, "DeviceArray", jax.Array, raising=False)  # the adapter's alias
    for name in ("s5", "s5.ssm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    scan = peers_jax.s5_scan()
    assert scan is not None and peers_jax.s5_module() is object
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 1.0, (1, 1, 3)) * np.exp(1j * rng.uniform(-1, 1, (1, 1, 3))),
                    jnp.complex64)
    b = jnp.asarray(rng.standard_normal((2, 9, 3)) + 1j * rng.standard_normal((2, 9, 3)),
                    jnp.complex64)
    assert_close(np.asarray(jax.jit(scan)(a, b)), np.asarray(linear_scan(a, b)), rtol=1e-5,
                 atol=1e-6)


def test_bench_jax_peers_script_reports_absent_peers(monkeypatch, capsys):
    """The script runs where no peer is installed and says so for each (CI has none)."""
    from pathlib import Path

    monkeypatch.delenv(peers_jax.S5_PATH_VAR, raising=False)
    monkeypatch.setattr(peers_jax, "_import", lambda module, name: None)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
    import bench_jax_peers

    monkeypatch.setattr(sys, "argv", ["bench_jax_peers.py", "--lengths", "32", "--repeats", "1",
                                      "--rounds", "1"])
    bench_jax_peers.main()
    out = capsys.readouterr().out
    for peer in ("mamba2-jax", "deltanet-tpu", "MaxText", "recurrentgemma", "lindermanlab/S5"):
        assert peer in out
    assert out.count("not available") == 5
