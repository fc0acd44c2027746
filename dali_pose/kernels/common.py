"""Small njit helpers shared by the occlusion kernels (:mod:`.dropping`, :mod:`.noda`).

Scalar in, scalar out, so CPU njit code and CUDA device code both call them. Device code
avoids the ``min``/``max`` builtins (numba 0.68's CUDA target fails to type them inside device
functions): :func:`imin` / :func:`imax` stand in.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def f64(v):
    """float64 of an array element. Not ``float()``: numba keeps a float32 a float32 there,
    Python makes it a double, and compiled and pure-Python runs would round differently."""
    return np.float64(v)


@numba.njit(cache=True)
def imin(a, b):
    """min() for device code (numba 0.68's CUDA target fails to type the builtin)."""
    return a if a < b else b


@numba.njit(cache=True)
def imax(a, b):
    return a if a > b else b


@numba.njit(cache=True)
def pixel_of(v):
    """Index of the pixel whose area contains coordinate v (centres on integers)."""
    return int(math.floor(v + 0.5))


@numba.njit(cache=True)
def kp_on_crop(kps, j, w, h):
    """Joint j is annotated (v > 0) and falls on a crop pixel."""
    if f64(kps[j, 2]) <= 0.0:
        return False
    px = pixel_of(f64(kps[j, 0]))
    py = pixel_of(f64(kps[j, 1]))
    return 0 <= px < w and 0 <= py < h


@numba.njit(cache=True)
def copy_image(dst, src):
    for c in range(src.shape[0]):
        for y in range(src.shape[1]):
            for x in range(src.shape[2]):
                dst[c, y, x] = src[c, y, x]
