"""Fused affine warp + normalise, the CPU fast path (pure numba; no DALI import).

DALI's CPU ``warp_affine`` costs ~2.4 ms per 256x192 crop on this class of machine; this
kernel samples the crop straight from a region-of-interest decode and writes normalised CHW
float32 in one pass. Same semantics as OpenCV ``warpAffine(..., INTER_LINEAR,
BORDER_CONSTANT, 0)`` followed by ``(x/255 - mean)/std`` -- except that OpenCV quantises
sub-pixel positions to 1/32 px and we do not (positions are float32: ~1e-4 px).

Pixel-centre convention: integers (OpenCV/UDP). The source window (``roi``) starts at
integer source pixel ``anchor`` = (x0, y0); pixels outside the window count as the fill
value 0, which is exact as long as the window covers every pixel the crop touches
(``geometry.source_roi`` guarantees that, or the window is clipped by the image border,
where 0 is the border value anyway).

Two loops compute the same bilinear sum (they differ only in float rounding, ~1e-6):
* unrotated crops (the matrix has no shear/rotation: validation, and the 1 - rot_prob share
  of training crops) are separable: each output row blends two source rows once
  (contiguous, so LLVM vectorises it), then gathers two blended pixels per output pixel;
* rotated crops walk each output row along a line through the source; the run of pixels
  whose four neighbours all lie inside the window takes a branch-free loop, the ends the
  careful one.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numba
import numpy as np

from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .op import NumbaOp, Port, fixed_shapes

_f32 = np.float32
# Fused multiply-add only (~15% on the rotated loop here); no NaN/Inf or reordering licence.
_FAST = {"contract"}


@numba.njit(cache=True)
def _norm_consts(mean, std):
    """``nc`` = float32 (scale0, scale1, scale2, offset0, offset1, offset2) such that
    ``v * scale + offset == (v / 255 - mean) / std``. Scalars, not an array: loads from an
    array could alias ``out`` and would be repeated for every pixel."""
    return (_f32(1.0 / (255.0 * std[0])), _f32(1.0 / (255.0 * std[1])),
            _f32(1.0 / (255.0 * std[2])), _f32(-mean[0] / std[0]), _f32(-mean[1] / std[1]),
            _f32(-mean[2] / std[2]))


@numba.njit(cache=True)
def _inverse(m, anchor_x, anchor_y):
    """Crop px -> window px: (ia, ib, itx, ic, id, ity) float64 of the inverse of ``m``."""
    a, b, c, d = float(m[0, 0]), float(m[0, 1]), float(m[1, 0]), float(m[1, 1])
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * m[0, 2] + ib * m[1, 2]) - anchor_x
    ity = -(ic * m[0, 2] + id_ * m[1, 2]) - anchor_y
    return ia, ib, itx, ic, id_, ity


@numba.njit(cache=True)
def _store(r0, r1, r2, x, v0, v1, v2, nc):
    """Normalise one pixel into the three channel rows ``r0, r1, r2`` of the output."""
    r0[x] = v0 * nc[0] + nc[3]
    r1[x] = v1 * nc[1] + nc[4]
    r2[x] = v2 * nc[2] + nc[5]


@numba.njit(cache=True)
def _border_pixel(r0, r1, r2, x, flat, w, h, fx, fy, nc):
    """One output pixel whose neighbours may leave the window (they then count as 0)."""
    v0 = _f32(0.0)
    v1 = _f32(0.0)
    v2 = _f32(0.0)
    x0 = int(math.floor(fx))
    y0 = int(math.floor(fy))
    if x0 >= -1 and y0 >= -1 and x0 < w and y0 < h:
        wx = fx - _f32(x0)
        wy = fy - _f32(y0)
        for dy in range(2):
            yy = y0 + dy
            if yy < 0 or yy >= h:
                continue
            wyy = wy if dy == 1 else _f32(1.0) - wy
            for dx in range(2):
                xx = x0 + dx
                if xx < 0 or xx >= w:
                    continue
                wgt = wyy * (wx if dx == 1 else _f32(1.0) - wx)
                p = (yy * w + xx) * 3
                v0 += wgt * _f32(flat[p])
                v1 += wgt * _f32(flat[p + 1])
                v2 += wgt * _f32(flat[p + 2])
    _store(r0, r1, r2, x, v0, v1, v2, nc)


@numba.njit(cache=True)
def _inside(ka, s, x, lim):
    """The float32 position ``ka * x + s`` has both neighbours in [0, lim]: 0 <= p < lim."""
    p = ka * _f32(x) + s
    return p >= 0.0 and p < lim


@numba.njit(cache=True)
def _run_bounds(ia, sx, ic, sy, out_w, w, h):
    """[lo, hi): the output columns of one row whose four neighbours lie in the window.

    Rounding is monotone, so float32 ``k * x + s`` is monotone in x and the run is an
    interval; a float64 estimate is shrunk until its ends pass the exact float32 test.
    """
    lo = 0.0
    hi = float(out_w)
    for k, s, lim in ((float(ia), float(sx), w - 1.0), (float(ic), float(sy), h - 1.0)):
        if k > 0.0:
            lo = max(lo, -s / k)
            hi = min(hi, (lim - s) / k + 1.0)
        elif k < 0.0:
            lo = max(lo, (lim - s) / k)
            hi = min(hi, -s / k + 1.0)
        elif not (s >= 0.0 and s < lim):
            hi = lo
    xlo = max(0, int(math.floor(lo)) - 1)
    xhi = max(0, min(out_w, int(math.ceil(hi)) + 1))
    xlo = min(xlo, xhi)  # an empty run: every pixel takes the careful loop
    while xlo < xhi and not (_inside(ia, sx, xlo, _f32(w - 1)) and _inside(ic, sy, xlo, _f32(h - 1))):
        xlo += 1
    while xhi > xlo and not (_inside(ia, sx, xhi - 1, _f32(w - 1))
                             and _inside(ic, sy, xhi - 1, _f32(h - 1))):
        xhi -= 1
    return xlo, xhi


@numba.njit(cache=True, fastmath=_FAST)
def _warp_general(out, flat, w, h, ia, ib, itx, ic, id_, ity, nc):
    _, out_h, out_w = out.shape
    ia32 = _f32(ia)
    ic32 = _f32(ic)
    row = 3 * w
    for y in range(out_h):
        sx = _f32(ib * y + itx)
        sy = _f32(id_ * y + ity)
        r0, r1, r2 = out[0, y], out[1, y], out[2, y]
        xlo, xhi = _run_bounds(ia32, sx, ic32, sy, out_w, w, h)
        for x in range(0, xlo):
            _border_pixel(r0, r1, r2, x, flat, w, h, ia32 * _f32(x) + sx, ic32 * _f32(x) + sy, nc)
        for x in range(xlo, xhi):
            fx = ia32 * _f32(x) + sx
            fy = ic32 * _f32(x) + sy
            # fx, fy >= 0 on the run, so truncation is floor; the clamps only guard memory
            # should FMA contraction round differently from _run_bounds (then |w| - 1 < 1e-5).
            x0 = min(int(fx), w - 2)
            y0 = min(int(fy), h - 2)
            wx = fx - _f32(x0)
            wy = fy - _f32(y0)
            p = (y0 * w + x0) * 3
            q = p + row
            t0 = _f32(flat[p]) + wx * (_f32(flat[p + 3]) - _f32(flat[p]))
            t1 = _f32(flat[p + 1]) + wx * (_f32(flat[p + 4]) - _f32(flat[p + 1]))
            t2 = _f32(flat[p + 2]) + wx * (_f32(flat[p + 5]) - _f32(flat[p + 2]))
            b0 = _f32(flat[q]) + wx * (_f32(flat[q + 3]) - _f32(flat[q]))
            b1 = _f32(flat[q + 1]) + wx * (_f32(flat[q + 4]) - _f32(flat[q + 1]))
            b2 = _f32(flat[q + 2]) + wx * (_f32(flat[q + 5]) - _f32(flat[q + 2]))
            _store(r0, r1, r2, x, t0 + wy * (b0 - t0), t1 + wy * (b1 - t1), t2 + wy * (b2 - t2),
                   nc)
        for x in range(xhi, out_w):
            _border_pixel(r0, r1, r2, x, flat, w, h, ia32 * _f32(x) + sx, ic32 * _f32(x) + sy, nc)


@numba.njit(cache=True)
def _warp_separable(out, flat, w, h, ia, itx, id_, ity, nc):
    """No rotation/shear: source x depends on the output column only, y on the row only."""
    _, out_h, out_w = out.shape
    # Blended row with one zero pixel either side: window column j lives at 3 * (j + 1).
    tmp = np.zeros(3 * (w + 2), np.float32)
    left = np.empty(out_w, np.int64)
    wxs = np.empty(out_w, np.float32)
    ia32 = _f32(ia)
    sx = _f32(itx)
    jlo = w
    jhi = 0
    for x in range(out_w):
        fx = ia32 * _f32(x) + sx
        x0 = int(math.floor(fx))
        if x0 < -1 or x0 >= w:  # both neighbours outside: the zero pad, weight 0
            left[x] = 0
            wxs[x] = 0.0
        else:
            left[x] = 3 * (x0 + 1)
            wxs[x] = fx - _f32(x0)
            jlo = min(jlo, max(x0, 0))
            jhi = max(jhi, min(x0 + 2, w))
    row = 3 * w
    for y in range(out_h):
        fy = _f32(id_ * y + ity)
        y0 = int(math.floor(fy))
        wy = fy - _f32(y0)
        top = y0 >= 0 and y0 < h
        bot = y0 + 1 >= 0 and y0 + 1 < h
        pt = y0 * row
        r0, r1, r2 = out[0, y], out[1, y], out[2, y]
        pb = pt + row
        for j in range(3 * jlo, 3 * jhi):
            vt = _f32(flat[pt + j]) if top else _f32(0.0)
            vb = _f32(flat[pb + j]) if bot else _f32(0.0)
            tmp[3 + j] = vt + wy * (vb - vt)
        for x in range(out_w):
            p = left[x]
            wx = wxs[x]
            _store(r0, r1, r2, x, tmp[p] + wx * (tmp[p + 3] - tmp[p]),
                   tmp[p + 1] + wx * (tmp[p + 4] - tmp[p + 1]),
                   tmp[p + 2] + wx * (tmp[p + 5] - tmp[p + 2]), nc)


@numba.njit(cache=True)
def warp_normalize(out, roi, m, anchor_x, anchor_y, mean, std):
    """out (3, H, W) float32 <- normalised bilinear warp of ``roi`` (h, w, 3) uint8 RGB.

    ``roi`` must be C-contiguous. ``m`` (2, 3): source px -> crop px (float, OpenCV
    convention). ``mean``/``std`` (3,) in 0..1 units. Fill (outside the image) is intensity 0
    before normalisation.
    """
    h, w = roi.shape[0], roi.shape[1]
    flat = roi.reshape(-1)
    nc = _norm_consts(mean, std)
    ia, ib, itx, ic, id_, ity = _inverse(m, anchor_x, anchor_y)
    if ib == 0.0 and ic == 0.0:
        _warp_separable(out, flat, w, h, ia, itx, id_, ity, nc)
    else:
        _warp_general(out, flat, w, h, ia, ib, itx, ic, id_, ity, nc)


@functools.lru_cache(maxsize=None)
def warp_op(input_size: Tuple[int, int], dropping: Optional[NumbaOp] = None) -> NumbaOp:
    """The fused warp + normalise operator (CPU) for crops of ``input_size`` = [w, h].

    Per sample: ``run(image, roi, matrix, window)``: ``roi`` (h, w, 3) uint8, the decoded
    source window; ``matrix`` (2, 3) float32 source px -> crop px; ``window`` (4,) int32
    ``[x0, y0, w, h]`` of the roi in the source image (the crop operator's ``roi``). Output
    ``image`` (3, H, W) float32, ImageNet-normalised.
    With ``dropping`` (a :mod:`.dropping` operator, whose CPU kernel copies and then draws,
    so it may run in place), ``run(image, roi, matrix, window, kps, draws)`` also drops
    information from the crop: numba operators cannot work in place, and a separate
    operator would copy every crop once more.
    (A batch-parallel variant calling a ``parallel=True`` numba function from DALI's
    ``batch_processing`` mode gave wrong crops now and then: numba's threading layer is not
    safe under DALI's executor threads. Do not reintroduce it without a stress test.)
    """
    out_w, out_h = int(input_size[0]), int(input_size[1])
    mean_a = np.array(IMAGENET_MEAN, np.float64)
    std_a = np.array(IMAGENET_STD, np.float64)
    f32 = "float32"
    inputs = (Port("roi", "uint8", 3), Port("matrix", f32, 2), Port("window", "int32", 1))

    def run(out, roi, matrix, window):
        warp_normalize(out, roi, matrix, float(window[0]), float(window[1]), mean_a, std_a)

    if dropping is not None:
        occlude = dropping.cpu_kernel
        inputs += (Port("keypoints", f32, 2), Port("draws", f32, 1))

    def run_dropping(out, roi, matrix, window, kps, draws):
        warp_normalize(out, roi, matrix, float(window[0]), float(window[1]), mean_a, std_a)
        occlude(out, out, kps, draws)

    return NumbaOp(name="warp" if dropping is None else f"warp + {dropping.name}",
                   outputs=(Port("image", f32, 3),), inputs=inputs,
                   cpu_run=run if dropping is None else run_dropping,
                   setup=fixed_shapes((3, out_h, out_w)),
                   num_draws=0 if dropping is None else dropping.num_draws)
