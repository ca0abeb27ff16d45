"""The seqlab command: help, check, user errors without tracebacks, eval."""

import os
import subprocess
import sys

import pytest

from seqlab.cli import main

SMALL = ["--set", "data.sizes={train: 64, val: 16, test: 16}", "--set", "data.max_length=64",
         "--set", "data.min_length=16"]


def test_help_everywhere(capsys):
    out = subprocess.run([sys.executable, "-m", "seqlab.cli", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "usage: seqlab" in out.stdout
    for command in ("train", "eval", "check", "lra", "bench"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert f"usage: seqlab {command}" in capsys.readouterr().out


def test_check_demo(capsys):
    assert main(["check", "demo", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "# ok: 2 layers of s4d" in out and "64 train examples" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["check", "demo", "--set", "model.d_modle=3"], ["model.d_modle", "d_model"]),
        (["check", "demo", "--set", "model.mixer=s4dd"], ["'s4d'", "Registered"]),
        (["check", "demo", "--set", "data.max_lenght=9"], ["max_length"]),
        (["check", "demo", "--set", "data.name=listop"], ["'listops'"]),
        (["check", "configs/nope.yaml"], ["does not exist"]),
        (["train", "demo", "--set", "train.batch_size=3", "--set", "mesh.data=2"],
         ["divisible"]),
        (["eval", "/nonexistent/workdir"], ["not a seqlab workdir"]),
    ],
)
def test_user_errors_are_one_paragraph(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"seqlab {argv[0]}: error:"), err
    for w in words:
        assert w in err


def test_train_then_eval(tmp_path, capsys):
    import json

    argv = ["train", "demo", *SMALL, "--set", "train.steps=2", "--set",
            "train.eval_every=2", "--set", "train.progress=false", "--set", "model.d_model=16",
            "--workdir", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["finished"] and result["test"]["count"] == 16
    assert main(["eval", str(tmp_path), "--split", "test"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"accuracy", "loss"} and out["accuracy"] == result["test"]["accuracy"]


def test_renamed_mixer_argument_names_the_new_one(capsys):
    argv = ["check", "demo", "--set", "model.mixer=deltanet", "--set",
            "model.mixer_args={num_heads: 2}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'num_heads' was renamed to 'n_heads'" in err and "Traceback" not in err


def test_default_workdir_keeps_the_shipped_config_folders(tmp_path, monkeypatch):
    from seqlab.cli import _default_workdir

    assert _default_workdir("lra/listops/s4d") == os.path.join("runs", "lra", "listops", "s4d")
    assert _default_workdir("lra/text/s4d.yaml") == os.path.join("runs", "lra", "text", "s4d")
    (tmp_path / "mine.yaml").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert _default_workdir("mine.yaml") == os.path.join("runs", "mine")


def test_import_is_recorded_absolute_and_eval_export_take_it(tmp_path, monkeypatch, capsys):
    from seqlab.cli import _config, build_parser

    (tmp_path / "mymix.py").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = _config(build_parser().parse_args(["check", "demo", "--import", "./mymix.py"]))
    assert cfg.imports[-1] == str(tmp_path / "mymix.py")
    for argv in (["eval", str(tmp_path)], ["export", str(tmp_path), str(tmp_path / "out")]):
        assert main([*argv, "--import", "no_such_module_here"]) == 2
        assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
