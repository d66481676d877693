"""``--help`` that a terminal can show: panels, nothing cut at 80 columns, answered without
importing torch (from ``igcam_cli/help.json``), and ``igcam explain`` for the whole text."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from igcam_cli import cli
from tests.harness import PROCESS_ENV, igcam, ok, one_line_error

COMMANDS = [*cli.COMMANDS, "explain"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_fits_80_columns_whole(command: str | None,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = ok(igcam(*([command] if command else []), "--help")).stdout
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert "…" not in text  # nor a description cut short (the usage line ends in ARGS...)
    assert not any(line.endswith("...") for line in lines if not line.startswith("Usage:"))


def test_options_are_grouped_in_panels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = ok(igcam("cam", "--help")).stdout
    sections = [line for line in text.splitlines() if line and not line[0].isspace()]
    assert sections[1:] == ["Options:", "Data:", "Device and workers:", "Resume and errors:",
                            "CAM method igcam:", "CAM method lpcam:", "CAM method ccam:",
                            "CAM method cpmc:", "CAM method scorecam:"]  # those with options
    assert "  --flip / --no-flip " in text and "<bool>" not in text
    # --help gives an option's first sentence; explain all of it
    assert "Labels come from the masks" not in text
    assert "Labels come from the masks" in ok(igcam("explain", "cam", "--voc")).stdout


def test_first_sentence_keeps_abbreviations_and_numbers() -> None:
    assert cli.first_sentence("Threshold 0.5 here, e.g. RUN/x. Then more.") == \
        "Threshold 0.5 here, e.g. RUN/x."
    assert cli.first_sentence("No stop at all") == "No stop at all"


def test_help_file_is_current() -> None:
    """``help.json`` is what the configs say; after changing an option, rewrite it with
    ``python -m igcam_cli.cli``."""
    stored = json.loads(Path(cli.__file__).with_name(cli.HELP_FILE).read_text("utf-8"))
    live = {name: [dataclasses.asdict(spec) for spec in specs]
            for name, specs in cli.all_specs().items()}
    assert json.loads(json.dumps(live)) == stored, "run: python -m igcam_cli.cli"
    assert {name: specs for name, specs in cli.stored_specs().items()} == cli.all_specs()


def test_help_answers_without_importing_torch() -> None:
    """A fresh process: ``igcam cam --help`` reads help.json, imports no step and no torch,
    and prints what the command built from its config prints."""
    script = ("import sys; from igcam_cli.cli import main; code = main(['cam', '--help']); "
              "sys.stdout.flush(); print('torch' in sys.modules, code, file=sys.stderr)")
    fast = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**PROCESS_ENV, "COLUMNS": "80", "PATH": ""})
    assert fast.stderr.split() == ["False", "0"], fast.stderr
    live = subprocess.run([sys.executable, "-c", "import igcam_cli.steps.cam; " + script],
                          capture_output=True, text=True, timeout=120,
                          env={**PROCESS_ENV, "COLUMNS": "80", "PATH": ""})
    assert live.stderr.split() == ["True", "0"], live.stderr
    assert fast.stdout == live.stdout and "--lpcam-k N" in fast.stdout


def test_explain_names_one_option_or_fails_in_one_line() -> None:
    text = ok(igcam("explain", "refine", "--crf-iters")).stdout
    assert text.splitlines()[0] == "--crf-iters  (refiner crf; default 10)"
    assert ok(igcam("explain", "cam", "flip")).stdout.startswith(
        "--flip/--no-flip  (Options; default --flip)")
    one_line_error(igcam("explain", "cam", "--nope"), "igcam cam has no option '--nope'")
    one_line_error(igcam("explain", "frobnicate"), "no command 'frobnicate'", "train-cls")
