"""The report's charts, drawn by matplotlib as SVG text (sharp at any zoom, no raster files).

Figures are built with :class:`matplotlib.figure.Figure` directly, never pyplot, so no GUI
backend or global figure state is involved; the SVG carries no date and a fixed id salt, so
the same run gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from matplotlib import rc_context
from matplotlib.figure import Figure

STYLE = {"svg.hashsalt": "igcam", "svg.fonttype": "none", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3,
         "text.parse_math": False}  # class names are the user's: "$" is a dollar, not TeX
IOU, PRECISION, RECALL = "#3b75af", "#e1812c", "#3a923a"


def _svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()


def training_curve(history: list[Mapping[str, float]]) -> bytes | None:
    """Loss and training mAP (a classifier) or mIoU (train-seg, of its crops against their
    masks) per epoch, side by side (whichever of them the stage records); None when it records
    none. Scores (fractions in ``metrics.json``) are drawn in %, as the page states them and
    as every other chart of the page draws its scores."""
    epochs = [h["epoch"] for h in history]
    series = [(key, label, scale, colour) for key, label, scale, colour in (
        ("loss", "loss", 1, IOU), ("train_map", "mAP (%)", 100, RECALL),
        ("miou", "mIoU (%)", 100, RECALL))
        if history and all(isinstance(h.get(key), int | float) for h in history)]
    if not series:
        return None
    with rc_context(STYLE):
        figure = Figure(figsize=(3.75 * len(series), 2.4))
        for axes, (key, label, scale, colour) in zip(
                figure.subplots(1, len(series), squeeze=False)[0], series, strict=True):
            axes.plot(epochs, [scale * h[key] for h in history], marker="o", color=colour)
            axes.set(xlabel="epoch", ylabel=label, title=f"training {label.split()[0]}")
            if scale == 100:
                axes.set_ylim(0, 102)
            axes.xaxis.get_major_locator().set_params(integer=True)
        return _svg(figure)


def threshold_sweep(sweeps: Mapping[str, Mapping[str, float]],
                    best: Mapping[str, float]) -> bytes:
    """Seed mIoU against the background threshold, one line per CAM folder, best marked."""
    with rc_context(STYLE):
        figure = Figure(figsize=(7.5, 3.2))
        axes = figure.subplots()
        for name, sweep in sweeps.items():
            thresholds = [float(t) for t in sweep]
            values = [100 * v for v in sweep.values()]
            (line,) = axes.plot(thresholds, values, marker=".", label=name)
            if name in best:
                axes.plot([best[name]], [100 * sweep[_key(sweep, best[name])]], marker="*",
                          markersize=12, color=line.get_color())
        axes.set(xlabel="background threshold", ylabel="seed mIoU (%)",
                 title="threshold sweep (star: best)")
        axes.legend(loc="best", frameon=False)
        return _svg(figure)


def _key(sweep: Mapping[str, float], threshold: float) -> str:
    """The sweep's key of ``threshold`` (keys are JSON strings of floats)."""
    return min(sweep, key=lambda t: abs(float(t) - threshold))


def per_class(iou: Mapping[str, float], precision: Mapping[str, float],
              recall: Mapping[str, float]) -> bytes:
    """Per-class IoU as bars, precision and recall as marks, the worst class on top."""
    names = sorted(iou, key=lambda name: iou[name])  # worst first
    rows = range(len(names))
    with rc_context(STYLE):
        figure = Figure(figsize=(7.5, 0.9 + 0.24 * len(names)))
        axes = figure.subplots()
        axes.barh(rows, [100 * iou[n] for n in names], color=IOU, alpha=0.85, label="IoU")
        axes.scatter([100 * precision.get(n, 0) for n in names], rows, marker="|", s=120,
                     color=PRECISION, label="precision", zorder=3)
        axes.scatter([100 * recall.get(n, 0) for n in names], rows, marker="x", s=30,
                     color=RECALL, label="recall", zorder=3)
        for row, name in zip(rows, names, strict=True):  # inside the bar, clear of the marks
            inside = iou[name] > 0.12
            axes.annotate(f"{100 * iou[name]:.1f}", (100 * iou[name], row),
                          xytext=(-3 if inside else 3, 0), textcoords="offset points",
                          ha="right" if inside else "left", va="center", fontsize=7,
                          color="white" if inside else "black")
        axes.set_yticks(list(rows), names)
        axes.invert_yaxis()
        axes.set(xlim=(0, 105), xlabel="%")
        axes.legend(loc="lower right", ncols=3, frameon=False,
                    bbox_to_anchor=(1, 1), borderaxespad=0.2)
        return _svg(figure)
