"""How many CAM files per second ``igcam cam`` writes when the network costs nothing.

On a GPU the forward pass is about a hundred times faster than on a CPU, and what is left of
a CAM image is decoding the JPEG, resizing the kept class maps to the image, float16, compression
and fsync. This runs the real ``cam`` step (its code path, files and manifest) on the first N
photos of a VOC root with the classifier's network replaced by a stand-in whose stride-16
features come back at once (fixed random values of the right shape, 64 channels, so that the
maps have structure to resize and compress), and reports images per second of the serial path
(``--io-workers 0``) and of the overlapped runner, on one core (``taskset -c 0``) and two
(``taskset -c 0,1``; torch's intra-op threads as many as the cores), each configuration in
its own process, interleaved over the repeats.
``--profile`` adds where one image's time goes, serially on one core.

Run from the repository root when the machine is otherwise idle (check ``uptime``):

    OMP_NUM_THREADS=1 python bench/cam_io.py [--data ../shared/data/voc-real] [--images 40]
        [--repeats 3] [--io-workers 2] [--profile]

Without ``--data`` (or where it is missing) it generates 500 x 375 JPEGs instead.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch import nn

from igcam_cli import runner
from igcam_cli.artifacts import atomic_write, write_bytes, write_image
from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.images import image_size, read_image, save_label_map
from igcam_cli.methods.multiscale import multiscale_cam
from igcam_cli.models import CamNet
from igcam_cli.steps import cam as cam_step
from igcam_cli.transforms import normalise, resize, to_tensor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "voc-real"
CHANNELS = 64
CORES = {"1 core": "0", "2 cores": "0,1"}


class NoBackbone(nn.Module):
    """What ``CamNet`` reads of a backbone: its channels and input statistics."""

    out_channels = CHANNELS
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)


class InstantCamNet(CamNet):
    """The classifier with its network taken out: ``features`` returns stride-16 features of
    the right shape at once (fixed random values per shape, 64 channels). Everything after
    the network (the CAM head, flips, resizing to the image, normalising, float16, writing)
    is the real code. What the network would also do on its device (normalising the input
    views) is left out with it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(NoBackbone(), num_classes)  # type: ignore[arg-type]
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        shape = (batch, CHANNELS, math.ceil(height / 16), math.ceil(width / 16))
        if shape not in self.cache:
            generator = torch.Generator().manual_seed(len(self.cache))
            self.cache[shape] = torch.rand(shape, generator=generator).to(images.device)
        return self.cache[shape]


def stand_in_classifier(class_names: tuple[str, ...]) -> CamNet:
    torch.manual_seed(0)
    return InstantCamNet(len(class_names)).eval()


def generated(root: Path, count: int) -> Path:
    """``count`` smooth random 500 x 375 JPEGs, each with one class in a rectangle."""
    rng = np.random.default_rng(0)
    ids = [f"gen_{i:04d}" for i in range(count)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(ids):
        coarse = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        write_image(root / "JPEGImages" / f"{image_id}.jpg",
                    coarse.resize((500, 375), Image.Resampling.BICUBIC), quality=90)
        mask = np.zeros((375, 500), dtype=np.uint8)
        mask[100:300, 120:380] = i % 20 + 1
        save_label_map(root / "SegmentationClass" / f"{image_id}.png", mask)
    write_bytes(root / "ImageSets" / "Segmentation" / "train.txt", "\n".join(ids).encode())
    return root


def prepare(data: Path, count: int, work: Path) -> Path:
    """A VOC root of the first ``count`` photos of ``data`` (links), or generated ones."""
    root = work / "voc"
    if not (data / "JPEGImages").is_dir():
        print(f"{data} not found: generated images instead", file=sys.stderr)
        return generated(root, count)
    ids = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:count]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            name = f"{image_id}{suffix}"
            (root / folder / name).symlink_to(data / folder / name)
    write_bytes(root / "ImageSets" / "Segmentation" / "train.txt", "\n".join(ids).encode())
    return root


def set_threads(count: int) -> None:
    """torch's intra-op threads: ``count``, or 0 for as many as the cores this process has."""
    torch.set_num_threads(count or len(os.sched_getaffinity(0)))


def child(root: Path, out: Path, io_workers: int) -> dict[str, float]:
    """One ``cam`` run in this process; the seconds of its per-image loop."""
    out.parent.mkdir(parents=True)
    checkpoint = out.parent / "stand-in.pt"
    write_bytes(checkpoint, b"stand-in")  # hashed into the manifest, never loaded
    config = cam_step.CamConfig(run=out.parent, out=out, device="cpu", io_workers=io_workers,
                                dataset=DatasetSpec(voc=root), checkpoint=checkpoint)
    class_names = load_dataset(config.dataset).class_names
    model = stand_in_classifier(class_names)
    cam_step.load_classifier = lambda path, device: (model.to(device), {
        "class_names": list(class_names)})
    timed: dict[str, float] = {}
    loop = runner.run_per_image

    def timed_loop(*args: object, **kwargs: object) -> None:
        start = time.perf_counter()
        loop(*args, **kwargs)  # type: ignore[arg-type]
        timed["seconds"] = time.perf_counter() - start

    runner.run_per_image = timed_loop
    cam_step.cam(config)
    return {"images": len(list(out.glob("*.npz"))), **timed}


