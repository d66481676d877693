"""The run directory: its layout, every artifact's file name, reader and writer, and manifests.

Every artifact is written to a temporary file in its final folder and renamed into place, so a
step killed at any moment leaves either the old file, the new file, or a stale ``.tmp`` file
that the next run of the step removes - never a half-written artifact under its real name.

This module is the one home of the run-directory contract (ARCHITECTURE.md lists every
artifact, its keys and dtypes): steps and methods ask :class:`RunDir` for folders and use the
readers and writers here, so no step builds a path or parses a file another step wrote.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import platform
import re
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.transforms import resize_keeping_peaks

TMP_PREFIX = ".igcam-tmp-"  # then <pid>@<host>@<name>.<random>: see remove_stale_temps
STALE_ELSEWHERE_S = 24 * 3600  # a temp of another machine's process is stale after a day

# The step folders of a run directory, named after the CLI subcommands that write them.
STEP_DIRS = ("train-cls", "propose", "influence", "prototypes", "cam", "train-aff",
             "refine", "eval", "vis")
CLASSIFIER_FILE = "classifier.pt"  # RUN/train-cls*/: the final checkpoint
PROTOTYPES_FILE = "prototypes.pt"  # RUN/prototypes/: lpcam's class and context prototypes
SCORES_FILE = "scores.csv"  # RUN/influence/: per-image influence and self-influence
SOLUTION_FILE = "solution.pt"  # RUN/influence/: the inverse-HVP vector, reused by reruns
MAPS_DIR = "maps"  # RUN/influence/maps/<id>.npz: spatial influence maps
REPORT_FILE = "report.html"  # RUN/: igcam report's page, beside its folder RUN/report/
MANIFEST_FILE = "manifest.json"  # every step folder; manifest.shard-I-of-N.json per shard


@dataclass(frozen=True)
class RunDir:
    """The folders of one run; every step reads and writes only below ``root``."""

    root: Path

    def step(self, name: str) -> Path:
        if name not in STEP_DIRS:
            raise ValueError(f"unknown step folder {name!r}")
        return self.root / name

    def train_cls(self, stage: str | None = None) -> Path:
        """``train-cls`` for stage 1, ``train-cls-<stage>`` for a fine-tuning stage."""
        folder = self.step("train-cls")
        return folder if stage is None else folder.with_name(f"train-cls-{stage}")

    def classifier(self, stage: str | None = None) -> Path:
        """The final checkpoint of a training stage (every step's default classifier)."""
        return self.train_cls(stage) / CLASSIFIER_FILE

    def cam(self, method: str = "cam") -> Path:
        """``cam`` for the plain CAM, ``cam-<method>`` for every other method (or chain)."""
        folder = self.step("cam")
        return folder if method == "cam" else folder.with_name(f"cam-{method}")

    def no_cams(self, cams: Path) -> IgcamError:
        """The error for a CAM folder without CAM files; it names the run's CAM folders that
        have some (``igcam run`` writes lpcam's to ``cam-lpcam``, not the default ``cam``)."""
        others = sorted(str(p) for p in self.root.glob("cam*")
                        if p.is_dir() and p != cams and any(p.glob("*.npz")))
        hint = f"pass --cams {' or '.join(others)}" if others else "run `igcam cam` first"
        return IgcamError(f"no CAM files in {cams} ({hint})")

    def eval_report(self, name: str) -> Path:
        return self.step("eval") / f"{name}.json"

    def report(self) -> Path:
        """``igcam report``'s page; its charts and pictures go in ``RUN/report/``."""
        return self.root / REPORT_FILE


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and check that files can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=TMP_PREFIX + _owner_tag()):
            pass
    except OSError as exc:
        raise IgcamError(f"output directory {path} is not writable: {exc.strerror or exc}") from exc
    return path


def _owner_tag() -> str:
    """``<pid>@<host>@``: which process on which machine a temporary file belongs to."""
    return f"{os.getpid()}@{socket.gethostname()}@"


