"""``igcam status RUN``: where a run got to, without rerunning anything or opening the report.

One row per step folder of the run: its state (done, running, stopped, shards, damaged, no
manifest), the files and counts it holds, the time its work took and its warnings; ``--json``
prints the same as one JSON object for scripts. The states come from the folder's manifests
and claims (``artifacts.Claim``): a claim held by a process is a step running now, one left
behind a step that stopped before it finished.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from igcam_cli import options
from igcam_cli.artifacts import RunDir, holder, read_claim, read_json
from igcam_cli.errors import IgcamError
from igcam_cli.options import option


@dataclass
class StatusConfig:
    run: Path = options.run_dir()
    json: bool = option(False, "Print one JSON object (folder -> state) instead of a table.")


def _files(folder: Path) -> int:
    """Per-image files: of the folder's kind, or of either kind in a folder named otherwise."""
    kind = RunDir.kind(folder)
    return sum(len(RunDir.image_files(folder, k)) for k in ((kind,) if kind else
                                                            ("cams", "masks")))


def folder_state(folder: Path) -> dict[str, Any]:
    """What a step folder says about itself."""
    state: dict[str, Any] = {"files": _files(folder)}
    claims = RunDir.unfinished_claims(folder)
    running = [h for c in claims if (h := holder(c)) is not None]
    if running:
        who = running[0]
        return {**state, "state": "running", "step": who.get("step"),
                "detail": f"pid {who.get('pid', '?')} on {who.get('host', '?')} since "
                          f"{who.get('started', '?')}"}
    stopped = [c for c in claims if read_claim(c) is not None]
    whole = RunDir.manifest(folder)
    try:
        manifest = read_json(whole, "manifest", "") if whole.is_file() else None
    except IgcamError as error:
        return {**state, "state": "damaged", "detail": str(error)}
    if stopped:
        claim = read_claim(stopped[0]) or {}
        return {**state, "state": "stopped", "step": claim.get("step"),
                "detail": "unfinished: rerun its command to resume"}
    if manifest is not None and manifest.get("complete"):
        counts = manifest.get("counts") or {}
        return {**state, "state": "done", "step": manifest.get("step"), "counts": counts,
                "seconds": (manifest.get("timings") or {}).get("total_s"),
                "warnings": len(manifest.get("warnings") or [])}
    shards = RunDir.shard_manifests(folder)
    if shards:
        count = max(shards)
        return {**state, "state": "shards",
                "detail": f"{len(shards[count])} of {count} shards done; then merge-shards"}
    return {**state, "state": "no manifest"}


def status(config: StatusConfig) -> dict[str, dict[str, Any]]:
    """Every step folder's state, printed; returns them by folder name."""
    if not config.run.is_dir():
        raise IgcamError(f"run directory {config.run} not found")
    states = {p.name: folder_state(p) for p in sorted(config.run.iterdir()) if p.is_dir()}
    if config.json:
        sys.stdout.write(json.dumps(states, indent=2, sort_keys=True) + "\n")
        return states
    table = Table(title=str(config.run), title_justify="left")
    for column in ("folder", "state", "files", "counts", "time", "warnings", "detail"):
        table.add_column(column, justify="right" if column in ("files", "time") else "left")
    for name, state in states.items():
        counts = ", ".join(f"{k} {v}" for k, v in (state.get("counts") or {}).items() if v)
        seconds = state.get("seconds")
        table.add_row(name, state["state"], str(state["files"]), counts,
                      f"{seconds:.0f} s" if isinstance(seconds, int | float) else "",
                      str(state.get("warnings") or ""), state.get("detail", ""))
    Console(markup=False, highlight=False).print(table)  # stdout: it is the command's output
    return states
