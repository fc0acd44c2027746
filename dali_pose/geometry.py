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


RECIPE_HRNET, RECIPE_MMPOSE = 0, 1  # ``aug.recipe``: whose sampler ``augment`` follows


@numba.njit(cache=True)
def half_body_choice(n_up, n_lo, pick_upper_u, upper_prob, min_upper, min_lower, recipe):
    """Which half a half-body crop takes: 1 upper, 2 lower, 0 none.

    ``n_up`` / ``n_lo``: visible upper / lower joints; ``pick_upper_u`` a U(0, 1) draw.
    hrnet (HRNet / UDP-Pose ``half_body_transform``): upper when the draw prefers it and the
    upper body has ``min_upper`` joints, else the lower body if it has ``min_lower``, else the
    upper; none when the chosen half has < 2 joints. The reference draws ``randn() < 0.5``,
    i.e. prefers the upper body with probability Phi(0.5) = 0.691: ``upper_prob``.
    mmpose (1.x ``RandomHalfBody``): none when both halves are short, the one that is not
    short when one is, else upper with ``upper_prob`` (0.7).
    """
    prefer = pick_upper_u < upper_prob
    if recipe == RECIPE_MMPOSE:
        if n_up < min_upper and n_lo < min_lower:
            return 0
        if n_lo < min_lower:
            return 1
        if n_up < min_upper:
            return 2
        return 1 if prefer else 2
    if prefer and n_up >= min_upper:
        pick = 1
    elif n_lo >= min_lower:
        pick = 2
    else:
        pick = 1
    n = n_up if pick == 1 else n_lo
    return pick if n >= 2 else 0


@numba.njit(cache=True)
def half_body_box(kps, upper_mask, upper):
    """Mean and extent of the visible upper (``upper`` True) or lower joints of ``kps``
    (K, 3): (cx, cy, w, h) in source pixels, before padding and aspect fix."""
    n = 0
    sx = 0.0
    sy = 0.0
    x0 = 1e30
    y0 = 1e30
    x1 = -1e30
    y1 = -1e30
    for j in range(kps.shape[0]):
        if kps[j, 2] > 0 and upper_mask[j] == upper:
            x, y = kps[j, 0], kps[j, 1]
            n += 1
            sx += x
            sy += y
            x0 = min(x0, x)
            y0 = min(y0, y)
            x1 = max(x1, x)
            y1 = max(y1, y)
    return sx / max(n, 1), sy / max(n, 1), x1 - x0, y1 - y0


class AugParams(NamedTuple):
    """The training augmentation's settings, in ``augment``'s order (the ``aug`` config
    section's fields of the same names; ``recipe`` as RECIPE_HRNET / RECIPE_MMPOSE)."""

    flip_prob: float
    rot_prob: float
    rot_factor: float
    scale_factor: float
    half_body_prob: float
    half_body_min_joints: int
    shift_factor: float
    shift_prob: float = 1.0
    half_body_upper_prob: float = 0.6914624612740131
    half_body_min_upper: int = 3
    half_body_min_lower: int = 3
    half_body_padding: float = 1.5
    recipe: int = RECIPE_HRNET

    @classmethod
    def of(cls, section) -> "AugParams":
        """From any object with these field names (the ``aug`` config section)."""
        vals = {f: getattr(section, f) for f in cls._fields}
        vals["recipe"] = RECIPE_MMPOSE if vals["recipe"] == "mmpose" else RECIPE_HRNET
        return cls(**vals)


# Layout of the per-sample random draws ``augment`` transforms (:mod:`dali_pose.draws`
# makes them from (seed, epoch, sample); the kernel only transforms them). U_SHIFT_GATE is
# drawn last in the stream (see draws.py), so adding it moved no other draw.
U_FLIP, U_ROT, U_HALF, U_HALF_UPPER, U_SHIFT_X, U_SHIFT_Y, U_SHIFT_GATE = range(7)
NUM_UNIFORM = 7
N_SCALE, N_ROT = range(2)
NUM_NORMAL = 2
HALF_BODY_PADDING = 1.5
_SQRT2 = math.sqrt(2.0)
_PHI_M1 = 0.15865525393145707  # Phi(-1)
_PHI_1 = 0.8413447460685429  # Phi(1)


@numba.njit(cache=True)
def normal_cdf(x):
    """Phi(x), the standard normal CDF."""
    return 0.5 * math.erfc(-x / _SQRT2)


@numba.njit(cache=True)
def normal_ppf(p):
    """Phi^-1(p) for p in (0, 1): Acklam's rational approximation (relative error 1e-9)
    refined by one Halley step, float64."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
         3.754408661907416e+00)
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    elif p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    e = normal_cdf(x) - p
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


@numba.njit(cache=True)
def truncnorm_unit(u):
    """A U(0, 1) draw -> the standard normal truncated to [-1, 1] (inverse CDF), which is
    what mmpose's ``RandomBBoxTransform`` draws (scipy ``truncnorm(-1, 1)``)."""
    return normal_ppf(_PHI_M1 + u * (_PHI_1 - _PHI_M1))


