"""The public API: every listed name resolves, the CLI entry point answers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import procres


@pytest.mark.parametrize("name", [n for n in procres.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(procres, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        procres.no_such_name  # noqa: B018


def test_python_dash_m_procres_prints_help_and_version():
    out = subprocess.run([sys.executable, "-m", "procres", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and procres.__version__ in out.stdout
    out = subprocess.run([sys.executable, "-m", "procres", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("models", "spectrum", "train", "demo", "plot", "reproduce"):
        assert command in out.stdout


def test_internal_helpers_are_not_public_but_stay_importable():
    from procres.diagnostics.ratios import log_ratio_spread
    from procres.spectral.symbol import batched_svdvals

    assert callable(batched_svdvals) and callable(log_ratio_spread)
    assert not {"batched_svdvals", "log_ratio_spread"} & set(procres.__all__)
    with pytest.raises(AttributeError):
        procres.batched_svdvals  # noqa: B018


def test_the_package_accepts_an_installed_torch_and_make_pins_the_tested_one():
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    (requirement,) = re.findall(r'^\s*"(torch[^"]*)",', pyproject, re.M)
    assert re.fullmatch(r"torch>=2\.3", requirement)  # a floor, never a pin: pip keeps the user's torch
    installed = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= (2, 3)
    makefile = (root / "Makefile").read_text()
    assert "TORCH  ?= torch==2.13.0" in makefile
    assert makefile.index("pip install -q '$(TORCH)'") < makefile.index("pip install -q -e '.[test]'")
