"""Helpers of ``bench/gpu.sh``: run an igcam step with its time and memory recorded, time the
network alone over the views ``igcam cam`` computes, compare two CAM folders, and make the
table.

    python bench/gpu_bench.py step --name NAME --record DIR [--outdir DIR] -- IGCAM-ARGS...
        runs ``igcam IGCAM-ARGS`` in this process and writes DIR/NAME.json: exit status, wall
        seconds (from $GPU_BENCH_T0, set by the caller before the process started, else from
        this module's import), seconds of the per-image loop (per-image steps), output files
        in --outdir, peak RSS of the process and of its largest child (loader or refine
        workers; only where it exceeds what importing torch started), and
        torch.cuda.max_memory_allocated / max_memory_reserved.
    python bench/gpu_bench.py forward --data ROOT --checkpoint CK --device D --json FILE
        images per second of the network alone: per image (or per --batch-images group of
        one size, sorted as ``igcam cam`` sorts them), each scale's views (the image and its
        flip) through the backbone, the CAM head and the class scores, the maps summed with
        their mirrors as ``cam`` does, all inputs already on the device, synchronised; no
        decoding, no enlarging of the maps to the image, no compression, no writing. One
        cold pass (the first, with the kernels' start-up), then --repeats warm passes.
    python bench/gpu_bench.py compare A B --json FILE
        how far the maps of the CAM files in folder B are from those of A (same names).
    python bench/gpu_bench.py table --work DIR --out DIR
        DIR/records/*.json, forward.json, compare-*.json, the eval reports and smi.csv into
        gpu.md and gpu.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

T0 = float(os.environ.get("GPU_BENCH_T0") or time.time())


def cuda_peaks() -> dict[str, float | None]:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"cuda_peak_allocated_mib": None, "cuda_peak_reserved_mib": None}
    return {"cuda_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "cuda_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1)}


def step(args: argparse.Namespace, argv: list[str]) -> int:
    """One igcam command in this process, with its figures in RECORD/NAME.json."""
    from igcam_cli import cli, runner

    loop: dict[str, float] = {}
    run_per_image = getattr(runner, "run_per_image", None)
    if run_per_image is not None:
        def timed(*a: object, **k: object) -> object:
            began = time.perf_counter()
            try:
                return run_per_image(*a, **k)  # type: ignore[misc]
            finally:
                loop["seconds"] = loop.get("seconds", 0.0) + time.perf_counter() - began

        runner.run_per_image = timed  # type: ignore[assignment]
    # Importing torch can start a child process of its own: only a peak above it is the step's.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.time()
    sys.argv = ["igcam", *argv]
    code = 0
    try:
        code = cli.main() or 0  # main returns the exit status of a user error
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the record must be written whatever happened
        traceback.print_exc()
        code = 1
    ended = time.time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    outputs = None
    if args.outdir and Path(args.outdir).is_dir():
        outputs = sum(1 for p in Path(args.outdir).iterdir()
                      if p.suffix in (".npz", ".png") and not p.name.startswith("."))
    record = {
        "name": args.name, "argv": argv, "rc": code, "wall_s": round(ended - T0, 2),
        "step_s": round(ended - began, 2),
        "loop_s": round(loop["seconds"], 3) if "seconds" in loop else None,
        "outputs": outputs, "t_start": T0, "t_end": ended,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mib": (round(children / 1024, 1) if children > children_before
                                  else None),
        **cuda_peaks(),
    }
    if record["loop_s"] and outputs:
        record["images_per_s"] = round(outputs / record["loop_s"], 2)
    Path(args.record).mkdir(parents=True, exist_ok=True)
    (Path(args.record) / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    return code


def forward(args: argparse.Namespace) -> int:
    """Images per second of the network alone over cam's views (see the module docstring)."""
    import contextlib

    import torch

    from igcam_cli.datasets import DatasetSpec, load_dataset
    from igcam_cli.images import read_image
    from igcam_cli.methods.multiscale import per_image, views
    from igcam_cli.models import load_classifier
    from igcam_cli.runner import resolve_device
    from igcam_cli.transforms import to_tensor

    device = resolve_device(args.device)
    model, _ = load_classifier(Path(args.checkpoint), device)
    model = model.to(memory_format=torch.channels_last)
    samples = load_dataset(DatasetSpec(voc=Path(args.data))).samples
    images = [to_tensor(read_image(s.image, args.max_side or None)) for s in samples]
    order = sorted(range(len(images)), key=lambda i: (images[i].shape[2], images[i].shape[1]))
    scales = tuple(float(s) for s in args.scales.split(","))
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batches(size: int) -> list[torch.Tensor]:
        """Consecutive images of one shape in size order, at most ``size`` per batch."""
        groups: list[list[int]] = []
        for i in order:
            if groups and len(groups[-1]) < size and \
                    images[groups[-1][0]].shape == images[i].shape:
                groups[-1].append(i)
            else:
                groups.append([i])
        return [torch.stack([images[i] for i in g]).to(device) for g in groups]

    results = []
    for precision in args.precision.split(","):
        for size in (int(b) for b in args.batch_images.split(",")):
            dtype = dtypes[precision]
            data = batches(size)

            @torch.inference_mode()
            def once(data: list[torch.Tensor] = data, dtype: torch.dtype | None = dtype) -> float:
                cast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
                sync()
                began = time.perf_counter()
                with cast:
                    for batch in data:
                        count = len(batch)
                        for scale in scales:
                            features = model.features(views(batch, scale, True))
                            scores = torch.sigmoid(model.logits(features))
                            per_image(scores, count, True)
                            per_image(model.cam(features), count, True).float()
                sync()
                return time.perf_counter() - began

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            cold = once()
            warm = [once() for _ in range(args.repeats)]
            result = {"precision": precision, "batch_images": size, "batches": len(data),
                      "images": len(images), "cold_s": round(cold, 3),
                      "warm_s": [round(w, 3) for w in warm],
                      "images_per_s_cold": round(len(images) / cold, 2),
                      "images_per_s_warm": round(len(images) / min(warm), 2),
                      **cuda_peaks()}
            print(json.dumps(result), flush=True)
            results.append(result)
            # After every configuration, so that a run stopped at its limit keeps the others.
            Path(args.json).write_text(json.dumps({"device": str(device), "scales": scales,
                                                   "runs": results}, indent=1))
            del data
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


