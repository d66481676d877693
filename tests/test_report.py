"""``igcam report`` on tiny runs: what the page says, what it links, and what it chooses to show.

The scored run has two CAM folders (the plain CAMs and a sharpened copy, both evaluated) and
one evaluated mask folder; the numbers on the page are checked against the eval JSON, the
pictures against per-image scores computed here, and every linked file against the disk.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from harness import copy_run, igcam, ok
from PIL import Image

import igcam_cli.report as report_module
from igcam_cli.artifacts import TMP_PREFIX, read_cam, write_cam
from igcam_cli.images import read_label_map
from igcam_cli.metrics import confusion, scores
from igcam_cli.report import write_report
from igcam_cli.report.facts import applicable

SCREENSHOT = Path(__file__).resolve().parents[1] / "bench" / "report_screenshot.py"
SVG = "{http://www.w3.org/2000/svg}"
STEPS, METHODS = 7, 9  # cells in a row of the steps table, of the methods table


class Page(HTMLParser):
    """The parts of a report page the tests read: pictures, table rows (cell texts), text."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._in_cell = False
        self.feed(path.read_text())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"] or "")
        elif tag in ("a", "link", "script") and (values.get("href") or values.get("src")):
            self.links.append(values.get("href") or values.get("src") or "")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_cell:
            self.rows[-1][-1] = f"{self.rows[-1][-1]} {data.strip()}".strip()

    def row(self, first: str, width: int) -> list[str]:
        """The cells of the row of ``width`` cells (which table) whose first reads ``first``."""
        found = [r for r in self.rows if len(r) == width and r[0] == first]
        assert found, f"no table row {first!r}"
        return found[0]

    def grid(self) -> tuple[list[str], list[list[str]]]:
        """The picture grid's header and rows."""
        start = next(i for i, r in enumerate(self.rows) if r and r[0] == "image")
        return self.rows[start], self.rows[start + 1:]


def stored(folder: Path) -> set[Path]:
    """The charts and pictures in a report's folder (all but its mark)."""
    return {p.resolve() for p in folder.iterdir() if p.name != report_module.MARKER}


def evaluated(run: Path, name: str) -> dict:
    return json.loads((run / "eval" / f"{name}.json").read_text())["report"]


