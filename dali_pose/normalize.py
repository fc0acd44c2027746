"""ImageNet normalisation: the one statement of the mean and std every crop is normalised with.

A normalised pixel is ``(v / 255 - mean_c) / std_c`` for an RGB intensity ``v`` in 0..255 and
channel ``c``; the warp kernels write it, the occlusion kernels fill with normalised black,
the previews and pictures undo it.
"""
from __future__ import annotations

from typing import Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, in 0..1 intensity units
IMAGENET_STD = (0.229, 0.224, 0.225)


def black_fill(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tuple[float, float, float]:
    """Zero intensity in normalised units, per channel: (0 - mean_c) / std_c."""
    return tuple(float((0.0 - m) / s) for m, s in zip(mean, std))
