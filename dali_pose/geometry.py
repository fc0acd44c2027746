"""The one place for geometry: one 2x3 affine matrix per sample.

Convention (OpenCV, UDP): pixel centres on integers; pixel (0, 0) covers [-0.5, 0.5]^2.
``M`` maps a source-image point (x, y) to crop pixels: ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``.
The same M warps the image, moves the keypoints, places the heatmaps (after dividing by the
stride) and, inverted, takes predictions back to the source image.

UDP (Huang et al., "The Devil is in the Details", CVPR 2020) measures image size in *unit
lengths* (w - 1, h - 1), so the box of size ``scale`` pixels around ``center`` maps to
[0, w_in - 1] x [0, h_in - 1] and the heatmap stride is (w_in - 1)/(w_hm - 1). HRNet's
classic processing (``model.codec: msra``, to evaluate and train its model zoo as it was
made) maps the box to [0, w_in] x [0, h_in] with stride w_in / w_hm: :func:`msra_matrix`.

All functions here are numba ``njit`` so the pipeline kernels can call them; they run on
plain NumPy arrays from Python too.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np


@numba.njit(cache=True)
def box_matrix(cx, cy, sw, sh, rot_deg, span_w, span_h, flip):
    """Source px -> crop px: the box (centre (cx, cy), size (sw, sh) px) onto [0, span_w] x
    [0, span_h] of the crop, rotated by ``rot_deg`` (the *content* counter-clockwise on
    screen, HRNet's sign) about its centre; ``flip`` mirrors x' -> span_w - x'.
    Returns float64 (2, 3). :func:`udp_matrix` and :func:`msra_matrix` choose the span."""
    theta = rot_deg * math.pi / 180.0
    c, s = math.cos(theta), math.sin(theta)
    kx = span_w / sw
    ky = span_h / sh
    m = np.empty((2, 3), np.float64)
    m[0, 0] = c * kx
    m[0, 1] = -s * kx
    m[0, 2] = kx * (-cx * c + cy * s) + 0.5 * span_w
    m[1, 0] = s * ky
    m[1, 1] = c * ky
    m[1, 2] = ky * (-cx * s - cy * c) + 0.5 * span_h
    if flip:
        m[0, 0] = -m[0, 0]
        m[0, 1] = -m[0, 1]
        m[0, 2] = span_w - m[0, 2]
    return m


@numba.njit(cache=True)
def udp_matrix(cx, cy, sw, sh, rot_deg, out_w, out_h, flip):
    """UDP: the box maps to [0, out_w - 1] x [0, out_h - 1] (image sizes in unit lengths, so
    the box centre lands on the crop centre pixel grid's middle (out - 1) / 2); ``flip`` is
    the exact mirror x' -> (out_w - 1) - x' of the crop's pixel grid."""
    return box_matrix(cx, cy, sw, sh, rot_deg, out_w - 1.0, out_h - 1.0, flip)


@numba.njit(cache=True)
def msra_matrix(cx, cy, sw, sh, rot_deg, out_w, out_h, flip):
    """HRNet's classic ("MSRA") crop: the box maps to [0, out_w] x [0, out_h] (its centre
    to (out_w / 2, out_h / 2), half a pixel off the crop's middle); the training flip
    mirrors the source image about the box centre, i.e. x' -> out_w - x' (the flip test's
    tensor mirror is out_w - 1 - x': hence HRNet's one-pixel heatmap shift)."""
    return box_matrix(cx, cy, sw, sh, rot_deg, float(out_w), float(out_h), flip)


@numba.njit(cache=True)
def invert_affine(m):
    """Inverse of a 2x3 affine ``m`` (2, 3), any float dtype; float64 (2, 3), computed in
    float64 (the CPU and CUDA warps invert float32 matrices with the same formula)."""
    a, b, c, d = float(m[0, 0]), float(m[0, 1]), float(m[1, 0]), float(m[1, 1])
    det = a * d - b * c
    inv = np.empty((2, 3), np.float64)
    inv[0, 0] = d / det
    inv[0, 1] = -b / det
    inv[1, 0] = -c / det
    inv[1, 1] = a / det
    inv[0, 2] = -(inv[0, 0] * m[0, 2] + inv[0, 1] * m[1, 2])
    inv[1, 2] = -(inv[1, 0] * m[0, 2] + inv[1, 1] * m[1, 2])
    return inv


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points (..., 2) through a (2, 3) matrix, float64."""
    pts = np.asarray(pts, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


@numba.njit(cache=True)
def opencv_to_dali_into(m, out):
    """Forward (2, 3) matrix in OpenCV convention -> the same warp in DALI's convention,
    written into ``out`` (2, 3).

    DALI's ``warp_affine`` puts pixel centres at x + 0.5; conjugating with that half-pixel
    shift gives ``[A | t + 0.5 (1 - A @ [1, 1])]``.
    """
    for r in range(2):
        out[r, 0] = m[r, 0]
        out[r, 1] = m[r, 1]
        out[r, 2] = m[r, 2] + 0.5 * (1.0 - m[r, 0] - m[r, 1])


def opencv_to_dali(m: np.ndarray) -> np.ndarray:
    """:func:`opencv_to_dali_into` as a function: a new float64 (2, 3) matrix."""
    out = np.empty((2, 3), np.float64)
    opencv_to_dali_into(np.asarray(m, np.float64), out)
    return out


@numba.njit(cache=True)
def fix_aspect(w, h, aspect):
    """Grow (w, h) to the aspect ratio w/h = ``aspect``, keeping the larger side."""
    if w > aspect * h:
        return w, w / aspect
    return h * aspect, h


@numba.njit(cache=True)
def half_body_box(kps, upper_mask, pick_upper_u, aspect, padding):
    """HRNet's half-body box: mean and extent of the visible upper- or lower-body joints.

    ``pick_upper_u`` is a U(0,1) draw (upper body when < 0.5 and it has > 2 visible joints,
    else the lower body if it has > 2, else the upper). Returns (ok, cx, cy, w, h) in source
    pixels, (w, h) already aspect-fixed and padded; ok=False when < 2 joints are selected.
    """
    k = kps.shape[0]
    n_up = 0
    n_lo = 0
    for j in range(k):
        if kps[j, 2] > 0:
            if upper_mask[j]:
                n_up += 1
            else:
                n_lo += 1
    use_upper = (pick_upper_u < 0.5 and n_up > 2) or n_lo <= 2
    n = n_up if use_upper else n_lo
    if n < 2:
        return False, 0.0, 0.0, 0.0, 0.0
    sx = 0.0
    sy = 0.0
    x0 = 1e30
    y0 = 1e30
    x1 = -1e30
    y1 = -1e30
    for j in range(k):
        if kps[j, 2] > 0 and upper_mask[j] == use_upper:
            x, y = kps[j, 0], kps[j, 1]
            sx += x
            sy += y
            x0 = min(x0, x)
            y0 = min(y0, y)
            x1 = max(x1, x)
            y1 = max(y1, y)
    w, h = fix_aspect(x1 - x0, y1 - y0, aspect)
    return True, sx / n, sy / n, w * padding, h * padding


class AugParams(NamedTuple):
    """The training augmentation's settings, in ``augment``'s order (the ``aug`` config
    section's fields of the same names)."""

    flip_prob: float
    rot_prob: float
    rot_factor: float
    scale_factor: float
    half_body_prob: float
    half_body_min_joints: int
    shift_factor: float

    @classmethod
    def of(cls, section) -> "AugParams":
        """From any object with these field names (the ``aug`` config section)."""
        return cls(*(getattr(section, f) for f in cls._fields))


# Layout of the per-sample random draws ``augment`` transforms (:mod:`dali_pose.draws`
# makes them from (seed, epoch, sample); the kernel only transforms them).
U_FLIP, U_ROT, U_HALF, U_HALF_UPPER, U_SHIFT_X, U_SHIFT_Y = range(6)
NUM_UNIFORM = 6
N_SCALE, N_ROT = range(2)
NUM_NORMAL = 2
HALF_BODY_PADDING = 1.5


@numba.njit(cache=True)
def augment(center, scale, kps, u, n, upper_mask, flip_prob, rot_prob, rot_factor,
            scale_factor, half_body_prob, half_body_min_joints, shift_factor, aspect):
    """HRNet/UDP training augmentation from given random draws.

    ``u`` holds NUM_UNIFORM U(0,1) draws, ``n`` NUM_NORMAL N(0,1) draws (layouts above).
    Returns (cx, cy, sw, sh, rot_deg, flip) of the crop in source pixels.
    """
    cx, cy, sw, sh = center[0], center[1], scale[0], scale[1]
    n_vis = 0
    for j in range(kps.shape[0]):
        if kps[j, 2] > 0:
            n_vis += 1
    if n_vis > half_body_min_joints and u[U_HALF] < half_body_prob:
        ok, hx, hy, hw, hh = half_body_box(kps, upper_mask, u[U_HALF_UPPER], aspect,
                                           HALF_BODY_PADDING)
        if ok:
            cx, cy, sw, sh = hx, hy, hw, hh
    s = min(max(n[N_SCALE] * scale_factor + 1.0, 1.0 - scale_factor), 1.0 + scale_factor)
    sw *= s
    sh *= s
    rot = 0.0
    if u[U_ROT] < rot_prob:
        rot = min(max(n[N_ROT] * rot_factor, -2.0 * rot_factor), 2.0 * rot_factor)
    if shift_factor > 0:
        cx += (2.0 * u[U_SHIFT_X] - 1.0) * shift_factor * sw
        cy += (2.0 * u[U_SHIFT_Y] - 1.0) * shift_factor * sh
    flip = u[U_FLIP] < flip_prob
    return cx, cy, sw, sh, rot, flip


@numba.njit(cache=True)
def transform_keypoints(m, kps, flip, flip_index, out):
    """Source keypoints (K, 3) -> crop keypoints ``out`` (K, 3), joints swapped when flipped.

    Unlabelled joints (v = 0) keep v = 0 and x = y = 0.
    """
    k = kps.shape[0]
    for j in range(k):
        dst = flip_index[j] if flip else j
        if kps[j, 2] > 0:
            x, y = kps[j, 0], kps[j, 1]
            out[dst, 0] = m[0, 0] * x + m[0, 1] * y + m[0, 2]
            out[dst, 1] = m[1, 0] * x + m[1, 1] * y + m[1, 2]
            out[dst, 2] = kps[j, 2]
        else:
            out[dst, 0] = 0.0
            out[dst, 1] = 0.0
            out[dst, 2] = 0.0


@numba.njit(cache=True)
def source_roi(m_inv, out_w, out_h, img_w, img_h, margin):
    """Integer source-pixel window (x0, y0, x1, y1), x1/y1 exclusive, that the crop samples.

    The crop's four corners (+-0.5 px) go through ``m_inv``; the bounding box grows by
    ``margin`` px for bilinear neighbours and is clipped to the image. May be empty.
    """
    xs = (-0.5, out_w - 0.5)
    ys = (-0.5, out_h - 0.5)
    x0 = 1e30
    y0 = 1e30
    x1 = -1e30
    y1 = -1e30
    for X in xs:
        for Y in ys:
            sx = m_inv[0, 0] * X + m_inv[0, 1] * Y + m_inv[0, 2]
            sy = m_inv[1, 0] * X + m_inv[1, 1] * Y + m_inv[1, 2]
            x0 = min(x0, sx)
            y0 = min(y0, sy)
            x1 = max(x1, sx)
            y1 = max(y1, sy)
    ix0 = max(0, int(math.floor(x0)) - margin)
    iy0 = max(0, int(math.floor(y0)) - margin)
    ix1 = min(img_w, int(math.ceil(x1)) + 1 + margin)
    iy1 = min(img_h, int(math.ceil(y1)) + 1 + margin)
    return ix0, iy0, ix1, iy1
