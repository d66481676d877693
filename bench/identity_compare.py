"""Compare the outputs of two runs of bench/identity.sh: bytes first, then, for files whose
bytes differ, their arrays, so that a difference is measured (float16 rounding or worse).

Usage: python bench/identity_compare.py RUN_A RUN_B
Prints one line per output folder: files compared, files whose bytes differ, files whose
arrays differ and the largest difference; exits 1 if any array differs.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image


def arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".png":
        return {"labels": np.array(Image.open(path))}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "image"}


def main(a: Path, b: Path) -> int:
    folders: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(a.rglob("*")):
        if path.suffix in (".npz", ".png") and "subset" not in path.parts:
            folders[str(path.parent.relative_to(a))].append(path)
    bad = 0
    for folder, files in folders.items():
        differ, worst, missing, unequal_bytes = 0, 0.0, 0, 0
        for path in files:
            other = b / path.relative_to(a)
            if not other.is_file():
                missing += 1
                continue
            if path.read_bytes() == other.read_bytes():
                continue
            unequal_bytes += 1
            x, y = arrays(path), arrays(other)
            if x.keys() != y.keys() or any(x[k].shape != y[k].shape for k in x):
                differ += 1
                worst = float("inf")
                continue
            gaps = [np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)).max(initial=0)
                    for k in x]
            if max(gaps, default=0) > 0:
                differ += 1
                worst = max(worst, *gaps)
        bad += differ + missing
        print(f"{folder}: {len(files)} files, {unequal_bytes} with other bytes, {differ} with "
              f"other arrays (max |diff| {worst:g}), {missing} missing in {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
