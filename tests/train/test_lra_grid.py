"""The LRA grid runner: skips finished runs, resumes the rest, tabulates and plots."""

import json

import pytest

import seqlab.train.run as run_lib
from seqlab.train import lra


def fake_run(run_dir, acc, finished=True, steps=3):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("{}\n")
    lines = []
    for s in range(1, steps + 1):
        lines.append({"step": s, "split": "train", "loss": 2.0 / s, "accuracy": 0.1 * s})
        lines.append({"step": s, "split": "val", "loss": 2.0 / s, "accuracy": acc * s / steps})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if finished:
        results = {"finished": True, "best_step": steps,
                   "val": {"accuracy": acc, "loss": 1.0}, "test": {"accuracy": acc, "loss": 1.0}}
        (run_dir / "results.json").write_text(json.dumps(results))


def test_report_table_and_plot(tmp_path):
    fake_run(tmp_path / "listops" / "s4d", 0.5834)
    fake_run(tmp_path / "text" / "s4d", 0.8123)
    fake_run(tmp_path / "listops" / "mla", 0.3, finished=False)
    assert lra.cli_main(["--tasks", "listops,text", "--models", "s4d", "mla",
                         "--workdir", str(tmp_path), "--report"]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| **s4d** (seqlab) | 58.34 | 81.23 | 69.78 |" in table
    assert "| **mla** (seqlab) | running | — |  |" in table
    assert "| S4D-LegS (Gu et al. 2022b, Table 3) | 60.47 | 86.18 | 73.33 |" in table
    assert "Transformer" in table and "S5-PTD" in table
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_grid_skips_finished_resumes_rest_and_applies_overrides(tmp_path, monkeypatch):
    calls = []

    def train(cfg, workdir):
        calls.append((cfg.model.mixer, cfg.data.name, cfg.train.steps, str(workdir)))
        fake_run(workdir, 0.6)
        return {"finished": True}

    monkeypatch.setattr(run_lib, "train", train)
    fake_run(tmp_path / "listops" / "s4d", 0.59)
    code = lra.cli_main(["--tasks", "listops", "pathx", "--models", "s4d,s4",
                         "--workdir", str(tmp_path), "--set", "train.steps=7"])
    assert code == 0
    assert sorted(calls) == sorted([
        ("s4", "listops", 7, str(tmp_path / "listops" / "s4")),
        ("s4d", "pathfinder", 7, str(tmp_path / "pathx" / "s4d")),
        ("s4", "pathfinder", 7, str(tmp_path / "pathx" / "s4")),
    ])
    calls.clear()
    assert lra.cli_main(["--tasks", "listops", "pathx", "--models", "s4d,s4",
                         "--workdir", str(tmp_path)]) == 0
    assert calls == []  # everything finished: nothing retrained


def test_failed_run_reported_and_grid_continues(tmp_path, monkeypatch, capsys):
    def train(cfg, workdir):
        if cfg.model.mixer == "s4":
            raise FileNotFoundError("no data here")
        fake_run(workdir, 0.5)
        return {"finished": True}

    monkeypatch.setattr(run_lib, "train", train)
    code = lra.cli_main(["--tasks", "text", "--models", "s4,s4d", "--workdir", str(tmp_path)])
    assert code == 1
    assert "text/s4: failed: no data here" in capsys.readouterr().err
    assert (tmp_path / "text" / "s4d" / "results.json").exists()


def test_bad_names():
    with pytest.raises(ValueError, match="unknown task pathy"):
        lra.cli_main(["--tasks", "pathy"])
    with pytest.raises(ValueError, match="unknown model"):
        lra.cli_main(["--models", "s6"])


def accepted_options(cls) -> set[str]:
    """Keyword names a mixer class accepts, following ``**options`` up its base classes."""
    import inspect

    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def test_grid_has_every_task_model_config():
    """Each task x model of the grid has its config (tests/test_configs.py validates them all)."""
    configs = lra.default_configs()
    missing = [f"{t}/{m}" for t in lra.TASKS for m in lra.MODELS
               if not (configs / t / f"{m}.yaml").is_file()]
    assert not missing and len(lra.TASKS) * len(lra.MODELS) == 54
