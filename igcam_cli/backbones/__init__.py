"""Backbones for the CAM classifier, by ``--backbone`` name.

Pretrained weights are resolved offline-first: ``--weights FILE``, then the weights folder
(:func:`~igcam_cli.backbones.weights.weights_dir`) checked against the manifest shipped in this
package, then torchvision's download. Adding a family is one module that calls
``BACKBONES.register(spec, name)`` (:class:`~igcam_cli.registry.Registry`) for each network
and one import line below (the import is what registers it; the order of the lines is the
order ``--backbone`` choices are listed in).
"""

from igcam_cli.backbones import efficientnet, resnet  # noqa: F401 - registers the families
from igcam_cli.backbones.base import BACKBONES, Backbone, build_backbone, default_lr

__all__ = ["BACKBONES", "Backbone", "build_backbone", "default_lr"]
