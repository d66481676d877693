"""Artifact input and output: atomic writes, temporary files, every artifact's reader and writer.

Every artifact is written to a temporary file in its final folder and renamed into place, so a
step killed at any moment leaves either the old file, the new file, or a stale ``.tmp`` file
that the next run of the step removes - never a half-written artifact under its real name.
Readers check what they read, so a damaged or foreign file is one image's problem or a
one-line error, never a traceback or a wrong mask.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import platform
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from igcam_cli.artifacts.layout import RunDir
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.transforms import resize_keeping_peaks

TMP_PREFIX = ".igcam-tmp-"  # then <pid>@<host>@<name>.<random>: see remove_stale_temps
STALE_ELSEWHERE_S = 24 * 3600  # a temp of another machine's process is stale after a day


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


def replaceable(path: Path) -> Path:
    """``path``, if an atomic write may replace it: missing or a regular file. A rename onto
    ``/dev/stdout``, a pipe or a link would swap the special file (or the link) for a plain
    one, so those are refused; a step with a user-given output file asks before its work."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise IgcamError(f"{path} is not a regular file: igcam writes its outputs as new or "
                         "regular files only (give another path)")
    return path


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it onto ``path``
    (which must be :func:`replaceable`)."""
    replaceable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + _owner_tag() + path.name + ".")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk names no file by itself
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
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


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object artifact (a manifest, an eval report). A missing, empty, damaged or
    foreign file is a one-line error naming ``what`` it should be and how to ``fix`` it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IgcamError(f"{what} {path} is unreadable ({type(exc).__name__}): {fix}") from None
    if not isinstance(data, dict):
        raise IgcamError(f"{what} {path} is not a JSON object: {fix}")
    return data


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
    maps = RunDir.influence_maps(folder)
    if not maps.is_dir():
        raise IgcamError(f"{maps} not found (run `igcam influence` first)")
    return maps


def read_prototypes(folder: Path) -> dict[str, Any]:
    """lpcam's prototypes: ``class_prototypes`` (N, D) float32 with ``class_ids`` (N,) int64,
    ``context_prototypes`` (M, D) with ``context_ids`` (M,)."""
    path = RunDir.prototypes(folder)
    stored = read_torch(path, "prototypes")
    kinds = ("class", "context")
    if not isinstance(stored, dict) or any(
            not {f"{kind}_prototypes", f"{kind}_ids"} <= stored.keys()
            or stored[f"{kind}_prototypes"].ndim != 2
            or len(stored[f"{kind}_prototypes"]) != len(stored[f"{kind}_ids"]) for kind in kinds):
        raise IgcamError(f"prototypes {path} are damaged: delete the folder "
                         "to rebuild them")
    return stored


def write_prototypes(folder: Path, tensors: dict[str, Any]) -> Path:
    return write_torch(RunDir.prototypes(folder), tensors)


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
        digest.update(item.encode("utf-8", "surrogateescape"))  # names that are not UTF-8
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


