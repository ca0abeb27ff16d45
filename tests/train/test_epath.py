"""Workdirs go through etils.epath (gs:// and other fsspec paths); tested here on local paths,
with the object-store branch (no append) forced on a local file."""

import json

from etils import epath

from seqlab.train import metrics as metrics_lib
from seqlab.train.workdir import set_aside_after


def test_metrics_without_append_rewrite_the_same_file(tmp_path, monkeypatch):
    local, store = tmp_path / "local", tmp_path / "store"
    local.mkdir(), store.mkdir()
    (store / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n')
    (local / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n')
    a = metrics_lib.MetricsWriter(epath.Path(local), tensorboard=False)
    monkeypatch.setattr(metrics_lib, "_appendable", lambda path: False)  # as on gs://
    b = metrics_lib.MetricsWriter(str(store), tensorboard=False)
    for w in (a, b):
        w.write(2, "train", loss=1.5)
        w.write(2, "val", loss=1.4, accuracy=0.5)
    assert (store / "metrics.jsonl").read_text() == (local / "metrics.jsonl").read_text()
    assert len(metrics_lib.read_metrics(epath.Path(store))) == 3


def test_rollback_on_an_epath_workdir(tmp_path):
    workdir = epath.Path(tmp_path)
    records = [{"step": s, "split": "train", "loss": 1.0} for s in (1, 2, 3)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "best" / "3").mkdir(parents=True)
    set_aside_after(workdir, 1)
    set_aside_after(workdir, 1)  # idempotent: nothing later is left to move
    assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == [1]
    moved = (workdir / "rolled_back" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved] == [2, 3]
    assert (workdir / "rolled_back" / "best_3").is_dir() and not (workdir / "best" / "3").exists()
