"""Fused affine warp + normalise, the CPU fast path (pure numba; no DALI import).

DALI's CPU ``warp_affine`` costs ~2.4 ms per 256x192 crop on this class of machine; this
kernel samples the crop straight from a region-of-interest decode and writes normalised CHW
float32 in one pass. Same semantics as OpenCV ``warpAffine(..., INTER_LINEAR,
BORDER_CONSTANT, 0)`` followed by ``(x/255 - mean)/std`` -- except that OpenCV quantises
sub-pixel positions to 1/32 px and we do not (positions are float32: ~1e-4 px).

Pixel-centre convention: integers (OpenCV/UDP). The source window (``roi``) starts at
integer source pixel ``anchor`` = (x0, y0); positions are computed in source px and only
the integer tap indices are shifted by the anchor, so a crop comes out bit for bit the same
from its own window or from the union window of all the crops of its image (per-image
decoding). Pixels outside the window count as the fill
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
from numba import cuda  # noqa: F401  (module global on purpose: the CUDA simulator swaps it)

from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .op import NumbaOp, Port

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
def _inverse(m):
    """Crop px -> source px: (ia, ib, itx, ic, id, ity) float64 of the inverse of ``m``."""
    a, b, c, d = float(m[0, 0]), float(m[0, 1]), float(m[1, 0]), float(m[1, 1])
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * m[0, 2] + ib * m[1, 2])
    ity = -(ic * m[0, 2] + id_ * m[1, 2])
    return ia, ib, itx, ic, id_, ity


@numba.njit(cache=True)
def _store(r0, r1, r2, x, v0, v1, v2, nc):
    """Normalise one pixel into the three channel rows ``r0, r1, r2`` of the output."""
    r0[x] = v0 * nc[0] + nc[3]
    r1[x] = v1 * nc[1] + nc[4]
    r2[x] = v2 * nc[2] + nc[5]


@numba.njit(cache=True)
def _border_pixel(r0, r1, r2, x, flat, ax, ay, w, h, fx, fy, nc):
    """One output pixel at source position (fx, fy) whose neighbours may leave the window
    (they then count as 0)."""
    v0 = _f32(0.0)
    v1 = _f32(0.0)
    v2 = _f32(0.0)
    flx = math.floor(fx)
    fly = math.floor(fy)
    x0 = int(flx) - ax
    y0 = int(fly) - ay
    if x0 >= -1 and y0 >= -1 and x0 < w and y0 < h:
        wx = fx - _f32(flx)
        wy = fy - _f32(fly)
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
def _inside(ka, s, x, lo, hi):
    """The float32 position ``ka * x + s`` has both neighbours in the window: lo <= p < hi."""
    p = ka * _f32(x) + s
    return p >= lo and p < hi


@numba.njit(cache=True)
def _run_bounds(ia, sx, ic, sy, out_w, ax, ay, w, h):
    """[lo, hi): the output columns of one row whose four neighbours lie in the window
    [ax, ax + w) x [ay, ay + h) (source px).

    Rounding is monotone, so float32 ``k * x + s`` is monotone in x and the run is an
    interval; a float64 estimate is shrunk until its ends pass the exact float32 test.
    """
    lo = 0.0
    hi = float(out_w)
    for k, s, a, lim in ((float(ia), float(sx), float(ax), ax + w - 1.0),
                         (float(ic), float(sy), float(ay), ay + h - 1.0)):
        if k > 0.0:
            lo = max(lo, (a - s) / k)
            hi = min(hi, (lim - s) / k + 1.0)
        elif k < 0.0:
            lo = max(lo, (lim - s) / k)
            hi = min(hi, (a - s) / k + 1.0)
        elif not (s >= a and s < lim):
            hi = lo
    xlo = max(0, int(math.floor(lo)) - 1)
    xhi = max(0, min(out_w, int(math.ceil(hi)) + 1))
    xlo = min(xlo, xhi)  # an empty run: every pixel takes the careful loop
    x_lo, x_hi = _f32(ax), _f32(ax + w - 1)
    y_lo, y_hi = _f32(ay), _f32(ay + h - 1)
    while xlo < xhi and not (_inside(ia, sx, xlo, x_lo, x_hi)
                             and _inside(ic, sy, xlo, y_lo, y_hi)):
        xlo += 1
    while xhi > xlo and not (_inside(ia, sx, xhi - 1, x_lo, x_hi)
                             and _inside(ic, sy, xhi - 1, y_lo, y_hi)):
        xhi -= 1
    return xlo, xhi


@numba.njit(cache=True, fastmath=_FAST)
def _warp_general(out, flat, ax, ay, w, h, ia, ib, itx, ic, id_, ity, nc):
    _, out_h, out_w = out.shape
    ia32 = _f32(ia)
    ic32 = _f32(ic)
    row = 3 * w
    for y in range(out_h):
        sx = _f32(ib * y + itx)
        sy = _f32(id_ * y + ity)
        r0, r1, r2 = out[0, y], out[1, y], out[2, y]
        xlo, xhi = _run_bounds(ia32, sx, ic32, sy, out_w, ax, ay, w, h)
        for x in range(0, xlo):
            _border_pixel(r0, r1, r2, x, flat, ax, ay, w, h, ia32 * _f32(x) + sx,
                          ic32 * _f32(x) + sy, nc)
        for x in range(xlo, xhi):
            fx = ia32 * _f32(x) + sx
            fy = ic32 * _f32(x) + sy
            # source px: the taps and weights do not depend on where the window starts, so
            # a crop is the same from its own window and from a union of windows. The
            # clamps only guard memory should FMA contraction round differently from
            # _run_bounds (then |w| - 1 < 1e-5).
            # fx, fy >= the anchor >= 0 on the run, so truncation is floor.
            x0 = min(int(fx) - ax, w - 2)
            y0 = min(int(fy) - ay, h - 2)
            wx = fx - _f32(x0 + ax)
            wy = fy - _f32(y0 + ay)
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
            _border_pixel(r0, r1, r2, x, flat, ax, ay, w, h, ia32 * _f32(x) + sx,
                          ic32 * _f32(x) + sy, nc)


@numba.njit(cache=True)
def _warp_separable(out, flat, ax, ay, w, h, ia, itx, id_, ity, nc):
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
        flx = math.floor(fx)
        x0 = int(flx) - ax
        if x0 < -1 or x0 >= w:  # both neighbours outside: the zero pad, weight 0
            left[x] = 0
            wxs[x] = 0.0
        else:
            left[x] = 3 * (x0 + 1)
            wxs[x] = fx - _f32(flx)
            jlo = min(jlo, max(x0, 0))
            jhi = max(jhi, min(x0 + 2, w))
    row = 3 * w
    for y in range(out_h):
        fy = _f32(id_ * y + ity)
        fly = math.floor(fy)
        y0 = int(fly) - ay
        wy = fy - _f32(fly)
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
def warp_into(out, roi, m, anchor_x, anchor_y, nc):
    """out (3, H, W) <- ``v * nc[c] + nc[3 + c]`` of the bilinear warp ``v`` of ``roi``
    (h, w, 3) uint8 RGB (C-contiguous) through ``m`` (2, 3), source px -> crop px (OpenCV
    convention); the window starts at integer source pixel (``anchor_x``, ``anchor_y``)
    >= 0 (a window inside the image).
    Outside the image the intensity is 0. A uint8 ``out`` takes ``nc = RAW`` (rounding half
    up). Positions are computed in source px, so the result does not depend on the window
    as long as it covers the crop's taps."""
    h, w = roi.shape[0], roi.shape[1]
    flat = roi.reshape(-1)
    ax, ay = int(anchor_x), int(anchor_y)
    if ax < 0 or ay < 0:
        raise ValueError("warp_into: the window must start inside the image (anchor >= 0)")
    ia, ib, itx, ic, id_, ity = _inverse(m)
    if ib == 0.0 and ic == 0.0:
        _warp_separable(out, flat, ax, ay, w, h, ia, itx, id_, ity, nc)
    else:
        _warp_general(out, flat, ax, ay, w, h, ia, ib, itx, ic, id_, ity, nc)


