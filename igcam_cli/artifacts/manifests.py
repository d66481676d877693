"""Manifests: what a step records about a folder, reading it back, and comparing recipes.

Every step folder gets a manifest when its step completes (``StepRecord``). Everything that
reads one goes through here: whether a step finished (:func:`read_manifest`), what made a
folder (:func:`made_by`), the manifests the report shows (:func:`finished_manifests`), and the
recipe, the part of a config that decides the outputs, with which a step refuses to mix
outputs made otherwise (:func:`recipe_of`, :func:`recipe_differences`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from igcam_cli.artifacts.claims import made_outputs, read_claim
from igcam_cli.artifacts.io import jsonable, package_versions, read_json, write_json
from igcam_cli.artifacts.layout import RunDir
from igcam_cli.artifacts.shards import Shard
from igcam_cli.errors import IgcamError

# Options that change how a step runs but not what it writes.
# The device and --batch-images change float rounding only (tests/test_batching.py: at most
# one float16 step in the CAM files). --store-stride changes how a CAM file keeps its maps, not
# what a reader gets beyond resampling (mIoU within 0.01 at 4 on voc-real), and every file says
# its own size: a folder made at full size before the option existed is resumed at stride 4.
NO_OUTPUT_EFFECT = frozenset({"run", "out", "overwrite", "shard", "strict", "wait", "workers",
                              "io_workers", "device", "batch_images", "store_stride"})
DAMAGED = "delete it (or its folder) and rerun the step that wrote it"
WHOLE = Shard()  # an unsharded step


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

    def save(self, folder: Path, shard: Shard = WHOLE, filename: str | None = None) -> Path:
        """Write the manifest (``filename`` overrides the shard's default name)."""
        return write_json(folder / (filename or shard.manifest_name()), self.document())

    def save_work(self, folder: Path, shard: Shard = WHOLE) -> Path:
        """:meth:`save`, unless this run did nothing but skip finished images of a folder whose
        manifest has the same recipe: that manifest, with the timings of the work that made
        the files, stays (a rerun would otherwise record 0.05 s for 20 images)."""
        path = folder / shard.manifest_name()
        if not self.counts.get("processed") and not self.counts.get("failed") \
                and path.is_file() and "recipe" in self.extra:
            old = read_json(path, "manifest", DAMAGED)
            if old.get("complete") and old.get("recipe") == self.extra["recipe"]:
                return path
        return self.save(folder, shard)

    def document(self) -> dict[str, Any]:
        """The manifest's content, timed now."""
        self.timings["total_s"] = round(time.perf_counter() - self._start, 3)
        return {
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
        }


def read_manifest(folder: Path, unfinished_if_damaged: bool = False) -> dict[str, Any] | None:
    """The manifest of a finished step (unsharded, or its shards merged), or None if the step
    has not completed. A damaged one is a one-line error naming it, since a step must neither
    trust nor silently redo a folder it cannot read the record of; ``unfinished_if_damaged``
    makes it None instead, for a caller that redoes the folder anyway (lpcam's prototypes)."""
    path = RunDir.manifest(folder)
    if not path.is_file() or any((claim := read_claim(c)) is not None and made_outputs(claim)
                                 for c in RunDir.unfinished_claims(folder)):
        return None  # a run writes the folder now, or one stopped before it finished
    try:
        manifest = read_json(path, "manifest", DAMAGED)
    except IgcamError:
        if unfinished_if_damaged:
            return None
        raise
    return manifest if manifest.get("complete") else None


def finished_manifests(folder: Path, problems: list[str]) -> list[dict[str, Any]]:
    """A folder's finished manifests, for a reader that goes on past damaged files (the
    report), noting them in ``problems``: ``manifest.json`` alone when there is one (a whole
    run, or its shards merged, which it sums), else every shard's."""
    def finished(path: Path) -> dict[str, Any] | None:
        try:
            manifest = read_json(path, "manifest", "left out")
        except IgcamError as error:
            problems.append(str(error))
            return None
        return manifest if manifest.get("complete") else None

    whole = RunDir.manifest(folder)
    if whole.is_file() and (manifest := finished(whole)) is not None:
        return [manifest]
    return [m for path in RunDir.manifests(folder) if path != whole
            if (m := finished(path)) is not None]


def ran_in(actual: Path, recorded: Any) -> Path:
    """The directory a step ran in, from where its output is (``actual``) and how the step
    named it (``recorded``, e.g. ``bench/runs/x``); the current directory when unknown.
    Paths in manifests are as the user typed them, so this keeps a moved run readable."""
    if isinstance(recorded, str) and not Path(recorded).is_absolute():
        parts, found = Path(recorded).parts, actual.resolve().parts
        if parts and ".." not in parts and found[-len(parts):] == parts:
            return Path(*found[:-len(parts)])
    return Path.cwd()


def recorded_path(recorded: str, origin: Path) -> Path:
    """A path as a manifest recorded it, for a step that ran in ``origin``."""
    path = Path(recorded)
    return path if path.is_absolute() else (origin / path).resolve()


@dataclass(frozen=True)
class MadeBy:
    """What made a step folder, as its manifest says."""

    step: str
    # The CAM method: a cam folder's, or that of the CAMs a refine folder's masks come from.
    method: str | None = None
    refiners: str | None = None  # a refine folder's chain


def made_by(folder: Path) -> MadeBy | None:
    """The step (and CAM method, refiner chain) that made ``folder``, from its manifest; None
    while it has no finished one (a step still running, shards not merged, maps that no step
    of this run made). Masks come from the CAM method of the folder their manifest names,
    when it is still where it was (or moved with the run); masks refined from another
    refine's saved maps (``run``'s walks, then crf) are made by both chains, joined."""
    return _made_by(folder, frozenset())


def _made_by(folder: Path, seen: frozenset[Path]) -> MadeBy | None:
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    step = str(manifest.get("step"))
    if step == "cam":
        return MadeBy(step, method=_method(manifest))
    if step != "refine":
        return MadeBy(step)
    config, inputs = (manifest.get(key) for key in ("config", "inputs"))
    config = config if isinstance(config, dict) else {}
    cams = inputs.get("cams") if isinstance(inputs, dict) else None
    refiners = _method(manifest)
    if not isinstance(cams, str):
        return MadeBy(step, refiners=refiners)
    source = _in_this_run(cams, folder, config)
    walked = RunDir.refined_by(source)
    if walked is not None and walked.resolve() not in seen | {folder.resolve()}:
        before = _made_by(walked, seen | {folder.resolve()})
        if before is not None and before.step == "refine":
            chain = "+".join(c for c in (before.refiners, refiners) if c is not None)
            return MadeBy(step, method=before.method, refiners=chain or None)
    made = read_manifest(source)
    method = _method(made) if made is not None and made.get("step") == "cam" else None
    return MadeBy(step, method=method, refiners=refiners)


def _in_this_run(recorded: str, folder: Path, config: dict[str, Any]) -> Path:
    """Where a path that a step's manifest recorded is now: inside the run directory that
    ``folder`` lies in when it was inside the recorded ``--run`` (so a moved or copied run
    reads its own folders), else as recorded from where the step ran."""
    run, out = config.get("run"), config.get("out")
    if isinstance(run, str) and (out is None or Path(str(out)).parent == Path(run)) \
            and Path(recorded).is_relative_to(run):
        inside = folder.parent / Path(recorded).relative_to(run)
        if inside.is_dir():
            return inside
    return recorded_path(recorded, ran_in(folder, out) if isinstance(out, str)
                         else ran_in(folder.parent, run))


def _method(manifest: dict[str, Any]) -> str | None:
    """The ``--method`` a manifest records (a CAM method, or refine's chain)."""
    config = manifest.get("config")
    method = config.get("method") if isinstance(config, dict) else None
    return method if isinstance(method, str) else None


def recipe_of(record: StepRecord, also_exempt: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What a step's outputs depend on: its config without the options that change none of
    them, and the hashes of its inputs (the classifier)."""
    recipe = {k: v for k, v in record.config.items() if k not in NO_OUTPUT_EFFECT | also_exempt}
    recipe.update({k: v for k, v in record.inputs.items() if k.endswith("sha256")})
    return recipe


def recipes(folder: Path) -> dict[Path, Any]:
    """The recipe of every manifest in ``folder`` (whole or a shard's; None in one written
    before recipes) and of every run's claim on it (running, or stopped), by file."""
    made = {path: read_json(path, "manifest", DAMAGED).get("recipe")
            for path in RunDir.manifests(folder)}
    for path in RunDir.unfinished_claims(folder):
        if (claim := read_claim(path)) is not None:
            made[path] = claim.get("recipe")
    return made


def option_defaults(config_type: type) -> dict[str, Any]:
    """A config class's option defaults as a manifest records them (nested ones nested)."""
    defaults: dict[str, Any] = {}
    for item in fields(config_type):
        if item.metadata.get("nested"):
            defaults[item.name] = option_defaults(item.default_factory)  # type: ignore[arg-type]
        elif item.default is not MISSING:
            defaults[item.name] = jsonable(item.default)
        elif item.default_factory is not MISSING:
            defaults[item.name] = jsonable(item.default_factory())
    return defaults


def recipe_differences(recipe: dict[str, Any], other: dict[str, Any],
                       defaults: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """The keys on which two recipes disagree (``dataset.split`` inside a nested one). A key
    one recipe lacks counts as its option's default in ``defaults`` there (None if it has
    none): an option added since a manifest was written (``--precision``) leaves the folders
    made without it valid while it keeps its default."""
    defaults = defaults or {}
    differs = []
    for key in recipe.keys() | other.keys():
        mine, theirs = (side.get(key, defaults.get(key)) for side in (recipe, other))
        if isinstance(mine, dict) and isinstance(theirs, dict):
            nested = defaults.get(key)
            differs += recipe_differences(mine, theirs, nested if isinstance(nested, dict)
                                          else None, f"{prefix}{key}.")
        elif mine != theirs:
            differs.append(prefix + key)
    return sorted(differs)
