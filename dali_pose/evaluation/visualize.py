"""The one skeleton drawer, for every picture dali_pose makes (previews, evaluation drawings,
the synthetic dataset's annotated images).

Coordinates are pixels with centres on integers; they are drawn with OpenCV's 4-bit
sub-pixel ``shift``, so a marker sits on its keypoint to 1/16 px. Colours are in the
image's own channel order (the caller's choice of RGB or BGR).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

_SHIFT = 4  # OpenCV sub-pixel bits
_ONE = 1 << _SHIFT

Color = Tuple[int, int, int]


def _fx(p) -> Tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def draw_pose(img: np.ndarray, xy, valid, skeleton: Sequence[Tuple[int, int]],
              color: Color, *, joint_colors: Optional[Sequence[Color]] = None,
              filled=None, radius: Optional[float] = None,
              thickness: Optional[int] = None) -> np.ndarray:
    """Draw one skeleton into ``img`` (H, W, 3) uint8, in place; returns ``img``.

    ``xy`` (K, 2) pixels; ``valid`` (K,) bool: joints to draw; limbs of ``skeleton`` (index
    pairs) join two valid joints in ``color``; joint j is a disc of ``joint_colors[j]``
    (default ``color``), a ring where ``filled[j]`` is False. ``radius`` defaults to
    max(2, image size / 200) px, ``thickness`` of the limbs to radius / 2 + 1.
    """
    h, w = img.shape[:2]
    r = max(2.0, round(max(h, w) / 200)) if radius is None else float(radius)
    t = max(1, int(r) // 2 + 1) if thickness is None else int(thickness)
    xy = np.asarray(xy, np.float64)
    valid = np.asarray(valid, bool)
    for a, b in skeleton:
        if valid[a] and valid[b]:
            cv2.line(img, _fx(xy[a]), _fx(xy[b]), color, t, cv2.LINE_AA, _SHIFT)
    for j in np.nonzero(valid)[0]:
        c = color if joint_colors is None else joint_colors[j]
        fill = -1 if filled is None or filled[j] else 1
        cv2.circle(img, _fx(xy[j]), int(round(r * _ONE)), c, fill, cv2.LINE_AA, _SHIFT)
    return img
