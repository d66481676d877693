"""``igcam merge-shards``: one ``manifest.json`` for the folders that shards filled.

A cluster array job (``--shard I/N``) or a torchrun job of a per-image step ends with N
``manifest.shard-I-of-N.json`` in one folder. The last shard to finish merges them by itself
(``runner.ImageStep.finish``); this command does it explicitly - after shards that finished
together, or to check that none is missing - for one step folder or every one of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcam_cli import options
from igcam_cli.artifacts import RunDir
from igcam_cli.artifacts import merge_shards as merge_folder
from igcam_cli.errors import IgcamError
from igcam_cli.options import option
from igcam_cli.runner import console


@dataclass
class MergeConfig:
    folder: Path = option(
        options.REQUIRED, "A step folder holding manifest.shard-I-of-N.json files (e.g. "
                          "RUN/cam), or a run directory: then every folder in it that holds "
                          "them.", short="-f")


def merge_shards(config: MergeConfig) -> list[Path]:
    """Check each sharded folder's shards and write its merged manifest; returns them."""
    if not config.folder.is_dir():
        raise IgcamError(f"folder {config.folder} not found")
    folders = [config.folder] if RunDir.shard_manifests(config.folder) else sorted(
        p for p in config.folder.iterdir() if p.is_dir() and RunDir.shard_manifests(p))
    if not folders:
        raise IgcamError(f"no shard manifests (manifest.shard-I-of-N.json) in {config.folder} "
                         "or its folders")
    merged = [merge_folder(folder) for folder in folders]
    for path in merged:
        console.print(f"merge-shards: {path}")
    return merged
