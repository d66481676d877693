"""igcam: pixel-level pseudo-masks from image-level labels."""

__version__ = "0.1.0"
