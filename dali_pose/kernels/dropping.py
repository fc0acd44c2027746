"""Information dropping on the crop: AID and its comparison family, one numba kernel.

The kernel works on the **normalised CHW float32 crop** (3, H, W) (ImageNet mean/std already
applied, :mod:`dali_pose.normalize`), so "black" is the per-channel value ``(0 - mean_c) /
std_c``. Keypoints arrive as ``kps`` (K, 3) float32 in crop pixels (OpenCV convention: pixel
centres on integers, pixel (x, y) covers [x-0.5, x+0.5] x [y-0.5, y+0.5]). All randomness
comes in as ``draws``, a float32 vector of ``num_draws`` values per sample made by
:mod:`dali_pose.draws` from (seed, epoch, sample): ``draws[0]`` is the *gate* (1: drop, 0:
leave the crop as it is), decided there with the scheduled probability, so a probability is
data, never a constant compiled into the kernel; ``draws[1:]`` are U(0, 1) values the kernel
turns into geometry.

``dropping_op(method, input_size, ...)`` describes the operator (:class:`DroppingOp`, a
:class:`~dali_pose.kernels.op.NumbaOp`): outputs ``(image_out,)``, inputs ``(image_in, kps,
draws)``; ``dropping_op_from(occlusion_section, input_size)`` takes the method's own values
from an object with the config's field names. ``params(kps, draws)`` gives the per-sample
geometry in plain Python from the *same* njit helpers the kernels call, so tests can check
statistics (compiled, ``NUMBA_DISABLE_JIT``, CUDA-simulator and GPU runs share one code path).

Geometry is exact in integers where it decides pixels: circle centres and radii are
quantised to 1/256 px (``QUANT``) and the inside test is done in int64, so CPU, GPU and the
pure-Python reference pick the same pixels (no float contraction/FMA differences).

Reading of the paper
--------------------
AID (Huang et al., "How to Train Your Robust Human Pose Estimator: Pay Attention to the
Constraint Cue"; first version "AID: Pushing the Performance Boundary of Human Pose
Estimation with Information Dropping Augmentation"):

* ``aid`` (keypoint-aware): per gated crop, ``occlusion.num`` occluders. Each picks one
  keypoint uniformly among those that are *annotated* (v > 0) and
  fall on a crop pixel after the geometry (v = 1 "labelled but not visible" counts: the point
  of AID is to make the network use the constraint cue, and COCO's v = 1 joints are exactly
  where a person is occluded; requiring v = 2 would leave few candidates in crowds). With
  probability ``shift_prob`` the circle centre is moved off the keypoint by
  (U(-s, s), U(-s, s)) * w, s = ``shift_spread``; otherwise it sits exactly on the keypoint.
  Radius ~ U(radius[0], radius[1]) * w with w the network input width (the radius is in crop
  pixels because we run after the geometry). Pixels whose centre lies in the closed disc are
  set to black. A crop with no candidate keypoint is left unchanged.
* ``cutout``: the same circles, centre uniform over the crop (DeVries & Taylor, but a disc of
  the AID radius instead of a square).
* ``erasing`` (Zhong et al., Random Erasing): area fraction ~ U(erasing_area), aspect
  h/w ~ U(erasing_aspect) (uniform as in the paper, not log-uniform), size rounded to whole
  pixels; if it does not fit, retry with fresh draws up to ``ERASING_TRIES`` times, else leave
  the crop unchanged (the paper retries until it fits; its code gives up after 100 tries).
  Top-left corner uniform over the positions where it fits.
* ``hide_and_seek`` (Singh & Lee): patch size g picked uniformly from ``grid_sizes``
  (0 = hide nothing); the crop is cut into g x g patches anchored at the top-left corner
  (the last row/column may be partial); each patch is hidden with probability ``hide_prob``.
  One draw per patch (``num_draws`` covers the smallest positive g).
* ``gridmask`` (Chen et al., GridMask): period d ~ integer U[gridmask_period], offsets
  (dx, dy) ~ integer U[0, d); ``gridmask_ratio`` is the paper's r (kept stripe width l =
  round(r d)); the dropped part of each d x d unit is the (d - l) x (d - l) square, so a unit
  keeps 1 - (1 - r)^2 of its area (0.75 at r = 0.5). No mask rotation (the paper's ImageNet
  setting). A pixel is dropped when (x - dx) mod d >= l and (y - dy) mod d >= l.
* Every method fills with black (zero intensity before normalisation), so an ablation
  changes only the shape of what is dropped. Targets, target weights and keypoints are never
  touched: the kernels have no target outputs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numba
import numpy as np
from numba import cuda

from ..normalize import black_fill
from .common import copy_image, f64, imax, imin, kp_on_crop
from .methods import DROPPING_METHODS
from .op import PEOPLE, NumbaOp, Port

METHODS = tuple(DROPPING_METHODS)
QUANT = 256  # circle centres/radii in 1/QUANT px, inside test in exact int64
ERASING_TRIES = 10
AID_DRAWS_PER_OCCLUDER = 5  # keypoint pick, shift?, shift x, shift y, radius
CUTOUT_DRAWS_PER_OCCLUDER = 3  # centre x, centre y, radius
GPU_THREADS = (256, 1, 1)  # grid-stride loops: any launch shape is correct
GPU_BLOCKS_PER_SM = 2


@numba.njit(cache=True)
def _q(v):
    """A coordinate in px -> int64 in 1/QUANT px (round half up)."""
    return int(math.floor(v * QUANT + 0.5))


@numba.njit(cache=True)
def gated(draws):
    """The crop is to be changed: the gate ``draws[0]`` is 1 (see the module docstring)."""
    return f64(draws[0]) > 0.5


@numba.njit(cache=True)
def aid_occluder(kps, draws, base, w, h, r_lo, r_hi, shift_prob, spread):
    """One AID occluder from draws[base:base+5].

    Returns (ok, joint, shifted, cxq, cyq, rq): centre and radius in 1/QUANT px. ok=False
    when no annotated keypoint falls on the crop.
    """
    n = 0
    for j in range(kps.shape[0]):
        if kp_on_crop(kps, j, w, h):
            n += 1
    if n == 0:
        return False, -1, False, 0, 0, 0
    pick = imin(int(f64(draws[base]) * n), n - 1)
    joint = -1
    seen = 0
    for j in range(kps.shape[0]):
        if kp_on_crop(kps, j, w, h):
            if seen == pick:
                joint = j
            seen += 1
    cx = f64(kps[joint, 0])
    cy = f64(kps[joint, 1])
    shifted = f64(draws[base + 1]) < shift_prob
    if shifted:
        cx = cx + (2.0 * f64(draws[base + 2]) - 1.0) * spread * w
        cy = cy + (2.0 * f64(draws[base + 3]) - 1.0) * spread * w
    r = (r_lo + f64(draws[base + 4]) * (r_hi - r_lo)) * w
    return True, joint, shifted, _q(cx), _q(cy), _q(r)


@numba.njit(cache=True)
def cutout_occluder(draws, base, w, h, r_lo, r_hi):
    """One cutout disc from draws[base:base+3]: centre uniform over the crop area.

    Returns (cxq, cyq, rq) in 1/QUANT px.
    """
    cx = -0.5 + f64(draws[base]) * w
    cy = -0.5 + f64(draws[base + 1]) * h
    r = (r_lo + f64(draws[base + 2]) * (r_hi - r_lo)) * w
    return _q(cx), _q(cy), _q(r)


@numba.njit(cache=True)
def in_disc(x, y, cxq, cyq, rq):
    dx = x * QUANT - cxq
    dy = y * QUANT - cyq
    return dx * dx + dy * dy <= rq * rq


@numba.njit(cache=True)
def erasing_rect(draws, base, w, h, a_lo, a_hi, asp_lo, asp_hi, tries):
    """Random Erasing rectangle. Returns (ok, x0, y0, we, he) in whole pixels."""
    for t in range(tries):
        b = base + 4 * t
        area = (a_lo + f64(draws[b]) * (a_hi - a_lo)) * w * h
        aspect = asp_lo + f64(draws[b + 1]) * (asp_hi - asp_lo)  # h / w
        he = int(math.floor(math.sqrt(area * aspect) + 0.5))
        we = int(math.floor(math.sqrt(area / aspect) + 0.5))
        if 0 < we < w and 0 < he < h:
            x0 = imin(int(f64(draws[b + 2]) * (w - we + 1)), w - we)
            y0 = imin(int(f64(draws[b + 3]) * (h - he + 1)), h - he)
            return True, x0, y0, we, he
    return False, 0, 0, 0, 0


@numba.njit(cache=True)
def pick_grid(u, grid_sizes):
    """Hide-and-seek patch size: uniform choice among ``grid_sizes`` (a tuple of ints)."""
    n = len(grid_sizes)
    k = imin(int(u * n), n - 1)
    g = 0
    i = 0
    for s in grid_sizes:
        if i == k:
            g = s
        i += 1
    return g


@numba.njit(cache=True)
def gridmask_params(draws, base, d_lo, d_hi, ratio):
    """GridMask unit d, kept stripe width l, offsets (dx, dy). Returns (d, l, dx, dy)."""
    span = d_hi - d_lo + 1
    d = d_lo + imin(int(f64(draws[base]) * span), span - 1)
    keep = int(math.floor(ratio * d + 0.5))
    dx = imin(int(f64(draws[base + 1]) * d), d - 1)
    dy = imin(int(f64(draws[base + 2]) * d), d - 1)
    return d, keep, dx, dy


@numba.njit(cache=True)
def gridmask_dropped(x, y, d, keep, dx, dy):
    # row test first: it fails on a whole kept row, sparing the CPU loop the column test
    return (y - dy + d) % d >= keep and (x - dx + d) % d >= keep


@numba.njit(cache=True)
def _fill3(img, y, x, f0, f1, f2):
    img[0, y, x] = f0
    img[1, y, x] = f1
    img[2, y, x] = f2


# --------------------------------------------------------------------------------------
# Information dropping: per-method geometry, shared by the CPU and the GPU kernel
# --------------------------------------------------------------------------------------
# A method drops the union of ``pieces`` pieces (aid/cutout: one per disc, else one).
# Two njit functions describe it, callable from CPU njit code and CUDA device code alike:
#   ``*_geom(kps, draws, w, h, cfg, i) -> prm``: piece i as 8 int64s: (x0, y0, x1, y1) a
#   half-open pixel box holding every pixel the piece may drop (empty: none), then up to 4
#   method-specific values; ``cfg`` is the method's constant tuple of config values;
#   ``*_cover(x, y, prm, draws, cfg) -> bool``: pixel (x, y) of the box is dropped.
# ``_dropping_runs`` builds the one CPU and the one GPU kernel from such a pair. Everything
# decisive is an integer (1/QUANT px for discs), so both targets pick the same pixels.

NO_PIECE = (0, 0, 0, 0, 0, 0, 0, 0)  # empty box: drops nothing


@numba.njit(cache=True)
def _clip_box(prm, w, h):
    """The box of ``prm`` clipped to a w x h crop: (x0, y0, x1, y1), half-open."""
    return imax(0, prm[0]), imax(0, prm[1]), imin(w, prm[2]), imin(h, prm[3])


@numba.njit(cache=True)
def _none_geom(kps, draws, w, h, cfg, i):
    return NO_PIECE


@numba.njit(cache=True)
def _box_cover(x, y, prm, draws, cfg):
    """Every pixel of the box (erasing)."""
    return True


@numba.njit(cache=True)
def _disc_piece(ok, cxq, cyq, rq):
    """A disc (1/QUANT px): the box of the pixels it can touch, centre and radius."""
    if not ok:
        return NO_PIECE
    return ((cxq - rq) // QUANT, (cyq - rq) // QUANT, (cxq + rq) // QUANT + 1,
            (cyq + rq) // QUANT + 1, cxq, cyq, rq, 0)


@numba.njit(cache=True)
def _disc_cover(x, y, prm, draws, cfg):
    return in_disc(x, y, prm[4], prm[5], prm[6])


@numba.njit(cache=True)
def _aid_geom(kps, draws, w, h, cfg, i):
    num, r_lo, r_hi, shift_prob, spread = cfg
    ok, joint, shifted, cxq, cyq, rq = aid_occluder(
        kps, draws, 1 + AID_DRAWS_PER_OCCLUDER * i, w, h, r_lo, r_hi, shift_prob, spread)
    return _disc_piece(ok, cxq, cyq, rq)


@numba.njit(cache=True)
def _cutout_geom(kps, draws, w, h, cfg, i):
    num, r_lo, r_hi = cfg
    cxq, cyq, rq = cutout_occluder(draws, 1 + CUTOUT_DRAWS_PER_OCCLUDER * i, w, h, r_lo, r_hi)
    return _disc_piece(True, cxq, cyq, rq)


@numba.njit(cache=True)
def _erasing_geom(kps, draws, w, h, cfg, i):
    a_lo, a_hi, asp_lo, asp_hi, tries = cfg
    ok, x0, y0, we, he = erasing_rect(draws, 1, w, h, a_lo, a_hi, asp_lo, asp_hi, tries)
    if not ok:
        return NO_PIECE
    return x0, y0, x0 + we, y0 + he, 0, 0, 0, 0


@numba.njit(cache=True)
def _hide_and_seek_geom(kps, draws, w, h, cfg, i):
    g = pick_grid(f64(draws[1]), cfg[0])
    if g <= 0:
        return NO_PIECE
    return 0, 0, w, h, g, (w + g - 1) // g, 0, 0  # patch size, patches per row


@numba.njit(cache=True)
def _hide_and_seek_cover(x, y, prm, draws, cfg):
    g = prm[4]
    return f64(draws[2 + (y // g) * prm[5] + x // g]) < cfg[1]


@numba.njit(cache=True)
def _gridmask_geom(kps, draws, w, h, cfg, i):
    d, keep, dx, dy = gridmask_params(draws, 1, cfg[0], cfg[1], cfg[2])
    return 0, 0, w, h, d, keep, dx, dy


@numba.njit(cache=True)
def _gridmask_cover(x, y, prm, draws, cfg):
    return gridmask_dropped(x, y, prm[4], prm[5], prm[6], prm[7])


def hide_and_seek_cells(w: int, h: int, grid_sizes) -> int:
    """Number of per-patch draws needed: patches at the smallest positive patch size."""
    cells = [math.ceil(w / g) * math.ceil(h / g) for g in grid_sizes if g > 0]
    return max(cells) if cells else 0


# --------------------------------------------------------------------------------------
# Information dropping: the operator
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DroppingOp(NumbaOp):
    """The information-dropping operator of one method (see :class:`NumbaOp`), plus its
    ``method``, crop ``input_size`` [w, h], black ``fill`` per channel (normalised, or 0 for
    uint8 crops) and ``one``, the njit kernel of one person ((3, H, W) crop, (K, 3)
    keypoints, (num_draws,) draws; see :func:`_dropping_runs`)."""

    method: str = ""
    input_size: Tuple[int, int] = (0, 0)
    fill: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    one: Optional[Callable] = None


def _dropping_runs(geom, cover, cfg, pieces, fill):
    """(one, cpu_run, gpu_run) for one method. ``one(image_out, image_in, kps, draws)``
    (njit) does one person: copy the image (3, H, W); then, when the gate is open, set to
    ``fill`` the pixels that ``cover`` picks in the box of each of the ``pieces`` pieces
    ``geom`` gives. ``cpu_run`` / ``gpu_run`` do the P people of a DALI sample: image
    (P, 3, H, W), kps (P, K, 3), draws (P, num_draws).

    ``one`` copies first and then only reads kps/draws, so it may run in place (``image_out
    is image_in``; the CPU warp kernel calls it that way). ``gpu_run``'s copy and fill passes
    give each pixel to the same thread (the same grid-stride loop), so no synchronisation is
    needed and any launch shape is correct.
    """
    f0, f1, f2 = fill

    @numba.njit
    def one(image_out, image_in, kps, draws):
        if image_out.ctypes.data != image_in.ctypes.data:  # in place: nothing to copy
            copy_image(image_out, image_in)
        if not gated(draws):
            return
        hh = image_in.shape[1]
        ww = image_in.shape[2]
        for i in range(pieces):
            prm = geom(kps, draws, ww, hh, cfg, i)
            x0, y0, x1, y1 = _clip_box(prm, ww, hh)
            for y in range(y0, y1):
                for x in range(x0, x1):
                    if cover(x, y, prm, draws, cfg):
                        _fill3(image_out, y, x, f0, f1, f2)

    def cpu_run(image_out, image_in, kps, draws):
        for p in range(image_in.shape[0]):
            one(image_out[p], image_in[p], kps[p], draws[p])

    def gpu_run(image_out, image_in, kps, draws):
        hh = image_in.shape[2]
        ww = image_in.shape[3]
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        for p in range(image_in.shape[0]):
            for q in range(tid, hh * ww, stride):
                y = q // ww
                x = q - y * ww
                for c in range(image_in.shape[1]):
                    image_out[p, c, y, x] = image_in[p, c, y, x]
            if gated(draws[p]):
                for i in range(pieces):
                    prm = geom(kps[p], draws[p], ww, hh, cfg, i)
                    x0, y0, x1, y1 = _clip_box(prm, ww, hh)
                    for q in range(tid, hh * ww, stride):
                        y = q // ww
                        x = q - y * ww
                        if x0 <= x < x1 and y0 <= y < y1 and cover(x, y, prm, draws[p], cfg):
                            _fill3(image_out[p], y, x, f0, f1, f2)

    return one, cpu_run, gpu_run


def dropping_op_from(section, input_size, dtype: str = "float32") -> DroppingOp:
    """:func:`dropping_op` for ``section.method`` with that method's values read from
    ``section`` (any object with the ``occlusion`` config section's field names)."""
    values = {k: getattr(section, k) for k in DROPPING_METHODS[section.method]}
    return dropping_op(section.method, tuple(int(v) for v in input_size), dtype=dtype,
                       **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                          for k, v in values.items()})