def profile(root: Path, work: Path) -> dict[str, float]:
    """Median milliseconds per image of each part of a CAM file, serially on this core."""
    dataset = load_dataset(DatasetSpec(voc=root))
    model = stand_in_classifier(dataset.class_names).to(memory_format=torch.channels_last)
    scales = cam_step.DEFAULT_SCALES
    parts: dict[str, list[float]] = {}

    def clock(name: str, start: float) -> float:
        now = time.perf_counter()
        parts.setdefault(name, []).append(1000 * (now - start))
        return now

    for sample in dataset.samples:
        start = time.perf_counter()
        image = to_tensor(read_image(sample.image))
        width, height = image_size(sample.image)
        start = clock("decode (JPEG, to tensor)", start)
        classes = list(sample.labels or [])
        cams, probs = multiscale_cam(model, image, scales, True, classes)
        maps = normalise(cams)
        start = clock("CAM at 4 scales + flips (stand-in network), normalise", start)
        for scale in scales:  # the part of the above that enlarges the maps to the image
            small = torch.rand(1, len(classes), math.ceil(height * scale / 16),
                               math.ceil(width * scale / 16))
            resize(small, (height, width))
        start = clock("  of which: resizing the kept classes' maps to the image (4 scales)",
                      start)
        half = maps.to(torch.float16).cpu().numpy()
        start = clock("float16 and copy", start)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, classes=np.array(sample.labels, dtype=np.int16), cams=half,
                            scores=probs.numpy(), image=np.array(str(sample.image)))
        start = clock("npz compression (zlib)", start)
        written = timed_write(work / f"{sample.id}.npz", buffer.getvalue())
        parts.setdefault("file write", []).append(1000 * written)
        clock("temp file, flush, fsync, rename", start + written)
    return {name: statistics.median(values) for name, values in parts.items()}


def timed_write(path: Path, data: bytes) -> float:
    """Write ``data`` atomically; the seconds of the write itself (the rest of the atomic
    write's time is its temporary file, flush, fsync and rename)."""
    seconds = []

    def write(handle: IO[bytes]) -> None:
        began = time.perf_counter()
        handle.write(data)
        seconds.append(time.perf_counter() - began)

    atomic_write(path, write)
    return seconds[0]


def run_child(cpus: str, args: list[str]) -> dict[str, float]:
    command = ["taskset", "-c", cpus, sys.executable, __file__, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--io-workers", default="2",
                        help="comma list: the overlapped runner's thread counts to measure")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch's intra-op threads (default 0: as many as the cores)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "IO_WORKERS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--profile-child", nargs=2, metavar=("ROOT", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.torch_threads)
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))))
        return
    if args.profile_child:
        print(json.dumps(profile(Path(args.profile_child[0]), Path(args.profile_child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="cam-io-") as tmp:
        work = Path(tmp)
        root = prepare(args.data, args.images, work)
        modes = {"serial": 0} | {f"overlapped, {n} io threads": int(n)
                                 for n in args.io_workers.split(",")}
        rates: dict[tuple[str, str], list[float]] = {}
        # Under load, OpenMP threads that spin (the default) wait on a descheduled partner.
        print(f"load before: {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY', '(default)')}, torch threads "
              f"{args.torch_threads or 'as many as the cores'}", file=sys.stderr)
        for repeat in range(args.repeats):
            for cores, cpus in CORES.items():
                for mode, io_workers in modes.items():
                    out = work / f"r{repeat}-{cpus}-{io_workers}" / "cam"
                    result = run_child(cpus, ["--child", str(root), str(out), str(io_workers),
                                               "--torch-threads", str(args.torch_threads)])
                    rate = result["images"] / result["seconds"]
                    rates.setdefault((mode, cores), []).append(rate)
                    print(f"{mode}, {cores}: {rate:.2f} images/s", file=sys.stderr)
        print(f"load after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        print(f"| runner | {' | '.join(f'{c} min / median' for c in CORES)} | 2 / 1 core |")
        print("|---|---|---|---|")
        for mode in modes:
            cells = [f"{min(rates[mode, c]):.2f} / {statistics.median(rates[mode, c]):.2f}"
                     for c in CORES]
            ratio = statistics.median(rates[mode, "2 cores"]) / statistics.median(
                rates[mode, "1 core"])
            print(f"| {mode} | {' | '.join(cells)} | {ratio:.2f} |")
        if args.profile:
            (work / "profile").mkdir()
            parts = run_child("0", ["--profile-child", str(root), str(work / "profile")])
            print("\n| part of one image (1 core, serial) | median ms |\n|---|---|")
            for name, value in parts.items():
                print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