@numba.njit(cache=True)
def draw_box(center, scale, box, kps, u, n, upper_mask, flip_prob, rot_prob, rot_factor,
             scale_factor, half_body_prob, half_body_min_joints, shift_factor, aspect,
             shift_prob, upper_prob, min_upper, min_lower, half_padding, recipe):
    """The training crop of one sample from its draws, by ``recipe``'s rules.

    ``center`` (2,) / ``scale`` (2,): the index's box (w, h) in source px, aspect-fixed and
    padded; ``box`` (2,): the same padded box (w, h) px *before* the aspect fix (mmpose's
    ``bbox_scale``, ``PoseIndex.box_size``); ``kps`` (K, 3); ``u`` NUM_UNIFORM U(0,1) and
    ``n`` NUM_NORMAL N(0,1) draws (layouts above). Returns (cx, cy, sw, sh, rot_deg, flip,
    half) with half 0 (whole person), 1 (upper body) or 2 (lower body).

    hrnet (HRNet / UDP-Pose / SimpleBaseline ``JointsDataset``): half body when more than
    ``half_body_min_joints`` joints are visible, with ``half_body_prob``; scale
    clip(N(1, sf), 1 - sf, 1 + sf); rotation with ``rot_prob``, clip(N(0, rf), +-2 rf);
    shift (not in the official code; 0 by default) U(-1, 1) * factor * the scaled box.
    mmpose (1.x ``RandomHalfBody`` + ``RandomBBoxTransform``): T = N(0, 1) truncated to
    [-1, 1]; scale 1 + sf * T always; rotation rf * T with ``rot_prob``; shift
    factor * T per axis with ``shift_prob``, of the box mmpose's ``bbox_scale`` holds
    then: padded, before the scale draw and before the aspect fix (which mmpose does last,
    in ``TopdownAffine``): the half-body box, else ``box``. Scaling and the aspect fix
    commute, so fixing the aspect first (as the index does) gives the same crop.
    """
    cx, cy, sw, sh = center[0], center[1], scale[0], scale[1]
    bw, bh = box[0], box[1]  # the box the mmpose shift is a fraction of
    n_up = 0
    n_lo = 0
    for j in range(kps.shape[0]):
        if kps[j, 2] > 0:
            if upper_mask[j]:
                n_up += 1
            else:
                n_lo += 1
    half = 0
    if n_up + n_lo > half_body_min_joints and u[U_HALF] < half_body_prob:
        half = half_body_choice(n_up, n_lo, u[U_HALF_UPPER], upper_prob, min_upper,
                                min_lower, recipe)
        if half:
            cx, cy, w, h = half_body_box(kps, upper_mask, half == 1)
            bw, bh = w * half_padding, h * half_padding
            w, h = fix_aspect(w, h, aspect)
            sw, sh = w * half_padding, h * half_padding
    flip = u[U_FLIP] < flip_prob
    rot = 0.0
    if recipe == RECIPE_MMPOSE:
        if u[U_SHIFT_GATE] < shift_prob:
            cx += truncnorm_unit(u[U_SHIFT_X]) * shift_factor * bw
            cy += truncnorm_unit(u[U_SHIFT_Y]) * shift_factor * bh
        s = 1.0 + scale_factor * truncnorm_unit(normal_cdf(n[N_SCALE]))
        sw *= s
        sh *= s
        if u[U_ROT] < rot_prob:
            rot = rot_factor * truncnorm_unit(normal_cdf(n[N_ROT]))
        return cx, cy, sw, sh, rot, flip, half
    s = min(max(n[N_SCALE] * scale_factor + 1.0, 1.0 - scale_factor), 1.0 + scale_factor)
    sw *= s
    sh *= s
    if u[U_ROT] < rot_prob:
        rot = min(max(n[N_ROT] * rot_factor, -2.0 * rot_factor), 2.0 * rot_factor)
    if shift_factor > 0 and u[U_SHIFT_GATE] < shift_prob:
        cx += (2.0 * u[U_SHIFT_X] - 1.0) * shift_factor * sw
        cy += (2.0 * u[U_SHIFT_Y] - 1.0) * shift_factor * sh
    return cx, cy, sw, sh, rot, flip, half


@numba.njit(cache=True)
def augment(center, scale, box, kps, u, n, upper_mask, flip_prob, rot_prob, rot_factor,
            scale_factor, half_body_prob, half_body_min_joints, shift_factor, aspect,
            shift_prob=1.0, upper_prob=0.6914624612740131, min_upper=3, min_lower=3,
            half_padding=1.5, recipe=RECIPE_HRNET):
    """:func:`draw_box` less its last output (which half-body branch was taken): (cx, cy,
    sw, sh, rot_deg, flip) of the crop in source pixels. The defaults of the trailing
    arguments are the hrnet recipe's (which does not read ``box``)."""
    cx, cy, sw, sh, rot, flip, _ = draw_box(
        center, scale, box, kps, u, n, upper_mask, flip_prob, rot_prob, rot_factor, scale_factor,
        half_body_prob, half_body_min_joints, shift_factor, aspect, shift_prob, upper_prob,
        min_upper, min_lower, half_padding, recipe)
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