@functools.lru_cache(maxsize=None)
def dropping_op(method: str, input_size: Tuple[int, int], *, num: int = 1,
                radius=(0.1, 0.2), shift_prob: float = 0.5, shift_spread: float = 0.1,
                erasing_area=(0.02, 0.4), erasing_aspect=(0.3, 3.3),
                grid_sizes=(0, 16, 32, 44, 56), hide_prob: float = 0.5,
                gridmask_ratio: float = 0.5, gridmask_period=(32, 96),
                dtype: str = "float32") -> DroppingOp:
    """The operator dropping ``method``'s pieces from crops of ``input_size`` = [w, h].

    Values are those of the ``occlusion`` config section (validated there); only the ones
    in ``DROPPING_METHODS[method]`` are used. Per sample: image (P, 3, H, W) of ``dtype``
    (float32: normalised, black is ``black_fill()``; uint8: intensities, black is 0); kps
    float32 (P, K, 3); draws float32 (P, num_draws).
    """
    if method not in METHODS:
        raise ValueError(f"dropping_op: method {method!r} is not one of {METHODS}")
    w, h = int(input_size[0]), int(input_size[1])
    f0, f1, f2 = black_fill() if dtype == "float32" else (0, 0, 0)
    r_lo, r_hi = (float(v) for v in radius)
    shift_prob = float(shift_prob)
    spread = float(shift_spread)
    a_lo, a_hi = (float(v) for v in erasing_area)
    asp_lo, asp_hi = (float(v) for v in erasing_aspect)
    grid_sizes = tuple(int(g) for g in grid_sizes)
    hide_prob = float(hide_prob)
    gm_ratio = float(gridmask_ratio)
    d_lo, d_hi = (int(v) for v in gridmask_period)
    tries = ERASING_TRIES
    num = int(num)

    # The one dispatch on the method: its geometry/coverage pair, constant config tuple,
    # number of draws and of pieces, and its plain-Python description for params().
    if method == "aid":
        num_draws = 1 + AID_DRAWS_PER_OCCLUDER * num
        geom, cover, cfg = _aid_geom, _disc_cover, (num, r_lo, r_hi, shift_prob, spread)

        def describe(kps, draws, ww, hh):
            discs = []
            for i in range(num):
                ok, joint, shifted, cxq, cyq, rq = aid_occluder(
                    kps, draws, 1 + AID_DRAWS_PER_OCCLUDER * i, ww, hh, r_lo, r_hi,
                    shift_prob, spread)
                if ok:
                    discs.append((int(joint), bool(shifted), cxq / QUANT, cyq / QUANT,
                                  rq / QUANT))
            return {"discs": discs}
    elif method == "cutout":
        num_draws = 1 + CUTOUT_DRAWS_PER_OCCLUDER * num
        geom, cover, cfg = _cutout_geom, _disc_cover, (num, r_lo, r_hi)

        def describe(kps, draws, ww, hh):
            discs = []
            for i in range(num):
                cxq, cyq, rq = cutout_occluder(draws, 1 + CUTOUT_DRAWS_PER_OCCLUDER * i, ww,
                                               hh, r_lo, r_hi)
                discs.append((-1, False, cxq / QUANT, cyq / QUANT, rq / QUANT))
            return {"discs": discs}
    elif method == "erasing":
        num_draws = 1 + 4 * tries
        geom, cover, cfg = _erasing_geom, _box_cover, (a_lo, a_hi, asp_lo, asp_hi, tries)

        def describe(kps, draws, ww, hh):
            ok, x0, y0, we, he = erasing_rect(draws, 1, ww, hh, a_lo, a_hi, asp_lo, asp_hi,
                                              tries)
            return {"rect": (int(x0), int(y0), int(we), int(he)) if ok else None}
    elif method == "hide_and_seek":
        num_draws = 2 + hide_and_seek_cells(w, h, grid_sizes)
        geom, cover, cfg = _hide_and_seek_geom, _hide_and_seek_cover, (grid_sizes, hide_prob)

        def describe(kps, draws, ww, hh):
            g = int(pick_grid(float(draws[1]), grid_sizes))
            if g <= 0:
                return {"grid": g, "hidden": np.zeros((0, 0), bool)}
            nx, ny = -(-ww // g), -(-hh // g)
            return {"grid": g, "hidden": draws[2:2 + nx * ny].reshape(ny, nx) < hide_prob}
    elif method == "gridmask":
        num_draws = 4
        geom, cover, cfg = _gridmask_geom, _gridmask_cover, (d_lo, d_hi, gm_ratio)

        def describe(kps, draws, ww, hh):
            return {"grid": tuple(int(v) for v in gridmask_params(draws, 1, d_lo, d_hi,
                                                                   gm_ratio))}
    else:  # none: the piece is empty, the kernel only copies (the graph skips the operator)
        num_draws = 1
        geom, cover, cfg = _none_geom, _box_cover, (0,)

        def describe(kps, draws, ww, hh):
            return {}
    pieces = num if method in ("aid", "cutout") else 1
    one, cpu_run, gpu_run = _dropping_runs(geom, cover, cfg, pieces, (f0, f1, f2))

    def params(kps, draws, size=None):
        """Per-person geometry as plain Python (same njit helpers as the kernels).

        Keys: 'applied' (the gate is open), and by method
        aid/cutout: 'discs' [(joint, shifted, cx, cy, r)] in px (joint -1 for cutout);
        erasing: 'rect' (x0, y0, w, h) or None; hide_and_seek: 'grid' g, 'hidden' (ny, nx)
        bool; gridmask: 'grid' (d, keep, dx, dy).
        """
        ww, hh = (w, h) if size is None else size
        kps = np.ascontiguousarray(kps, dtype=np.float32)
        draws = np.ascontiguousarray(draws, dtype=np.float32)
        out = {"method": method, "applied": bool(gated(draws))}
        out.update(describe(kps, draws, ww, hh))
        return out

    f32, P = "float32", PEOPLE
    return DroppingOp(
        name=f"dropping ({method})",
        outputs=(Port("image", dtype, (P, 3, h, w)),),
        inputs=(Port("image", dtype, (P, 3, h, w)), Port("keypoints", f32, (P, None, 3)),
                Port("draws", f32, (P, num_draws))),
        cpu_run=cpu_run, gpu_run=gpu_run,
        threads_per_block=GPU_THREADS, blocks_per_sm=GPU_BLOCKS_PER_SM,
        num_draws=num_draws, params=params, method=method, input_size=(w, h),
        fill=(f0, f1, f2), one=one)
