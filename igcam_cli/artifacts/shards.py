"""Sharded steps: ``--shard I/N`` and merging the N shard manifests of a folder into one.

Each shard of an array job (or torchrun process) writes its own manifest beside the others'
outputs; the last one to finish, or ``igcam merge-shards``, merges them into the
``manifest.json`` an unsharded run would have written.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from igcam_cli.artifacts.io import read_json, write_json
from igcam_cli.artifacts.layout import RunDir, shard_manifest_name
from igcam_cli.errors import IgcamError


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
        return shard_manifest_name(self.index, self.count)



# Keys whose shards' values combine (or are per shard by nature) rather than agree.
_COMBINED = frozenset({"complete", "created", "argv", "counts", "warnings", "timings"})


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
    splits = RunDir.shard_manifests(folder)
    if not splits:
        raise IgcamError(f"{folder} holds no shard manifests (manifest.shard-I-of-N.json)")
    if len(splits) > 1:
        raise IgcamError(f"{folder} holds shard manifests of several splits (of "
                         f"{', of '.join(map(str, sorted(splits)))}): delete those of the "
                         "split that is not current")
    ((count, paths),) = splits.items()
    if len(paths) < count:  # never a list as long as a count read from a file name
        missing = itertools.islice((i for i in range(count) if i not in paths), 3)
        raise IgcamError(f"{folder}: {count - len(paths)} of {count} shards missing, e.g. "
                         f"{', '.join(f'{i}/{count}' for i in missing)} (no "
                         f"manifest.shard-I-of-{count}.json): run them, then merge again")
    manifests = [read_json(paths[index], "shard manifest", "rerun that shard")
                 for index in range(count)]
    for index, manifest in enumerate(manifests):
        if not manifest.get("complete"):
            raise IgcamError(f"shard manifest {paths[index]} is not a finished step's: rerun "
                             "that shard")
        counts, timings = manifest.get("counts") or {}, manifest.get("timings") or {}
        if not isinstance(counts, dict) or not isinstance(timings, dict) \
                or not all(isinstance(v, int) for v in counts.values()) \
                or not isinstance(timings.get("total_s", 0.0), int | float):
            raise IgcamError(f"shard manifest {paths[index]} is damaged (counts or timings "
                             "that are not numbers): rerun that shard")
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
    return write_json(RunDir.manifest(folder), merged)


def merge_finished_shards(folder: Path, count: int) -> Path | None:
    """:func:`merge_shards` once all ``count`` shards of a split are there, else None: the
    last shard of an array job (or torchrun's last process) to finish merges them."""
    if len(RunDir.shard_manifests(folder).get(count, {})) < count:
        return None
    return merge_shards(folder)
