"""NODA, the online part: paste a person from the foreground pool next to the target person.

One numba kernel on the **normalised CHW float32 crop** (3, H, W) (see
:mod:`dali_pose.kernels.dropping` for the conventions). ``draws`` (``num_draws`` float32 per
sample, made by :mod:`dali_pose.draws`): ``draws[0]`` is the gate (1: paste, 0: leave the
crop), decided there with the scheduled ``noda.prob``; then ``NODA_DRAWS_PER_TRY`` U(0, 1)
values per placement try. Which pool person is pasted is also decided there (the pool
source serves it); the offline pool builder is ``python -m dali_pose.tools.build_pool``.

Reading of the paper
--------------------
NODA (Nearby-person Occlusion Data Augmentation with non-extra annotations), online part:

* With the gate open a pool person is pasted. For each
  of at most ``noda.max_tries`` tries: relative scale ~ U(scale_range) (the pasted person's
  box diagonal over the target's box diagonal), angle ~ U[0, 2 pi), distance ~ U[R/3, R] from
  the target box centre with R = half the target box diagonal; the pool person's box centre
  goes there. Only the centre and the diagonal of ``person_box`` are used, so an axis-aligned
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

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numba
import numpy as np
from numba import cuda

from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .common import copy_image, f64, imax, imin, kp_on_crop, pixel_of
from .dropping import gated
from .op import PEOPLE, NumbaOp, Port

NODA_DRAWS_PER_TRY = 3  # scale, angle, distance
GPU_THREADS = (256, 1, 1)  # grid-stride loops: any launch shape is correct
GPU_BLOCKS_PER_SM = 2


def joint_roles(joints):
    """(head_or_neck (K,) bool, limb (K,) bool, virtual neck pair (a, b) or (-1, -1)) of a
    dataset's joint names (or of a ``DatasetInfo``).

    Head = nose/eye/ear/head*; neck = *neck*; limb = elbow/wrist/knee/ankle. Without a neck
    joint, the midpoint of left/right shoulder (when both exist) stands in for the neck.
    """
    names = [n.lower() for n in getattr(joints, "joints", joints)]
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
        a = (w00 * f64(rgba[y0, x0, 3]) + w10 * f64(rgba[y0, x0 + 1, 3])
             + w01 * f64(rgba[y0 + 1, x0, 3]) + w11 * f64(rgba[y0 + 1, x0 + 1, 3]))
        if a <= 0.0:
            return 0.0, 0.0, 0.0, 0.0
        r = (w00 * f64(rgba[y0, x0, 0]) + w10 * f64(rgba[y0, x0 + 1, 0])
             + w01 * f64(rgba[y0 + 1, x0, 0]) + w11 * f64(rgba[y0 + 1, x0 + 1, 0]))
        g = (w00 * f64(rgba[y0, x0, 1]) + w10 * f64(rgba[y0, x0 + 1, 1])
             + w01 * f64(rgba[y0 + 1, x0, 1]) + w11 * f64(rgba[y0 + 1, x0 + 1, 1]))
        b = (w00 * f64(rgba[y0, x0, 2]) + w10 * f64(rgba[y0, x0 + 1, 2])
             + w01 * f64(rgba[y0 + 1, x0, 2]) + w11 * f64(rgba[y0 + 1, x0 + 1, 2]))
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
                    r += wgt * f64(rgba[yy, xx, 0])
                    g += wgt * f64(rgba[yy, xx, 1])
                    b += wgt * f64(rgba[yy, xx, 2])
                    a += wgt * f64(rgba[yy, xx, 3])
    return r, g, b, a


@numba.njit(cache=True)
def noda_alpha_at(x, y, rgba, pool_box, ox, oy, s):
    """Rendered alpha at crop pixel (x, y) for a placement (ox, oy, s)."""
    u = (x - ox) / s + f64(pool_box[0])
    v = (y - oy) / s + f64(pool_box[1])
    # The very sum noda_blend_px renders with: "covered" and the drawn alpha cannot disagree.
    return _bilinear_rgba(rgba, u, v)[3] / 255.0


@numba.njit(cache=True)
def noda_covered(kps, j, w, h, rgba, pool_box, ox, oy, s):
    """Joint j is annotated, on the crop, and its pixel is covered (alpha > 0.5)."""
    if not kp_on_crop(kps, j, w, h):
        return False
    px = pixel_of(f64(kps[j, 0]))
    py = pixel_of(f64(kps[j, 1]))
    return noda_alpha_at(px, py, rgba, pool_box, ox, oy, s) > 0.5


@numba.njit(cache=True)
def noda_place(kps, target_box, rgba, pool_box, draws, w, h, head, limb, neck_a, neck_b,
               s_lo, s_hi, max_tries):
    """Placement search. Returns (ok, try, rel_scale, s, angle, rho, ox, oy).

    ``head``/``limb`` are tuples of 0/1 per joint; ``s`` maps pool px to crop px.
    """
    tcx = f64(target_box[0])
    tcy = f64(target_box[1])
    tdiag = math.sqrt(f64(target_box[2]) ** 2 + f64(target_box[3]) ** 2)
    pdiag = math.sqrt(f64(pool_box[2]) ** 2 + f64(pool_box[3]) ** 2)
    big_r = 0.5 * tdiag
    if not (tdiag > 0.0 and pdiag > 0.0):
        return False, -1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for t in range(max_tries):
        b = 1 + NODA_DRAWS_PER_TRY * t
        rel = s_lo + f64(draws[b]) * (s_hi - s_lo)
        s = rel * tdiag / pdiag
        ang = 2.0 * math.pi * f64(draws[b + 1])
        rho = big_r / 3.0 + f64(draws[b + 2]) * (big_r - big_r / 3.0)
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
        if neck_a >= 0 and f64(kps[neck_a, 2]) > 0.0 and f64(kps[neck_b, 2]) > 0.0:
            nx = pixel_of(0.5 * (f64(kps[neck_a, 0]) + f64(kps[neck_b, 0])))
            ny = pixel_of(0.5 * (f64(kps[neck_a, 1]) + f64(kps[neck_b, 1])))
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
    u = (x - ox) / s + f64(pool_box[0])
    v = (y - oy) / s + f64(pool_box[1])
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
    image_out[0, y, x] = (1.0 - a) * f64(image_in[0, y, x]) + a * r
    image_out[1, y, x] = (1.0 - a) * f64(image_in[1, y, x]) + a * g
    image_out[2, y, x] = (1.0 - a) * f64(image_in[2, y, x]) + a * bb


@numba.njit(cache=True)
def noda_extent(rgba, pool_box, ox, oy, s, w, h):
    """Crop-pixel range [x0, x1] x [y0, y1] that the pasted pool crop can touch."""
    ph = rgba.shape[0]
    pw = rgba.shape[1]
    x0 = imax(0, int(math.floor(ox + s * (-1.0 - f64(pool_box[0])))))
    x1 = imin(w - 1, int(math.ceil(ox + s * (pw - f64(pool_box[0])))))
    y0 = imax(0, int(math.floor(oy + s * (-1.0 - f64(pool_box[1])))))
    y1 = imin(h - 1, int(math.ceil(oy + s * (ph - f64(pool_box[1])))))
    return x0, x1, y0, y1


@dataclass(frozen=True, eq=False)
class NodaOp(NumbaOp):
    """The NODA paste operator (see :class:`NumbaOp`), plus its joint count and crop size.

    Per sample (P people, each with its own pool person): outputs image_out float32
    (P, 3, H, W), occluded_out float32 (P, K); inputs image_in float32 (P, 3, H, W), kps
    float32 (P, K, 3), person_box float32 (P, 4) the target's [cx, cy, w, h] in crop px,
    pool_rgba uint8 (P, h, w, 4) person p's pool crop at the top left of a canvas of the
    largest, pool_box float32 (P, 6): [cx, cy, w, h] of the pool person inside its crop
    (``Pool.get(i)[2]``) and the crop's [rows, cols], draws float32 (P, num_draws). Both
    boxes must follow one convention (here: the aspect-fixed, unpadded box,
    ``PoseIndex.scale / padding``): only their centres and diagonals are used. ``one`` is the njit kernel of one person.
    """

    num_joints: int = 0
    input_size: Tuple[int, int] = (0, 0)
    one: Optional[Callable] = None  # the njit kernel of one person


def noda_op_from(section, input_size, dataset_info) -> NodaOp:
    """:func:`noda_op` with the values of ``section`` (the ``noda`` config section's field
    names) for the joints of ``dataset_info``."""
    return noda_op(tuple(int(v) for v in input_size), tuple(dataset_info.joints),
                   tuple(float(v) for v in section.scale_range), int(section.max_tries))


@functools.lru_cache(maxsize=None)
def noda_op(input_size: Tuple[int, int], joints: Tuple[str, ...],
            scale_range: Tuple[float, float], max_tries: int) -> NodaOp:
    """NODA paste operator for crops of ``input_size`` = [w, h] and the named ``joints``
    (their roles: :func:`joint_roles`). Values as in the ``noda`` config section."""
    w, h = int(input_size[0]), int(input_size[1])
    s_lo, s_hi = (float(v) for v in scale_range)
    head_a, limb_a, (neck_a, neck_b) = joint_roles(joints)
    head = tuple(int(v) for v in head_a)
    limb = tuple(int(v) for v in limb_a)
    k = len(head)
    m0, m1, m2 = (float(v) for v in IMAGENET_MEAN)
    is0, is1, is2 = (1.0 / float(v) for v in IMAGENET_STD)
    num_draws = 1 + NODA_DRAWS_PER_TRY * max_tries

    @numba.njit
    def one(image_out, occluded_out, image_in, kps, target_box, pool_rgba, pool_box, draws):
        copy_image(image_out, image_in)
        for j in range(occluded_out.shape[0]):
            occluded_out[j] = 0.0
        if not gated(draws):
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

    def cpu_run(image_out, occluded_out, image_in, kps, target_box, pool_rgba, pool_box,
                draws):
        for p in range(image_in.shape[0]):
            rows = int(pool_box[p, 4])
            cols = int(pool_box[p, 5])
            one(image_out[p], occluded_out[p], image_in[p], kps[p], target_box[p],
                pool_rgba[p, :rows, :cols], pool_box[p, :4], draws[p])

    def gpu_run(image_out, occluded_out, image_in, kps, target_box, pool_rgba, pool_box,
                draws):
        hh = image_in.shape[2]
        ww = image_in.shape[3]
        tid = cuda.grid(1)
        stride = cuda.gridsize(1)
        for p in range(image_in.shape[0]):
            rgba = pool_rgba[p, :int(pool_box[p, 4]), :int(pool_box[p, 5])]
            pbox = pool_box[p, :4]
            ok = False
            s = 1.0
            ox = 0.0
            oy = 0.0
            if gated(draws[p]):
                ok, t, rel, s, ang, rho, ox, oy = noda_place(
                    kps[p], target_box[p], rgba, pbox, draws[p], ww, hh, head, limb,
                    neck_a, neck_b, s_lo, s_hi, max_tries)
            for j in range(tid, occluded_out.shape[1], stride):
                occluded_out[p, j] = 0.0
                if ok and noda_covered(kps[p], j, ww, hh, rgba, pbox, ox, oy, s):
                    occluded_out[p, j] = 1.0
            x0 = 0
            x1 = -1
            y0 = 0
            y1 = -1
            if ok:
                x0, x1, y0, y1 = noda_extent(rgba, pbox, ox, oy, s, ww, hh)
            for q in range(tid, hh * ww, stride):
                y = q // ww
                x = q - y * ww
                if x0 <= x <= x1 and y0 <= y <= y1:
                    noda_blend_px(image_out[p], image_in[p], x, y, rgba, pbox, ox, oy,
                                  s, m0, m1, m2, is0, is1, is2)
                else:
                    for c in range(image_in.shape[1]):
                        image_out[p, c, y, x] = image_in[p, c, y, x]

    def params(kps, target_box, pool_rgba, pool_box, draws, size=None):
        """Placement as plain Python: dict(applied, ok, try, rel_scale, s, angle, rho, ox,
        oy, R, covered (K,) bool, head_or_neck (K,) bool, limb (K,) bool)."""
        ww, hh = (w, h) if size is None else size
        kps = np.ascontiguousarray(kps, dtype=np.float32)
        tb = np.ascontiguousarray(target_box, dtype=np.float32)
        pb = np.ascontiguousarray(pool_box, dtype=np.float32)
        draws = np.ascontiguousarray(draws, dtype=np.float32)
        rgba = np.ascontiguousarray(pool_rgba, dtype=np.uint8)
        out = {"applied": bool(gated(draws)), "ok": False,
               "R": 0.5 * math.hypot(float(tb[2]), float(tb[3])),
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
                nx = pixel_of(0.5 * (float(kps[neck_a, 0]) + float(kps[neck_b, 0])))
                ny = pixel_of(0.5 * (float(kps[neck_a, 1]) + float(kps[neck_b, 1])))
                out["neck_alpha"] = (noda_alpha_at(nx, ny, rgba, pb, ox, oy, s)
                                     if 0 <= nx < ww and 0 <= ny < hh else 0.0)
        return out

    f32, P = "float32", PEOPLE
    return NodaOp(
        name="noda",
        outputs=(Port("image", f32, (P, 3, h, w)), Port("occluded", f32, (P, k))),
        inputs=(Port("image", f32, (P, 3, h, w)), Port("keypoints", f32, (P, k, 3)),
                Port("person_box", f32, (P, 4)), Port("pool_rgba", "uint8", (P, None, None, 4)),
                Port("pool_box", f32, (P, 6)), Port("draws", f32, (P, num_draws))),
        cpu_run=cpu_run, gpu_run=gpu_run,
        threads_per_block=GPU_THREADS, blocks_per_sm=GPU_BLOCKS_PER_SM, num_draws=num_draws,
        params=params, num_joints=k, input_size=(w, h), one=one)