@pytest.fixture(scope="module")
def scored_run(cam_run: Path, tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    run = copy_run(cam_run, tmp_path_factory.mktemp("report") / "run", "train-cls", "cam")
    sharp = run / "cam-sharp"  # a second CAM folder: the same maps, cubed
    sharp.mkdir()
    for path in sorted((run / "cam").glob("*.npz")):
        data = read_cam(path)
        write_cam(sharp / path.name, data["classes"], data["cams"].astype(np.float32) ** 3,
                  data["scores"], Path(str(data["image"])))
    for folder, name in (("cam", "seed"), ("cam-sharp", "seed-sharp")):
        ok(igcam("eval", "--cams", run / folder, "--voc", tiny_voc,
                 "--out", run / "eval" / f"{name}.json"))
    threshold = evaluated(run, "seed")["threshold"]
    ok(igcam("refine", "--run", run, "--method", "none", "--out", run / "refine",
             "--threshold", threshold))
    ok(igcam("eval", "--pred", run / "refine", "--voc", tiny_voc, "--out",
             run / "eval" / "mask.json"))
    assert "report: " in ok(igcam("report", "--run", run)).stderr
    return run


def test_every_method_appears_with_the_numbers_of_its_evaluation(scored_run: Path) -> None:
    page = Page(scored_run / "report.html")
    for folder, name in (("cam", "seed"), ("cam-sharp", "seed-sharp")):
        report = evaluated(scored_run, name)
        row = page.row(folder, METHODS)
        assert row[1] == "CAMs" and row[2] == "24"
        assert f"{100 * report['miou']:.1f}" == row[3] and str(report["threshold"]) == row[4]
        assert row[-1] == f"eval/{name}.json"
    mask = page.row("refine", METHODS)
    assert mask[1] == "pseudo-masks"
    assert mask[5] == f"{100 * evaluated(scored_run, 'mask')['miou']:.1f}"
    assert float(page.row("cam", METHODS)[7]) > 0  # seconds per image, from cam's manifest
    assert page.row("cam-sharp", METHODS)[7] == "–"  # a folder without a manifest has no timing
    steps = {r[0] for r in page.rows if len(r) == STEPS}
    assert {"train-cls", "cam", "refine", "eval"} <= steps


def _tick_labels(svg: Path) -> list[str]:
    """The y-axis labels of a chart, top to bottom."""
    texts = [t for group in ElementTree.parse(svg).iter(f"{SVG}g")
             if group.get("id", "").startswith("ytick_") for t in group.iter(f"{SVG}text")]
    return [t.text or "" for t in sorted(texts, key=lambda t: float(t.get("y")))]


def test_per_class_charts_hold_every_scored_class_worst_first(scored_run: Path) -> None:
    for folder, name in (("cam", "seed"), ("cam-sharp", "seed-sharp"), ("refine", "mask")):
        iou = {k: v for k, v in evaluated(scored_run, name)["iou"].items() if v is not None}
        chart = scored_run / "report" / f"classes-{folder}.svg"
        labels = _tick_labels(chart)
        assert sorted(labels) == sorted(iou)
        assert [iou[n] for n in labels] == sorted(iou.values())  # the worst on top
        values = {t.text for t in ElementTree.parse(chart).iter(f"{SVG}text")}
        assert {f"{100 * v:.1f}" for v in iou.values()} <= values


def test_every_linked_file_exists_and_the_page_needs_no_network(scored_run: Path) -> None:
    html = scored_run / "report.html"
    page = Page(html)
    assert page.images and not page.links  # no scripts, stylesheets or links to fetch
    for src in page.images:
        assert not Path(src).is_absolute() and "://" not in src, src
        path = html.parent / src
        if path.suffix == ".svg":
            assert ElementTree.parse(path).getroot().tag == f"{SVG}svg"
        else:
            with Image.open(path) as image:
                image.verify()
    charts = {"training-train-cls.svg", "threshold-sweep.svg", "classes-cam.svg",
              "classes-cam-sharp.svg", "classes-refine.svg"}
    assert charts <= {Path(src).name for src in page.images}
    linked = {(html.parent / src).resolve() for src in page.images}
    assert stored(scored_run / "report") == linked  # nothing stray


def _image_miou(run: Path, tiny_voc: Path, image_id: str) -> float:
    gt = read_label_map(tiny_voc / "SegmentationClass" / f"{image_id}.png")
    pred = read_label_map(run / "refine" / f"{image_id}.png")
    return scores(confusion(gt, pred, 6)).miou


def test_pictures_are_the_worst_the_median_and_the_best(scored_run: Path,
                                                        tiny_voc: Path) -> None:
    header, rows = Page(scored_run / "report.html").grid()
    assert header == ["image", "photo", "cam", "cam-sharp", "refine", "ground truth"]
    ranked = sorted((_image_miou(scored_run, tiny_voc, p.stem), p.stem)
                    for p in (scored_run / "refine").glob("*.png"))
    ids = [r[0].split()[0] for r in rows]
    groups = [r[0].split()[1] for r in rows]
    assert groups == ["worst"] * 3 + ["median"] * 3 + ["best"] * 3
    assert ids[:3] == [i for _, i in ranked[:3]] and ids[-3:] == [i for _, i in ranked[-3:]]
    assert ids[3:6] == [i for _, i in ranked[11:14]]
    shown = [r[header.index("refine")] for r in rows]
    assert shown == [f"{100 * s:.1f}" for s, i in ranked if i in ids]
    assert all(len(r) == len(header) for r in rows)


def test_without_ground_truth_the_report_has_pictures_but_no_scores(
        own_run: Path, tiny_voc: Path) -> None:
    run = own_run
    ok(igcam("cam", "--run", run, "--images", tiny_voc / "JPEGImages", "--classes",
             tiny_voc / "classes.txt", "--scales", "1.0", "--device", "cpu"))
    ok(igcam("refine", "--run", run, "--method", "none", "--out", run / "refine"))
    ok(igcam("report", "--run", run, "--rows", "4"))
    page = Page(run / "report.html")
    assert "No ground truth was found" in "".join(page.text)
    header, rows = page.grid()
    assert header == ["image", "photo", "cam", "refine"] and len(rows) == 4
    assert not any("worst" in r[0] or "best" in r[0] for r in rows)
    assert all(all(cell == "" for cell in r[1:]) for r in rows)  # pictures, no numbers
    assert all((run / src).is_file() for src in page.images)
    assert not list((run / "report").glob("classes-*.svg"))
    assert page.row("cam", METHODS)[3] == "–" and page.row("cam", METHODS)[-1] == "not evaluated"


def test_a_moved_run_still_finds_the_nested_folder_an_eval_scored(
        scored_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    run = tmp_path / "before"
    shutil.copytree(scored_run, run)
    shutil.copytree(run / "cam", run / "extra" / "scores")
    ok(igcam("eval", "--cams", "before/extra/scores", "--voc", tiny_voc,
             "--out", "before/eval/nested.json", cwd=tmp_path))  # paths relative to tmp_path
    moved = tmp_path / "after"
    run.rename(moved)
    write_report(moved, moved / "report.html", rows=3)
    row = Page(moved / "report.html").row("extra/scores", METHODS)
    assert row[3] == f"{100 * evaluated(moved, 'nested')['miou']:.1f}" and row[2] == "24"
    assert (moved / "report" / "classes-extra_scores.svg").is_file()


def test_a_folder_scored_twice_shows_its_fullest_evaluation_and_lists_the_other(
        scored_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    split = tmp_path / "five.txt"
    split.write_text("".join(f"demo_{i:04d}\n" for i in range(5)))
    ok(igcam("eval", "--pred", run / "refine", "--gt", tiny_voc / "SegmentationClass",
             "--classes", tiny_voc / "classes.txt", "--split", split,
             "--out", run / "eval" / "subset.json"))  # the later one, on fewer images
    write_report(run, run / "report.html", rows=3)
    row = Page(run / "report.html").row("refine", METHODS)
    assert row[5] == f"{100 * evaluated(run, 'mask')['miou']:.1f}" and row[6] == "24"
    subset = evaluated(run, "subset")
    assert row[8] == (f"eval/mask.json also eval/subset.json: mIoU "
                      f"{100 * subset['miou']:.1f} on 5 images")


def test_a_run_with_only_a_classifier_reports_its_training(own_run: Path,
                                                           tmp_path: Path) -> None:
    run = own_run
    (run / "train-aff").mkdir()  # a stage still training: epochs so far, no manifest, no mAP
    (run / "train-aff" / "metrics.json").write_text(json.dumps(
        [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]))
    manifest = run / "train-cls" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    recorded["warnings"] = ["demo_0007.jpg: unreadable <image>"]
    recorded["counts"]["failed"] = 1
    manifest.write_text(json.dumps(recorded))
    ok(igcam("report", "--run", run, "--out", tmp_path / "elsewhere" / "page.html"))
    html = tmp_path / "elsewhere" / "page.html"
    page = Page(html)
    assert page.images == ["page/training-train-cls.svg", "page/training-train-aff.svg"]
    assert all((html.parent / src).is_file() for src in page.images)
    assert "Training: train-aff (running or stopped)" in "".join(page.text)
    assert ["last epoch", "2: loss 0.2500"] in page.rows  # the stage that records no mAP
    curve = html.parent / "page" / "training-train-aff.svg"
    titles = {t.text for t in ElementTree.parse(curve).iter(f"{SVG}text")}
    assert "training loss" in titles and "training mAP" not in titles
    assert page.row("epochs", 2)[1] == "2"
    step = page.row("train-cls", STEPS)
    assert step[1] == "train-cls" and step[5] == "1" and step[6].startswith("1 warning ")
    assert "unreadable &lt;image&gt;" in html.read_text()  # shown as text, escaped
    assert "No CAM files yet" in "".join(page.text)
    assert not (run / "report.html").exists()  # only where --out says


def test_a_rerun_removes_stale_pictures_and_a_failed_one_keeps_the_old_page(
        scored_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    page = write_report(run, run / "report.html", rows=3)
    assert len(Page(page).grid()[1]) == 3
    linked = {(run / src).resolve() for src in Page(page).images}
    assert stored(run / "report") == linked
    before = page.read_bytes()

    def crash(*args: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(report_module, "picture_grid", crash)
    with pytest.raises(RuntimeError):
        write_report(run, page, rows=9)
    assert page.read_bytes() == before
    assert all(p.is_file() for p in linked)
    assert not [p for p in [*run.iterdir(), *(run / "report").iterdir()]
                if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("args, message", [
    (("--run", "{tmp}/absent"), "run directory"),
    (("--run", "{tmp}/empty"), "holds no step folders"),
    (("--run", "{tmp}/empty-but", "--out", "{tmp}/page.txt"), "--out must name an .html"),
    (("--run", "{tmp}/empty-but", "--out", "{tmp}/photos.html"), "holds files of its own"),
])
def test_mistakes_are_one_line_errors(args: tuple[str, ...], message: str,
                                      tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty-but" / "cam").mkdir(parents=True)
    (tmp_path / "photos").mkdir()  # someone's folder where the page's would go
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"not the report's")
    result = igcam("report", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "photos" / "holiday.jpg").is_file()


def test_the_page_shows_every_picture_in_chromium(scored_run: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("report_screenshot", SCREENSHOT)
    screenshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshot)
    if screenshot.browser() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    result = subprocess.run([sys.executable, str(SCREENSHOT),
                             str(scored_run / "report.html"), str(shot)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    images = len(Page(scored_run / "report.html").images)
    assert f"{images} pictures shown" in result.stdout
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1500  # the whole page, not a window
    broken = tmp_path / "broken"  # and the check does fail when a picture is missing
    shutil.copytree(scored_run, broken, ignore=shutil.ignore_patterns("*.npz"))
    (broken / "report" / "threshold-sweep.svg").unlink()
    result = subprocess.run([sys.executable, str(SCREENSHOT),
                             str(broken / "report.html"), str(shot)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "report/threshold-sweep.svg" in result.stderr


def test_a_run_of_only_refine_folders_gets_a_report_of_them(cam_run: Path,
                                                            tmp_path: Path) -> None:
    run = copy_run(cam_run, tmp_path / "run", "train-cls", "cam")
    ok(igcam("refine", "--run", run, "--method", "none", "--out", run / "refine-none"))
    shutil.rmtree(run / "cam")
    shutil.rmtree(run / "train-cls")
    result = igcam("report", "--run", run)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    page = Page(run / "report.html")
    row = page.row("refine-none", METHODS)
    assert row[1] == "pseudo-masks" and row[2] == "24"
    assert page.row("refine", STEPS)[1] == "refine-none"
    assert "No CAM files yet" in "".join(page.text)  # the photos are named by CAM files only


def test_a_cam_folder_made_with_another_runs_checkpoint_gets_a_report(
        cam_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok(igcam("cam", "--run", run, "--voc", tiny_voc, "--scales", "1.0", "--device", "cpu",
             "--checkpoint", cam_run / "train-cls" / "classifier.pt"))
    manifest = run / "cam" / "manifest.json"  # as cam wrote it before it named its classes
    recorded = json.loads(manifest.read_text())
    del recorded["inputs"]["class_names"]
    manifest.write_text(json.dumps(recorded))
    result = igcam("report", "--run", run)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    page = Page(run / "report.html")
    assert page.row("cam", METHODS)[2] == "24"
    assert not [src for src in page.images if "training-" in src]
    assert len(page.grid()[1]) == 9
    assert all((run / src).is_file() for src in page.images)


def test_training_map_is_in_percent_on_the_page_and_its_chart(own_run: Path) -> None:
    ok(igcam("report", "--run", own_run))
    history = json.loads((own_run / "train-cls" / "metrics.json").read_text())
    page = Page(own_run / "report.html")
    last = page.row("last epoch", 2)[1]
    assert last.endswith(f"training mAP {100 * history[-1]['train_map']:.1f} %"), last
    chart = own_run / "report" / "training-train-cls.svg"
    texts = {t.text for t in ElementTree.parse(chart).iter(f"{SVG}text")}
    assert "mAP (%)" in texts and "training mAP" in texts
    assert "100" in _tick_labels(chart)  # the axis runs to 100, not to 1


def test_settings_show_readable_labels_and_only_those_that_apply(own_run: Path) -> None:
    ok(igcam("report", "--run", own_run))
    page = Page(own_run / "report.html")
    facts = {r[0]: r[1] for r in page.rows if len(r) == 2}
    assert facts["images"] == "24" and facts["split"] == "train" and "VOC folder" in facts
    assert facts["classes (5)"].startswith("disc, square")
    assert not [k for k in facts if k.startswith("dataset ") or "_" in k], facts
    assert facts["FPN neck"] == "False"
    assert "FPN channels" not in facts and "influence strength" not in facts  # switches off
    manifest = own_run / "train-cls" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    recorded["recipe"]["fpn"] = True
    manifest.write_text(json.dumps(recorded))
    ok(igcam("report", "--run", own_run))
    facts = {r[0]: r[1] for r in Page(own_run / "report.html").rows if len(r) == 2}
    assert facts["FPN channels"] == str(recorded["recipe"]["fpn_channels"])


def test_a_setting_under_a_switch_goes_with_the_switch() -> None:
    settings = {"warp": False, "warp_size": 3, "warp_mode": "x", "blur": True, "blur_size": 2,
                "guide": None, "guide_weight": 0.5, "guided": 1}
    assert applicable(settings) == {"warp": False, "blur": True, "blur_size": 2,
                                    "guide": None, "guided": 1}


def _css(html: str, selector: str) -> dict[str, str]:
    """The declarations of the page's rule for ``selector`` (the first, outside media queries)."""
    style = html.split("<style>", 1)[1].split("</style>", 1)[0]
    found = re.search(rf"(?m)^\s*{re.escape(selector)}\s*{{([^}}]*)}}", style)
    assert found, f"no CSS rule {selector!r}"
    return dict(tuple(part.strip() for part in item.split(":", 1))
                for item in found.group(1).split(";") if item.strip())


def test_the_picture_grid_takes_the_page_width_and_its_panels_scale(scored_run: Path) -> None:
    html = (scored_run / "report.html").read_text()
    table = re.search(r'<table class="grid"[^>]*>', html).group(0)
    assert "style" not in table  # no width cap of its own: the CSS rule below decides
    assert _css(html, "table.grid") == {"width": "100%", "table-layout": "fixed"}
    panel = _css(html, ".grid img")
    assert panel["width"] == "100%" and panel["height"] == "auto" and "max-height" not in panel
    assert "@media (max-width" in html  # the id column gives way on a narrow screen
    header, _ = Page(scored_run / "report.html").grid()
    assert f'<col span="{len(header) - 1}">' in html
