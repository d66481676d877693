"""Instance guidance: spread the class evidence of object proposals over whole boxes.

A CAM lights up an object's most discriminative part. A Selective Search box that contains the
whole object is scored by the classifier as a unit, and its score is spread over the entire
box, so the part the CAM missed gets evidence too. Per image and labelled class c:

1. score the best-ranked ``candidates`` proposals: either by cropping each box out of the image
   and classifying the crop (``crop``: the classifier sees the object at its own scale), or by
   RoI-aligning the backbone's stride-16 features and applying the 1x1 classifier (``roi``:
   cheap, but for a linear head this is just the box's mean raw CAM, so it adds little);
2. weight box b by ``p_bc * mean(CAM_c inside b)``: the class probability of the box times how
   densely the CAM supports it there, which keeps large boxes that are mostly background from
   winning, optionally times the mean spatial influence inside the box;
3. add the ``top`` best boxes' weights over their areas (boxes that agree reinforce each
   other), divide by the maximum, and blend with the CAM:
   ``(1 - box_weight) * CAM + box_weight * evidence``, renormalised to a peak of 1.

The defaults were chosen on ../shared/data/coco128-voc (bench/RESULTS.md): scoring the best 50
proposals beat 30, 70, 100 and 200 (27.9 vs 26.6-27.7 seed mIoU), spreading the top 20 per class
was within 0.5 of 10-40, and a box weight of 0.5 beat 0.4 and 0.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align

from igcam_cli.artifacts import RunDir, influence_maps, read_influence_map, read_proposals
from igcam_cli.datasets import Sample
from igcam_cli.errors import IgcamError, ImageProblem
from igcam_cli.methods.base import CamMethod
from igcam_cli.models import CamNet
from igcam_cli.options import option
from igcam_cli.transforms import normalise

BOX_SCORES = ("crop", "roi")


@dataclass(frozen=True)
class GuidanceOptions:
    proposals: Path | None = option(None, "Proposal folder (default RUN/propose).")
    box_scores: str = option(
        "crop", "crop (classify each box's crop) or roi (RoI-align the feature map; faster, "
                "weaker).", choices=BOX_SCORES)
    candidates: int = option(50, "Best-ranked proposals scored per image.", min=1)
    top: int = option(20, "Boxes per class whose evidence is spread.", min=1)
    box_weight: float = option(0.5, "Share of the box evidence in the fused map.", min=0, max=1)
    crop_size: int = option(192, "Side of the box crops in crop mode.", min=32)
    batch: int = 50  # crops per forward pass



@torch.inference_mode()
def box_probabilities(model: CamNet, image: torch.Tensor, boxes: torch.Tensor,
                      config: GuidanceOptions) -> torch.Tensor:
    """(N, C) class probabilities of every box; ``image`` (3, H, W) in [0, 1]."""
    rois = [boxes.float()]
    if config.box_scores == "crop":
        size = (config.crop_size, config.crop_size)
        crops = roi_align(image[None], rois, output_size=size, spatial_scale=1.0,
                          sampling_ratio=2, aligned=True)
        logits = torch.cat([model(c.contiguous(memory_format=torch.channels_last))
                            for c in crops.split(config.batch)])
    else:
        features = model.features(image[None])
        logits = model.logits(roi_align(features, rois, output_size=(4, 4),
                                        spatial_scale=features.shape[-1] / image.shape[-1],
                                        sampling_ratio=2, aligned=True))
    return torch.sigmoid(logits.float())


def box_means(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(K, N) mean of each of K maps (K, H, W) inside each box (x1, y1, x2, y2 exclusive)."""
    integral = torch.nn.functional.pad(maps.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    x1, y1, x2, y2 = boxes.long().unbind(1)
    sums = (integral[:, y2, x2] - integral[:, y1, x2] - integral[:, y2, x1]
            + integral[:, y1, x1])
    area = ((x2 - x1) * (y2 - y1)).clamp_min(1)
    return (sums / area).float()


def spread(boxes: torch.Tensor, weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) sum of ``weights`` over their boxes, by a 2-D difference array and two cumsums."""
    diff = torch.zeros(height + 1, width + 1, dtype=torch.float64, device=boxes.device)
    x1, y1, x2, y2 = boxes.long().unbind(1)
    w = weights.double()
    for ys, xs, sign in ((y1, x1, 1), (y1, x2, -1), (y2, x1, -1), (y2, x2, 1)):
        diff.index_put_((ys, xs), sign * w, accumulate=True)
    return diff.cumsum(0).cumsum(1)[:height, :width].float()


def instance_guided(model: CamNet, image: torch.Tensor, cams: torch.Tensor, classes: list[int],
                    boxes: torch.Tensor, config: GuidanceOptions,
                    influence: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse max-normalised ``cams`` (K, H, W) of ``classes`` with their proposals' evidence.

    ``boxes`` (N, 4) are the image's proposals, best first; ``influence`` (K, H, W) optional
    spatial influence maps of the same classes.
    """
    if not classes or len(boxes) == 0:
        return cams
    boxes = boxes[:config.candidates].to(cams.device)
    probs = box_probabilities(model, image, boxes, config)[:, classes].T  # (K, N)
    weights = probs * box_means(cams, boxes)
    if influence is not None:
        weights = weights * box_means(influence.to(cams.device), boxes)
    height, width = cams.shape[1:]
    evidence = []
    for row in weights:
        best = row.argsort(descending=True)[:config.top]
        evidence.append(spread(boxes[best], row[best], height, width))
    fused = (1 - config.box_weight) * cams + config.box_weight * normalise(torch.stack(evidence))
    return normalise(fused)


class InstanceGuided(CamMethod):
    """CAM fused with the evidence of object proposals (needs `igcam propose`; --influence also
    weights the boxes by the spatial influence maps)."""

    name = "igcam"
    Options = GuidanceOptions

    def setup(self) -> None:
        context = self.context
        self.proposals = self.options.proposals or context.run.step("propose")
        if not self.proposals.is_dir():
            raise IgcamError(f"--method igcam needs proposals: {self.proposals} not found "
                             "(run `igcam propose` first or pass --igcam-proposals DIR)")
        self.maps = None if context.influence is None else influence_maps(context.influence)

    def __call__(self, sample: Sample, image: torch.Tensor, cams: torch.Tensor,
                 classes: list[int]) -> torch.Tensor:
        path = RunDir.image_maps(self.proposals, sample.id)
        if not path.is_file():
            raise ImageProblem(f"{sample.image}: no proposals in {self.proposals}")
        boxes = torch.from_numpy(read_proposals(path)["boxes"])
        influence = None
        if self.maps is not None:
            stored = read_influence_map(RunDir.image_maps(self.maps, sample.id))
            known = stored["classes"].tolist()
            if not set(classes) <= set(known):
                raise ImageProblem(f"{sample.image}: its influence map has classes {known}, "
                                   f"not {classes}")
            rows = [known.index(c) for c in classes]
            influence = torch.from_numpy(stored["maps"][rows].astype(np.float32))
        return instance_guided(self.context.model, image, cams, classes, boxes, self.options,
                               influence)
