"""The README's promises: its library snippet runs, and CI runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_library_snippet_runs(capsys):
    code = re.search(r"## The library in 15 lines\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    exec(compile(code, "README.md", "exec"), {})
    sigma_line, ratio_line = capsys.readouterr().out.strip().splitlines()
    assert [round(float(v), 5) for v in sigma_line.split()] == [1.41421] * 3
    assert len(ratio_line.strip("[]").split(",")) == 5


def test_regulariser_snippet_runs_and_prints_what_its_comments_say(capsys):
    code = re.search(r"## Norm-bounded and norm-preserving layers.*?```python\n(.*?)```", README, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines() == ["True", "True", "['0', '3'] ['1']"]


def test_quickstart_is_two_make_targets_and_ci_runs_the_test_one():
    quickstart = re.search(r"## Quickstart.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
