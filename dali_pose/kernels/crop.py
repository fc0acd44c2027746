"""Crop geometry: the augmented boxes, their matrices, the keypoints in the crops.

The operator (:func:`crop_op`, CPU only: its inputs are host data) turns the source's
boxes, keypoints and random draws into everything the later stages need. A DALI sample is
one decoded image and the P >= 1 people cropped from it. Per sample:

inputs
    ``center`` (P, 2) f32 and ``size`` (P, 4) f32: the people's padded boxes in source px,
    as ``PoseIndex`` holds them: ``center`` (x, y); ``scale`` (w, h), then ``box_size``
    (w, h) before the aspect fix (what the mmpose recipe's shift is a fraction of; one
    port with ``scale``, as a DALI numba operator takes at most six inputs);
    ``keypoints`` (P, K, 3) f32 in source px; ``uniform`` (P, NUM_UNIFORM) and ``normal``
    (P, NUM_NORMAL) f32 draws (:mod:`dali_pose.draws`, layout in :mod:`dali_pose.geometry`);
    ``image_shape`` (3,) i64 (H, W, C) from ``peek_image_shape``.
outputs
    ``matrix`` (P, 2, 3) f32, source px -> crop px (OpenCV convention); ``keypoints``
    (P, K, 3) f32 in crop px, joints swapped when flipped; ``crop_box`` (P, 4) f32
    ``[cx, cy, w, h]`` of each crop in source px after augmentation; ``person_box`` (P, 4)
    f32 ``[cx, cy, w, h]`` of each person's own (unpadded, unaugmented) box in crop px (NODA
    places occluders by it); ``flipped`` (P,) i32; ``window`` (4,) i32 ``[x0, y0, w, h]``:
    the source window all P crops sample (decoded once for them; never empty).

Geometry comes from :mod:`dali_pose.geometry` (the one place for it); this module only
wires it into one kernel.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numba
import numpy as np

from ..geometry import (NUM_NORMAL, NUM_UNIFORM, AugParams, augment, invert_affine,
                        msra_matrix, source_roi, transform_keypoints, udp_matrix)
from .op import PEOPLE, NumbaOp, Port

# Extra source pixels around the crop footprint: bilinear needs one neighbour.
ROI_MARGIN = 1


@functools.lru_cache(maxsize=None)
def crop_op(input_size: Tuple[int, int], padding: float, flip_index: Tuple[int, ...],
            upper_body: Tuple[bool, ...], aug: Optional[AugParams],
            unbiased: bool = True) -> NumbaOp:
    """The crop-geometry operator for crops of ``input_size`` = [w, h].

    ``padding``: the box enlargement of the index (to recover the person's own box);
    ``flip_index`` / ``upper_body``: the dataset's joint swap and upper-body mask; ``aug``:
    the training augmentation (None: the box as it is, no flip); ``unbiased``: UDP's crop
    (:func:`~dali_pose.geometry.udp_matrix`) or HRNet's classic one (``msra_matrix``).
    """
    out_w, out_h = (float(v) for v in input_size)
    matrix_of = udp_matrix if unbiased else msra_matrix
    span_w, span_h = (out_w - 1.0, out_h - 1.0) if unbiased else (out_w, out_h)
    k = len(flip_index)
    flip_idx = np.asarray(flip_index, np.int64)
    upper = np.asarray(upper_body, np.bool_)
    aspect = out_w / out_h
    do_aug = aug is not None
    (flip_prob, rot_prob, rot_factor, scale_factor, half_prob, half_min, shift_factor,
     shift_prob, upper_prob, min_upper, min_lower, half_pad,
     recipe) = aug if do_aug else AugParams(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    pad = float(padding)

    @numba.njit
    def place(matrix, kps_out, crop_box, person_box, flipped, center, size, kps, u, n):
        scale = size[0:2]
        if do_aug:
            cx, cy, sw, sh, rot, flip = augment(center, scale, size[2:4], kps, u, n, upper,
                                                flip_prob, rot_prob, rot_factor, scale_factor,
                                                half_prob, half_min, shift_factor, aspect,
                                                shift_prob, upper_prob, min_upper, min_lower,
                                                half_pad, recipe)
        else:
            cx, cy, sw, sh, rot, flip = center[0], center[1], scale[0], scale[1], 0.0, False
        m = matrix_of(cx, cy, sw, sh, rot, out_w, out_h, flip)
        for r in range(2):
            for c in range(3):
                matrix[r, c] = m[r, c]
        transform_keypoints(m, kps, flip, flip_idx, kps_out)
        crop_box[0] = cx
        crop_box[1] = cy
        crop_box[2] = sw
        crop_box[3] = sh
        person_box[0] = m[0, 0] * center[0] + m[0, 1] * center[1] + m[0, 2]
        person_box[1] = m[1, 0] * center[0] + m[1, 1] * center[1] + m[1, 2]
        person_box[2] = scale[0] / pad * span_w / sw
        person_box[3] = scale[1] / pad * span_h / sh
        flipped[0] = 1 if flip else 0
        return m

    def run(matrix, kps_out, crop_box, person_box, flipped, window, center, size, kps, u, n,
            shape):
        x0, y0, x1, y1 = shape[1], shape[0], 0, 0
        for p in range(center.shape[0]):
            m = place(matrix[p], kps_out[p], crop_box[p], person_box[p], flipped[p:p + 1],
                      center[p], size[p], kps[p], u[p], n[p])
            a0, b0, a1, b1 = source_roi(invert_affine(m), out_w, out_h, shape[1], shape[0],
                                        ROI_MARGIN)
            if a1 > a0 and b1 > b0:  # the union of the crops' windows
                x0, y0, x1, y1 = min(x0, a0), min(y0, b0), max(x1, a1), max(y1, b1)
        if x1 <= x0 or y1 <= y0:  # every crop entirely off the image: decode one pixel
            x0, y0, x1, y1 = 0, 0, 1, 1
        window[0] = x0
        window[1] = y0
        window[2] = x1 - x0
        window[3] = y1 - y0

    f32, i32, P = "float32", "int32", PEOPLE
    return NumbaOp(
        name="crop geometry",
        outputs=(Port("matrix", f32, (P, 2, 3)), Port("keypoints", f32, (P, k, 3)),
                 Port("crop_box", f32, (P, 4)), Port("person_box", f32, (P, 4)),
                 Port("flipped", i32, (P,)), Port("window", i32, (4,))),
        inputs=(Port("center", f32, (P, 2)), Port("size", f32, (P, 4)),
                Port("keypoints", f32, (P, k, 3)), Port("uniform", f32, (P, NUM_UNIFORM)),
                Port("normal", f32, (P, NUM_NORMAL)), Port("image_shape", "int64", (3,))),
        cpu_run=run)
