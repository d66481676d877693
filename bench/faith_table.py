"""The faithfulness table of a bench/faithfulness.sh run: per CAM method its seed mIoU (best
threshold), DenseCRF mask mIoU and faithfulness scores, then how well each score ranks the
methods as mIoU does (Spearman's rank correlation over the methods, each score turned so that
higher means better).  python3 bench/faith_table.py RUN"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SCORES = ("deletion", "insertion", "road_morf", "road_lerf", "road")


def _report(path: Path) -> dict | None:
    return json.loads(path.read_text())["report"] if path.exists() else None


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank."""
    values = np.asarray(values, dtype=float)
    order = values.argsort()
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def main(run: Path) -> None:
    evals = run / "eval"
    rows = []
    for faith in sorted(evals.glob("faith-*.json")):
        name = faith.stem.removeprefix("faith-")
        if name == "ids":
            continue
        seed = _report(evals / ("seed.json" if name == "cam" else f"seed-{name}.json"))
        crf = _report(evals / ("mask-crf.json" if name == "cam" else f"mask-{name}-crf.json"))
        rows.append((name, seed, crf, _report(faith)))
    if not rows:
        sys.exit(f"no faith-*.json in {evals}")
    images = rows[0][3]["images"]
    print(f"Faithfulness on {images} photos ({rows[0][3]['maps']} maps for cam); mIoU on all "
          f"{rows[0][1]['images'] if rows[0][1] else '?'} photos.\n")
    print("| method | seed mIoU (t) | crf mIoU | deletion ↓ | insertion ↑ | ROAD MoRF ↓ | "
          "ROAD LeRF ↑ | ROAD ↑ |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seed, crf, faith in rows:
        s = faith["scores"]
        print(f"| {name} | {100 * seed['miou']:.1f} ({seed['threshold']}) | "
              f"{100 * crf['miou']:.1f} | " + " | ".join(f"{s[k]:.3f}" for k in SCORES) + " |")
    full = [r for r in rows if r[1] and r[2]]
    if len(full) < 3:
        return
    better = rows[0][3]["better"]
    print(f"\nSpearman rank correlation over {len(full)} methods (score turned so that higher "
          "is better; 1: same order as mIoU, -1: reversed):\n")
    print("| score | vs seed mIoU | vs crf mIoU | picks (best by score) |")
    print("|---|---|---|---|")
    for key in SCORES:
        turned = [better[key] * r[3]["scores"][key] for r in full]
        pick = full[int(np.argmax(turned))][0]
        print(f"| {key} | {spearman(turned, [r[1]['miou'] for r in full]):+.2f} | "
              f"{spearman(turned, [r[2]['miou'] for r in full]):+.2f} | {pick} |")
    best_seed = max(full, key=lambda r: r[1]["miou"])[0]
    best_crf = max(full, key=lambda r: r[2]["miou"])[0]
    print(f"\nBest by mIoU: seed {best_seed}, crf {best_crf}.")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