def compare(args: argparse.Namespace) -> int:
    """Differences of folder B's CAM files from folder A's, over the files both hold."""
    import numpy as np

    a, b = Path(args.a), Path(args.b)
    names = sorted({p.name for p in a.glob("*.npz")} & {p.name for p in b.glob("*.npz")})
    worst, means, rel, mismatched = 0.0, [], [], 0
    for name in names:
        with np.load(a / name) as x, np.load(b / name) as y:
            if not np.array_equal(x["classes"], y["classes"]) or x["cams"].shape != y["cams"].shape:
                mismatched += 1
                continue
            p, q = x["cams"].astype(np.float32), y["cams"].astype(np.float32)
            d = np.abs(p - q)
            worst = max(worst, float(d.max()) if d.size else 0.0)
            means.append(float(d.mean()) if d.size else 0.0)
            norm = float(np.linalg.norm(p))
            if norm > 0:
                rel.append(float(np.linalg.norm(p - q)) / norm)
    result = {"a": str(a), "b": str(b), "files": len(names), "mismatched_classes": mismatched,
              "max_abs": round(worst, 5),
              "mean_abs": round(statistics.fmean(means), 6) if means else None,
              "median_rel_l2": round(statistics.median(rel), 6) if rel else None,
              "max_rel_l2": round(max(rel), 6) if rel else None}
    print(json.dumps(result))
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def smi_samples(path: Path) -> list[tuple[float, float, float]]:
    """(epoch seconds, memory.used MiB, utilization.gpu %) rows of nvidia-smi's CSV."""
    rows = []
    try:
        with open(path) as handle:
            for row in csv.reader(handle):
                try:
                    stamp = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
                    rows.append((stamp.timestamp(), float(row[1]), float(row[2])))
                except (ValueError, IndexError):
                    continue
    except OSError:
        pass
    return rows


