"""The semantic segmentation network of ``train-seg`` and ``predict``, its loss and checkpoints.

:class:`SegNet` is one of igcam's registered backbones (stride 16, frozen BatchNorm, its own
input normalisation) under a torchvision segmentation head: ``deeplab``
(:class:`torchvision.models.segmentation.deeplabv3.DeepLabHead`, ASPP over the stride-16 map)
or ``lraspp`` (:class:`torchvision.models.segmentation.lraspp.LRASPPHead`, the stride-16 map
gated and added to a stride-8 one: lighter, for CPUs). It predicts background + C classes,
upsampled to the input. Its training target is a pseudo-mask: 0 background, 1..C classes,
255 ignored (:func:`segmentation_loss`). :func:`label_probabilities` is the inference that
``predict`` runs: several scales and their flips averaged, and classes an image is known not
to hold suppressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from igcam_cli.artifacts import read_checkpoint
from igcam_cli.backbones import Backbone, build_backbone
from igcam_cli.errors import IgcamError
from igcam_cli.images import IGNORE
from igcam_cli.transforms import resize, scaled_size

SEGMENTER_FORMAT = "igcam-segmenter/1"
HEADS = ("deeplab", "lraspp")
LOSSES = ("ce", "balanced")
# DeepLabv3's atrous rates at output stride 16 (torchvision's default 12, 24, 36 is for stride
# 8, where the same rates cover half the field).
ATROUS_RATES = (6, 12, 18)
LRASPP_CHANNELS = 128  # torchvision's lraspp_mobilenet_v3_large


class SegNet(nn.Module):
    """Backbone + torchvision segmentation head: images in [0, 1] -> (B, C + 1, H, W) logits."""

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "deeplab") -> None:
        super().__init__()
        if head not in HEADS:
            raise IgcamError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
        self.backbone, self.head_name, self.num_classes = backbone, head, num_classes
        if head == "deeplab":
            self.head: nn.Module = DeepLabHead(backbone.out_channels, num_classes + 1,
                                               ATROUS_RATES)
        else:
            self.head = LRASPPHead(backbone.stage_channels[1], backbone.stage_channels[-1],
                                   num_classes + 1, LRASPP_CHANNELS)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        if self.head_name == "deeplab":
            logits = self.head(self.backbone(x))
        else:
            stages = self.backbone.stages(x)
            logits = self.head({"low": stages[1], "high": stages[-1]})
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                             align_corners=False)

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
        """The backbone (less its frozen stem) at ``lr``, the new head at ``lr * head_lr_mult``."""
        frozen = {id(p) for p in self.backbone.frozen_parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) not in frozen)
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        return [{"params": body, "lr": lr, "weight_decay": weight_decay},
                {"params": list(self.head.parameters()), "lr": lr * head_lr_mult,
                 "weight_decay": weight_decay}]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      balanced: bool = False) -> torch.Tensor:
    """Cross-entropy over the pixels whose target is not 255 (``IGNORE``).

    ``balanced``: every class present in the batch's targets weighs the same, whatever its
    pixel count (the mean of each class's mean pixel loss), so that background, which covers
    most pixels of most pseudo-masks, does not drown small objects. A batch without one
    labelled pixel gives a zero loss that still reaches every parameter (DDP expects a
    gradient from each process).
    """
    target = target.long()
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    if not balanced:
        return pixel[valid].mean()
    labels = target[valid]
    present = labels.unique()
    counts = torch.bincount(labels, minlength=int(present.max()) + 1).to(pixel.dtype)
    sums = torch.zeros_like(counts).index_add_(0, labels, pixel[valid])
    return (sums[present] / counts[present]).mean()


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) pixel counts, rows target, columns argmax prediction; 255 left out."""
    target = target.long()
    valid = target != IGNORE
    index = target[valid] * size + logits.argmax(1)[valid]
    return torch.bincount(index, minlength=size * size).reshape(size, size).cpu()


def pixel_scores(conf: torch.Tensor) -> tuple[float, float]:
    """Pixel accuracy and mIoU (over the classes with a non-empty union) of a confusion."""
    conf = conf.double()
    total = float(conf.sum())
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    seen = union > 0
    accuracy = float(tp.sum()) / total if total else 0.0
    miou = float((tp[seen] / union[seen]).mean()) if seen.any() else 0.0
    return accuracy, miou


def save_segmenter_payload(model: SegNet, backbone: str, class_names: Sequence[str],
                           **extra: object) -> dict:
    """What a segmenter checkpoint holds; only tensors and plain types (weights_only-safe)."""
    return {"format": SEGMENTER_FORMAT, "backbone": backbone, "head": model.head_name,
            "class_names": list(class_names), "model": model.state_dict(), **extra}


def load_segmenter(path: Path, device: torch.device) -> tuple[SegNet, dict]:
    """Rebuild a trained segmenter from its checkpoint without unpickling code."""
    payload = read_checkpoint(path, SEGMENTER_FORMAT, "segmenter checkpoint", "train-seg")
    try:
        model = SegNet(build_backbone(payload["backbone"], pretrained=False),
                       len(payload["class_names"]), payload["head"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError) as exc:  # a damaged or edited checkpoint
        raise IgcamError(f"checkpoint {path} is damaged: {type(exc).__name__} "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return model.to(device).eval(), payload


@torch.no_grad()
def label_probabilities(model: SegNet, image: torch.Tensor, scales: Sequence[float],
                        flip: bool, allowed: Sequence[int] | None = None) -> torch.Tensor:
    """(C + 1, H, W) probabilities of background and each class for one image (3, H, W).

    The mean of the softmax at each scale (and its horizontal flip), each resized to the
    image. ``allowed`` (label values: 0 background, class id + 1) keeps only those: the others'
    logits are -inf, so their probability is 0 and the argmax never picks them.
    """
    height, width = image.shape[-2:]
    total = image.new_zeros((model.num_classes + 1, height, width))
    count = 0
    suppressed = None
    if allowed is not None:
        suppressed = torch.ones(model.num_classes + 1, dtype=torch.bool, device=image.device)
        suppressed[list(allowed)] = False
    for scale in scales:
        view = resize(image[None], scaled_size(height, width, scale))
        batch = torch.cat([view, view.flip(-1)]) if flip else view
        logits = model(batch)
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        logits = resize(logits.float(), (height, width))
        if suppressed is not None:
            logits[:, suppressed] = float("-inf")
        total += logits.softmax(1).sum(0)
        count += len(logits)
    return total / count
