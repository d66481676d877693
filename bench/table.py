"""The tables of a bench/voc-real.sh run: mIoU of the seeds and of every refiner's masks, then
of every CAM method's seeds and DenseCRF masks, with the wall time and peak memory of each step
from times.txt.  python3 bench/table.py RUN"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def main(run: Path) -> None:
    times = {}
    for line in (run / "times.txt").read_text().splitlines():
        match = re.match(r"(\S+) wall ([\d.]+) s, peak RSS (\d+) KB", line)
        if match:
            times[match[1]] = (float(match[2]), int(match[3]) / 1e6)
    seed = json.loads((run / "eval" / "seed.json").read_text())["report"]
    images = seed["images"]
    print(f"{images} images; refiners run at the seed sweep's best threshold "
          f"t = {seed['threshold']}\n")
    print("| masks | mIoU | own best t (mIoU) | step s/image | step peak RSS GB |")
    print("|---|---|---|---|---|")
    wall, rss = times.get("cam", (float("nan"), float("nan")))
    print(f"| seed (CAM), best t | {100 * seed['miou']:.1f} | - | {wall / images:.2f} | "
          f"{rss:.1f} |")
    # lib.sh's variants write seed-NAME.json and mask-NAME-crf.json: methods, not refiners.
    methods = sorted(path.stem.removeprefix("seed-") for path in (run / "eval").glob("seed-*.json"))
    for path in sorted((run / "eval").glob("mask-*.json")):
        method = path.stem.removeprefix("mask-")
        if method.removesuffix("-crf") in methods:
            continue
        report = json.loads(path.read_text())["report"]
        swept = run / "eval" / f"scores-{method}.json"
        own = "-"
        if swept.exists():
            scores = json.loads(swept.read_text())["report"]
            own = f"{scores['threshold']} ({100 * scores['miou']:.1f})"
        wall, rss = times.get(f"refine-{method}", (float("nan"), float("nan")))
        print(f"| {method} | {100 * report['miou']:.1f} | {own} | {wall / images:.2f} | "
              f"{rss:.1f} |")
    if methods:
        print("\n| --method | seed mIoU (t) | crf mIoU | cam s/image | cam peak RSS GB |")
        print("|---|---|---|---|---|")
    for name in methods:
        swept = json.loads((run / "eval" / f"seed-{name}.json").read_text())["report"]
        mask = run / "eval" / f"mask-{name}-crf.json"
        crf = "-"
        if mask.exists():
            crf = f"{100 * json.loads(mask.read_text())['report']['miou']:.1f}"
        wall, rss = times.get(f"cam-{name}", (float("nan"), float("nan")))
        print(f"| {name} | {100 * swept['miou']:.1f} ({swept['threshold']}) | {crf} | "
              f"{wall / images:.2f} | {rss:.1f} |")
    for name in ("propose", "train-cls", "train-aff"):
        if name in times:
            print(f"\n{name}: {times[name][0]:.0f} s, peak RSS {times[name][1]:.1f} GB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