@numba.njit(cache=True)
def warp_normalize(out, roi, m, anchor_x, anchor_y, mean, std):
    """out (3, H, W) float32 <- normalised bilinear warp of ``roi`` (h, w, 3) uint8 RGB.

    ``roi`` must be C-contiguous. ``m`` (2, 3): source px -> crop px (float, OpenCV
    convention). ``mean``/``std`` (3,) in 0..1 units. Fill (outside the image) is intensity 0
    before normalisation.
    """
    warp_into(out, roi, m, anchor_x, anchor_y, _norm_consts(mean, std))


# uint8 crops: intensities as they are, rounded half up (the store truncates v + 0.5)
RAW = (_f32(1.0), _f32(1.0), _f32(1.0), _f32(0.5), _f32(0.5), _f32(0.5))


def _make_warp_gpu(nc):
    """The CUDA warp of the P crops of one image: ``gpu_run(out (P, 3, H, W), matrix
    (P, 2, 3), roi (h, w, 3) uint8, window (4,) int32)``, one thread per output pixel
    (grid-stride), bilinear in float32 as the CPU kernel (results agree to float32
    rounding; positions can differ by FMA contraction: ~1e-5 of an intensity level)."""
    s0, s1, s2, o0, o1, o2 = (float(v) for v in nc)

    def warp_gpu(out, matrix, roi, window):
        n_px = out.shape[2] * out.shape[3]
        out_w = out.shape[3]
        h = roi.shape[0]
        w = roi.shape[1]
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        for p in range(out.shape[0]):
            a = float(matrix[p, 0, 0])
            b = float(matrix[p, 0, 1])
            c = float(matrix[p, 1, 0])
            d = float(matrix[p, 1, 1])
            det = a * d - b * c
            ia = d / det
            ib = -b / det
            ic = -c / det
            id_ = a / det
            itx = -(ia * matrix[p, 0, 2] + ib * matrix[p, 1, 2])
            ity = -(ic * matrix[p, 0, 2] + id_ * matrix[p, 1, 2])
            for q in range(tid, n_px, stride):
                y = q // out_w
                x = q - y * out_w
                fx = np.float32(ia) * np.float32(x) + np.float32(ib * y + itx)
                fy = np.float32(ic) * np.float32(x) + np.float32(id_ * y + ity)
                flx = math.floor(fx)
                fly = math.floor(fy)
                x0 = int(flx) - window[0]  # source px -> window px, as the CPU kernel
                y0 = int(fly) - window[1]
                wx = fx - np.float32(flx)
                wy = fy - np.float32(fly)
                v0 = np.float32(0.0)
                v1 = np.float32(0.0)
                v2 = np.float32(0.0)
                for dy in range(2):
                    yy = y0 + dy
                    wyy = wy if dy == 1 else np.float32(1.0) - wy
                    for dx in range(2):
                        xx = x0 + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            wgt = wyy * (wx if dx == 1 else np.float32(1.0) - wx)
                            v0 += wgt * np.float32(roi[yy, xx, 0])
                            v1 += wgt * np.float32(roi[yy, xx, 1])
                            v2 += wgt * np.float32(roi[yy, xx, 2])
                out[p, 0, y, x] = v0 * s0 + o0
                out[p, 1, y, x] = v1 * s1 + o1
                out[p, 2, y, x] = v2 * s2 + o2

    return warp_gpu