def _is_stale(path: Path) -> bool:
    """Whether a temporary file's writer is gone: a dead process of this machine, or a day old
    (another machine's processes cannot be asked); names without an owner (older igcam) too."""
    pid, host, rest = (path.name[len(TMP_PREFIX):].split("@", 2) + ["", ""])[:3]
    if not pid.isdigit() or not rest:
        return True
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False
    try:
        return time.time() - path.stat().st_mtime > STALE_ELSEWHERE_S
    except FileNotFoundError:
        return False


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left by killed runs; returns how many were removed.

    A shard of an array job writing into the same folder keeps its files: only the temps of
    processes that are no longer running are stale.
    """
    if not folder.is_dir():
        return 0
    stale = [path for path in folder.glob(TMP_PREFIX + "*") if _is_stale(path)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _file_mode() -> int:
    """The mode a plain ``open()`` would give (mkstemp's files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + _owner_tag() + path.name + ".")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def jsonable(obj: object) -> Any:
    """``obj`` with Paths (and other non-JSON values) as strings: configs hold Paths."""
    return json.loads(json.dumps(obj, default=str))


def write_json(path: Path, obj: Any) -> Path:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` artifact (CAMs, proposals, influence maps), never a pickle.

    A truncated or foreign file is the problem of that one image, not a crash of the step.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ImageProblem(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - a damaged zip fails in zlib, zipfile, numpy...
        raise ImageProblem(f"{path}: unreadable or corrupt artifact "
                           f"({type(exc).__name__}: {exc})") from None


def read_cam(path: Path, full_size: bool = True) -> dict[str, np.ndarray]:
    """A CAM file, checked: an inconsistent one is that image's problem, not a wrong mask.

    ``full_size=False`` leaves maps stored at a stride as they are, for readers that want only
    the classes, scores or image path (the enlargement is the costly part of a read).
    """
    data = read_npz(path)
    missing = {"classes", "cams", "scores", "image"} - set(data)
    if missing:
        raise ImageProblem(f"{path}: not a CAM file (no {', '.join(sorted(missing))})")
    cams, classes, scores = data["cams"], data["classes"], data["scores"]
    if (cams.ndim != 3 or classes.ndim != 1 or scores.ndim != 1 or len(classes) != len(cams)
            or cams.dtype.kind != "f" or classes.dtype.kind not in "iu"):
        raise ImageProblem(f"{path}: inconsistent CAM file (cams {cams.shape} {cams.dtype}, "
                           f"classes {classes.shape} {classes.dtype})")
    if len(classes) and not (0 <= classes.min() and classes.max() < min(len(scores), 255)):
        raise ImageProblem(f"{path}: class ids {classes.tolist()} outside the classifier's "
                           f"{len(scores)} classes")
    if "size" in data:  # stored at a stride (igcam cam --store-stride): enlarged here
        size = tuple(int(v) for v in data.pop("size").reshape(-1))
        if len(size) != 2 or not all(a >= b for a, b in zip(size, cams.shape[1:], strict=True)):
            raise ImageProblem(f"{path}: inconsistent CAM file (size {size}, cams "
                               f"{cams.shape})")
        if full_size:
            data["cams"] = enlarge(cams, size)
    return data


def enlarge(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) float16 maps stored at a stride, enlarged to ``size`` with their peaks kept
    (float16, as full-size files hold them)."""
    maps = torch.from_numpy(cams.astype(np.float32))
    return resize_keeping_peaks(maps, size).numpy().astype(np.float16)


def write_cam(path: Path, classes: np.ndarray, cams: np.ndarray, scores: np.ndarray,
              image: Path, size: tuple[int, int] | None = None) -> Path:
    """A CAM file: ``classes`` int16 (K,), ``cams`` float16 (K, H, W) max-normalised,
    ``scores`` float32 (C,) class probabilities, ``image`` the source photo's path.

    ``size``: the image's (H, W) when ``cams`` are kept smaller (a stride), so that
    :func:`read_cam` gives every reader maps of the image's size.
    """
    extra = {} if size is None else {"size": np.array(size, dtype=np.int32)}
    return write_npz(path, classes=classes.astype(np.int16),
                     cams=cams.astype(np.float16, copy=False),
                     scores=scores.astype(np.float32), image=np.array(str(image.resolve())),
                     **extra)


def read_proposals(path: Path) -> dict[str, np.ndarray]:
    """A proposal file, checked: ``boxes`` must be integer (N, 4) corners inside ``size``."""
    data = read_npz(path)
    boxes, size = data.get("boxes"), data.get("size")
    if boxes is None or size is None or boxes.ndim != 2 or boxes.shape[1] != 4 \
            or boxes.dtype.kind not in "iu" or size.shape != (2,):
        raise ImageProblem(f"{path}: not a proposal file (boxes {getattr(boxes, 'shape', None)})")
    height, width = size.tolist()
    if len(boxes) and ((boxes[:, :2] < 0).any() or (boxes[:, 2] > width).any()
                       or (boxes[:, 3] > height).any() or (boxes[:, 2:] <= boxes[:, :2]).any()):
        raise ImageProblem(f"{path}: boxes outside the image's {width}x{height} pixels")
    return data


def read_influence_map(path: Path) -> dict[str, np.ndarray]:
    """A spatial influence map file, checked: one (H, W) map per class id."""
    data = read_npz(path)
    classes, maps = data.get("classes"), data.get("maps")
    if classes is None or maps is None or classes.ndim != 1 or maps.ndim != 3 \
            or len(classes) != len(maps) or maps.dtype.kind != "f":
        raise ImageProblem(f"{path}: not an influence map file")
    return data


def write_proposals(path: Path, boxes: np.ndarray, scores: np.ndarray, image: Path,
                    size: tuple[int, int]) -> Path:
    """A proposal file: ``boxes`` int32 (N, 4) x1, y1, x2, y2 (exclusive) in original pixels,
    ``scores`` float32 (N,) best first, ``image`` the source path, ``size`` int32 (H, W)."""
    return write_npz(path, boxes=boxes.astype(np.int32), scores=scores.astype(np.float32),
                     image=np.array(str(image.resolve())), size=np.array(size, dtype=np.int32))


def influence_maps(folder: Path) -> Path:
    """The spatial maps' folder of an ``igcam influence`` folder, checked to exist."""
    maps = folder / MAPS_DIR
    if not maps.is_dir():
        raise IgcamError(f"{maps} not found (run `igcam influence` first)")
    return maps


def read_prototypes(folder: Path) -> dict[str, Any]:
    """lpcam's prototypes: ``class_prototypes`` (N, D) float32 with ``class_ids`` (N,) int64,
    ``context_prototypes`` (M, D) with ``context_ids`` (M,)."""
    stored = read_torch(folder / PROTOTYPES_FILE, "prototypes")
    kinds = ("class", "context")
    if not isinstance(stored, dict) or any(
            not {f"{kind}_prototypes", f"{kind}_ids"} <= stored.keys()
            or stored[f"{kind}_prototypes"].ndim != 2
            or len(stored[f"{kind}_prototypes"]) != len(stored[f"{kind}_ids"]) for kind in kinds):
        raise IgcamError(f"prototypes {folder / PROTOTYPES_FILE} are damaged: delete the folder "
                         "to rebuild them")
    return stored


def write_prototypes(folder: Path, tensors: dict[str, Any]) -> Path:
    return write_torch(folder / PROTOTYPES_FILE, tensors)


def write_influence_map(path: Path, classes: list[int], maps: np.ndarray) -> Path:
    """A spatial influence map: ``classes`` int16 (K,), ``maps`` float16 (K, H, W) in [0, 1]."""
    return write_npz(path, classes=np.array(classes, dtype=np.int16),
                     maps=maps.astype(np.float16, copy=False))


def write_scores(path: Path, rows: Iterable[tuple[str, str, float, float | None]]) -> Path:
    """``scores.csv``: image_id, role (fit / held-out), influence, self_influence (may be empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image_id", "role", "influence", "self_influence"])
    for image_id, role, value, self_value in rows:
        writer.writerow([image_id, role, f"{value:.6g}",
                         "" if self_value is None else f"{self_value:.6g}"])
    return write_bytes(path, buffer.getvalue().encode())


def read_scores(path: Path) -> dict[str, float]:
    """image id -> influence on the held-out loss, from a ``scores.csv``."""
    if not path.is_file():
        raise IgcamError(f"{path} not found (run `igcam influence` first)")
    with path.open(newline="") as handle:
        return {row["image_id"]: float(row["influence"]) for row in csv.DictReader(handle)}


def write_image(path: Path, image: Image.Image, **save_kwargs: Any) -> Path:
    buffer = io.BytesIO()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]
    image.save(buffer, format=fmt, **save_kwargs)
    return write_bytes(path, buffer.getvalue())


def write_torch(path: Path, obj: Any) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def read_torch(path: Path, what: str) -> Any:
    """A torch artifact (prototypes, influence solution, checkpoint) without unpickling code.

    ``weights_only=True`` refuses anything but tensors and plain containers, so a tampered
    file cannot run code; an unreadable one is a one-line error naming ``what`` it should be.
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols is not the user's
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise IgcamError(f"{what} {path} not found") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        # torch's own text for a file with code in it advises the unsafe weights_only=False.
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            reason = "it holds more than tensors, and igcam never unpickles code"
        else:
            reason = f"corrupt or truncated ({type(exc).__name__})"
        raise IgcamError(f"{what} {path} cannot be loaded: {reason}") from None


def read_checkpoint(path: Path, fmt: str, what: str, made_by: str) -> dict:
    """A checkpoint dict whose ``format`` is ``fmt``; a missing file, an unreadable one or one
    of another kind is a one-line error saying which step (``made_by``) writes it."""
    if not path.is_file():
        raise IgcamError(f"{what} {path} not found (run `igcam {made_by}` first)")
    payload = read_torch(path, what)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise IgcamError(f"{path} is not an igcam {what} ({made_by} writes them)")
    return payload


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(items: Iterable[str]) -> str:
    """A short stable hash of a list of strings (image ids, file names and sizes)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("igcam", "torch", "torchvision", "numpy", "opencv-contrib-python-headless",
                 "pydensecrf2", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Shard:
    """``--shard I/N``: this process handles every N-th image starting at I (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            index_text, count_text = text.split("/")
            shard = cls(int(index_text), int(count_text))
        except ValueError:
            raise IgcamError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise IgcamError(f"--shard {text}: need 0 <= I < N")
        return shard

    def select(self, items: list) -> list:
        return items[self.index :: self.count]

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def manifest_name(self) -> str:
        """Shards of an array job write separate manifests so they never race on one file."""
        if self.is_whole:
            return MANIFEST_FILE
        return f"manifest.shard-{self.index}-of-{self.count}.json"


@dataclass
class StepRecord:
    """What a step writes into its manifest: config, inputs, counts, warnings and timings."""

    step: str
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def save(self, folder: Path, shard: Shard = Shard(), filename: str | None = None) -> Path:
        """Write the manifest (``filename`` overrides the shard's default name)."""
        self.timings["total_s"] = round(time.perf_counter() - self._start, 3)
        return write_json(folder / (filename or shard.manifest_name()), {
            "step": self.step,
            "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "config": self.config,
            "inputs": self.inputs,
            "counts": self.counts,
            "warnings": self.warnings,
            "timings": self.timings,
            "versions": package_versions(),
            **self.extra,
        })


SHARD_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.json")
# Keys whose shards' values combine (or are per shard by nature) rather than agree.
_COMBINED = frozenset({"complete", "created", "argv", "counts", "warnings", "timings"})


def shard_manifests(folder: Path) -> dict[int, dict[int, Path]]:
    """The shard manifests in ``folder``: for each split N, shard index -> file."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob("manifest.shard-*-of-*.json"):
        if (match := SHARD_MANIFEST.fullmatch(path.name)) is not None:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    return found


def _read_shard(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IgcamError(f"shard manifest {path} is unreadable ({type(exc).__name__}): rerun "
                         "that shard") from None
    if not isinstance(manifest, dict) or not manifest.get("complete"):
        raise IgcamError(f"shard manifest {path} is not a finished step's: rerun that shard")
    return manifest


def merge_shards(folder: Path) -> Path:
    """Write ``folder/manifest.json`` from the N ``manifest.shard-I-of-N.json`` of one split.

    Every shard must be there, of the same step and recipe: the merged manifest then
    describes the whole folder as one unsharded run's would (counts summed, warnings
    concatenated, ``timings.total_s`` the shards' sum as for the per-image seconds, and
    ``slowest_shard_s``, the wall time of the array), and ``shards`` keeps each shard's
    creation time, argv, counts, timings and whatever else differs between them (its
    ``--shard``, its images' fingerprint). The shard manifests stay, so that a shard rerun
    later merges again; readers of a folder take ``manifest.json`` when it is there.
    """
    splits = shard_manifests(folder)
    if not splits:
        raise IgcamError(f"{folder} holds no shard manifests (manifest.shard-I-of-N.json)")
    if len(splits) > 1:
        raise IgcamError(f"{folder} holds shard manifests of several splits (of "
                         f"{', of '.join(map(str, sorted(splits)))}): delete those of the "
                         "split that is not current")
    ((count, paths),) = splits.items()
    missing = [f"{index}/{count}" for index in range(count) if index not in paths]
    if missing:
        raise IgcamError(f"{folder}: shard{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} missing (no manifest.shard-I-of-{count}.json): "
                         "run them, then merge again")
    manifests = [_read_shard(paths[index]) for index in range(count)]
    first = manifests[0]
    for index, manifest in enumerate(manifests[1:], start=1):
        if manifest.get("step") != first.get("step") or \
                manifest.get("recipe") != first.get("recipe"):
            raise IgcamError(f"{folder}: shard {index}/{count} was made by another step or "
                             "with other options than shard 0: rerun it with the same command")
    merged: dict[str, Any] = {"complete": True,
                              "created": max(str(m.get("created", "")) for m in manifests),
                              "argv": first.get("argv")}
    shards: list[dict[str, Any]] = [
        {"shard": f"{index}/{count}", **{key: m.get(key) for key in
                                         ("created", "argv", "counts", "timings")}}
        for index, m in enumerate(manifests)]
    for key in sorted({key for m in manifests for key in m} - _COMBINED):
        values = [m.get(key) for m in manifests]
        if all(value == values[0] for value in values):
            merged[key] = values[0]
        elif all(isinstance(value, dict) for value in values):  # config, inputs: keep the
            shared = {k for k in values[0] if all(k in v and v[k] == values[0][k]  # agreeing
                                                  for v in values)}
            merged[key] = {k: values[0][k] for k in shared}
            for entry, value in zip(shards, values, strict=True):
                entry[key] = {k: v for k, v in value.items() if k not in shared}
        else:
            for entry, value in zip(shards, values, strict=True):
                entry[key] = value
    counts: dict[str, int] = {}
    for manifest in manifests:
        for key, value in (manifest.get("counts") or {}).items():
            counts[key] = counts.get(key, 0) + value
    seconds = [float((m.get("timings") or {}).get("total_s", 0.0)) for m in manifests]
    merged.update(counts=counts, warnings=[w for m in manifests for w in m.get("warnings", [])],
                  timings={"total_s": round(sum(seconds), 3),
                           "slowest_shard_s": round(max(seconds), 3)},
                  shards=shards)
    return write_json(folder / MANIFEST_FILE, merged)


def merge_finished_shards(folder: Path, count: int) -> Path | None:
    """:func:`merge_shards` once all ``count`` shards of a split are there, else None: the
    last shard of an array job (or torchrun's last process) to finish merges them."""
    if len(shard_manifests(folder).get(count, {})) < count:
        return None
    return merge_shards(folder)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished step (unsharded, or its shards merged), or None if the step
    has not completed."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("complete") else None
