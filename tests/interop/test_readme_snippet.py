"""The README's transformers snippet runs as written (offline, in a fresh directory)."""

import re
from pathlib import Path

from _hf_helpers import transformers  # noqa: F401  (skips without the test extra)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_pretrained_snippet(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Pretrained checkpoints", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert "128 128" in capsys.readouterr().out
    assert (tmp_path / "back" / "config.json").is_file()
