"""Synthetic COCO-format keypoint dataset of rendered human figures.

``python -m dali_pose.tools.synthetic --out DIR`` (or :func:`generate`) writes::

    DIR/images/train/000000000001.jpg ...            (JPEG, quality 90)
    DIR/images/val/000001000001.jpg ...
    DIR/annotations/person_keypoints_train.json      (COCO keypoints format)
    DIR/annotations/person_keypoints_val.json

which is the layout the default ``DataConfig`` paths point at (``--out data/synthetic``).

Conventions
-----------
* Sizes are ``(w, h)``, width first (``--width 640 --height 480``).
* Keypoints are source-image pixels, **0-based, pixel centres on integers** (the OpenCV/UDP
  convention of :mod:`dali_pose.datasets`): the pixel in column ``c`` covers x in
  ``[c - 0.5, c + 0.5)``. Keypoints are multiples of 1/16 px and are drawn with OpenCV's
  4-bit sub-pixel ``shift``, so the joint marker is centred exactly on the keypoint.
* Joint order, flip pairs and skeleton are those of :data:`dali_pose.datasets.COCO`; figures
  face the camera, so the person's left side is on the image right. Left limbs are a lighter
  shade and carry light joint markers, right limbs a darker shade with dark markers.
* Visibility: ``v=2`` when the joint's own marker (or eye, nose, ear) is the topmost thing
  drawn at the keypoint's pixel; ``v=1`` when something drawn later covers it (a person in
  front, or the person's own arm); ``v=0`` with ``x = y = 0`` when the pixel is outside
  the image. People are drawn far to near (small to large).
* ``bbox`` ``[x, y, w, h]`` is in whole pixels, COCO/HRNet style: the tight box of the
  person's rendered silhouette (own occluded parts included, so every labelled keypoint is
  inside), clipped to the image; it covers pixel columns ``x .. x+w-1`` and rows
  ``y .. y+h-1``. ``area`` is the silhouette's pixel count inside the image.
  ``segmentation`` is ``[]``.
* Only people with at least 3 labelled joints and most of their body inside the image are
  drawn at all, so every figure in an image is annotated.
* Image ids are 1.. for train and 1000001.. for val (annotation ids likewise), so the two
  splits never share an id.
* Deterministic: one ``np.random.default_rng(seed)``, split into one stream per split with
  ``spawn``; the same seed gives byte-identical json and JPEGs (with the same OpenCV build),
  and the val split does not depend on ``--num-train``.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import cv2
import numpy as np

from ..datasets import COCO
from ..evaluation.visualize import draw_pose

__all__ = ["generate", "render_scene", "draw_annotations", "main"]

_J = {name: i for i, name in enumerate(COCO.joints)}
_K = COCO.num_joints
_SHIFT = 4  # OpenCV sub-pixel bits: coordinates are drawn in 1/16 px
_ONE = 1 << _SHIFT
_CODES = 20  # id-map codes per person: 1..17 joint markers, 18 body
_BODY = 18
_VAL_ID_OFFSET = 1_000_000
JPEG_QUALITY = 90

_SKIN = ((60, 90, 150), (80, 120, 190), (100, 150, 215), (120, 170, 230), (40, 60, 110),
         (70, 110, 170))  # BGR


def _d(deg: float) -> np.ndarray:
    """Unit vector ``deg`` degrees from straight down, positive turning towards image right."""
    a = math.radians(deg)
    return np.array([math.sin(a), math.cos(a)])


def _mix(c, other, t: float):
    return tuple(int(round((1 - t) * a + t * b)) for a, b in zip(c, other))


def _hsv(h: float, s: float, v: float):
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(b * 255), int(g * 255), int(r * 255))


# --------------------------------------------------------------------------- the figure


class _Figure:
    """One person: keypoints and an ordered list of shapes, in pixels."""

    def __init__(self, kp: np.ndarray, shapes: list, pad: float, marker_r: float):
        self.kp = kp  # (17, 2)
        self.shapes = shapes  # (kind, code, colour, geometry...)
        self.pad = pad
        self.marker_r = marker_r

    def translate(self, t: np.ndarray) -> None:
        self.kp = self.kp + t
        moved = []
        for s in self.shapes:
            kind = s[0]
            if kind == "poly":
                moved.append((kind, s[1], s[2], s[3] + t))
            elif kind == "capsule":
                moved.append((kind, s[1], s[2], s[3] + t, s[4] + t, s[5], s[6]))
            else:  # disc, ellipse: centre is s[3]
                moved.append((kind, s[1], s[2], s[3] + t) + tuple(s[4:]))
        self.shapes = moved

    def quantize(self) -> None:
        """Snap keypoints to the 1/16 px drawing grid (markers sit exactly on them)."""
        self.kp = np.round(self.kp * _ONE) / _ONE

    def extent(self) -> np.ndarray:
        """Approximate (x0, y0, x1, y1) of the silhouette, for placement."""
        pts = [self.kp]
        for s in self.shapes:
            if s[0] == "poly":
                pts.append(s[3])
            elif s[0] == "capsule":
                pts.append(np.stack([s[3], s[4]]))
            else:
                pts.append(s[3][None])
        p = np.concatenate(pts)
        lo, hi = p.min(0) - self.pad, p.max(0) + self.pad
        return np.array([lo[0], lo[1], hi[0], hi[1]])


def _sample_arm_angle(rng) -> float:
    u = rng.random()
    if u < 0.15:
        return rng.uniform(-35, 5)  # across the body
    if u < 0.65:
        return rng.uniform(5, 50)  # hanging
    return rng.uniform(50, 170)  # raised


def _sample_bend(rng, small: float, big: tuple) -> float:
    if rng.random() < 0.4:
        return rng.uniform(-small, small)
    return rng.uniform(*big)


def _foreshorten(rng) -> float:
    return rng.uniform(0.6, 1.0) if rng.random() < 0.3 else 1.0


def _make_figure(rng, height: float, hue: float) -> _Figure:
    """A front-facing figure about ``height`` px tall, pelvis at the origin."""
    H = height
    jit = lambda: rng.uniform(0.92, 1.08)  # noqa: E731 - per-segment proportion jitter
    lean = float(np.clip(rng.normal(0, 7), -20, 20))
    tilt = rng.uniform(-15, 15)
    yaw = rng.uniform(-0.3, 0.3)
    wf = rng.uniform(0.65, 1.05)  # torso turned a little: narrower

    # colours (BGR)
    shirt = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))
    pants = _hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.8))
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    shoes = _mix(pants, (20, 20, 20), 0.7)
    hair = _mix(skin, (10, 10, 10), rng.uniform(0.4, 0.85))
    long_sleeves, shorts = rng.random() < 0.5, rng.random() < 0.3
    light, dark = (255, 255, 255), (0, 0, 0)
    side = {+1: lambda c: _mix(c, light, 0.3), -1: lambda c: _mix(c, dark, 0.3)}
    marker = {+1: lambda c: _mix(c, light, 0.75), -1: lambda c: _mix(c, dark, 0.75)}

    up = _d(180 + lean)
    r = _d(90 + lean)  # image right in the torso frame
    torso = 0.29 * H * jit()
    sw, hw = 0.21 * H * wf * jit(), 0.13 * H * wf * jit()
    P = np.zeros(2)
    S = P + up * torso
    kp = np.zeros((_K, 2))
    kp[_J["left_shoulder"]], kp[_J["right_shoulder"]] = S + r * sw / 2, S - r * sw / 2
    kp[_J["left_hip"]], kp[_J["right_hip"]] = P + r * hw / 2, P - r * hw / 2

    # head
    ha, hb = 0.05 * H * jit(), 0.066 * H * jit()
    hup, hr = _d(180 + lean + tilt), _d(90 + lean + tilt)
    C = S + up * 0.05 * H + hup * hb
    kp[_J["nose"]] = C + hr * yaw * ha - hup * 0.2 * hb
    for sign, name in ((+1, "left_eye"), (-1, "right_eye")):
        kp[_J[name]] = C + hup * 0.18 * hb + hr * (sign * 0.4 + 0.8 * yaw) * ha
    for sign, name in ((+1, "left_ear"), (-1, "right_ear")):
        kp[_J[name]] = C + hup * 0.08 * hb + hr * (sign + 0.15 * yaw) * ha

    # limbs
    ua, fa, th, sh = (0.17 * H * jit(), 0.15 * H * jit(), 0.245 * H * jit(),
                      0.245 * H * jit())
    w_ua, w_fa, w_th, w_sh = 0.058 * H, 0.046 * H, 0.085 * H, 0.062 * H
    leg_down = lean * 0.3
    arm_dirs, leg_dirs = {}, {}
    for sign, s in ((+1, "left"), (-1, "right")):
        a1 = _sample_arm_angle(rng)
        a2 = a1 + _sample_bend(rng, 20, (-130, 120))
        d1, d2 = _d(lean + sign * a1), _d(lean + sign * a2)
        kp[_J[s + "_elbow"]] = kp[_J[s + "_shoulder"]] + d1 * ua * _foreshorten(rng)
        kp[_J[s + "_wrist"]] = kp[_J[s + "_elbow"]] + d2 * fa * _foreshorten(rng)
        arm_dirs[sign] = d2
        t1 = rng.uniform(-8, 20) if rng.random() < 0.75 else rng.uniform(20, 60)
        t2 = t1 + _sample_bend(rng, 10, (-45, 50))
        e1, e2 = _d(leg_down + sign * t1), _d(leg_down + sign * t2)
        kp[_J[s + "_knee"]] = kp[_J[s + "_hip"]] + e1 * th * _foreshorten(rng)
        kp[_J[s + "_ankle"]] = kp[_J[s + "_knee"]] + e2 * sh * _foreshorten(rng)
        leg_dirs[sign] = (t2, e2)

    def ang(v):  # cv2.ellipse angle of an axis along v
        return math.degrees(math.atan2(v[1], v[0]))

    shapes: list = []
    body = _BODY
    mr = max(2.0, 0.016 * H)  # joint marker radius

    def mark(name, sign, colour):  # joint marker on top of the limb it joins
        shapes.append(("disc", _J[name] + 1, marker[sign](colour), kp[_J[name]].copy(), mr))

    # legs, then knee/ankle markers
    for sign, s in ((+1, "left"), (-1, "right")):
        hip, knee, ankle = kp[_J[s + "_hip"]], kp[_J[s + "_knee"]], kp[_J[s + "_ankle"]]
        shapes.append(("capsule", body, side[sign](pants), hip, knee, w_th, w_th * 0.8))
        shapes.append(("capsule", body, side[sign](skin if shorts else pants), knee, ankle,
                       w_th * 0.78, w_sh * 0.8))
        t2, e2 = leg_dirs[sign]
        fdir = _d(leg_down + sign * (t2 + 60))
        shapes.append(("ellipse", body, shoes, ankle + e2 * 0.02 * H + fdir * 0.025 * H,
                       (0.045 * H, 0.022 * H), ang(fdir)))
        mark(s + "_knee", sign, pants)
        mark(s + "_ankle", sign, skin if shorts else pants)

    # torso (shirt), neck, hip markers
    ls, rs = kp[_J["left_shoulder"]], kp[_J["right_shoulder"]]
    lh, rh = kp[_J["left_hip"]], kp[_J["right_hip"]]
    m = 0.03 * H
    poly = np.stack([rs + up * 0.03 * H, ls + up * 0.03 * H, ls + r * m, lh + r * 1.4 * m - up * m,
                     P - up * 2 * m, rh - r * 1.4 * m - up * m, rs - r * m])
    shapes.append(("poly", body, shirt, poly))
    shapes.append(("capsule", body, shirt, lh - up * 0.6 * m, lh + up * 0.05 * H, 0.09 * H,
                   0.06 * H))
    shapes.append(("capsule", body, shirt, rh - up * 0.6 * m, rh + up * 0.05 * H, 0.09 * H,
                   0.06 * H))
    mark("left_hip", +1, pants)
    mark("right_hip", -1, pants)
    shapes.append(("capsule", body, _mix(skin, dark, 0.15), S, C, 0.05 * H, 0.045 * H))

    # head: hair, face, ears, eyes, nose
    shapes.append(("ellipse", body, hair, C + hup * 0.12 * hb, (ha * 1.05, hb * 0.95), ang(hr)))
    shapes.append(("ellipse", body, skin, C - hup * 0.05 * hb, (ha * 0.95, hb * 0.92), ang(hr)))
    er = max(1.5, 0.3 * ha)
    for sign, name in ((+1, "left_ear"), (-1, "right_ear")):
        shapes.append(("ellipse", _J[name] + 1, side[sign](skin), kp[_J[name]].copy(),
                       (er * 0.75, er * 1.25), ang(hr)))
    eye_r = max(1.5, 0.14 * ha)
    for name, col in (("left_eye", (235, 235, 235)), ("right_eye", (25, 25, 25))):
        shapes.append(("disc", _J[name] + 1, col, kp[_J[name]].copy(), eye_r))
    shapes.append(("disc", _J["nose"] + 1, (40, 40, 200), kp[_J["nose"]].copy(),
                   max(1.5, 0.16 * ha)))

    # arms in front of the body, then shoulder/elbow/wrist markers
    for sign, s in ((+1, "left"), (-1, "right")):
        sh_, el, wr = kp[_J[s + "_shoulder"]], kp[_J[s + "_elbow"]], kp[_J[s + "_wrist"]]
        shapes.append(("capsule", body, side[sign](shirt), sh_, el, w_ua, w_ua * 0.85))
        shapes.append(("capsule", body, side[sign](shirt if long_sleeves else skin), el, wr,
                       w_fa, w_fa * 0.85))
        d2 = arm_dirs[sign]
        shapes.append(("ellipse", body, _mix(skin, dark, 0.1), wr + d2 * 0.035 * H,
                       (0.035 * H, 0.024 * H), ang(d2)))
        mark(s + "_shoulder", sign, shirt)
        mark(s + "_elbow", sign, shirt)
        mark(s + "_wrist", sign, skin)

    return _Figure(kp, shapes, pad=0.05 * H, marker_r=mr)


def _fx(p) -> tuple:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _draw(fig: _Figure, img: np.ndarray, idmap: np.ndarray, mask: np.ndarray, base: int):
    """Draws the figure: colours on ``img`` (anti-aliased), codes on ``idmap``, 1 on ``mask``."""
    for s in fig.shapes:
        kind, code, colour = s[0], s[1], s[2]
        targets = ((img, colour, cv2.LINE_AA), (idmap, base + code, cv2.LINE_8),
                   (mask, 1, cv2.LINE_8))
        if kind == "disc":
            c, rad = _fx(s[3]), int(round(s[4] * _ONE))
            for im, col, lt in targets:
                cv2.circle(im, c, rad, col, -1, lt, _SHIFT)
        elif kind == "ellipse":
            c = _fx(s[3])
            axes = (int(round(s[4][0] * _ONE)), int(round(s[4][1] * _ONE)))
            for im, col, lt in targets:
                cv2.ellipse(im, c, axes, s[5], 0, 360, col, -1, lt, _SHIFT)
        elif kind == "poly":
            pts = np.round(s[3] * _ONE).astype(np.int32)
            for im, col, lt in targets:
                cv2.fillPoly(im, [pts], col, lt, _SHIFT)
        elif kind == "capsule":
            p1, p2, w1, w2 = s[3], s[4], s[5], s[6]
            v = p2 - p1
            n = np.array([-v[1], v[0]]) / max(float(np.hypot(*v)), 1e-6)
            quad = np.round(np.stack([p1 + n * w1 / 2, p2 + n * w2 / 2, p2 - n * w2 / 2,
                                      p1 - n * w1 / 2]) * _ONE).astype(np.int32)
            c1, c2 = _fx(p1), _fx(p2)
            r1, r2 = int(round(w1 / 2 * _ONE)), int(round(w2 / 2 * _ONE))
            for im, col, lt in targets:
                cv2.fillConvexPoly(im, quad, col, lt, _SHIFT)
                cv2.circle(im, c1, r1, col, -1, lt, _SHIFT)
                cv2.circle(im, c2, r2, col, -1, lt, _SHIFT)


# --------------------------------------------------------------------------- background


def _background(rng, width: int, height: int) -> np.ndarray:
    """Smooth random gradient + mid-frequency blotches + random shapes + grain (uint8 BGR)."""
    gh, gw = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    tone = rng.uniform(50, 200, 3)
    grid = np.clip(tone + rng.normal(0, 35, (gh, gw, 3)), 20, 235).astype(np.float32)
    img = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    cell = int(rng.integers(10, 40))
    mid = rng.standard_normal((height // cell + 2, width // cell + 2, 4), dtype=np.float32)
    mid = mid[..., :1] * 1.0 + mid[..., 1:] * 0.35  # mostly brightness, a little colour
    img += cv2.resize(mid, (width, height), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 22)
    out = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 18))):
        col = tuple(int(v) for v in np.clip(tone + rng.normal(0, 45, 3), 0, 255))
        kind = rng.random()
        x, y = int(rng.integers(-50, width)), int(rng.integers(-50, height))
        sz = int(rng.integers(15, max(16, min(width, height) // 2)))
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
        if kind < 0.35:
            cv2.rectangle(out, (x, y), (x + sz, y + int(rng.integers(10, sz + 10))), col, thick)
        elif kind < 0.65:
            cv2.ellipse(out, (x, y), (sz // 2, int(rng.integers(5, sz // 2 + 6))),
                        float(rng.uniform(0, 180)), 0, 360, col, thick, cv2.LINE_AA)
        elif kind < 0.85:
            pts = (np.array([x, y]) + rng.integers(-sz, sz, (int(rng.integers(3, 7)), 2)))
            cv2.fillPoly(out, [pts.astype(np.int32)], col, cv2.LINE_AA)
        else:
            cv2.line(out, (x, y), (x + int(rng.integers(-sz, sz)), y + int(rng.integers(-sz, sz))),
                     col, int(rng.integers(1, 4)), cv2.LINE_AA)
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(5, 10)
    return np.clip(out + grain, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- one image


def _in_frame(kp: np.ndarray, width: int, height: int) -> np.ndarray:
    xi, yi = np.floor(kp[:, 0] + 0.5), np.floor(kp[:, 1] + 0.5)
    return (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)


def _box_inside_fraction(b: np.ndarray, width: int, height: int) -> float:
    iw = max(0.0, min(b[2], width) - max(b[0], 0.0))
    ih = max(0.0, min(b[3], height) - max(b[1], 0.0))
    return iw * ih / max((b[2] - b[0]) * (b[3] - b[1]), 1e-6)


def _inter(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih


def _area(b: np.ndarray) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def render_scene(rng: np.random.Generator, width: int = 640, height: int = 480) -> dict:
    """Renders one image. Returns a dict:

    ``image`` (h, w, 3) uint8 BGR; ``background`` the image before the people (and the
    final light noise) were drawn; ``idmap`` (h, w) uint8: 0 where no person was drawn,
    else ``20 * index + code`` for the topmost shape there, ``index`` being the person's
    drawing position and ``code`` 1..17 joint ``code - 1``'s marker (or eye, ear, nose),
    18 any other part; ``people``: one dict per person, far to near, with ``index``,
    ``keypoints`` (17, 3) float64 (x, y, v; x = y = 0 where v = 0), ``bbox`` [x, y, w, h]
    ints, ``area`` int, ``num_keypoints``.
    """
    img = _background(rng, width, height)
    background = img.copy()
    n = int(rng.integers(1, 5))
    hi = min(0.83 * height, 1.5 * width)  # person height (120-400 px at 640x480)
    lo = min(0.25 * height, 0.5 * hi)
    heights = np.sort(rng.uniform(lo, hi, n))  # far (small) first
    hue0 = rng.random()
    figures, boxes = [], []
    for i, h in enumerate(heights):
        fig = _make_figure(rng, float(h), hue0 + i / n + rng.uniform(-0.05, 0.05))
        ext = fig.extent()
        bw, bh = ext[2] - ext[0], ext[3] - ext[1]
        for _ in range(25):
            if boxes and rng.random() < 0.7:  # next to someone: partial occlusion
                a = boxes[int(rng.integers(len(boxes)))]
                cx = (a[0] + a[2]) / 2 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.8) * (
                    (a[2] - a[0]) + bw) / 2
                x0 = cx - bw / 2
                y0 = a[3] - bh + rng.uniform(-0.2, 0.2) * bh
            else:
                x0 = rng.uniform(-0.3 * bw, width - 0.7 * bw)
                y0 = rng.uniform(-0.25 * bh, height - 0.75 * bh)
            t = np.array([x0 - ext[0], y0 - ext[1]])
            box = ext + np.tile(t, 2)
            if _box_inside_fraction(box, width, height) < 0.6:
                continue
            if _in_frame(fig.kp + t, width, height).sum() < 3:
                continue
            if any(_inter(box, b) > 0.6 * _area(b) or _inter(box, b) > 0.8 * _area(box)
                   for b in boxes):
                continue
            fig.translate(t)
            fig.quantize()
            figures.append(fig)
            boxes.append(box)
            break

    idmap = np.zeros((height, width), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    people = []
    for i, fig in enumerate(figures):
        mask[:] = 0
        _draw(fig, img, idmap, mask, _CODES * i)
        x, y, w, h = cv2.boundingRect(mask)
        people.append({"index": i, "fig": fig, "bbox": [int(x), int(y), int(w), int(h)],
                       "area": int(cv2.countNonZero(mask))})
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(1.5, 4.0)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)  # sensor noise, figures included
    out = []
    for i, p in enumerate(people):
        kp = p.pop("fig").kp
        inside = _in_frame(kp, width, height)
        xi = np.clip(np.floor(kp[:, 0] + 0.5).astype(int), 0, width - 1)
        yi = np.clip(np.floor(kp[:, 1] + 0.5).astype(int), 0, height - 1)
        top = idmap[yi, xi].astype(int)
        own = _CODES * i + 1 + np.arange(_K)
        v = np.where(inside, np.where(top == own, 2, 1), 0)
        k3 = np.zeros((_K, 3))
        k3[:, :2] = np.where(inside[:, None], kp, 0.0)
        k3[:, 2] = v
        p["keypoints"] = k3
        p["num_keypoints"] = int((v > 0).sum())
        if p["num_keypoints"] >= 3 and p["area"] > 0:  # always true: placement ensures it
            out.append(p)
    return {"image": img, "background": background, "idmap": idmap, "people": out}


def draw_annotations(img: np.ndarray, people: List[dict]) -> np.ndarray:
    """A copy of ``img`` with boxes, skeletons and keypoints drawn (v=2 filled, v=1 ring)."""
    out = img.copy()
    for p in people:
        kp = np.asarray(p["keypoints"], dtype=np.float64).reshape(_K, 3)
        x, y, w, h = p["bbox"]
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 255), 1)
        left = [(0, 0, 255) if j in (1, 3, 5, 7, 9, 11, 13, 15) else (255, 0, 0)
                for j in range(_K)]
        draw_pose(out, kp[:, :2], kp[:, 2] > 0, COCO.skeleton, (0, 255, 0),
                  joint_colors=left, filled=kp[:, 2] == 2, radius=2, thickness=1)
    return out


# --------------------------------------------------------------------------- dataset


def _categories() -> list:
    return [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": list(COCO.joints),
             "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton]}]  # COCO: 1-based


def _write_split(rng, split: str, count: int, root: str, width: int, height: int,
                 id_offset: int, seed: int) -> dict:
    img_dir = os.path.join(root, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    sizes = 0
    for n in range(count):
        image_id = id_offset + n + 1
        scene = render_scene(rng, width, height)
        name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", scene["image"], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(buf.tobytes())
        sizes += buf.size
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for p in scene["people"]:
            kp = p["keypoints"]
            flat = []
            for x, y, v in kp:
                flat += [float(x), float(y), int(v)]
            anns.append({"id": id_offset + len(anns) + 1, "image_id": image_id,
                         "category_id": 1, "iscrowd": 0, "bbox": p["bbox"],
                         "area": float(p["area"]), "num_keypoints": p["num_keypoints"],
                         "keypoints": flat, "segmentation": []})
    data = {"info": {"description": f"dali_pose synthetic figures, split {split}, seed {seed}",
                     "version": "1.0"},
            "licenses": [], "images": images, "annotations": anns,
            "categories": _categories()}
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    ann_path = os.path.join(ann_dir, f"person_keypoints_{split}.json")
    with open(ann_path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return {"ann": ann_path, "images": img_dir, "num_images": count,
            "num_people": len(anns), "jpeg_bytes": sizes}


def _check_args(num_train: int, num_val: int, width: int, height: int) -> None:
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got {num_train} train, {num_val} val")
    if width < 64 or height < 64:
        raise ValueError(f"image size must be at least 64x64, got (w, h) = ({width}, {height})")


def _generate(out_dir: str, seed: int, num_train: int, num_val: int, width: int,
              height: int):
    _check_args(num_train, num_val, width, height)
    rng = np.random.default_rng(seed)
    train_rng, val_rng = rng.spawn(2)
    tr = _write_split(train_rng, "train", num_train, out_dir, width, height, 0, seed)
    va = _write_split(val_rng, "val", num_val, out_dir, width, height, _VAL_ID_OFFSET, seed)
    paths = {"out_dir": out_dir, "train_ann": tr["ann"], "train_images": tr["images"],
             "val_ann": va["ann"], "val_images": va["images"]}
    return paths, {"train": tr, "val": va}


def generate(out_dir: str, seed: int = 0, num_train: int = 600, num_val: int = 60,
             width: int = 640, height: int = 480) -> Dict[str, str]:
    """Writes the dataset under ``out_dir`` and returns its paths.

    Keys: ``out_dir``, ``train_ann``, ``train_images``, ``val_ann``, ``val_images`` (the
    names of the ``DataConfig`` fields they fill). Existing files of the same names are
    overwritten; other files in ``out_dir`` are left alone.
    """
    return _generate(out_dir, seed, num_train, num_val, width, height)[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dali_pose.tools.synthetic",
        description="Write a COCO-format keypoint dataset of rendered human figures "
                    "(17 COCO joints, 1-4 people per image, occlusions, textured "
                    "backgrounds): DIR/images/{train,val}/*.jpg and "
                    "DIR/annotations/person_keypoints_{train,val}.json. Keypoints are 0-based "
                    "pixels with pixel centres on integers. Same seed, same bytes.",
        epilog="example: python -m dali_pose.tools.synthetic --out data/synthetic --seed 0",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", default=argparse.SUPPRESS,
                        help="output directory (the default config reads data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--num-train", type=int, default=600, metavar="N",
                        help="training images")
    parser.add_argument("--num-val", type=int, default=60, metavar="N",
                        help="validation images")
    parser.add_argument("--width", type=int, default=640, metavar="W",
                        help="image width in pixels")
    parser.add_argument("--height", type=int, default=480, metavar="H",
                        help="image height in pixels")
    args = parser.parse_args(argv)
    try:
        _check_args(args.num_train, args.num_val, args.width, args.height)
    except ValueError as e:
        parser.error(str(e))
    t0 = time.perf_counter()
    paths, stats = _generate(args.out, args.seed, args.num_train, args.num_val, args.width,
                             args.height)
    dt = time.perf_counter() - t0
    for split in ("train", "val"):
        s = stats[split]
        avg = s["jpeg_bytes"] / max(s["num_images"], 1) / 1024
        print(f"{split}: {s['num_images']} images, {s['num_people']} people, "
              f"avg JPEG {avg:.0f} KiB -> {s['ann']}")
    print(f"wrote {paths['out_dir']} in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
