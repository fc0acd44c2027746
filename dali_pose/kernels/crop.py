"""Per-sample crop geometry as a DALI CPU numba operator (pure numba; no DALI import).

Inputs (per sample): center (2,) f32, scale (2,) f32 (box px), keypoints (K, 3) f32 in
source px, uniform draws (NUM_UNIFORM,) f32, normal draws (NUM_NORMAL,) f32, image shape
(3,) i64 (H, W, C, from ``fn.peek_image_shape``).

Outputs: matrix (2, 3) f32 (source px -> crop px, OpenCV convention); keypoints (K, 3) f32
in crop px, joints swapped when flipped; box (8,) f32 = [cx, cy, w, h] of the crop in source
px, then the person's unpadded box in crop px [cx, cy, w, h] (for NODA placement);
flipped (1,) i32; and two backend-specific outputs:
  * CPU fast path: window anchor (2,) i32 (x0, y0) and window shape (2,) i32 (w, h) of the
    source region the crop touches (for region-of-interest decoding);
  * DALI ``warp_affine`` path: the matrix in DALI's pixel convention (2, 3) f32, and a
    placeholder (1,) i32.
Six in, six out: DALI 2.4's ``setup_fn`` wrapper reads input shapes with the number of
*outputs*, so the two counts are kept equal.
"""
from __future__ import annotations

import numba
import numpy as np

from ..geometry import augment, invert_affine, source_roi, transform_keypoints, udp_matrix

# Extra source pixels around the crop footprint: bilinear needs one neighbour.
ROI_MARGIN = 1


def make_crop_kernel(cfg, info, train: bool, roi_outputs: bool):
    """``(run, setup)`` for the crop-geometry operator described in the module docstring."""
    out_w, out_h = (float(v) for v in cfg.model.input_size)
    k = info.num_joints
    a = cfg.aug
    flip_prob, rot_prob, rot_factor = a.flip_prob, a.rot_prob, a.rot_factor
    scale_factor, half_prob = a.scale_factor, a.half_body_prob
    half_min, shift_factor = a.half_body_min_joints, a.shift_factor
    aspect = out_w / out_h
    padding = cfg.data.padding
    flip_index = info.flip_index.astype(np.int64)
    upper = np.zeros(k, np.bool_)
    upper[list(info.upper_body)] = True
    do_aug = bool(train)

    @numba.njit
    def place(matrix, kps_out, box, flipped, center, scale, kps, u, n):
        if do_aug:
            cx, cy, sw, sh, rot, flip = augment(center, scale, kps, u, n, upper, flip_prob,
                                                rot_prob, rot_factor, scale_factor, half_prob,
                                                half_min, shift_factor, aspect)
        else:
            cx, cy, sw, sh, rot, flip = center[0], center[1], scale[0], scale[1], 0.0, False
        m = udp_matrix(cx, cy, sw, sh, rot, out_w, out_h, flip)
        for r in range(2):
            for c in range(3):
                matrix[r, c] = m[r, c]
        transform_keypoints(m, kps, flip, flip_index, kps_out)
        box[0] = cx
        box[1] = cy
        box[2] = sw
        box[3] = sh
        # The person's own (unpadded, unaugmented) box, in crop pixels.
        box[4] = m[0, 0] * center[0] + m[0, 1] * center[1] + m[0, 2]
        box[5] = m[1, 0] * center[0] + m[1, 1] * center[1] + m[1, 2]
        box[6] = scale[0] / padding * (out_w - 1.0) / sw
        box[7] = scale[1] / padding * (out_h - 1.0) / sh
        flipped[0] = 1 if flip else 0
        return m

    @numba.njit
    def run_roi(matrix, kps_out, box, flipped, anchor, size, center, scale, kps, u, n, shape):
        m = place(matrix, kps_out, box, flipped, center, scale, kps, u, n)
        x0, y0, x1, y1 = source_roi(invert_affine(m), out_w, out_h, shape[1], shape[0],
                                    ROI_MARGIN)
        if x1 <= x0 or y1 <= y0:  # crop entirely off the image: decode one pixel
            x0, y0, x1, y1 = 0, 0, 1, 1
        anchor[0] = x0
        anchor[1] = y0
        size[0] = x1 - x0
        size[1] = y1 - y0

    @numba.njit
    def run_dali(matrix, kps_out, box, flipped, m_dali, unused, center, scale, kps, u, n,
                 shape):
        m = place(matrix, kps_out, box, flipped, center, scale, kps, u, n)
        # DALI's warp_affine puts pixel centres at +0.5: conjugate by that shift.
        for r in range(2):
            for c in range(3):
                m_dali[r, c] = m[r, c]
            m_dali[r, 2] += 0.5 * (1.0 - m[r, 0] - m[r, 1])
        unused[0] = 0

    def setup(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = 2
            outs[0][i][1] = 3
            outs[1][i][0] = k
            outs[1][i][1] = 3
            outs[2][i][0] = 8
            outs[3][i][0] = 1
            if roi_outputs:
                outs[4][i][0] = 2
                outs[5][i][0] = 2
            else:
                outs[4][i][0] = 2
                outs[4][i][1] = 3
                outs[5][i][0] = 1

    return (run_roi if roi_outputs else run_dali), setup
