"""``igcam report``: one HTML page about a run, from what its folder already holds.

Nothing is recomputed but the few per-image scores that choose the pictures; the page reads
the manifests, ``metrics.json`` and ``eval/*.json``, so it can be written for a run where only
some steps ran, or one without ground truth (then it has no scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcam_cli import options
from igcam_cli.artifacts import RunDir
from igcam_cli.errors import IgcamError
from igcam_cli.options import option
from igcam_cli.report import assets_folder, write_report
from igcam_cli.runner import console


@dataclass
class ReportConfig:
    run: Path = option(options.REQUIRED, "Run directory to report on.", short="-r")
    out: Path | None = option(
        None, "The HTML page (default RUN/report.html); its charts and pictures go in the "
              "folder of the same name beside it (RUN/report/).")
    rows: int = option(9, "Picture rows: a third each of the worst, median and best images "
                          "by per-image mIoU (spread evenly without ground truth).", min=1)


def report(config: ReportConfig) -> Path:
    """Write the report page and print where it is."""
    options.check(config)
    if not config.run.is_dir():
        raise IgcamError(f"run directory {config.run} not found")
    if not any(p.is_dir() for p in config.run.iterdir()):
        raise IgcamError(f"{config.run} holds no step folders: nothing to report yet "
                         "(run `igcam train-cls` or `igcam run` first)")
    page = config.out or RunDir(config.run).report()
    if page.suffix.lower() not in (".html", ".htm"):
        raise IgcamError(f"--out must name an .html file, got {page}")
    if assets_folder(page).exists() and not assets_folder(page).is_dir():
        raise IgcamError(f"{assets_folder(page)} is in the way of the report's pictures folder")
    written = write_report(config.run, page, config.rows)
    console.print(f"report: {written}")
    return written
