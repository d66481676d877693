"""A normal (non-editable) install carries what igcam reads at run time (the weights manifest,
the report's template), and its ``igcam`` command is the CLI's entry point.

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
from harness import one_line_error

from igcam_cli import __version__

ROOT = Path(__file__).resolve().parents[1]
# Not needed to build, and large or written to by other runs: never copied.
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "bench", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", "igcam-demo",
                                     "*.pth", "*.pt")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed (not editable) into a folder of its own: its ``--target``."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to build and install the package")
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # built from a copy: the build writes build/ and *.egg-info
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--no-compile", "--disable-pip-version-check",
                    "--target", str(target), str(source)], check=True, cwd=work)
    return target


def _only(target: Path) -> dict[str, str]:
    """An environment in which only the installed copy is importable: cwd and PYTHONPATH hold
    no source tree, and PYTHONPATH comes before the editable install's finder."""
    return {**os.environ, "PYTHONPATH": str(target)}


def test_non_editable_install_finds_its_package_data(installed: Path, tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-c", "import igcam_cli.backbones.weights as w; "
         "print(w.__file__); print(sorted(w.weights_manifest())); "
         "import igcam_cli.report as r; "
         "print(r.environment().get_template('report.html.j2').filename)"],
        check=True, cwd=tmp_path, env=_only(installed), capture_output=True,
        text=True).stdout.splitlines()
    assert Path(shown[0]).is_relative_to(installed)
    assert "resnet50" in shown[1]
    assert Path(shown[2]).is_relative_to(installed)  # the report's template


def test_the_console_script_exits_with_main_s_status(installed: Path, tmp_path: Path) -> None:
    """The installed ``igcam`` command: what main prints and returns reaches the shell."""
    script = installed / "bin" / "igcam"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *args], cwd=tmp_path, env=_only(installed),
                              capture_output=True, text=True)

    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"igcam {__version__}\n", version
    one_line_error(run("frobnicate"), "No such command 'frobnicate'", "igcam --help")
