"""The warp: fixed-point affine warp + normalise of every crop of a decoded window (pure
numba, CPU and CUDA twins; no DALI import). The loader's only warp on both backends.

DALI's CPU ``warp_affine`` costs ~2.4 ms per 256x192 crop on this class of machine; this
kernel samples the crops straight from a region-of-interest decode and writes normalised CHW
float32 (or uint8 intensities) in one pass. The arithmetic is OpenCV's ``warpAffine(...,
INTER_LINEAR, BORDER_CONSTANT, 0)``: positions in fixed point, rounded to 1/32 px
(``INTER_BITS``), and an exact integer bilinear sum of the four taps with weights in
1/1024; the uint8 output is that sum rounded half up, as OpenCV's, and the float32 output is
``(sum / (255 * 1024) - mean) / std`` without that rounding.

Pixel-centre convention: integers (OpenCV/UDP). The source window (``roi``) starts at
integer source pixel ``anchor`` = (x0, y0) >= 0; positions are computed in source px and only
the integer tap indices are shifted by the anchor, so a crop comes out bit for bit the same
from its own window or from the union window of all the crops of its image (per-image
decoding). Pixels outside the window count as the fill value 0, which is exact as long as
the window covers every pixel the crop touches (``geometry.source_roi`` guarantees that, or
the window is clipped by the image border, where 0 is the border value anyway).

Speed: the window is first *spread* once per decode (:func:`spread_rgb`): each pixel's R, G,
B in three 21-bit lanes of one uint64, so a tap is one load and the bilinear sum of all
three channels is six integer multiplies (the lanes cannot carry: 255 * 32 * 32 < 2^21). A
crop then costs about what OpenCV's SIMD ``warpAffine`` does, rotated or not.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import numba
import numpy as np
from numba import cuda  # noqa: F401  (module global on purpose: the CUDA simulator swaps it)

from ..geometry import invert_affine
from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .op import PEOPLE, NumbaOp, Port

_f32 = np.float32
INTER_BITS = 5  # positions in 1/32 px, as OpenCV's warpAffine
AB_BITS = 10  # matrix terms in 1/1024 px before rounding to 1/32 (OpenCV's AB_BITS)
_LANE = np.uint64(21)
_MASK = np.uint64((1 << 21) - 1)
_ROUND_DELTA = 1 << (AB_BITS - INTER_BITS - 1)  # 1/64 px: round to the nearest 1/32


@numba.njit(cache=True)
def _norm_consts(mean, std):
    """``nc`` = float32 (scale0, scale1, scale2, offset0, offset1, offset2) such that
    ``s * scale + offset == (s / (255 * 1024) - mean) / std`` for a bilinear sum ``s`` in
    1/1024 intensity units. Scalars, not an array: loads from an array could alias ``out``
    and would be repeated for every pixel."""
    k = 255.0 * (1 << AB_BITS)
    return (_f32(1.0 / (k * std[0])), _f32(1.0 / (k * std[1])), _f32(1.0 / (k * std[2])),
            _f32(-mean[0] / std[0]), _f32(-mean[1] / std[1]), _f32(-mean[2] / std[2]))


@numba.njit(cache=True)
def spread_rgb(roi):
    """(h, w) uint64: each RGB pixel of ``roi`` (h, w, 3) uint8 as ``r | g << 21 | b << 42``."""
    h, w = roi.shape[0], roi.shape[1]
    out = np.empty((h, w), np.uint64)
    for y in range(h):
        for x in range(w):
            out[y, x] = (np.uint64(roi[y, x, 0]) | (np.uint64(roi[y, x, 1]) << _LANE)
                         | (np.uint64(roi[y, x, 2]) << (_LANE + _LANE)))
    return out


@numba.njit(cache=True)
def _round(v):
    """The nearest integer, halves up (the CUDA warp inlines the same rounding)."""
    return int(math.floor(v + 0.5))


@numba.njit(cache=True)
def _tap(sp, yy, xx, h, w):
    """The spread pixel at window (xx, yy), 0 outside the window."""
    if yy < 0 or yy >= h or xx < 0 or xx >= w:
        return np.uint64(0)
    return sp[yy, xx]


@numba.njit(cache=True)
def warp_spread(out, sp, m, anchor_x, anchor_y, nc):
    """out (3, H, W) float32 <- ``s * nc[c] + nc[3 + c]``, or uint8 <- ``(s + 512) >> 10``,
    of the fixed-point bilinear sum ``s`` (1/1024 intensity units) of the spread window
    ``sp`` (:func:`spread_rgb`) through ``m`` (2, 3), source px -> crop px (OpenCV
    convention). The window starts at integer source pixel (``anchor_x``, ``anchor_y``) >= 0
    (a window inside the image); outside it the intensity is 0."""
    h, w = sp.shape
    ax, ay = int(anchor_x), int(anchor_y)
    if ax < 0 or ay < 0:
        raise ValueError("warp: the window must start inside the image (anchor >= 0)")
    _, out_h, out_w = out.shape
    raw = out.itemsize == 1  # uint8 intensities (else float32, normalised)
    inv = invert_affine(m)  # crop px -> source px
    ia, ib, itx, ic, id_, ity = inv[0, 0], inv[0, 1], inv[0, 2], inv[1, 0], inv[1, 1], inv[1, 2]
    scale = 1 << AB_BITS
    adx = np.empty(out_w, np.int64)  # column x's share of the position, 1/1024 px
    ady = np.empty(out_w, np.int64)
    for x in range(out_w):
        adx[x] = _round(ia * x * scale)
        ady[x] = _round(ic * x * scale)
    shift = AB_BITS - INTER_BITS
    frac = (1 << INTER_BITS) - 1
    one = np.uint64(1 << INTER_BITS)
    half = np.int64(1 << (2 * INTER_BITS - 1))
    s0, s1, s2, o0, o1, o2 = nc
    # source px -> window px in 1/32 px: an exact integer shift (anchor independence)
    bx = (ax << INTER_BITS)
    by = (ay << INTER_BITS)
    for y in range(out_h):
        x0 = _round((ib * y + itx) * scale) + _ROUND_DELTA
        y0 = _round((id_ * y + ity) * scale) + _ROUND_DELTA
        r0, r1, r2 = out[0, y], out[1, y], out[2, y]
        for x in range(out_w):
            px = ((x0 + adx[x]) >> shift) - bx  # window px, 1/32 units
            py = ((y0 + ady[x]) >> shift) - by
            ix = px >> INTER_BITS
            iy = py >> INTER_BITS
            fx = np.uint64(px & frac)
            fy = np.uint64(py & frac)
            if ix >= 0 and iy >= 0 and ix < w - 1 and iy < h - 1:
                a = sp[iy, ix]
                b = sp[iy, ix + 1]
                c = sp[iy + 1, ix]
                d = sp[iy + 1, ix + 1]
            elif ix < -1 or iy < -1 or ix >= w or iy >= h:
                a = b = c = d = np.uint64(0)
            else:  # some taps outside the window: they count 0
                a = _tap(sp, iy, ix, h, w)
                b = _tap(sp, iy, ix + 1, h, w)
                c = _tap(sp, iy + 1, ix, h, w)
                d = _tap(sp, iy + 1, ix + 1, h, w)
            top = a * (one - fx) + b * fx
            bot = c * (one - fx) + d * fx
            v = top * (one - fy) + bot * fy  # three lanes of at most 255 * 1024
            v0 = np.int64(v & _MASK)
            v1 = np.int64((v >> _LANE) & _MASK)
            v2 = np.int64(v >> (_LANE + _LANE))
            if raw:
                r0[x] = (v0 + half) >> (2 * INTER_BITS)
                r1[x] = (v1 + half) >> (2 * INTER_BITS)
                r2[x] = (v2 + half) >> (2 * INTER_BITS)
            else:
                r0[x] = _f32(v0) * s0 + o0
                r1[x] = _f32(v1) * s1 + o1
                r2[x] = _f32(v2) * s2 + o2


@numba.njit(cache=True)
def warp_into(out, roi, m, anchor_x, anchor_y, nc):
    """:func:`warp_spread` of ``roi`` (h, w, 3) uint8 RGB: one crop (the operator spreads a
    window once for all its crops)."""
    warp_spread(out, spread_rgb(roi), m, anchor_x, anchor_y, nc)


@numba.njit(cache=True)
def warp_normalize(out, roi, m, anchor_x, anchor_y, mean, std):
    """out (3, H, W) float32 <- normalised bilinear warp of ``roi`` (h, w, 3) uint8 RGB.

    ``m`` (2, 3): source px -> crop px (float, OpenCV convention). ``mean``/``std`` (3,) in
    0..1 units. Fill (outside the image) is intensity 0 before normalisation.
    """
    warp_into(out, roi, m, anchor_x, anchor_y, _norm_consts(mean, std))


def _make_warp_gpu(nc, raw: bool):
    """The CUDA warp of the P crops of one image: ``gpu_run(out (P, 3, H, W), matrix
    (P, 2, 3), roi (h, w, 3) uint8, window (4,) int32)``, one thread per output pixel
    (grid-stride), the CPU kernel's fixed-point arithmetic per channel (integer sums equal
    the CPU's; float32 outputs agree to the last bit but for FMA contraction)."""
    s0, s1, s2, o0, o1, o2 = (float(v) for v in nc)
    scale = float(1 << AB_BITS)
    shift = AB_BITS - INTER_BITS
    frac = (1 << INTER_BITS) - 1
    one = 1 << INTER_BITS
    half = 1 << (2 * INTER_BITS - 1)
    rnd = _ROUND_DELTA

    def warp_gpu(out, matrix, roi, window):
        n_px = out.shape[2] * out.shape[3]
        out_w = out.shape[3]
        h = roi.shape[0]
        w = roi.shape[1]
        bx = window[0] << INTER_BITS
        by = window[1] << INTER_BITS
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        for p in range(out.shape[0]):
            a = float(matrix[p, 0, 0])
            b = float(matrix[p, 0, 1])
            c = float(matrix[p, 1, 0])
            d = float(matrix[p, 1, 1])
            det = a * d - b * c  # geometry.invert_affine's formula, without an allocation
            ia = d / det
            ib = -b / det
            ic = -c / det
            id_ = a / det
            itx = -(ia * matrix[p, 0, 2] + ib * matrix[p, 1, 2])
            ity = -(ic * matrix[p, 0, 2] + id_ * matrix[p, 1, 2])
            for q in range(tid, n_px, stride):
                y = q // out_w
                x = q - y * out_w
                xr = int(math.floor((ib * y + itx) * scale + 0.5)) + rnd
                yr = int(math.floor((id_ * y + ity) * scale + 0.5)) + rnd
                px = ((xr + int(math.floor(ia * x * scale + 0.5))) >> shift) - bx
                py = ((yr + int(math.floor(ic * x * scale + 0.5))) >> shift) - by
                ix = px >> INTER_BITS
                iy = py >> INTER_BITS
                fx = px & frac
                fy = py & frac
                for ch in range(3):
                    v = 0
                    for dy in range(2):
                        yy = iy + dy
                        wy = fy if dy == 1 else one - fy
                        for dx in range(2):
                            xx = ix + dx
                            if 0 <= yy < h and 0 <= xx < w:
                                wx = fx if dx == 1 else one - fx
                                v += int(roi[yy, xx, ch]) * wx * wy
                    if raw:
                        out[p, ch, y, x] = (v + half) >> (2 * INTER_BITS)
                    elif ch == 0:
                        out[p, 0, y, x] = np.float32(v) * np.float32(s0) + np.float32(o0)
                    elif ch == 1:
                        out[p, 1, y, x] = np.float32(v) * np.float32(s1) + np.float32(o1)
                    else:
                        out[p, 2, y, x] = np.float32(v) * np.float32(s2) + np.float32(o2)

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
    # plain Python (same float32s): a jitted call here would start numba's compiler (~1 s)
    # in a process whose operators all come from the compile cache; unused by uint8
    nc = getattr(_norm_consts, "py_func", _norm_consts)(np.array(IMAGENET_MEAN),
                                                       np.array(IMAGENET_STD))
    f32, P = "float32", PEOPLE
    inputs = (Port("matrix", f32, (P, 2, 3)), Port("roi", "uint8", (None, None, 3)),
              Port("window", "int32", (4,)))
    occlude = dropping.one if dropping is not None else None
    if dropping is not None:
        inputs += (Port("keypoints", f32, (P, None, 3)),
                   Port("draws", f32, (P, dropping.num_draws)))

    def run(out, matrix, roi, window):
        sp = spread_rgb(roi)  # once for all the image's crops
        for p in range(matrix.shape[0]):
            warp_spread(out[p], sp, matrix[p], window[0], window[1], nc)

    def run_dropping(out, matrix, roi, window, kps, draws):
        sp = spread_rgb(roi)
        for p in range(matrix.shape[0]):
            warp_spread(out[p], sp, matrix[p], window[0], window[1], nc)
            occlude(out[p], out[p], kps[p], draws[p])

    return NumbaOp(name="warp" if dropping is None else f"warp + {dropping.name}",
                   outputs=(Port("image", dtype, (P, 3, out_h, out_w)),), inputs=inputs,
                   cpu_run=run if dropping is None else run_dropping,
                   gpu_run=_make_warp_gpu(nc, dtype == "uint8") if dropping is None else None,
                   threads_per_block=(256, 1, 1), blocks_per_sm=4,
                   num_draws=0 if dropping is None else dropping.num_draws)
