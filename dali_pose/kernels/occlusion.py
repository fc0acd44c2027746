"""Occlusion kernels run inside DALI: AID and its information-dropping family, and NODA.

Every kernel works on the **normalised CHW float32 crop** (3, H, W) that comes out of the
geometry stage (ImageNet mean/std already applied), so "black" is the per-channel value
``(0 - mean_c) / std_c``. Keypoints arrive as ``kps`` (K, 3) float32 in crop pixels (OpenCV
convention: pixel centres on integers, pixel (x, y) covers [x-0.5, x+0.5] x [y-0.5, y+0.5]).
All randomness comes in as ``draws``: a float32 vector of ``num_draws`` U(0, 1) values per
sample, drawn by the seeded DALI pipeline (``fn.random.uniform(range=[0, 1], shape=[P])``);
the kernels only transform them. There is no ``np.random`` anywhere in here.

Two factories give everything the pipeline needs for one ``numba_function`` operator:

``make_occlusion_kernels(occ_cfg, input_size) -> OcclusionKernels``
    outputs ``(image_out,)``, inputs ``(image_in, kps, draws)``.
``make_noda_kernels(noda_cfg, input_size, dataset_info) -> NodaKernels``
    outputs ``(image_out, occluded_out)``, inputs
    ``(image_in, kps, target_box, pool_rgba, pool_box, draws)`` (``target_box``: its last four
    entries are the target person's [cx, cy, w, h] in crop px).

Each bundle holds ``cpu_run`` (a plain Python function: DALI ``njit``s it itself, and numba
refuses to jit an already-jitted function), ``cpu_kernel`` (the same, jitted, for direct
calls), ``gpu_run`` (plain Python, CUDA grid-stride indexing; DALI compiles it with
``numba.cuda`` and launches it once per sample with ``blocks`` / ``threads_per_block``),
``setup`` (output shapes from ``ins[0]`` only, see the DALI 2.4 setup bug in
shared/notes/dali-facts.md), ``dali_kwargs(device)`` and ``params`` (plain Python: the
per-sample geometry, computed by the *same* njit helpers the kernels call, so tests can check
statistics; compiled, ``NUMBA_DISABLE_JIT``, CUDA-simulator and GPU runs share one code path).
Device code avoids the ``min``/``max`` builtins (numba 0.68's CUDA target fails to type them
inside device functions): ``_imin``/``_imax`` stand in.

Geometry is exact in integers where it decides pixels: circle centres and radii are
quantised to 1/256 px (``QUANT``) and the inside test is done in int64, so CPU, GPU and the
pure-Python reference pick the same pixels (no float contraction/FMA differences).

Reading of the paper
--------------------
AID (Huang et al., "How to Train Your Robust Human Pose Estimator: Pay Attention to the
Constraint Cue"; first version "AID: Pushing the Performance Boundary of Human Pose
Estimation with Information Dropping Augmentation"):

* ``aid`` (keypoint-aware): per crop, with probability ``occlusion.prob``, ``occlusion.num``
  occluders. Each picks one keypoint uniformly among those that are *annotated* (v > 0) and
  fall on a crop pixel after the geometry (v = 1 "labelled but not visible" counts: the point
  of AID is to make the network use the constraint cue, and COCO's v = 1 joints are exactly
  where a person is occluded; requiring v = 2 would leave few candidates in crowds). With
  probability ``shift_prob`` the circle centre is moved off the keypoint by
  (U(-s, s), U(-s, s)) * w, s = ``shift_spread``; otherwise it sits exactly on the keypoint.
  Radius ~ U(radius[0], radius[1]) * w with w the network input width (the radius is in crop
  pixels because we run after the geometry). Pixels whose centre lies in the closed disc are
  set to black. A crop with no candidate keypoint is left unchanged.
* ``cutout``: the same circles, centre uniform over the crop (DeVries & Taylor, but a disc of
  the AID radius instead of a square, as the issue asks).
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

NODA (Nearby-person Occlusion Data Augmentation with non-extra annotations), online part:

* With probability ``noda.prob`` a pool person (chosen by the pipeline) is pasted. For each
  of at most ``noda.max_tries`` tries: relative scale ~ U(scale_range) (the pasted person's
  box diagonal over the target's box diagonal), angle ~ U[0, 2 pi), distance ~ U[R/3, R] from
  the target box centre with R = half the target box diagonal; the pool person's box centre
  goes there. Only the centre and the diagonal of ``target_box`` are used, so an axis-aligned
  box around a rotated person is fine.
* Coverage is decided at the target's keypoint pixels (round to the nearest pixel) on the
  alpha actually rendered (bilinear, alpha > 0.5): no annotated head or neck joint in the crop
  may be covered (head = nose/eyes/ears/head_top, neck = *neck; datasets without a neck joint
  use the midpoint of the shoulders when both are annotated), and at least one annotated limb
  joint in the crop (elbow, wrist, knee, ankle) must be covered. The first try meeting both
  rules is rendered; if none does, the crop is left unchanged and nothing is reported.
* Pasted RGB (uint8) is normalised like the image and alpha-blended with the pool's
  edge-smoothed matte. ``occluded_out[j] = 1`` for each annotated joint in the crop whose
  pixel ends up covered; those joints stay supervised (the kernel does not touch targets).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Tuple

import numba
import numpy as np
from numba import cuda

from dali_pose.config import ConfigError
from dali_pose.kernels.warp import IMAGENET_MEAN, IMAGENET_STD

METHODS = ("none", "aid", "cutout", "erasing", "hide_and_seek", "gridmask")
QUANT = 256  # circle centres/radii in 1/QUANT px, inside test in exact int64
ERASING_TRIES = 10
AID_DRAWS_PER_OCCLUDER = 5  # keypoint pick, shift?, shift x, shift y, radius
CUTOUT_DRAWS_PER_OCCLUDER = 3  # centre x, centre y, radius
NODA_DRAWS_PER_TRY = 3  # scale, angle, distance

# Launch geometry for the GPU variants (grid-stride loops: any size is correct).
GPU_BLOCKS = (64, 1, 1)
GPU_THREADS = (256, 1, 1)


def _dali_kwargs(k, device: str) -> dict:
    from nvidia.dali import types

    t = {"float32": types.FLOAT, "uint8": types.UINT8}
    kw = dict(setup_fn=k.setup, out_types=[t[d] for d in k.out_dtypes],
              in_types=[t[d] for d in k.in_dtypes], outs_ndim=list(k.outs_ndim),
              ins_ndim=list(k.ins_ndim), batch_processing=False, device=device)
    if device == "gpu":
        kw.update(run_fn=k.gpu_run, blocks=list(k.blocks),
                  threads_per_block=list(k.threads_per_block))
    else:
        kw.update(run_fn=k.cpu_run)
    return kw


def black_fill(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tuple[float, float, float]:
    """Zero intensity in normalised units, per channel: (0 - mean_c) / std_c."""
    return tuple(float((0.0 - m) / s) for m, s in zip(mean, std))


# --------------------------------------------------------------------------------------
# Shared njit helpers (scalar in, scalar out: callable from CPU njit code and CUDA kernels)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _f64(v):
    """float64 of an array element. Not ``float()``: numba keeps a float32 a float32 there,
    Python makes it a double, and compiled and pure-Python runs would round differently."""
    return np.float64(v)


@numba.njit(cache=True)
def _imin(a, b):
    """min() for device code (numba 0.68's CUDA target fails to type the builtin)."""
    return a if a < b else b


@numba.njit(cache=True)
def _imax(a, b):
    return a if a > b else b


@numba.njit(cache=True)
def _q(v):
    """A coordinate in px -> int64 in 1/QUANT px (round half up)."""
    return int(math.floor(v * QUANT + 0.5))


@numba.njit(cache=True)
def _pixel_of(v):
    """Index of the pixel whose area contains coordinate v (centres on integers)."""
    return int(math.floor(v + 0.5))


@numba.njit(cache=True)
def _kp_on_crop(kps, j, w, h):
    """Joint j is annotated (v > 0) and falls on a crop pixel."""
    if _f64(kps[j, 2]) <= 0.0:
        return False
    px = _pixel_of(_f64(kps[j, 0]))
    py = _pixel_of(_f64(kps[j, 1]))
    return 0 <= px < w and 0 <= py < h


@numba.njit(cache=True)
def aid_occluder(kps, draws, base, w, h, r_lo, r_hi, shift_prob, spread):
    """One AID occluder from draws[base:base+5].

    Returns (ok, joint, shifted, cxq, cyq, rq): centre and radius in 1/QUANT px. ok=False
    when no annotated keypoint falls on the crop.
    """
    n = 0
    for j in range(kps.shape[0]):
        if _kp_on_crop(kps, j, w, h):
            n += 1
    if n == 0:
        return False, -1, False, 0, 0, 0
    pick = _imin(int(_f64(draws[base]) * n), n - 1)
    joint = -1
    seen = 0
    for j in range(kps.shape[0]):
        if _kp_on_crop(kps, j, w, h):
            if seen == pick:
                joint = j
            seen += 1
    cx = _f64(kps[joint, 0])
    cy = _f64(kps[joint, 1])
    shifted = _f64(draws[base + 1]) < shift_prob
    if shifted:
        cx = cx + (2.0 * _f64(draws[base + 2]) - 1.0) * spread * w
        cy = cy + (2.0 * _f64(draws[base + 3]) - 1.0) * spread * w
    r = (r_lo + _f64(draws[base + 4]) * (r_hi - r_lo)) * w
    return True, joint, shifted, _q(cx), _q(cy), _q(r)


@numba.njit(cache=True)
def cutout_occluder(draws, base, w, h, r_lo, r_hi):
    """One cutout disc from draws[base:base+3]: centre uniform over the crop area.

    Returns (cxq, cyq, rq) in 1/QUANT px.
    """
    cx = -0.5 + _f64(draws[base]) * w
    cy = -0.5 + _f64(draws[base + 1]) * h
    r = (r_lo + _f64(draws[base + 2]) * (r_hi - r_lo)) * w
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
        area = (a_lo + _f64(draws[b]) * (a_hi - a_lo)) * w * h
        aspect = asp_lo + _f64(draws[b + 1]) * (asp_hi - asp_lo)  # h / w
        he = int(math.floor(math.sqrt(area * aspect) + 0.5))
        we = int(math.floor(math.sqrt(area / aspect) + 0.5))
        if 0 < we < w and 0 < he < h:
            x0 = _imin(int(_f64(draws[b + 2]) * (w - we + 1)), w - we)
            y0 = _imin(int(_f64(draws[b + 3]) * (h - he + 1)), h - he)
            return True, x0, y0, we, he
    return False, 0, 0, 0, 0


@numba.njit(cache=True)
def pick_grid(u, grid_sizes):
    """Hide-and-seek patch size: uniform choice among ``grid_sizes`` (a tuple of ints)."""
    n = len(grid_sizes)
    k = _imin(int(u * n), n - 1)
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
    d = d_lo + _imin(int(_f64(draws[base]) * span), span - 1)
    keep = int(math.floor(ratio * d + 0.5))
    dx = _imin(int(_f64(draws[base + 1]) * d), d - 1)
    dy = _imin(int(_f64(draws[base + 2]) * d), d - 1)
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


@numba.njit(cache=True)
def _copy_image(dst, src):
    for c in range(src.shape[0]):
        for y in range(src.shape[1]):
            for x in range(src.shape[2]):
                dst[c, y, x] = src[c, y, x]


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
    return _imax(0, prm[0]), _imax(0, prm[1]), _imin(w, prm[2]), _imin(h, prm[3])


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
    g = pick_grid(_f64(draws[1]), cfg[0])
    if g <= 0:
        return NO_PIECE
    return 0, 0, w, h, g, (w + g - 1) // g, 0, 0  # patch size, patches per row


@numba.njit(cache=True)
def _hide_and_seek_cover(x, y, prm, draws, cfg):
    g = prm[4]
    return _f64(draws[2 + (y // g) * prm[5] + x // g]) < cfg[1]


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
# Information dropping: factory
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcclusionKernels:
    """One ``numba_function`` operator: outputs (image_out,), inputs (image_in, kps, draws).

    dtypes/ndims: image float32 (3, H, W); kps float32 (K, 3); draws float32 (num_draws,).
    ``params(kps, draws)`` gives the per-sample geometry (see ``_params`` for keys) and
    ``mask(kps, draws)`` the (H, W) bool map of dropped pixels, built independently in NumPy.
    """

    method: str
    num_draws: int
    input_size: Tuple[int, int]
    fill: Tuple[float, float, float]
    cpu_run: Callable
    gpu_run: Callable
    setup: Callable
    cpu_kernel: Callable
    params: Callable
    mask: Callable
    blocks: Tuple[int, int, int] = GPU_BLOCKS
    threads_per_block: Tuple[int, int, int] = GPU_THREADS
    outs_ndim: Tuple[int, ...] = (3,)
    ins_ndim: Tuple[int, ...] = (3, 2, 1)
    out_dtypes: Tuple[str, ...] = ("float32",)
    in_dtypes: Tuple[str, ...] = ("float32", "float32", "float32")

    def dali_kwargs(self, device: str = "cpu") -> dict:
        """Keyword arguments for ``numba_function`` (imports DALI)."""
        return _dali_kwargs(self, device)


def _check_occ_cfg(o) -> None:
    if o.method not in METHODS:
        raise ConfigError(f"config key 'occlusion.method': {o.method!r} is not one of {METHODS}")
    if not 0.0 <= o.prob <= 1.0:
        raise ConfigError(f"config key 'occlusion.prob': a probability in [0, 1], got {o.prob}")
    if o.num < 1:
        raise ConfigError(f"config key 'occlusion.num': must be >= 1, got {o.num}")
    lo, hi = o.radius
    if not 0.0 < lo <= hi:
        raise ConfigError("config key 'occlusion.radius': need 0 < min <= max")
    if not 0.0 <= o.shift_prob <= 1.0:
        raise ConfigError("config key 'occlusion.shift_prob': a probability in [0, 1]")
    if o.shift_spread < 0.0:
        raise ConfigError("config key 'occlusion.shift_spread': must be >= 0")
    a_lo, a_hi = o.erasing_area
    if not 0.0 < a_lo <= a_hi < 1.0:
        raise ConfigError("config key 'occlusion.erasing_area': need 0 < min <= max < 1")
    r_lo, r_hi = o.erasing_aspect
    if not 0.0 < r_lo <= r_hi:
        raise ConfigError("config key 'occlusion.erasing_aspect': need 0 < min <= max")
    if not o.grid_sizes or any(g < 0 for g in o.grid_sizes):
        raise ConfigError("config key 'occlusion.grid_sizes': non-empty, sizes >= 0")
    if not 0.0 <= o.hide_prob <= 1.0:
        raise ConfigError("config key 'occlusion.hide_prob': a probability in [0, 1]")
    if not 0.0 <= o.gridmask_ratio <= 1.0:
        raise ConfigError("config key 'occlusion.gridmask_ratio': must be in [0, 1]")
    d_lo, d_hi = o.gridmask_period
    if not 1 <= d_lo <= d_hi:
        raise ConfigError("config key 'occlusion.gridmask_period': need 1 <= min <= max")


def _dropping_runs(prob, geom, cover, cfg, pieces, fill):
    """(cpu_run, gpu_run) for one method: copy the image; then, when ``draws[0] < prob``,
    set to ``fill`` the pixels that ``cover`` picks in the box of each of the ``pieces``
    pieces ``geom`` gives. Outputs first, then inputs: (image_out, image_in, kps, draws).

    Both copy first and then only read kps/draws, so ``cpu_run`` may run in place
    (``image_out is image_in``; the CPU warp kernel calls it that way). ``gpu_run``'s copy
    and fill passes give each pixel to the same thread (the same grid-stride loop), so no
    synchronisation is needed and any launch shape is correct.
    """
    f0, f1, f2 = fill

    def cpu_run(image_out, image_in, kps, draws):
        if image_out.ctypes.data != image_in.ctypes.data:  # in place: nothing to copy
            _copy_image(image_out, image_in)
        if not _f64(draws[0]) < prob:
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

    def gpu_run(image_out, image_in, kps, draws):
        hh = image_in.shape[1]
        ww = image_in.shape[2]
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        for q in range(tid, hh * ww, stride):
            y = q // ww
            x = q - y * ww
            for c in range(image_in.shape[0]):
                image_out[c, y, x] = image_in[c, y, x]
        if not _f64(draws[0]) < prob:
            return
        for i in range(pieces):
            prm = geom(kps, draws, ww, hh, cfg, i)
            x0, y0, x1, y1 = _clip_box(prm, ww, hh)
            for q in range(tid, hh * ww, stride):
                y = q // ww
                x = q - y * ww
                if x0 <= x < x1 and y0 <= y < y1 and cover(x, y, prm, draws, cfg):
                    _fill3(image_out, y, x, f0, f1, f2)

    return cpu_run, gpu_run


def make_occlusion_kernels(occ_cfg, input_size, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD) -> OcclusionKernels:
    """Kernels for ``occ_cfg.method`` on crops of ``input_size`` = [w, h].

    ``method == 'none'`` gives a copy kernel (the pipeline should rather skip the operator).
    """
    _check_occ_cfg(occ_cfg)
    w, h = int(input_size[0]), int(input_size[1])
    method = occ_cfg.method
    f0, f1, f2 = black_fill(mean, std)
    prob = float(occ_cfg.prob) if method != "none" else 0.0
    num = int(occ_cfg.num)
    r_lo, r_hi = (float(v) for v in occ_cfg.radius)
    shift_prob = float(occ_cfg.shift_prob)
    spread = float(occ_cfg.shift_spread)
    a_lo, a_hi = (float(v) for v in occ_cfg.erasing_area)
    asp_lo, asp_hi = (float(v) for v in occ_cfg.erasing_aspect)
    grid_sizes = tuple(int(g) for g in occ_cfg.grid_sizes)
    hide_prob = float(occ_cfg.hide_prob)
    gm_ratio = float(occ_cfg.gridmask_ratio)
    d_lo, d_hi = (int(v) for v in occ_cfg.gridmask_period)
    tries = ERASING_TRIES

    # Per method: its geometry/coverage pair, constant config tuple and number of pieces
    # (see "Information dropping: per-method geometry").
    if method == "aid":
        num_draws = 1 + AID_DRAWS_PER_OCCLUDER * num
        geom, cover, cfg = _aid_geom, _disc_cover, (num, r_lo, r_hi, shift_prob, spread)
    elif method == "cutout":
        num_draws = 1 + CUTOUT_DRAWS_PER_OCCLUDER * num
        geom, cover, cfg = _cutout_geom, _disc_cover, (num, r_lo, r_hi)
    elif method == "erasing":
        num_draws = 1 + 4 * tries
        geom, cover, cfg = _erasing_geom, _box_cover, (a_lo, a_hi, asp_lo, asp_hi, tries)
    elif method == "hide_and_seek":
        num_draws = 2 + hide_and_seek_cells(w, h, grid_sizes)
        geom, cover, cfg = _hide_and_seek_geom, _hide_and_seek_cover, (grid_sizes, hide_prob)
    elif method == "gridmask":
        num_draws = 4
        geom, cover, cfg = _gridmask_geom, _gridmask_cover, (d_lo, d_hi, gm_ratio)
    else:  # none: prob is 0 and the piece empty, so the kernels only copy
        num_draws = 1
        geom, cover, cfg = _none_geom, _box_cover, (0,)
    pieces = num if method in ("aid", "cutout") else 1

    def setup(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][:] = ins[0][i][:]

    cpu_run, gpu_run = _dropping_runs(prob, geom, cover, cfg, pieces, (f0, f1, f2))

    def params(kps, draws, size=None):
        """Per-sample geometry as plain Python (same njit helpers as the kernels).

        Keys: 'applied' (the prob draw said yes), and by method
        aid/cutout: 'discs' [(joint, shifted, cx, cy, r)] in px (joint -1 for cutout);
        erasing: 'rect' (x0, y0, w, h) or None; hide_and_seek: 'grid' g, 'hidden' (ny, nx)
        bool; gridmask: 'grid' (d, keep, dx, dy).
        """
        ww, hh = (w, h) if size is None else size
        kps = np.ascontiguousarray(kps, dtype=np.float32)
        draws = np.ascontiguousarray(draws, dtype=np.float32)
        out = {"method": method, "applied": bool(float(draws[0]) < prob)}
        if method == "aid":
            discs = []
            for i in range(num):
                ok, joint, shifted, cxq, cyq, rq = aid_occluder(
                    kps, draws, 1 + AID_DRAWS_PER_OCCLUDER * i, ww, hh, r_lo, r_hi,
                    shift_prob, spread)
                if ok:
                    discs.append((int(joint), bool(shifted), cxq / QUANT, cyq / QUANT,
                                  rq / QUANT))
            out["discs"] = discs
        elif method == "cutout":
            discs = []
            for i in range(num):
                cxq, cyq, rq = cutout_occluder(draws, 1 + CUTOUT_DRAWS_PER_OCCLUDER * i, ww,
                                               hh, r_lo, r_hi)
                discs.append((-1, False, cxq / QUANT, cyq / QUANT, rq / QUANT))
            out["discs"] = discs
        elif method == "erasing":
            ok, x0, y0, we, he = erasing_rect(draws, 1, ww, hh, a_lo, a_hi, asp_lo, asp_hi,
                                              tries)
            out["rect"] = (int(x0), int(y0), int(we), int(he)) if ok else None
        elif method == "hide_and_seek":
            g = int(pick_grid(float(draws[1]), grid_sizes))
            out["grid"] = g
            if g > 0:
                nx, ny = -(-ww // g), -(-hh // g)
                out["hidden"] = draws[2:2 + nx * ny].reshape(ny, nx) < hide_prob
            else:
                out["hidden"] = np.zeros((0, 0), bool)
        elif method == "gridmask":
            out["grid"] = tuple(int(v) for v in gridmask_params(draws, 1, d_lo, d_hi,
                                                                 gm_ratio))
        return out

    def mask(kps, draws, size=None):
        """(H, W) bool: pixels the kernel sets to black (NumPy, from ``params``)."""
        ww, hh = (w, h) if size is None else size
        p = params(kps, draws, (ww, hh))
        m = np.zeros((hh, ww), bool)
        if not p["applied"]:
            return m
        ys, xs = np.mgrid[0:hh, 0:ww]
        if method in ("aid", "cutout"):
            for _, _, cx, cy, r in p["discs"]:
                cxq, cyq, rq = round(cx * QUANT), round(cy * QUANT), round(r * QUANT)
                dx = xs.astype(np.int64) * QUANT - cxq
                dy = ys.astype(np.int64) * QUANT - cyq
                m |= dx * dx + dy * dy <= rq * rq
        elif method == "erasing" and p["rect"] is not None:
            x0, y0, we, he = p["rect"]
            m[y0:y0 + he, x0:x0 + we] = True
        elif method == "hide_and_seek" and p["grid"] > 0:
            g = p["grid"]
            m = np.kron(p["hidden"], np.ones((g, g), bool))[:hh, :ww]
        elif method == "gridmask":
            d, keep, dx, dy = p["grid"]
            m = (((xs - dx) % d) >= keep) & (((ys - dy) % d) >= keep)
        return m

    return OcclusionKernels(method=method, num_draws=num_draws, input_size=(w, h),
                            fill=(f0, f1, f2), cpu_run=cpu_run, gpu_run=gpu_run, setup=setup,
                            cpu_kernel=numba.njit(cpu_run), params=params, mask=mask)


# --------------------------------------------------------------------------------------
# NODA: online paste of a pool person
# --------------------------------------------------------------------------------------


def joint_roles(info):
    """(head_or_neck (K,) bool, limb (K,) bool, virtual neck pair (a, b) or (-1, -1)).

    Head = nose/eye/ear/head*; neck = *neck*; limb = elbow/wrist/knee/ankle. Without a neck
    joint, the midpoint of left/right shoulder (when both exist) stands in for the neck.
    """
    names = [n.lower() for n in info.joints]
    head = np.array([any(t in n for t in ("nose", "eye", "ear", "head", "neck"))
                     for n in names], bool)
    limb = np.array([any(t in n for t in ("elbow", "wrist", "knee", "ankle"))
                     for n in names], bool)
    pair = (-1, -1)
    if not any("neck" in n for n in names) and {"left_shoulder", "right_shoulder"} <= set(
            names):
        pair = (names.index("left_shoulder"), names.index("right_shoulder"))
    return head, limb, pair


@numba.njit(cache=True)
def _bilinear_rgba(rgba, u, v):
    """(r, g, b, a) of the pool crop at (u, v), bilinear, zero outside; all in [0, 255]."""
    ph = rgba.shape[0]
    pw = rgba.shape[1]
    x0 = int(math.floor(u))
    y0 = int(math.floor(v))
    fx = u - x0
    fy = v - y0
    if 0 <= x0 and x0 + 1 < pw and 0 <= y0 and y0 + 1 < ph:  # interior: no bounds checks
        w00 = (1.0 - fx) * (1.0 - fy)
        w10 = fx * (1.0 - fy)
        w01 = (1.0 - fx) * fy
        w11 = fx * fy
        a = (w00 * _f64(rgba[y0, x0, 3]) + w10 * _f64(rgba[y0, x0 + 1, 3])
             + w01 * _f64(rgba[y0 + 1, x0, 3]) + w11 * _f64(rgba[y0 + 1, x0 + 1, 3]))
        if a <= 0.0:
            return 0.0, 0.0, 0.0, 0.0
        r = (w00 * _f64(rgba[y0, x0, 0]) + w10 * _f64(rgba[y0, x0 + 1, 0])
             + w01 * _f64(rgba[y0 + 1, x0, 0]) + w11 * _f64(rgba[y0 + 1, x0 + 1, 0]))
        g = (w00 * _f64(rgba[y0, x0, 1]) + w10 * _f64(rgba[y0, x0 + 1, 1])
             + w01 * _f64(rgba[y0 + 1, x0, 1]) + w11 * _f64(rgba[y0 + 1, x0 + 1, 1]))
        b = (w00 * _f64(rgba[y0, x0, 2]) + w10 * _f64(rgba[y0, x0 + 1, 2])
             + w01 * _f64(rgba[y0 + 1, x0, 2]) + w11 * _f64(rgba[y0 + 1, x0 + 1, 2]))
        return r, g, b, a
    r = 0.0
    g = 0.0
    b = 0.0
    a = 0.0
    for dy in range(2):
        yy = y0 + dy
        wy = fy if dy == 1 else 1.0 - fy
        if 0 <= yy < ph:
            for dx in range(2):
                xx = x0 + dx
                wx = fx if dx == 1 else 1.0 - fx
                if 0 <= xx < pw:
                    wgt = wx * wy
                    r += wgt * _f64(rgba[yy, xx, 0])
                    g += wgt * _f64(rgba[yy, xx, 1])
                    b += wgt * _f64(rgba[yy, xx, 2])
                    a += wgt * _f64(rgba[yy, xx, 3])
    return r, g, b, a


@numba.njit(cache=True)
def noda_alpha_at(x, y, rgba, pool_box, ox, oy, s):
    """Rendered alpha at crop pixel (x, y) for a placement (ox, oy, s)."""
    u = (x - ox) / s + _f64(pool_box[0])
    v = (y - oy) / s + _f64(pool_box[1])
    # The very sum noda_blend_px renders with: "covered" and the drawn alpha cannot disagree.
    return _bilinear_rgba(rgba, u, v)[3] / 255.0


@numba.njit(cache=True)
def noda_covered(kps, j, w, h, rgba, pool_box, ox, oy, s):
    """Joint j is annotated, on the crop, and its pixel is covered (alpha > 0.5)."""
    if not _kp_on_crop(kps, j, w, h):
        return False
    px = _pixel_of(_f64(kps[j, 0]))
    py = _pixel_of(_f64(kps[j, 1]))
    return noda_alpha_at(px, py, rgba, pool_box, ox, oy, s) > 0.5


@numba.njit(cache=True)
def noda_place(kps, target_box, rgba, pool_box, draws, w, h, head, limb, neck_a, neck_b,
               s_lo, s_hi, max_tries):
    """Placement search. Returns (ok, try, rel_scale, s, angle, rho, ox, oy).

    ``head``/``limb`` are tuples of 0/1 per joint; ``s`` maps pool px to crop px.
    """
    o = target_box.shape[0] - 4  # the last 4 entries: (4,) or the crop kernel's (8,) box
    tcx = _f64(target_box[o])
    tcy = _f64(target_box[o + 1])
    tdiag = math.sqrt(_f64(target_box[o + 2]) ** 2 + _f64(target_box[o + 3]) ** 2)
    pdiag = math.sqrt(_f64(pool_box[2]) ** 2 + _f64(pool_box[3]) ** 2)
    big_r = 0.5 * tdiag
    if not (tdiag > 0.0 and pdiag > 0.0):
        return False, -1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for t in range(max_tries):
        b = 1 + NODA_DRAWS_PER_TRY * t
        rel = s_lo + _f64(draws[b]) * (s_hi - s_lo)
        s = rel * tdiag / pdiag
        ang = 2.0 * math.pi * _f64(draws[b + 1])
        rho = big_r / 3.0 + _f64(draws[b + 2]) * (big_r - big_r / 3.0)
        ox = tcx + rho * math.cos(ang)
        oy = tcy + rho * math.sin(ang)
        good = True
        n_limb = 0
        j = 0
        for is_head in head:
            if noda_covered(kps, j, w, h, rgba, pool_box, ox, oy, s):
                if is_head:
                    good = False
                if limb[j]:
                    n_limb += 1
            j += 1
        if neck_a >= 0 and _f64(kps[neck_a, 2]) > 0.0 and _f64(kps[neck_b, 2]) > 0.0:
            nx = _pixel_of(0.5 * (_f64(kps[neck_a, 0]) + _f64(kps[neck_b, 0])))
            ny = _pixel_of(0.5 * (_f64(kps[neck_a, 1]) + _f64(kps[neck_b, 1])))
            if 0 <= nx < w and 0 <= ny < h:
                if noda_alpha_at(nx, ny, rgba, pool_box, ox, oy, s) > 0.5:
                    good = False
        if good and n_limb > 0:
            return True, t, rel, s, ang, rho, ox, oy
    return False, -1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0


@numba.njit(cache=True)
def noda_blend_px(image_out, image_in, x, y, rgba, pool_box, ox, oy, s, m0, m1, m2, is0, is1,
                  is2):
    """Blend pixel (x, y): out = (1 - a) in + a normalise(rgb)."""
    u = (x - ox) / s + _f64(pool_box[0])
    v = (y - oy) / s + _f64(pool_box[1])
    r, g, bb, a = _bilinear_rgba(rgba, u, v)
    a = a / 255.0  # as noda_alpha_at
    if a <= 0.0:
        for c in range(image_in.shape[0]):
            image_out[c, y, x] = image_in[c, y, x]
        return
    if a > 1.0:
        a = 1.0
    # straight (not premultiplied) colour under the matte
    r = (r / 255.0 - m0) * is0
    g = (g / 255.0 - m1) * is1
    bb = (bb / 255.0 - m2) * is2
    image_out[0, y, x] = (1.0 - a) * _f64(image_in[0, y, x]) + a * r
    image_out[1, y, x] = (1.0 - a) * _f64(image_in[1, y, x]) + a * g
    image_out[2, y, x] = (1.0 - a) * _f64(image_in[2, y, x]) + a * bb


@numba.njit(cache=True)
def noda_extent(rgba, pool_box, ox, oy, s, w, h):
    """Crop-pixel range [x0, x1] x [y0, y1] that the pasted pool crop can touch."""
    ph = rgba.shape[0]
    pw = rgba.shape[1]
    x0 = _imax(0, int(math.floor(ox + s * (-1.0 - _f64(pool_box[0])))))
    x1 = _imin(w - 1, int(math.ceil(ox + s * (pw - _f64(pool_box[0])))))
    y0 = _imax(0, int(math.floor(oy + s * (-1.0 - _f64(pool_box[1])))))
    y1 = _imin(h - 1, int(math.ceil(oy + s * (ph - _f64(pool_box[1])))))
    return x0, x1, y0, y1


@dataclass(frozen=True)
class NodaKernels:
    """One ``numba_function`` operator.

    outputs: image_out float32 (3, H, W), occluded_out float32 (K,);
    inputs: image_in float32 (3, H, W), kps float32 (K, 3), target_box float32 (4,) or (n,)
    whose *last four* entries are the target's [cx, cy, w, h] in crop px (so the crop
    kernel's (8,) ``box`` goes in as is), pool_rgba uint8 (h, w, 4), pool_box float32 (4,)
    [cx, cy, w, h] of the person inside the pool crop (``Pool.get(i)[2]``), draws float32
    (num_draws,). Both boxes must follow one convention (here: the aspect-fixed, unpadded
    box, ``PoseIndex.scale / padding``): only their centres and diagonals are used.
    """

    num_draws: int
    num_joints: int
    input_size: Tuple[int, int]
    cpu_run: Callable
    gpu_run: Callable
    setup: Callable
    cpu_kernel: Callable
    params: Callable
    blocks: Tuple[int, int, int] = GPU_BLOCKS
    threads_per_block: Tuple[int, int, int] = GPU_THREADS
    outs_ndim: Tuple[int, ...] = (3, 1)
    ins_ndim: Tuple[int, ...] = (3, 2, 1, 3, 1, 1)
    out_dtypes: Tuple[str, ...] = ("float32", "float32")
    in_dtypes: Tuple[str, ...] = ("float32", "float32", "float32", "uint8", "float32",
                                  "float32")

    def dali_kwargs(self, device: str = "cpu") -> dict:
        """Keyword arguments for ``numba_function`` (imports DALI)."""
        return _dali_kwargs(self, device)


def make_noda_kernels(noda_cfg, input_size, dataset_info, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD) -> NodaKernels:
    """NODA paste kernels for crops of ``input_size`` = [w, h] and ``dataset_info`` joints."""
    if not 0.0 <= noda_cfg.prob <= 1.0:
        raise ConfigError(f"config key 'noda.prob': a probability in [0, 1], got "
                          f"{noda_cfg.prob}")
    s_lo, s_hi = (float(v) for v in noda_cfg.scale_range)
    if not 0.0 < s_lo <= s_hi:
        raise ConfigError("config key 'noda.scale_range': need 0 < min <= max")
    if noda_cfg.max_tries < 1:
        raise ConfigError("config key 'noda.max_tries': must be >= 1")
    w, h = int(input_size[0]), int(input_size[1])
    prob = float(noda_cfg.prob)
    max_tries = int(noda_cfg.max_tries)
    head_a, limb_a, (neck_a, neck_b) = joint_roles(dataset_info)
    head = tuple(int(v) for v in head_a)
    limb = tuple(int(v) for v in limb_a)
    k = len(head)
    m0, m1, m2 = (float(v) for v in mean)
    is0, is1, is2 = (1.0 / float(v) for v in std)
    num_draws = 1 + NODA_DRAWS_PER_TRY * max_tries

    def setup(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][:] = ins[0][i][:]
            outs[1][i][0] = k

    def cpu_run(image_out, occluded_out, image_in, kps, target_box, pool_rgba, pool_box,
                draws):
        _copy_image(image_out, image_in)
        for j in range(occluded_out.shape[0]):
            occluded_out[j] = 0.0
        if not _f64(draws[0]) < prob:
            return
        hh = image_in.shape[1]
        ww = image_in.shape[2]
        ok, t, rel, s, ang, rho, ox, oy = noda_place(
            kps, target_box, pool_rgba, pool_box, draws, ww, hh, head, limb, neck_a, neck_b,
            s_lo, s_hi, max_tries)
        if not ok:
            return
        for j in range(occluded_out.shape[0]):
            if noda_covered(kps, j, ww, hh, pool_rgba, pool_box, ox, oy, s):
                occluded_out[j] = 1.0
        x0, x1, y0, y1 = noda_extent(pool_rgba, pool_box, ox, oy, s, ww, hh)
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                noda_blend_px(image_out, image_in, x, y, pool_rgba, pool_box, ox, oy, s,
                              m0, m1, m2, is0, is1, is2)

    def gpu_run(image_out, occluded_out, image_in, kps, target_box, pool_rgba, pool_box,
                draws):
        hh = image_in.shape[1]
        ww = image_in.shape[2]
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        apply = _f64(draws[0]) < prob
        ok = False
        s = 1.0
        ox = 0.0
        oy = 0.0
        if apply:
            ok, t, rel, s, ang, rho, ox, oy = noda_place(
                kps, target_box, pool_rgba, pool_box, draws, ww, hh, head, limb, neck_a,
                neck_b, s_lo, s_hi, max_tries)
        for j in range(tid, occluded_out.shape[0], stride):
            occluded_out[j] = 0.0
            if ok and noda_covered(kps, j, ww, hh, pool_rgba, pool_box, ox, oy, s):
                occluded_out[j] = 1.0
        x0 = 0
        x1 = -1
        y0 = 0
        y1 = -1
        if ok:
            x0, x1, y0, y1 = noda_extent(pool_rgba, pool_box, ox, oy, s, ww, hh)
        for p in range(tid, hh * ww, stride):
            y = p // ww
            x = p - y * ww
            if x0 <= x <= x1 and y0 <= y <= y1:
                noda_blend_px(image_out, image_in, x, y, pool_rgba, pool_box, ox, oy, s,
                              m0, m1, m2, is0, is1, is2)
            else:
                for c in range(image_in.shape[0]):
                    image_out[c, y, x] = image_in[c, y, x]

    def params(kps, target_box, pool_rgba, pool_box, draws, size=None):
        """Placement as plain Python: dict(applied, ok, try, rel_scale, s, angle, rho, ox,
        oy, R, covered (K,) bool, head_or_neck (K,) bool, limb (K,) bool)."""
        ww, hh = (w, h) if size is None else size
        kps = np.ascontiguousarray(kps, dtype=np.float32)
        tb = np.ascontiguousarray(target_box, dtype=np.float32)
        pb = np.ascontiguousarray(pool_box, dtype=np.float32)
        draws = np.ascontiguousarray(draws, dtype=np.float32)
        rgba = np.ascontiguousarray(pool_rgba, dtype=np.uint8)
        out = {"applied": bool(float(draws[0]) < prob), "ok": False,
               "R": 0.5 * math.hypot(float(tb[-2]), float(tb[-1])),
               "covered": np.zeros(k, bool), "head_or_neck": head_a.copy(),
               "limb": limb_a.copy()}
        if not out["applied"]:
            return out
        ok, t, rel, s, ang, rho, ox, oy = noda_place(kps, tb, rgba, pb, draws, ww, hh, head,
                                                     limb, neck_a, neck_b, s_lo, s_hi,
                                                     max_tries)
        out.update(ok=bool(ok), attempt=int(t), rel_scale=rel, s=s, angle=ang, rho=rho,
                   ox=ox, oy=oy)
        if ok:
            out["covered"] = np.array([noda_covered(kps, j, ww, hh, rgba, pb, ox, oy, s)
                                       for j in range(k)], bool)
            if neck_a >= 0 and kps[neck_a, 2] > 0 and kps[neck_b, 2] > 0:
                nx = _pixel_of(0.5 * (float(kps[neck_a, 0]) + float(kps[neck_b, 0])))
                ny = _pixel_of(0.5 * (float(kps[neck_a, 1]) + float(kps[neck_b, 1])))
                out["neck_alpha"] = (noda_alpha_at(nx, ny, rgba, pb, ox, oy, s)
                                     if 0 <= nx < ww and 0 <= ny < hh else 0.0)
        return out

    return NodaKernels(num_draws=num_draws, num_joints=k, input_size=(w, h), cpu_run=cpu_run,
                       gpu_run=gpu_run, setup=setup, cpu_kernel=numba.njit(cpu_run), params=params)
