"""The run directory: its layout, every artifact's reader and writer, manifests and shards.

This package is the one home of the run-directory contract (ARCHITECTURE.md lists every
artifact, its keys and dtypes), by concern:

- :mod:`~igcam_cli.artifacts.layout`: :class:`RunDir`, every folder and file name and the
  paths made of them; the only code that turns a step, method or refiner chain into a path.
- :mod:`~igcam_cli.artifacts.io`: atomic writes, temporary files, every artifact's reader and
  writer, checkpoints, hashing.
- :mod:`~igcam_cli.artifacts.shards`: ``--shard I/N`` and merging shard manifests.
- :mod:`~igcam_cli.artifacts.claims`: a per-image step's claim on its folder (one writer, and
  the recipe of an unfinished run).
- :mod:`~igcam_cli.artifacts.manifests`: ``StepRecord``, reading manifests back
  (:func:`read_manifest`, :func:`made_by`) and comparing recipes.

Steps and parts import from here; no step builds a path or parses a file another step wrote.
"""

from igcam_cli.artifacts.claims import Claim, holder, read_claim
from igcam_cli.artifacts.io import (
    FILE_MODE,
    STALE_ELSEWHERE_S,
    TMP_PREFIX,
    atomic_write,
    enlarge,
    ensure_dir,
    fingerprint,
    influence_maps,
    jsonable,
    package_versions,
    read_cam,
    read_checkpoint,
    read_influence_map,
    read_json,
    read_npz,
    read_proposals,
    read_prototypes,
    read_scores,
    read_torch,
    remove_stale_temps,
    replaceable,
    sha256_file,
    write_bytes,
    write_cam,
    write_image,
    write_influence_map,
    write_json,
    write_npz,
    write_proposals,
    write_prototypes,
    write_scores,
    write_torch,
)
from igcam_cli.artifacts.layout import (
    AFFINITY_FILE,
    CLASSIFIER_FILE,
    DEFAULT_REFINER,
    MANIFEST_FILE,
    MAPS_DIR,
    METRICS_FILE,
    PLAIN_CAM,
    PROTOTYPES_FILE,
    REPORT_FILE,
    RUN_CAM_METHOD,
    SCORES_FILE,
    SEGMENTER_FILE,
    SHARD_MANIFEST,
    SOLUTION_FILE,
    STEP_NAME,
    RunDir,
)
from igcam_cli.artifacts.manifests import (
    NO_OUTPUT_EFFECT,
    MadeBy,
    StepRecord,
    finished_manifests,
    made_by,
    option_defaults,
    ran_in,
    read_manifest,
    recipe_differences,
    recipe_of,
    recipes,
    recorded_path,
)
from igcam_cli.artifacts.shards import Shard, merge_finished_shards, merge_shards

shard_manifests = RunDir.shard_manifests  # the name before RunDir owned it

__all__ = [
    "AFFINITY_FILE", "CLASSIFIER_FILE", "DEFAULT_REFINER", "FILE_MODE", "MANIFEST_FILE",
    "MAPS_DIR", "METRICS_FILE", "NO_OUTPUT_EFFECT", "PLAIN_CAM", "PROTOTYPES_FILE",
    "REPORT_FILE", "RUN_CAM_METHOD", "SCORES_FILE", "SEGMENTER_FILE", "SHARD_MANIFEST",
    "SOLUTION_FILE", "STALE_ELSEWHERE_S",
    "STEP_NAME", "TMP_PREFIX", "Claim", "MadeBy", "RunDir", "Shard", "StepRecord",
    "atomic_write", "enlarge", "ensure_dir", "finished_manifests", "fingerprint", "holder",
    "influence_maps", "jsonable",
    "made_by", "merge_finished_shards", "merge_shards", "option_defaults", "package_versions",
    "ran_in", "read_cam", "read_checkpoint", "read_claim", "read_influence_map", "read_json",
    "read_manifest",
    "read_npz", "read_proposals", "read_prototypes", "read_scores", "replaceable", "read_torch",
    "recipe_differences", "recipe_of", "recipes", "recorded_path", "remove_stale_temps",
    "shard_manifests", "sha256_file", "write_bytes", "write_cam", "write_image",
    "write_influence_map", "write_json", "write_npz", "write_proposals", "write_prototypes",
    "write_scores", "write_torch",
]