@functools.lru_cache(maxsize=None)
def warp_op(input_size: Tuple[int, int], dropping: Optional[NumbaOp] = None,
            dtype: str = "float32") -> NumbaOp:
    """The fused warp (+ normalise) operator for the crops of ``input_size`` = [w, h] that
    one decoded image (or its region) gives.

    Per sample: ``run(image, matrix, roi, window)``: ``matrix`` (P, 2, 3) float32 source px
    -> crop px of each of the P crops; ``roi`` (h, w, 3) uint8, the decoded source window;
    ``window`` (4,) int32 ``[x0, y0, w, h]`` of the roi in the source image (the crop
    operator's ``roi``). Output ``image`` (P, 3, H, W): ImageNet-normalised float32, or
    ``dtype`` uint8 intensities (normalise on the consumer's device:
    :func:`dali_pose.normalize.normalize_images`).
    With ``dropping`` (a :mod:`.dropping` operator of the same dtype; CPU only, its
    ``one`` kernel copies and then draws, so it may run in place), ``run(image, matrix, roi,
    window, kps, draws)`` also drops information from the crops: numba operators cannot work
    in place, and a separate operator would copy every crop once more.
    (A batch-parallel variant calling a ``parallel=True`` numba function from DALI's
    ``batch_processing`` mode gave wrong crops now and then: numba's threading layer is not
    safe under DALI's executor threads. Do not reintroduce it without a stress test.)
    """
    out_w, out_h = int(input_size[0]), int(input_size[1])
    nc = _norm_consts(np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)) \
        if dtype == "float32" else RAW
    f32 = "float32"
    inputs = (Port("matrix", f32, 3), Port("roi", "uint8", 3), Port("window", "int32", 1))
    occlude = dropping.one if dropping is not None else None
    if dropping is not None:
        inputs += (Port("keypoints", f32, 3), Port("draws", f32, 2))

    def run(out, matrix, roi, window):
        for p in range(matrix.shape[0]):
            warp_into(out[p], roi, matrix[p], window[0], window[1], nc)

    def run_dropping(out, matrix, roi, window, kps, draws):
        for p in range(matrix.shape[0]):
            warp_into(out[p], roi, matrix[p], window[0], window[1], nc)
            occlude(out[p], out[p], kps[p], draws[p])

    def setup(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][0] = ins[0][i][0]  # P crops: matrix (P, 2, 3) is input 0
            outs[0][i][1] = 3
            outs[0][i][2] = out_h
            outs[0][i][3] = out_w

    return NumbaOp(name="warp" if dropping is None else f"warp + {dropping.name}",
                   outputs=(Port("image", dtype, 4),), inputs=inputs,
                   cpu_run=run if dropping is None else run_dropping, setup=setup,
                   gpu_run=_make_warp_gpu(nc) if dropping is None else None,
                   threads_per_block=(256, 1, 1), blocks_per_sm=4,
                   num_draws=0 if dropping is None else dropping.num_draws)