def table(args: argparse.Namespace) -> int:
    work, out = Path(args.work), Path(args.out)
    found = [(p, load_json(p)) for p in (work / "records").glob("*.json")]
    # In the order the steps ran; skipped ones (no start time) last.
    found.sort(key=lambda pr: ((pr[1] or {}).get("t_start") or float("inf"), pr[0].name))
    records = {p.stem: record for p, record in found}
    evals = {p.stem: load_json(p) for p in sorted((work / "run" / "eval").glob("*.json"))}
    fwd = load_json(work / "forward.json") or {}
    comparisons = {p.stem: load_json(p) for p in sorted(work.glob("compare-*.json"))}
    smi = smi_samples(out / "smi.csv")
    env = load_json(work / "env.json") or {}

    def miou(name: str) -> tuple[str, str]:
        report = (evals.get(name) or {}).get("report") or {}
        value = report.get("miou")
        threshold = report.get("threshold")
        return (f"{100 * value:.1f}" if value is not None else "",
                f"{threshold:.2f}" if threshold is not None else "")

    def smi_for(record: dict) -> tuple[str, str]:
        inside = [(m, u) for t, m, u in smi if record["t_start"] <= t <= record["t_end"]]
        if not inside:
            return "", ""
        return f"{max(m for m, _ in inside):.0f}", f"{statistics.fmean(u for _, u in inside):.0f}"

    def num(value: object, fmt: str = "{:.1f}") -> str:
        return "" if value is None else fmt.format(value)

    lines = [f"# igcam on {env.get('gpu', '?')}", "",
             f"{env.get('date', '')}; torch {env.get('torch', '?')}, python "
             f"{env.get('python', '?')}, {env.get('cpus', '?')} CPUs; data {env.get('data')} "
             f"({env.get('images')} images), {env.get('epochs')} epochs; mode "
             f"{env.get('mode', '?')}.", "",
             "## Steps", "",
             "wall: the process, start-up included; loop: the per-image loop; GPU MiB: "
             "torch.cuda.max_memory_allocated / reserved; smi: nvidia-smi's memory.used "
             "peak and mean utilization while the step ran.", "",
             "| step | rc | wall s | loop s | images/s | mIoU | thr | peak RSS MiB | "
             "GPU alloc / reserved MiB | smi MiB / util % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    eval_of = {"eval-seed": "seed", "eval-seed-bf16": "seed-bf16", "eval-none": "mask-none",
               "eval-par": "mask-par", "eval-par-scores": "scores-par",
               "eval-predict": "mask-predict"}
    for name, record in records.items():
        if record is None:
            continue
        score, threshold = miou(eval_of[name]) if name in eval_of else ("", "")
        smi_mem, smi_util = smi_for(record) if "t_start" in record else ("", "")
        rss = record.get("peak_rss_mib")
        children = record.get("children_peak_rss_mib")
        rss_cell = num(rss, "{:.0f}") + (f" (+{children:.0f})" if children else "")
        gpu = (f"{num(record.get('cuda_peak_allocated_mib'), '{:.0f}')} / "
               f"{num(record.get('cuda_peak_reserved_mib'), '{:.0f}')}"
               if record.get("cuda_peak_allocated_mib") is not None else "")
        lines.append(
            f"| {name} | {record.get('rc')} | {num(record.get('wall_s'))} | "
            f"{num(record.get('loop_s'))} | {num(record.get('images_per_s'), '{:.2f}')} | "
            f"{score} | {threshold} | {rss_cell} | {gpu} | "
            f"{smi_mem + ' / ' + smi_util if smi_mem else ''} |")
    pipeline = ["train-cls", "cam", "eval-seed", "refine-none", "eval-none"]
    if all(records.get(n) for n in pipeline):
        total = sum(records[n]["wall_s"] for n in pipeline)
        lines += ["", f"Whole pipeline ({' + '.join(pipeline)}): {total:.1f} s; seed mIoU "
                      f"{miou('seed')[0]}, masks (`none`) {miou('mask-none')[0]}."]
    share_rows = []
    runs = {(r["precision"], r["batch_images"]): r for r in fwd.get("runs", [])}
    for name, record in records.items():
        if not record or not name.startswith("cam") or not record.get("images_per_s"):
            continue
        argv = record["argv"]
        precision = argv[argv.index("--precision") + 1] if "--precision" in argv else "fp32"
        size = int(argv[argv.index("--batch-images") + 1]) if "--batch-images" in argv else 1
        ref = runs.get((precision, size))
        if ref:
            share_rows.append(
                f"| {name} | {precision} | {size} | {record['images_per_s']:.2f} | "
                f"{ref['images_per_s_warm']:.2f} | {ref['images_per_s_cold']:.2f} | "
                f"{100 * record['images_per_s'] / ref['images_per_s_warm']:.0f} % |")
    if share_rows:
        lines += ["", "## cam against the network alone", "",
                  "network alone: the same views (4 scales x 2 flips) through backbone, CAM head "
                  "and scores, inputs on the device, synchronised; warm = best of the repeats, "
                  "cold = the first pass. Share = cam's loop rate / the warm rate (target 90 %).",
                  "", "| cam run | precision | batch | cam images/s | network alone warm | "
                      "cold | share |", "|---|---|---|---|---|---|---|", *share_rows]
    if runs:
        lines += ["", "| network alone | batch | warm images/s | cold images/s | "
                      "GPU alloc MiB |", "|---|---|---|---|---|"]
        for (precision, size), r in runs.items():
            lines.append(f"| {precision} | {size} | {r['images_per_s_warm']:.2f} | "
                         f"{r['images_per_s_cold']:.2f} | "
                         f"{num(r.get('cuda_peak_allocated_mib'), '{:.0f}')} |")
    if comparisons:
        lines += ["", "## CAM files compared", "",
                  "| comparison | files | classes differ | max abs | mean abs | median rel L2 | "
                  "max rel L2 |", "|---|---|---|---|---|---|---|"]
        for name, c in comparisons.items():
            if c:
                lines.append(f"| {name.removeprefix('compare-')} | {c['files']} | "
                             f"{c['mismatched_classes']} | {c['max_abs']} | {c['mean_abs']} | "
                             f"{c['median_rel_l2']} | {c['max_rel_l2']} |")
    text = "\n".join(lines) + "\n"
    (out / "gpu.md").write_text(text)
    everything = {"env": env, "records": records, "forward": fwd, "comparisons": comparisons,
                  "evals": {k: (v or {}).get("report", {}) and {
                      key: v["report"].get(key)
                      for key in ("miou", "threshold", "sweep", "images", "iou")}
                      for k, v in evals.items()}}
    (out / "gpu.json").write_text(json.dumps(everything, indent=1))
    print(text)
    return 0


def environment(args: argparse.Namespace) -> int:
    """The machine's facts for the table's heading, into FILE."""
    import torch

    facts = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "python": platform.python_version(), "torch": torch.__version__,
             "cuda": torch.version.cuda, "cpus": os.cpu_count(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
             "mode": args.mode, "data": args.data, "images": args.images,
             "epochs": args.epochs}
    print(json.dumps(facts))
    Path(args.json).write_text(json.dumps(facts, indent=1))
    return 0


def main() -> int:
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("step")
    p.add_argument("--name", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--outdir")
    p = sub.add_parser("forward")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True)
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0")
    p.add_argument("--batch-images", default="1,8")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-side", type=int, default=2000)
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", required=True)
    p = sub.add_parser("table")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("env")
    p.add_argument("--json", required=True)
    for name in ("mode", "data", "images", "epochs"):
        p.add_argument(f"--{name}")
    args = parser.parse_args(argv)
    if args.what == "step":
        return step(args, rest)
    return {"forward": forward, "compare": compare, "table": table,
            "env": environment}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
