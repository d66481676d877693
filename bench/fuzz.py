"""The heavy fault suite: rounds of the hostile-input corpus of issue 24 (``tests/hostile.py``,
each round with other drawn details), many seeded rounds of corrupted inputs for every step,
and kills at random points for train-cls, cam, refine and propose, each resumed and compared
with an uninterrupted run. ``tests/test_hostile.py`` and ``tests/test_fuzz.py`` are its
one-round versions; the checks are shared (``tests/fuzzing.py``).

Usage (from the repository root, a few minutes on 2 cores):
    python bench/fuzz.py [--hostile 3] [--rounds 5] [--kills 2] [--work bench/runs/fuzz]
Prints a table of the hostile cases per input kind (cases, then tracebacks, signals, hangs,
silent wrong results, mixed folders, writes outside the run and other problems), one line per
step for the rest, and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import (  # noqa: E402 - the shared checks live beside the tests
    FILE_CORRUPTIONS,
    NPZ_CORRUPTIONS,
    PROBLEMS,
    check_case,
    check_run,
    corrupt_copy,
    forked,
    igcam,
    snapshot,
)
from hostile import GENERATORS  # noqa: E402

from igcam_cli.artifacts import read_npz  # noqa: E402
from igcam_cli.demo_data import make_demo_dataset  # noqa: E402

TRAIN = ("--epochs", "3", "--crop", "64", "--batch-size", "8", "--device", "cpu")


def corrupted_rounds(work: Path, data: Path, run: Path, cams: Path, rounds: int
                     ) -> dict[str, list[int]]:
    """step -> [inputs corrupted, runs, problems]."""
    checkpoint = ("--checkpoint", run / "train-cls" / "classifier.pt")
    image_steps = {
        "train-cls": ("--epochs", "1", "--crop", "64", "--batch-size", "8", "--device", "cpu"),
        "propose": ("--mode", "single"),
        "cam": (*checkpoint, "--scales", "1.0", "--device", "cpu"),
        "influence": (*checkpoint, "--device", "cpu"),
    }
    figures: dict[str, list[int]] = {}
    for round_index in range(rounds):
        for step, args in image_steps.items():
            rng = np.random.default_rng((round_index, len(step)))
            case = work / f"{step}-{round_index}"
            done = corrupt_copy(data, case / "data", "JPEGImages/*.jpg", FILE_CORRUPTIONS, rng,
                                int(rng.integers(1, 12)))
            before = snapshot(case)
            result = igcam(step, "--run", case / "run", "--voc", case / "data", *args)
            outputs = {"propose": case / "run" / "propose", "cam": case / "run" / "cam"}
            problems = check_run(result, case, before, [case / "run"], outputs.get(step), ".npz")
            _tally(figures, step, len(done), problems, done)
        for step in ("refine", "eval"):
            rng = np.random.default_rng((round_index, len(step), 7))
            case = work / f"{step}-{round_index}"
            done = corrupt_copy(cams, case / "cams", "*.npz", NPZ_CORRUPTIONS, rng,
                                int(rng.integers(1, 12)))
            before = snapshot(case)
            if step == "refine":
                result = igcam("refine", "--run", case / "run", "--cams", case / "cams")
                problems = check_run(result, case, before, [case / "run"],
                                     case / "run" / "refine", ".png")
            else:
                result = igcam("eval", "--cams", case / "cams", "--voc", data, "--out",
                               case / "run" / "seed.json")
                problems = check_run(result, case, before, [case / "run"], None, "")
            _tally(figures, step, len(done), problems, done)
    return figures


HOSTILE_TIMEOUT = 120  # seconds per case; each takes well under one


def hostile_rounds(work: Path, data: Path, rounds: int) -> dict[str, dict[str, int]]:
    """input kind -> {"cases": n, problem kind: count}, over ``rounds`` of the corpus, each
    case run in a forked child (a signal or hang there is counted, not fatal)."""
    table: dict[str, dict[str, int]] = {}
    for round_index in range(rounds):
        for kind, generate in GENERATORS.items():
            row = table.setdefault(kind, dict.fromkeys(("cases", *PROBLEMS), 0))
            rng = np.random.default_rng((24, round_index, len(kind)))
            for index, case in enumerate(generate(data, rng)):
                folder = work / f"{round_index}" / kind.replace(" ", "-") / str(index)
                result, problems = check_case(case, folder,
                                              lambda args: forked(args, HOSTILE_TIMEOUT))
                row["cases"] += 1
                for problem in problems:
                    row[problem.split(":")[0].split()[0]] += 1
                if problems:
                    print(f"  {kind}: {case.name}: {problems}", flush=True)
    return table


def _print_table(table: dict[str, dict[str, int]]) -> None:
    columns = ("cases", *PROBLEMS)
    print("| input kind | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    total = {c: sum(row[c] for row in table.values()) for c in columns}
    for kind, row in [*table.items(), ("all", total)]:
        print(f"| {kind} | " + " | ".join(str(row[c]) for c in columns) + " |")


def _tally(figures: dict[str, list[int]], step: str, corrupted: int, problems: list[str],
           done: list[str]) -> None:
    row = figures.setdefault(step, [0, 0, 0])
    row[0] += corrupted
    row[1] += 1
    row[2] += len(problems)
    if problems:
        print(f"  {step}: {problems} after {done}", flush=True)


def _kill_after(args: list[str], ready, delay: float) -> bool:
    """Start ``igcam ARGS`` and SIGKILL it ``delay`` seconds after ``ready()`` holds; whether
    it was still running then (a kill, not a finished run)."""
    process = subprocess.Popen([sys.executable, "-m", "igcam_cli", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready() and process.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return killed


def kills(work: Path, data: Path, run: Path, cams: Path, count: int) -> dict[str, list[int]]:
    """step -> [runs killed while running, resumes that differ from the uninterrupted run]."""
    rng = np.random.default_rng(1)
    checkpoint = ["--checkpoint", str(run / "train-cls" / "classifier.pt")]
    figures: dict[str, list[int]] = {}
    for index in range(count):
        for step in ("train-cls", "cam", "refine", "propose"):
            case = work / f"kill-{step}-{index}"
            out = case / "out"
            if step == "train-cls":
                args = ["train-cls", "--run", str(out), "--voc", str(data), *TRAIN]
                reference = run / "train-cls" / "classifier.pt"
                ready = (out / "train-cls").is_dir
            elif step == "cam":
                args = ["cam", "--run", str(case), "--voc", str(data), *checkpoint,
                        "--device", "cpu", "--out", str(out)]
                reference, ready = cams, out.is_dir
            elif step == "refine":
                args = ["refine", "--run", str(case), "--cams", str(cams), "--out", str(out)]
                reference, ready = run.parent / "refine-clean", out.is_dir
            else:
                args = ["propose", "--run", str(case), "--voc", str(data), "--mode", "single",
                        "--out", str(out)]
                reference, ready = run.parent / "propose-clean", out.is_dir
            # The two quick steps are over within a second or two on these small images.
            longest = 4.0 if step in ("train-cls", "cam") else 0.8
            killed = _kill_after(args, ready, float(rng.uniform(0.0, longest)))
            resumed = igcam(*args, *(["--resume"] if step == "train-cls" else []))
            row = figures.setdefault(step, [0, 0])
            row[0] += killed
            same = resumed.returncode == 0 and _same(step, reference, out)
            row[1] += 0 if same else 1
            if not same:
                print(f"  {step}: resume differs ({resumed.stderr[-300:]})", flush=True)
    return figures


def _same(step: str, reference: Path, out: Path) -> bool:
    if step == "train-cls":
        a = torch.load(reference, weights_only=True)["model"]
        b = torch.load(out / "train-cls" / "classifier.pt", weights_only=True)["model"]
        return all(torch.equal(a[k], b[k]) for k in a)
    suffix = ".png" if step == "refine" else ".npz"
    files = sorted(reference.glob(f"*{suffix}"))
    if [p.name for p in files] != sorted(p.name for p in out.glob(f"*{suffix}")):
        return False
    if suffix == ".png":
        return all(p.read_bytes() == (out / p.name).read_bytes() for p in files)
    return all(all(np.array_equal(v, read_npz(out / p.name)[k]) for k, v in read_npz(p).items()
                   if k != "image") for p in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostile", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("bench/runs/fuzz"))
    options = parser.parse_args()
    work = options.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    data = make_demo_dataset(work / "data", n_train=24, size=64, seed=3)
    # First, while this process has run no torch work that a forked child could inherit
    # locked (its thread pools).
    started = time.perf_counter()
    table = hostile_rounds(work / "hostile", data, options.hostile)
    if table:
        _print_table(table)
        print(f"hostile inputs: {time.perf_counter() - started:.0f} s")
    failed = sum(row[p] for row in table.values() for p in PROBLEMS)
    if not options.rounds and not options.kills:
        return 1 if failed else 0
    run = work / "run"
    for args in (("train-cls", "--run", run, "--voc", data, *TRAIN),
                 ("cam", "--run", run, "--voc", data, "--device", "cpu"),
                 ("refine", "--run", run, "--out", work / "refine-clean"),
                 ("propose", "--run", run, "--voc", data, "--mode", "single", "--out",
                  work / "propose-clean")):
        result = igcam(*args)
        assert result.returncode == 0, result.stderr
    started = time.perf_counter()
    corrupted = corrupted_rounds(work / "corrupt", data, run, run / "cam", options.rounds)
    killed = kills(work / "kill", data, run, run / "cam", options.kills)
    for step, (inputs, runs, problems) in corrupted.items():
        print(f"{step}: {inputs} corrupted inputs in {runs} runs, {problems} problems")
        failed += problems
    for step, (count, mismatches) in killed.items():
        print(f"{step}: {count} runs killed at random points, {mismatches} resumes differ")
        failed += mismatches
    print(f"{time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
