"""Where pretrained weight files are looked for, and loading them safely against the manifest.

The manifest (``weights_manifest.json`` in this package) ships as package data, so a normal
``pip install`` checks hashes too; it used to sit in the checkout's ``weights/`` folder, which
only an editable install could see, and other installs skipped the SHA-256 check silently.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from igcam_cli.artifacts import read_torch, sha256_file
from igcam_cli.errors import IgcamError

MANIFEST = "weights_manifest.json"


def weights_dir() -> Path:
    """The folder a backbone's weight file is looked up in, by the name the manifest gives.

    ``$IGCAM_WEIGHTS_DIR`` when set; else the ``weights/`` folder of a source checkout (the
    package runs from one: editable install or ``python -m`` in the repo); else, for an
    installed package, the per-user ``$XDG_CACHE_HOME/igcam/weights`` (``~/.cache/igcam/weights``
    by default), which stays the same whatever folder igcam is run from.
    """
    env = os.environ.get("IGCAM_WEIGHTS_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "igcam" / "weights"


def weights_manifest() -> dict[str, dict[str, str]]:
    """Backbone name -> ``file``, ``sha256`` (full or torchvision's leading digits), ``source``."""
    return json.loads(resources.files("igcam_cli.backbones").joinpath(MANIFEST).read_text())


def load_state_file(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Load a weight file safely, checking it against the manifest when its name is listed."""
    if not path.is_file():
        raise IgcamError(f"weights file {path} not found")
    entry = weights_manifest().get(backbone, {})
    if entry.get("file") == path.name and entry.get("sha256"):
        if not sha256_file(path).startswith(entry["sha256"]):
            raise IgcamError(f"weights file {path}: SHA-256 does not match igcam's weights "
                             f"manifest ({MANIFEST}; corrupt or wrong download)")
    state = read_torch(path, "weights file")  # one line; never torch's advice to unpickle
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise IgcamError(f"weights file {path} does not hold a state dict")
    return state
