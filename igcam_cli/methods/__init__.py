"""CAM methods beyond the plain multi-scale CAM, selected by ``igcam cam --method``."""
