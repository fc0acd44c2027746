"""Training targets (UDP): Gaussian heatmaps and the combined classification + offset target.

Pure numba kernels; :mod:`dali_pose.codecs` owns which one a model uses, with which
stride and sizes. This module imports without DALI and without a GPU (building the CUDA closures
compiles nothing; DALI or ``numba.cuda.jit`` compiles them).

Conventions (see :mod:`dali_pose.geometry`): crop keypoints are in crop pixels with pixel
centres on integers; the heatmap pixel grid is the crop grid divided by the stride (UDP:
``(input - 1) / (heatmap - 1)`` per axis, given by the codec), so heatmap pixel ``px`` sits
at crop ``px * stride`` and a keypoint at crop ``x`` sits at heatmap ``mu_x = x / stride``
(exact, never rounded).

Target weight rule (both targets)
---------------------------------
``weight[j] = 0`` when the joint is unlabelled (``v == 0``) or its heatmap position falls
outside the map, i.e. ``mu_x < -0.5 or mu_x >= w - 0.5 or mu_y < -0.5 or mu_y >= h - 0.5``
(equivalently: the heatmap pixel nearest to ``mu`` is not on the map); all of the joint's
channels are then zero. Otherwise ``weight[j] = 1``. (A NaN position also gets weight 0.)

Gaussian target (``model.target: gaussian``), K channels
--------------------------------------------------------
``cx = floor(mu_x + 0.5)``, ``cy = floor(mu_y + 0.5)`` (the nearest pixel, ties upward);
on the integer pixels with ``|px - cx| <= 3 sigma`` and ``|py - cy| <= 3 sigma`` (clipped to
the map) the value is ``exp(-((px - mu_x)^2 + (py - mu_y)^2) / (2 sigma^2))``, elsewhere 0.
This is UDP's window (centred on the rounded position, values from the exact one).

Combined target (``model.target: combined``), 3K channels ``[heatmap, x-off, y-off]`` per joint
-----------------------------------------------------------------------------------------
Disk radius ``r`` in heatmap px (the codec's rule: :func:`dali_pose.codecs.combined_radius`,
3.5 px on [w, h] = [48, 64] maps). With ``ox = (mu_x - px) / r`` and ``oy = (mu_y - py) / r``: where ``ox^2 + oy^2 <= 1`` the three
channels are ``1, ox, oy``; elsewhere all three are 0.

Arithmetic is float64 (stored as float32) in all variants, so the CPU, CUDA and pure-Python
(``NUMBA_DISABLE_JIT=1``) runs agree to float32 rounding. The CUDA kernels spell the per-pixel
formulas out instead of calling the CPU helpers (so that they compile to PTX without a GPU);
tests check CPU == CUDA (simulator) == a NumPy reference.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Tuple

import numba

from numba import cuda  # noqa: F401  (module global on purpose: the CUDA simulator swaps it)

from .op import PEOPLE, NumbaOp, Port

GPU_THREADS_PER_BLOCK = (32, 8, 1)  # x: heatmap width, y: heatmap height, z: joints


# ---------------------------------------------------------------------------------------------
# Per-pixel formulas of the CPU kernels (the CUDA kernels below spell the same lines out).
# ---------------------------------------------------------------------------------------------

def _joint_center_py(x, y, v, stride_x, stride_y, w, h):
    """Heatmap position (mu_x, mu_y), nearest pixel (cx, cy) and the 0/1 weight of one joint."""
    mu_x = float(x) / stride_x  # float(): float64 also in pure Python (NumPy 2 keeps float32)
    mu_y = float(y) / stride_y
    ok = v > 0 and mu_x >= -0.5 and mu_x < w - 0.5 and mu_y >= -0.5 and mu_y < h - 0.5
    if ok:
        cx = int(math.floor(mu_x + 0.5))
        cy = int(math.floor(mu_y + 0.5))
        return mu_x, mu_y, cx, cy, 1.0
    return mu_x, mu_y, 0, 0, 0.0


def _gauss_value_py(px, py, mu_x, mu_y, inv_two_sigma2):
    dx = px - mu_x
    dy = py - mu_y
    return math.exp(-(dx * dx + dy * dy) * inv_two_sigma2)


def _disk_value_py(px, py, mu_x, mu_y, radius):
    """(heatmap, x-offset, y-offset) of the combined target at pixel (px, py)."""
    ox = (mu_x - px) / radius
    oy = (mu_y - py) / radius
    if ox * ox + oy * oy <= 1.0:
        return 1.0, ox, oy
    return 0.0, 0.0, 0.0


_joint_center = numba.njit(cache=True)(_joint_center_py)
_gauss_value = numba.njit(cache=True)(_gauss_value_py)
_disk_value = numba.njit(cache=True)(_disk_value_py)


def window_radius(sigma: float) -> int:
    """Half size of the Gaussian window in whole pixels: the largest d with d <= 3 sigma."""
    return int(math.floor(3.0 * sigma))


# ---------------------------------------------------------------------------------------------
# CPU kernels (one sample). Outputs are preallocated and may hold garbage: every element is
# written.
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def gaussian_target_cpu(heatmap, weight, kps, stride_x, stride_y, sigma, rad):
    """UDP Gaussian target of one sample.

    heatmap (K, h, w) float32 and weight (K,) float32 are written; kps (K, >=3) crop
    keypoints (x, y, v); ``rad`` = :func:`window_radius` (sigma).
    """
    k = heatmap.shape[0]
    h = heatmap.shape[1]
    w = heatmap.shape[2]
    inv = 1.0 / (2.0 * sigma * sigma)
    for j in range(k):
        heatmap[j, :, :] = 0.0
        mu_x, mu_y, cx, cy, wt = _joint_center(kps[j, 0], kps[j, 1], kps[j, 2],
                                               stride_x, stride_y, w, h)
        weight[j] = wt
        if wt == 0.0:
            continue
        for py in range(max(0, cy - rad), min(h, cy + rad + 1)):
            for px in range(max(0, cx - rad), min(w, cx + rad + 1)):
                heatmap[j, py, px] = _gauss_value(px, py, mu_x, mu_y, inv)


@numba.njit(cache=True)
def combined_target_cpu(heatmap, weight, kps, stride_x, stride_y, radius):
    """UDP combined target of one sample: heatmap (3K, h, w) float32, weight (K,) float32."""
    k = weight.shape[0]
    h = heatmap.shape[1]
    w = heatmap.shape[2]
    for j in range(k):
        heatmap[3 * j:3 * j + 3, :, :] = 0.0
        mu_x, mu_y, cx, cy, wt = _joint_center(kps[j, 0], kps[j, 1], kps[j, 2],
                                               stride_x, stride_y, w, h)
        weight[j] = wt
        if wt == 0.0:
            continue
        # every pixel of the disk lies in this box (one extra pixel each side for safety)
        x0 = max(0, int(math.floor(mu_x - radius)) - 1)
        x1 = min(w, int(math.ceil(mu_x + radius)) + 2)
        y0 = max(0, int(math.floor(mu_y - radius)) - 1)
        y1 = min(h, int(math.ceil(mu_y + radius)) + 2)
        for py in range(y0, y1):
            for px in range(x0, x1):
                m, ox, oy = _disk_value(px, py, mu_x, mu_y, radius)
                heatmap[3 * j, py, px] = m
                heatmap[3 * j + 1, py, px] = ox
                heatmap[3 * j + 2, py, px] = oy


@numba.njit(cache=True)
def msra_target_cpu(heatmap, weight, kps, stride_x, stride_y, sigma):
    """HRNet's classic Gaussian target of one sample (``model.codec: msra``), as its
    ``generate_target``: the Gaussian centred on the *rounded* heatmap position
    ``int(x / stride + 0.5)`` (Python's truncating ``int``), written on the window
    ``[int(mu - 3 sigma), int(mu + 3 sigma + 1))`` clipped to the map; weight 0 when the
    joint is unlabelled or the window misses the map. heatmap (K, h, w), weight (K,)."""
    k = heatmap.shape[0]
    h = heatmap.shape[1]
    w = heatmap.shape[2]
    tmp = 3.0 * sigma
    c0 = math.floor((2.0 * tmp + 1.0) / 2.0)  # the centre index of HRNet's Gaussian patch
    inv = 1.0 / (2.0 * sigma * sigma)
    for j in range(k):
        heatmap[j, :, :] = 0.0
        weight[j] = 0.0
        if kps[j, 2] <= 0:
            continue
        mu_x = int(float(kps[j, 0]) / stride_x + 0.5)
        mu_y = int(float(kps[j, 1]) / stride_y + 0.5)
        ul_x = int(mu_x - tmp)
        ul_y = int(mu_y - tmp)
        br_x = int(mu_x + tmp + 1.0)
        br_y = int(mu_y + tmp + 1.0)
        if ul_x >= w or ul_y >= h or br_x < 0 or br_y < 0:
            continue
        weight[j] = 1.0
        for py in range(max(0, ul_y), min(br_y, h)):
            for px in range(max(0, ul_x), min(br_x, w)):
                dx = px - ul_x - c0
                dy = py - ul_y - c0
                heatmap[j, py, px] = math.exp(-(dx * dx + dy * dy) * inv)


# ---------------------------------------------------------------------------------------------
# CUDA kernels: built per config (closure constants), compiled by DALI (or by cuda.jit in tests).
# ---------------------------------------------------------------------------------------------

def _make_gaussian_gpu(stride_x, stride_y, sigma, rad):
    inv = 1.0 / (2.0 * sigma * sigma)

    def gaussian_target_gpu(heatmap, weight, kps, box):
        # Same formulas as _joint_center_py / _gauss_value_py, written out: a CUDA kernel that
        # calls device functions cannot be compiled without a GPU (numba asks the current
        # device for its compute capability), and this one is checked by compiling it to PTX.
        # Only builtins that lower inline are used (no int(), no helper calls).
        x0, y0, j0 = cuda.grid(3)
        gx, gy, gz = cuda.gridsize(3)  # grid-stride in all dims: any launch shape is correct
        k = heatmap.shape[1]
        h = heatmap.shape[2]
        w = heatmap.shape[3]
        for p in range(kps.shape[0]):  # the people of this sample
            for j in range(j0, k, gz):
                mu_x = float(kps[p, j, 0]) / stride_x
                mu_y = float(kps[p, j, 1]) / stride_y
                ok = (kps[p, j, 2] > 0 and mu_x >= -0.5 and mu_x < w - 0.5
                      and mu_y >= -0.5 and mu_y < h - 0.5)
                # nearest pixel, kept as a float: int() of a float needs a device-side helper
                # that numba.cuda compiles only with a GPU present (no PTX check without one)
                cx = math.floor(mu_x + 0.5) if ok else 0.0
                cy = math.floor(mu_y + 0.5) if ok else 0.0
                if x0 == 0 and y0 == 0:
                    weight[p, j] = 1.0 if ok else 0.0
                for py in range(y0, h, gy):
                    for px in range(x0, w, gx):
                        val = 0.0
                        if ok and abs(px - cx) <= rad and abs(py - cy) <= rad:
                            dx = px - mu_x
                            dy = py - mu_y
                            val = math.exp(-(dx * dx + dy * dy) * inv)
                        heatmap[p, j, py, px] = val

    return gaussian_target_gpu


def _make_combined_gpu(stride_x, stride_y, radius):
    def combined_target_gpu(heatmap, weight, kps, box):
        # Same formulas as _joint_center_py / _disk_value_py, written out (see above).
        x0, y0, j0 = cuda.grid(3)
        gx, gy, gz = cuda.gridsize(3)
        k = weight.shape[1]
        h = heatmap.shape[2]
        w = heatmap.shape[3]
        for p in range(kps.shape[0]):  # the people of this sample
            for j in range(j0, k, gz):
                mu_x = float(kps[p, j, 0]) / stride_x
                mu_y = float(kps[p, j, 1]) / stride_y
                ok = (kps[p, j, 2] > 0 and mu_x >= -0.5 and mu_x < w - 0.5
                      and mu_y >= -0.5 and mu_y < h - 0.5)
                if x0 == 0 and y0 == 0:
                    weight[p, j] = 1.0 if ok else 0.0
                for py in range(y0, h, gy):
                    for px in range(x0, w, gx):
                        m = 0.0
                        ox = 0.0
                        oy = 0.0
                        if ok:
                            ox = (mu_x - px) / radius
                            oy = (mu_y - py) / radius
                            if ox * ox + oy * oy <= 1.0:
                                m = 1.0
                            else:
                                ox = 0.0
                                oy = 0.0
                        heatmap[p, 3 * j, py, px] = m
                        heatmap[p, 3 * j + 1, py, px] = ox
                        heatmap[p, 3 * j + 2, py, px] = oy

    return combined_target_gpu


def _make_msra_gpu(stride_x, stride_y, sigma):
    tmp = 3.0 * sigma
    c0 = math.floor((2.0 * tmp + 1.0) / 2.0)
    inv = 1.0 / (2.0 * sigma * sigma)

    def msra_target_gpu(heatmap, weight, kps, box):
        # msra_target_cpu's formulas written out, integers kept as floats (see above);
        # truncation toward zero (Python's int) is floor for x >= 0 and ceil below.
        x0, y0, j0 = cuda.grid(3)
        gx, gy, gz = cuda.gridsize(3)
        k = heatmap.shape[1]
        h = heatmap.shape[2]
        w = heatmap.shape[3]
        for p in range(kps.shape[0]):  # the people of this sample
            for j in range(j0, k, gz):
                ax = float(kps[p, j, 0]) / stride_x + 0.5
                ay = float(kps[p, j, 1]) / stride_y + 0.5
                mu_x = math.floor(ax) if ax >= 0 else math.ceil(ax)
                mu_y = math.floor(ay) if ay >= 0 else math.ceil(ay)
                bx = mu_x - tmp
                by = mu_y - tmp
                ul_x = math.floor(bx) if bx >= 0 else math.ceil(bx)
                ul_y = math.floor(by) if by >= 0 else math.ceil(by)
                cx = mu_x + tmp + 1.0
                cy = mu_y + tmp + 1.0
                br_x = math.floor(cx) if cx >= 0 else math.ceil(cx)
                br_y = math.floor(cy) if cy >= 0 else math.ceil(cy)
                ok = (kps[p, j, 2] > 0 and not (ul_x >= w or ul_y >= h or br_x < 0 or br_y < 0))
                if x0 == 0 and y0 == 0:
                    weight[p, j] = 1.0 if ok else 0.0
                for py in range(y0, h, gy):
                    for px in range(x0, w, gx):
                        val = 0.0
                        if ok and ul_x <= px < br_x and ul_y <= py < br_y:
                            dx = px - ul_x - c0
                            dy = py - ul_y - c0
                            val = math.exp(-(dx * dx + dy * dy) * inv)
                        heatmap[p, j, py, px] = val

    return msra_target_gpu


# ---------------------------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TargetOp(NumbaOp):
    """A target operator (see :class:`NumbaOp`) and what it writes: ``channels`` maps of
    ``hm_size`` = (w, h) for ``num_joints`` joints, at heatmap ``stride`` (x, y).

    ``run(heatmap_out, weight_out, kps, person_box)`` for the P people of a sample:
    heatmap_out (P, channels, h, w) float32, weight_out (P, K) float32, kps (P, K, 3)
    float32 crop keypoints; ``person_box`` (P, 4) float32 is not read: it keeps the inputs as
    many as the outputs (DALI 2.4's setup wrapper, see :class:`NumbaOp`). The CUDA variant
    covers the map with one thread per pixel and joint (grid-stride, so any launch shape is
    correct), person after person.
    """

    channels: int = 0
    hm_size: Tuple[int, int] = (0, 0)
    num_joints: int = 0
    stride: Tuple[float, float] = (0.0, 0.0)


def _target_op(name, channels, w, h, k, stride, cpu_run, gpu_run) -> TargetOp:
    tpb = GPU_THREADS_PER_BLOCK

    f32, P = "float32", PEOPLE
    return TargetOp(
        name=name, outputs=(Port("heatmap", f32, (P, channels, h, w)),
                            Port("target_weight", f32, (P, k))),
        inputs=(Port("keypoints", f32, (P, k, 3)), Port("person_box", f32, (P, 4))),
        cpu_run=cpu_run, gpu_run=gpu_run,
        blocks=(-(-w // tpb[0]), -(-h // tpb[1]), k), threads_per_block=tpb,
        channels=channels, hm_size=(w, h), num_joints=k, stride=stride)


@functools.lru_cache(maxsize=None)
def gaussian_target_op(heatmap_size: Tuple[int, int], stride: Tuple[float, float],
                       sigma: float, num_joints: int) -> TargetOp:
    """UDP Gaussian target of ``sigma`` (heatmap px) on maps of ``heatmap_size`` (w, h)."""
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    sx, sy = float(stride[0]), float(stride[1])
    sigma = float(sigma)
    rad = window_radius(sigma)

    def cpu_run(heatmap_out, weight_out, kps, box):
        for p in range(kps.shape[0]):
            gaussian_target_cpu(heatmap_out[p], weight_out[p], kps[p], sx, sy, sigma, rad)

    return _target_op("gaussian targets", int(num_joints), w, h, int(num_joints), (sx, sy),
                      cpu_run, _make_gaussian_gpu(sx, sy, sigma, rad))


@functools.lru_cache(maxsize=None)
def combined_target_op(heatmap_size: Tuple[int, int], stride: Tuple[float, float],
                       radius: float, num_joints: int) -> TargetOp:
    """UDP combined target (disk of ``radius`` heatmap px + offsets), 3K channels."""
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    sx, sy = float(stride[0]), float(stride[1])
    radius = float(radius)

    def cpu_run(heatmap_out, weight_out, kps, box):
        for p in range(kps.shape[0]):
            combined_target_cpu(heatmap_out[p], weight_out[p], kps[p], sx, sy, radius)

    return _target_op("combined targets", 3 * int(num_joints), w, h, int(num_joints),
                      (sx, sy), cpu_run, _make_combined_gpu(sx, sy, radius))


@functools.lru_cache(maxsize=None)
def msra_target_op(heatmap_size: Tuple[int, int], stride: Tuple[float, float], sigma: float,
                   num_joints: int) -> TargetOp:
    """HRNet's classic Gaussian target (:func:`msra_target_cpu`), K channels."""
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    sx, sy = float(stride[0]), float(stride[1])
    sigma = float(sigma)

    def cpu_run(heatmap_out, weight_out, kps, box):
        for p in range(kps.shape[0]):
            msra_target_cpu(heatmap_out[p], weight_out[p], kps[p], sx, sy, sigma)

    return _target_op("msra targets", int(num_joints), w, h, int(num_joints), (sx, sy),
                      cpu_run, _make_msra_gpu(sx, sy, sigma))
