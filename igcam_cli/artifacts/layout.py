"""The run directory's layout: every folder and file name, and the paths made of them.

This module alone turns what a step makes (a step, a CAM method, a refiner chain, a training
stage, an epoch) into a path, and a folder's name back into what kind of output it holds;
``manifests.made_by`` reads what made a folder from its manifest. Steps, parts and the report
ask :class:`RunDir` (``tests/test_layout.py`` fails on a run-directory path built elsewhere),
so renaming a folder or file is a change here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from igcam_cli.errors import IgcamError

# A step's folder is named after the CLI subcommand that writes it (``prototypes`` and ``vis``
# are written by cam and run): lowercase words joined by "-" (digits after the first: rounds).
STEP_NAME = re.compile(r"[a-z]+(-[a-z0-9]+)*")
PLAIN_CAM = "cam"  # the method name of the plain CAM, whose maps go to RUN/cam
DEFAULT_REFINER = "crf"  # refine's and run's refiner chain, whose masks go to RUN/refine
# `igcam run`'s CAM method: its masks go to RUN/refine-<it>-<DEFAULT_REFINER>, train-seg's
# default --masks.
RUN_CAM_METHOD = "lpcam"
CLASSIFIER_FILE = "classifier.pt"  # RUN/train-cls*/: the final checkpoint
SEGMENTER_FILE = "segmenter.pt"  # RUN/train-seg/: the segmentation network
METRICS_FILE = "metrics.json"  # RUN/train-cls*/, train-aff/, train-seg/: one record per epoch
EPOCH_FILE = "epoch-{:03d}.pt"  # the same folders: the last epochs' checkpoints
PROTOTYPES_FILE = "prototypes.pt"  # RUN/prototypes/: lpcam's class and context prototypes
SCORES_FILE = "scores.csv"  # RUN/influence/: per-image influence and self-influence
SOLUTION_FILE = "solution.pt"  # RUN/influence/: the inverse-HVP vector, reused by reruns
MAPS_DIR = "maps"  # RUN/influence/maps/<id>.npz: spatial influence maps
AFFINITY_FILE = "affinity.pt"  # RUN/train-aff/: the boundary network rw walks with
MAPS_SUFFIX = ".npz"  # <folder>/<image id>.npz: one image's arrays (CAMs, proposals, ...)
MASK_SUFFIX = ".png"  # <folder>/<image id>.png: one image's label map (masks, targets)
LABELS_DIR = "labels"  # RUN/train-aff/labels/<id>.png: the affinity targets
REFINED_SCORES_DIR = "scores"  # RUN/refine*/scores/<id>.npz: refine --save-scores
DEMO_DATA_DIR = "data"  # RUN/data/: igcam demo's generated dataset
REPORT_FILE = "report.html"  # RUN/: igcam report's page, beside its folder RUN/report/
MANIFEST_FILE = "manifest.json"  # every step folder; manifest.shard-I-of-N.json per shard
SHARD_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.json")
# Every per-image step folder while a run (or a shard's) writes it, and after one was stopped:
# unfinished.json or unfinished.shard-I-of-N.json, the claim of artifacts/claims.py.
UNFINISHED_FILE = "unfinished.json"
# What a folder holds by its name: RUN/cam and RUN/cam-<method>; RUN/refine and refine-<x>.
KINDS = {"cam": "cams", "refine": "masks", "predict": "masks"}  # by folder name


def shard_manifest_name(index: int, count: int) -> str:
    """The manifest of shard ``index`` of ``count``: shards of an array job write separate
    manifests so that they never race on one file."""
    return MANIFEST_FILE if count == 1 else f"manifest.shard-{index}-of-{count}.json"


@dataclass(frozen=True)
class RunDir:
    """The folders of one run; every step reads and writes only below ``root``.

    Methods of an instance name a folder or file of this run; the static ones name a file
    inside a folder that the user may have put elsewhere (``--out``, ``--cams``).
    """

    root: Path

    def step(self, name: str) -> Path:
        if not STEP_NAME.fullmatch(name):
            raise ValueError(f"not a step folder name: {name!r}")
        return self.root / name

    def train_cls(self, stage: str | None = None) -> Path:
        """``train-cls`` for stage 1, ``train-cls-<stage>`` for a fine-tuning stage."""
        folder = self.step("train-cls")
        return folder if stage is None else folder.with_name(f"train-cls-{stage}")

    def classifier(self, stage: str | None = None) -> Path:
        """The final checkpoint of a training stage (every step's default classifier)."""
        return self.train_cls(stage) / CLASSIFIER_FILE

    def cam(self, method: str = PLAIN_CAM) -> Path:
        """``cam`` for the plain CAM, ``cam-<method>`` for every other method (or chain)."""
        folder = self.step("cam")
        return folder if method == PLAIN_CAM else folder.with_name(f"cam-{method}")

    def refine(self, refiners: str = DEFAULT_REFINER) -> Path:
        """``refine``'s own default: ``refine`` for the default chain, ``refine-<refiners>``
        for any other, so that one run directory holds every chain's masks side by side."""
        folder = self.step("refine")
        return folder if refiners == DEFAULT_REFINER else folder.with_name(f"refine-{refiners}")

    def masks(self, cam_method: str, refiners: str) -> Path:
        """``igcam run``'s masks of ``refiners`` over ``cam_method``'s maps: refine's own
        folder over the plain CAM's, ``refine-<cam_method>-<refiners>`` over another method's,
        so that the masks of two methods never share (and refuse) one folder."""
        if cam_method == PLAIN_CAM:
            return self.refine(refiners)
        return self.step("refine").with_name(f"refine-{cam_method}-{refiners}")

    def pseudo_masks(self) -> Path:
        """The masks ``igcam run`` writes by default (its CAM method, the default refiners):
        ``train-seg``'s default ``--masks``."""
        return self.masks(RUN_CAM_METHOD, DEFAULT_REFINER)

    def train_seg(self, round: int = 0) -> Path:
        """``train-seg``'s folder; ``round`` k > 0: that of ``igcam run --self-train``'s k-th
        round (``train-seg-round<k>``)."""
        return self.step("train-seg" if round == 0 else f"train-seg-round{round}")

    def segmenter(self, folder: Path | None = None) -> Path:
        """The network in a train-seg folder (default ``RUN/train-seg``: ``predict``'s
        default ``--checkpoint``)."""
        return (folder or self.train_seg()) / SEGMENTER_FILE

    def predict(self, round: int = 0) -> Path:
        """``predict``'s label maps (one palette PNG per image); ``round`` k > 0: the masks
        of ``igcam run --self-train``'s k-th round (``predict-round<k>``)."""
        return self.step("predict" if round == 0 else f"predict-round{round}")

    def affinity(self) -> Path:
        """``train-aff``'s boundary network, the default of ``refine --method rw``."""
        return self.step("train-aff") / AFFINITY_FILE

    def affinity_labels(self) -> Path:
        """``train-aff``'s per-image targets."""
        return self.step("train-aff") / LABELS_DIR

    def demo_data(self) -> Path:
        return self.root / DEMO_DATA_DIR

    def no_cams(self, cams: Path) -> IgcamError:
        """The error for a CAM folder without CAM files; it names the run's CAM folders that
        have some (``igcam run`` writes lpcam's to ``cam-lpcam``, not the default ``cam``)."""
        others = sorted(str(p) for p in self.root.glob(f"{PLAIN_CAM}*")
                        if p.is_dir() and p != cams and any(p.glob("*.npz")))
        hint = f"pass --cams {' or '.join(others)}" if others else "run `igcam cam` first"
        return IgcamError(f"no CAM files in {cams} ({hint})")

    def eval_report(self, name: str) -> Path:
        return self.step("eval") / f"{name}.json"

    def eval_reports(self) -> list[Path]:
        """Every eval report of the run, by name."""
        return sorted(self.step("eval").glob("*.json"))

    def report(self) -> Path:
        """``igcam report``'s page; its charts and pictures go in ``RUN/report/``."""
        return self.root / REPORT_FILE

    @staticmethod
    def kind(folder: Path) -> str | None:
        """``cams`` or ``masks`` for a CAM or refine folder of a run (by its name), else None."""
        for prefix, kind in KINDS.items():
            if folder.name == prefix or folder.name.startswith(prefix + "-"):
                return kind
        return None

    @staticmethod
    def metrics(folder: Path) -> Path:
        """A training step's per-epoch records, written as it trains."""
        return folder / METRICS_FILE

    @staticmethod
    def epoch(folder: Path, epoch: int) -> Path:
        """A training step's checkpoint after ``epoch`` (1-based)."""
        return folder / EPOCH_FILE.format(epoch)

    @staticmethod
    def epochs(folder: Path) -> list[Path]:
        """A training step's epoch checkpoints, oldest first."""
        return sorted(folder.glob(EPOCH_FILE.replace("{:03d}", "*")))

    @staticmethod
    def prototypes(folder: Path) -> Path:
        """lpcam's prototypes file in a prototypes folder (``RUN/prototypes`` by default)."""
        return folder / PROTOTYPES_FILE

    @staticmethod
    def influence_scores(folder: Path) -> Path:
        return folder / SCORES_FILE

    @staticmethod
    def influence_solution(folder: Path) -> Path:
        return folder / SOLUTION_FILE

    @staticmethod
    def influence_maps(folder: Path) -> Path:
        return folder / MAPS_DIR

    @staticmethod
    def image_maps(folder: Path, image_id: str) -> Path:
        """One image's arrays in a per-image folder: CAMs, proposals, influence maps, scores."""
        return folder / f"{image_id}{MAPS_SUFFIX}"

    @staticmethod
    def image_mask(folder: Path, image_id: str) -> Path:
        """One image's label map in a per-image folder: masks, affinity targets."""
        return folder / f"{image_id}{MASK_SUFFIX}"

    @staticmethod
    def image_file(folder: Path, image_id: str, kind: str) -> Path:
        """One image's file in a folder of ``kind`` (:meth:`kind`): ``cams`` hold arrays,
        ``masks`` label maps."""
        return (RunDir.image_maps if kind == "cams" else RunDir.image_mask)(folder, image_id)

    @staticmethod
    def image_files(folder: Path, kind: str = "cams") -> list[Path]:
        """Every image's file in a per-image folder of ``kind`` (none for a folder that is
        missing), in the order of their image ids."""
        suffix = MAPS_SUFFIX if kind == "cams" else MASK_SUFFIX
        return sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []

    @staticmethod
    def refined_scores(masks: Path) -> Path:
        """Where ``refine --save-scores`` keeps the refined maps of a mask folder."""
        return masks / REFINED_SCORES_DIR

    @staticmethod
    def refined_by(scores: Path) -> Path | None:
        """The mask folder whose refined maps ``scores`` holds, if it is such a folder."""
        return scores.parent if scores.name == REFINED_SCORES_DIR else None

    @staticmethod
    def manifest(folder: Path) -> Path:
        """A step folder's manifest: the whole run's, or its shards' merged."""
        return folder / MANIFEST_FILE

    @staticmethod
    def shard_manifests(folder: Path) -> dict[int, dict[int, Path]]:
        """The shard manifests in ``folder``: for each split N, shard index -> file."""
        found: dict[int, dict[int, Path]] = {}
        for path in folder.glob("manifest.shard-*-of-*.json"):
            match = SHARD_MANIFEST.fullmatch(path.name)
            if match is not None and 0 <= int(match[1]) < int(match[2]):  # not -of-0, 5-of-2
                found.setdefault(int(match[2]), {})[int(match[1])] = path
        return found

    @staticmethod
    def unfinished(folder: Path, index: int = 0, count: int = 1) -> Path:
        """The claim of the run (or shard ``index`` of ``count``) writing ``folder``."""
        return folder / (UNFINISHED_FILE if count == 1
                         else f"unfinished.shard-{index}-of-{count}.json")

    @staticmethod
    def unfinished_claims(folder: Path) -> list[Path]:
        """Every claim in ``folder``: runs writing it now, or stopped before they finished."""
        return sorted(folder.glob("unfinished*.json"))

    @staticmethod
    def manifests(folder: Path) -> list[Path]:
        """Every manifest in ``folder``: the whole one and each shard's, by name."""
        return sorted(folder.glob("manifest*.json"))
