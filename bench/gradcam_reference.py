"""igcam's gradient-family maps against pytorch-grad-cam's, on one classifier and one set of photos.

pytorch-grad-cam is the reference people know; it is not a dependency of igcam (its wheel pulls
opencv-python-headless, which would hide igcam's cv2.ximgproc), so it goes into a scratch folder
of its own, without dependencies:

    pip install --no-deps --target /tmp/pgc grad-cam ttach scipy tqdm
    python bench/gradcam_reference.py --checkpoint RUN/train-cls/classifier.pt \
        --voc ../shared/data/voc-real --reference /tmp/pgc

It imports scikit-learn only for methods not compared here (KPCA-CAM, deep feature
factorisation), so two empty modules stand in for it. Both sides see the same image at one
scale without flips, on the classifier's feature map (the backbone's output: a plain, not an
FPN, classifier). pytorch-grad-cam min-max normalises its maps, so igcam's are too before they
are compared. Per method: the Pearson correlation and the largest absolute difference between
the two maps of each labelled class of each image, as the mean and the worst over them.
Score-CAM runs on fewer images with every channel (igcam's default uses the 32 of largest
variance; the reference has no such option).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from igcam_cli.artifacts import RunDir
from igcam_cli.datasets import DatasetSpec, load_dataset
from igcam_cli.images import read_image
from igcam_cli.methods import METHODS, Chain, MethodContext
from igcam_cli.models import CamNet, load_classifier
from igcam_cli.transforms import to_tensor

# igcam's method -> pytorch-grad-cam's class name
PAIRS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
         "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigencam": "EigenCAM",
         "scorecam": "ScoreCAM"}


def import_reference(folder: Path) -> types.ModuleType:
    """pytorch_grad_cam from ``folder``, with empty stand-ins for scikit-learn."""
    sys.path.insert(0, str(folder))
    os.environ.setdefault("TQDM_DISABLE", "1")  # Score-CAM's progress bars
    for name in ("sklearn", "sklearn.decomposition"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules.setdefault(name, module)
    decomposition = sys.modules["sklearn.decomposition"]
    decomposition.KernelPCA = decomposition.NMF = object  # type: ignore[attr-defined]
    import pytorch_grad_cam

    return pytorch_grad_cam


class FromNormalised(nn.Module):
    """The classifier on an already normalised image, so that Score-CAM's masks act where
    igcam's do (a masked-out pixel is the mean colour) and the hooked backbone output is the
    feature map igcam's methods read."""

    def __init__(self, model: CamNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.backbone(normalised))


def min_max(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / np.maximum(maps.max(axis=(-2, -1), keepdims=True) - low, 1e-7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--voc", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=Path("/tmp/pgc"))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--scorecam-images", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--methods", default=",".join(PAIRS), help="comma list of PAIRS keys")
    args = parser.parse_args()

    reference = import_reference(args.reference)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device = torch.device("cpu")
    model, _ = load_classifier(args.checkpoint, device)
    if model.neck is not None:
        raise SystemExit("a plain classifier is needed (the reference hooks one module)")
    dataset = load_dataset(DatasetSpec(voc=args.voc))
    samples = [s for s in dataset.samples if s.labels][: args.images]
    wrapped = FromNormalised(model).eval()
    channels = model.backbone.out_channels
    options = {"scorecam": METHODS["scorecam"].Options(channels=channels, batch=64)}
    with tempfile.TemporaryDirectory() as scratch:
        context = MethodContext(model, device, (1.0,), False, dataset, RunDir(Path(scratch)),
                                args.checkpoint, None, False)
        print(f"{len(samples)} photos of {args.voc} (long side {args.max_side}), "
              f"{args.checkpoint}, pytorch-grad-cam from {args.reference}")
        print("| method | maps | correlation mean | worst | max abs difference mean | worst |")
        print("|---|---|---|---|---|---|")
        for name in args.methods.split(","):
            theirs = PAIRS[name]
            ours = Chain([name], context, options)
            cam = getattr(reference, theirs)(model=wrapped, target_layers=[model.backbone])
            count = args.scorecam_images if name == "scorecam" else len(samples)
            correlations, differences = [], []
            for sample in samples[:count]:
                image = to_tensor(read_image(sample.image, max_side=args.max_side))
                classes = list(sample.labels or ())
                mine = ours(sample, image, torch.zeros(len(classes), *image.shape[1:]),
                            classes).numpy()
                normalised = model.normalize(image[None])
                for row, label in enumerate(classes):
                    other = cam(input_tensor=normalised,
                                targets=[ClassifierOutputTarget(label)])[0]
                    a, b = min_max(mine[row]).ravel(), min_max(other).ravel()
                    correlations.append(float(np.corrcoef(a, b)[0, 1]))
                    differences.append(float(np.abs(a - b).max()))
            print(f"| {name} | {len(correlations)} | {np.mean(correlations):.4f} | "
                  f"{np.min(correlations):.4f} | {np.mean(differences):.4f} | "
                  f"{np.max(differences):.4f} |", flush=True)


if __name__ == "__main__":
    main()
