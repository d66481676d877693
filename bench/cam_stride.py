"""What keeping CAM files at a stride (``igcam cam --store-stride N``) costs in mIoU and saves
in bytes, on the CAMs of a finished run.

Each full-size CAM file of ``--cams`` is shrunk to 1/N of its image, as ``--store-stride N``
does (antialiased bilinear, each map's peak kept, then float16), written with the image's
size, and read back through ``read_cam``, which enlarges it as every step does. The
difference to a real ``--store-stride`` run is that the maps shrunk here are the stored
float16 ones rather than the float32 ones the network gave: one float16 rounding. Then
``igcam eval`` sweeps the thresholds of each folder (and, with ``--refine``, DenseCRF masks at
the full-size sweep's best threshold are scored too), and a table gives bytes per image and
mIoU against the full-size files.

    python bench/cam_stride.py --cams bench/runs/voc-real/cam --voc ../shared/data/voc-real \\
        --out bench/runs/cam-stride [--strides 2,4,8] [--refine]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from igcam_cli.artifacts import read_cam, write_cam
from igcam_cli.steps.cam import stored_size
from igcam_cli.transforms import resize_keeping_peaks


def shrink(source: Path, out: Path, stride: int) -> int:
    """Write every CAM file of ``source`` at ``stride`` into ``out``; their bytes in all."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(source.glob("*.npz")):
        target = out / path.name
        if not target.exists():
            data = read_cam(path)
            cams = data["cams"]
            size = cams.shape[1:]
            small = resize_keeping_peaks(torch.from_numpy(cams.astype(np.float32)),
                                         stored_size(size, stride)).numpy()
            write_cam(target, data["classes"], small, data["scores"], Path(str(data["image"])),
                      size)
        total += target.stat().st_size
    return total


def igcam(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "igcam_cli", *map(str, args)], check=True)


def sweep(cams: Path, voc: Path, report: Path) -> dict:
    if not report.exists():
        igcam("eval", "--voc", voc, "--cams", cams, "--out", report)
    return json.loads(report.read_text())["report"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cams", type=Path, required=True)
    parser.add_argument("--voc", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strides", default="2,4,8")
    parser.add_argument("--refine", action="store_true", help="also DenseCRF masks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(args.cams.glob("*.npz"))
    rows = []
    full = sweep(args.cams, args.voc, args.out / "eval-full.json")
    threshold = full["threshold"]
    folders = [(1, args.cams, sum(p.stat().st_size for p in files))]
    for stride in (int(s) for s in args.strides.split(",")):
        folder = args.out / f"stride-{stride}"
        folders.append((stride, folder, shrink(args.cams, folder, stride)))
    for stride, folder, size in folders:
        report = full if stride == 1 else sweep(folder, args.voc,
                                               args.out / f"eval-stride-{stride}.json")
        at = report["sweep"].get(str(threshold))
        row = {"stride": stride, "bytes_per_image": size / len(files),
               "best_miou": report["miou"], "best_threshold": report["threshold"],
               f"miou_at_{threshold:.2f}": at}
        if args.refine:
            masks = args.out / f"crf-stride-{stride}"
            scored = args.out / f"eval-crf-stride-{stride}.json"
            if not scored.exists():
                igcam("refine", "--run", args.out, "--cams", folder, "--method", "crf",
                      "--threshold", threshold,
                      "--workers", "2", "--out", masks)
                igcam("eval", "--voc", args.voc, "--pred", masks, "--out", scored)
            row["crf_miou"] = json.loads(scored.read_text())["report"]["miou"]
        rows.append(row)
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    base = rows[0]
    print(f"{len(files)} images; crf at the full-size best threshold {threshold:.2f}")
    print("| stride | KB per image | size vs full | best mIoU (threshold) | difference |"
          + (" crf mIoU | difference |" if args.refine else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.refine else ""))
    for row in rows:
        line = (f"| {row['stride']} | {row['bytes_per_image'] / 1024:.1f} | "
                f"{base['bytes_per_image'] / row['bytes_per_image']:.1f}x smaller | "
                f"{100 * row['best_miou']:.2f} ({row['best_threshold']:.2f}) | "
                f"{100 * (row['best_miou'] - base['best_miou']):+.2f} |")
        if args.refine:
            line += (f" {100 * row['crf_miou']:.2f} | "
                     f"{100 * (row['crf_miou'] - base['crf_miou']):+.2f} |")
        print(line)


if __name__ == "__main__":
    main()
