"""Score-CAM (Wang et al., 2020): channels weighted by how much the class's logit keeps when the
image is seen only through each channel's map.

Each channel's map, enlarged to the view and scaled to [0, 1], masks the view (in the
network's normalised space, as pytorch-grad-cam masks its input tensor: a masked-out pixel
is the mean colour), the classifier scores every masked view, and a softmax over the channels
of the class's logits weighs the channels. Score-CAM proper masks with every channel, which
is one forward pass per channel (1,280 for EfficientNet-Lite0) per view; here only the
``--scorecam-channels`` channels of largest spatial variance do (as Faster Score-CAM), in
batches of ``--scorecam-batch`` masked views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from igcam_cli.methods.base import HeadCam
from igcam_cli.options import option
from igcam_cli.transforms import resize


@dataclass(frozen=True)
class ScoreCamOptions:
    channels: int = option(32, "Feature channels that mask the image, those of largest "
                               "spatial variance (each costs one forward pass per view).",
                           min=1, max=4096)
    batch: int = option(16, "Masked views per forward pass.", min=1, max=1024)


class ScoreCam(HeadCam):
    """Score-CAM: channels weighted by the class's logit on the image masked by each channel's
    map (softmax over channels); one forward pass per channel and view, no gradients."""

    name = "scorecam"
    Options = ScoreCamOptions
    reads_views = True

    def head(self, classes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        model, options = self.context.model, self.options

        def maps(views: torch.Tensor) -> torch.Tensor:
            features = model.features(views)
            count = min(options.channels, features.shape[1])
            out = []
            for view, activations in zip(views, features.float(), strict=True):
                chosen = activations[activations.flatten(1).var(dim=1).topk(count).indices]
                masks = resize(chosen[None], view.shape[-2:])[0]
                low = masks.amin(dim=(1, 2), keepdim=True)
                masks = (masks - low) / (masks.amax(dim=(1, 2), keepdim=True) - low).clamp_min(
                    1e-7)
                mean = model.mean[0].to(view.dtype)  # masked out: the mean colour
                logits = torch.cat([
                    model(mean + (view - mean) * part[:, None].to(view.dtype)).float()
                    for part in masks.split(options.batch)])  # (channels, C)
                weights = torch.softmax(logits[:, classes], dim=0)  # (channels, K)
                out.append(F.relu(torch.einsum("nk,nhw->khw", weights, chosen)))
            return torch.stack(out)
        return maps
