"""One HTML page about a run: its facts, its methods' scores, charts and a picture grid.

The page is rendered by jinja2 from ``templates/report.html.j2`` (package data); its charts
(matplotlib SVG) and pictures (JPEG panels) go in a folder beside it named after it
(``RUN/report.html`` -> ``RUN/report/``) and are linked relatively, so the page opens from
disk, moved or copied with its folder, with no server and no network. The pictures and charts
are written first and the page last, each atomically, and files of an earlier report that the
new page no longer links are removed only after it is in place: a report killed halfway leaves
the previous page whole.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2

from igcam_cli import __version__
from igcam_cli.artifacts import ensure_dir, remove_stale_temps, write_bytes
from igcam_cli.errors import IgcamError
from igcam_cli.images import voc_palette
from igcam_cli.report import plots
from igcam_cli.report.facts import Method, RunFacts, read_run
from igcam_cli.report.pictures import Grid, picture_grid

MARKER = ".igcam-report"  # in a report's folder: its files are the report's to replace
__all__ = ["assets_folder", "environment", "write_report"]


def assets_folder(page: Path) -> Path:
    """The folder of a page's charts and pictures: ``report.html`` -> ``report/``."""
    return page.with_suffix("")


def environment() -> jinja2.Environment:
    """The template's environment: autoescaped (ids and paths are text, never markup), and
    strict, so a field the template names but the report lacks fails loudly."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("igcam_cli.report", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}"
    env.filters["secs"] = _seconds
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 10:
        return f"{value:.3g} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _legend(facts: RunFacts) -> list[tuple[str, str]]:
    """(class name, colour) of the mask colours, when the run names its classes."""
    if not facts.class_names:
        return []
    palette = voc_palette()
    return [(name, "#" + bytes(palette[i]).hex())
            for i, name in enumerate(["background", *facts.class_names])]


class _Assets:
    """The charts and pictures of one report, remembered so stale ones can be removed.

    The folder is marked as a report's when it is made, and a folder that holds anything
    without the mark is refused: cleaning it would delete files that are not the report's.
    """

    def __init__(self, folder: Path) -> None:
        if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise IgcamError(f"{folder} holds files of its own, and a report would write its "
                             "pictures there: give another --out")
        self.folder = ensure_dir(folder)
        remove_stale_temps(folder)
        write_bytes(folder / MARKER, b"charts and pictures of the page beside this folder\n")
        self.names: set[str] = set()

    def add(self, name: str, data: bytes) -> str:
        write_bytes(self.folder / name, data)
        self.names.add(name)
        return f"{self.folder.name}/{name}"

    def keep(self, grid: Grid) -> None:
        self.names.update(Path(p.file).name for row in grid.rows for p in row.panels if p.file)

    def remove_others(self) -> None:
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in self.names \
                    and path.suffix in (".svg", ".jpg"):
                path.unlink(missing_ok=True)


def _charts(facts: RunFacts, assets: _Assets) -> dict[str, Any]:
    """Every chart, written into the assets folder; the links the template shows."""
    curves = {t.folder: assets.add(f"training-{t.folder}.svg", svg) for t in facts.trainings
              if (svg := plots.training_curve(t.history)) is not None}
    sweeps = {m.name: m.evaluation["sweep"] for m in facts.scored
              if m.kind == "cams" and m.evaluation.get("sweep")}
    best = {m.name: m.threshold for m in facts.scored if m.name in sweeps}
    sweep = assets.add("threshold-sweep.svg", plots.threshold_sweep(sweeps, best)) \
        if sweeps else None
    per_class = {}
    for method in facts.scored:
        report = method.evaluation
        valid = {k: v for k, v in report.get("iou", {}).items() if v is not None}
        if valid:
            per_class[method.name] = assets.add(f"classes-{method.slug}.svg", plots.per_class(
                valid, report.get("precision", {}), report.get("recall", {})))
    return {"curves": curves, "sweep": sweep, "per_class": per_class}


def _method_row(method: Method) -> dict[str, Any]:
    report = method.evaluation or {}
    return {"name": method.name, "kind": method.kind, "files": method.files,
            "seed": report.get("miou") if method.kind == "cams" else None,
            "threshold": method.threshold,
            "mask": report.get("miou") if method.kind == "masks" else None,
            "images": report.get("images"), "failed": report.get("missing_or_failed"),
            "eval_file": method.eval_file, "per_image_s": method.seconds_per_image,
            "others": method.other_evaluations,
            "faithfulness": (method.faithfulness or {}).get("scores")}


def write_report(root: Path, page: Path, rows: int) -> Path:
    """Write the report of run ``root`` to ``page`` (and its folder); returns ``page``."""
    facts = read_run(root)
    assets = _Assets(assets_folder(page))
    charts = _charts(facts, assets)
    grid = picture_grid(facts, rows, assets.folder)
    assets.keep(grid)
    html = environment().get_template("report.html.j2").render(
        facts=facts, root=root.resolve(), charts=charts, grid=grid, legend=_legend(facts),
        methods=[_method_row(m) for m in facts.methods], version=__version__,
        faithful=any(m.faithfulness for m in facts.methods),
        created=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    write_bytes(page, html.encode())
    assets.remove_others()
    return page
