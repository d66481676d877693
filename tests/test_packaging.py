"""A normal (non-editable) install carries what igcam reads at run time (the weights manifest,
the report's template).

The weights manifest used to live outside the package, so only an editable install found it
and every other install skipped the SHA-256 check of weight files without a word.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Not needed to build, and large or written to by other runs: never copied.
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "bench", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", "igcam-demo",
                                     "*.pth", "*.pt")


def test_non_editable_install_finds_its_package_data(tmp_path: Path) -> None:
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to build and install the package")
    source = tmp_path / "source"  # built from a copy: the build writes build/ and *.egg-info
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--no-compile", "--disable-pip-version-check",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path)
    # Only the installed copy is importable: cwd and PYTHONPATH hold no source tree, and
    # PYTHONPATH comes before the editable install's finder.
    env = {**os.environ, "PYTHONPATH": str(target)}
    shown = subprocess.run(
        [sys.executable, "-c", "import igcam_cli.backbones.weights as w; "
         "print(w.__file__); print(sorted(w.weights_manifest())); "
         "import igcam_cli.report as r; "
         "print(r.environment().get_template('report.html.j2').filename)"],
        check=True, cwd=tmp_path, env=env, capture_output=True, text=True).stdout.splitlines()
    assert Path(shown[0]).is_relative_to(target)
    assert "resnet50" in shown[1]
    assert Path(shown[2]).is_relative_to(target)  # the report's template
