"""NODA offline part: a foreground pool of people cut from the training annotations.

``python -m dali_pose.tools.build_pool --config CFG --out POOL.npz [--level box|cardboard|grabcut|mixed]
[--no-smooth] [--set key=value ...]`` reads the training split (``dali_pose.datasets.load_index(cfg,
'train')``) and writes one ``.npz`` holding, per kept person, an RGBA crop (RGB uint8 plus an
edge-smoothed alpha matte) and the person's keypoints and box in that crop's pixels (the
format: :mod:`dali_pose.loader.pool`). No label beyond the keypoint annotations is used.

Crops: the person box (the annotation ``bbox`` when the json has one, else the keypoint extent
grown by ``FALLBACK_BOX_GROW``) grown by ``margin`` of its size on every side, so the blurred
matte fits; resized with area averaging so its longer side is at most ``max_side``. Pixel
centres on integers, as everywhere. Parts of the crop outside the source image get alpha 0.

Mask levels (the NODA paper's three levels of foreground extraction):

* ``box``: the person box.
* ``cardboard``: body-part boxes along the skeleton: a rotated rectangle per skeleton edge
  with both ends annotated, the torso polygon (hull of shoulders and hips), a head disc;
  part widths are fractions of the person size (``PART_WIDTH``), clipped to the box.
* ``grabcut``: ``cv2.grabCut`` initialised from a mask: sure background outside the box,
  probable background inside it, probable foreground on the cardboard, sure foreground on
  thin skeleton lines and the head centre; ``GRABCUT_ITERS`` iterations, then only the
  connected components touching the sure foreground are kept.

Every mask is edge-smoothed by a Gaussian blur (sigma ``EDGE_SIGMA`` of the crop's longer
side, at least 1 px) and stored as alpha 0..255, so alpha 0.5 stays on the hard edge.

People are skipped, with a printed count per reason, when the box is shorter than
``--min-height`` source px, has fewer than ``--min-joints`` annotated joints, has no annotated
limb joint, or its mask (after clipping to the image) covers under ``MIN_FG_FRACTION`` of
the box (GrabCut finding almost nothing, a box mostly off the image).

Reading of the paper
--------------------
NODA ("Nearby-person Occlusion Data Augmentation for Human Pose Estimation with Non-extra
Annotations") builds its occluders only from the pose annotations it already has: people of
the training set, cut out at one of three increasingly tight levels (box, cardboard body
parts along the skeleton, GrabCut seeded by both). We keep the pool offline in one ``.npz``
of concatenated RGBA crops capped at ``max_side`` px, so the pipeline can upload it to GPU
memory once (size ~ people x mean crop area x 4 bytes; lower ``--max-side`` to shrink a large
training set's pool) and feed per-sample views of it; the online part
(placement, coverage rules, blending, the ``occluded`` report) is
:mod:`dali_pose.kernels.noda`, whose docstring has its reading. Where the
paper does not fix a number (part widths, blur, thresholds, margin), the values here are ours.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from ..config import add_config_args, load_config
from ..datasets import load_index
from ..kernels.noda import joint_roles
from ..loader.pool import POOL_VERSION

LEVELS = ("box", "cardboard", "grabcut")
FALLBACK_BOX_GROW = 0.15  # per side, of the keypoint extent, when the json has no bbox
EDGE_SIGMA = 0.012  # matte blur sigma, fraction of the crop's longer side
PART_WIDTH = {"limb": 0.09, "head": 0.085, "torso": 0.05, "seed": 0.015}  # x person size
GRABCUT_ITERS = 3
MIN_FG_FRACTION = 0.08


# ------------------------------------------------------------------------------ crops


def crop_person(image: np.ndarray, box_xywh, kps: np.ndarray, margin: float, max_side: int,
                anchor=None):
    """Cut the grown box out of ``image`` (H, W, C), area-resized to ``max_side``.

    ``anchor`` = (cx, cy, w, h), another box in source px to map into the crop (default: the
    box itself). Returns (crop, valid (h, w) bool, kps in crop px, box [cx, cy, w, h] in crop
    px, anchor [cx, cy, w, h] in crop px).
    """
    x, y, bw, bh = (float(v) for v in box_xywh)
    cx, cy = x + 0.5 * bw, y + 0.5 * bh
    gw, gh = bw * (1.0 + 2.0 * margin), bh * (1.0 + 2.0 * margin)
    w1, h1 = max(1, int(math.ceil(gw))), max(1, int(math.ceil(gh)))
    # step 1: unit-scale crop, crop pixel (w1-1)/2 sits on the box centre
    m1 = np.array([[1.0, 0.0, 0.5 * (w1 - 1) - cx], [0.0, 1.0, 0.5 * (h1 - 1) - cy]])
    crop = cv2.warpAffine(image, m1, (w1, h1), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.warpAffine(np.ones(image.shape[:2], np.uint8), m1, (w1, h1),
                           flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    k = min(1.0, max_side / max(w1, h1))
    w2, h2 = max(1, int(round(w1 * k))), max(1, int(round(h1 * k)))
    sx, sy = w2 / w1, h2 / h1
    if (w2, h2) != (w1, h1):
        crop = cv2.resize(crop, (w2, h2), interpolation=cv2.INTER_AREA)
        valid = cv2.resize(valid, (w2, h2), interpolation=cv2.INTER_NEAREST)
    out = kps.astype(np.float32).copy()
    # resize maps pixel centres as x2 = (x1 + 0.5) * sx - 0.5
    out[:, 0] = (kps[:, 0] + m1[0, 2] + 0.5) * sx - 0.5
    out[:, 1] = (kps[:, 1] + m1[1, 2] + 0.5) * sy - 0.5
    out[kps[:, 2] <= 0, :2] = 0.0
    def to_crop(b):
        return np.array([(b[0] + m1[0, 2] + 0.5) * sx - 0.5, (b[1] + m1[1, 2] + 0.5) * sy - 0.5,
                         b[2] * sx, b[3] * sy], np.float32)

    box = to_crop((cx, cy, bw, bh))
    anc = box if anchor is None else to_crop(anchor)
    return crop, valid.astype(bool), out, box, anc


def _box_mask(shape, box) -> np.ndarray:
    h, w = shape
    cx, cy, bw, bh = (float(v) for v in box)
    ys, xs = np.mgrid[0:h, 0:w]
    return (np.abs(xs - cx) <= 0.5 * bw) & (np.abs(ys - cy) <= 0.5 * bh)


def _part_groups(info):
    names = [n.lower() for n in info.joints]
    head, limb, _ = joint_roles(info)
    head_only = np.array([h and "neck" not in n for h, n in zip(head, names)], bool)
    torso = np.array([any(t in n for t in ("shoulder", "hip", "pelvis", "thorax", "neck"))
                      for n in names], bool)
    return head_only, torso, limb


def _rotated_rect(mask, a, b, width, value):
    """Rectangle of ``width`` along segment a-b, extended by width/2 past both ends."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    n = float(np.hypot(*d))
    if n < 1e-6:
        cv2.circle(mask, tuple(int(round(v)) for v in a), max(1, int(round(width / 2))),
                   value, -1)
        return
    t = d / n
    nrm = np.array([-t[1], t[0]])
    hw = 0.5 * width
    a2 = np.asarray(a) - t * hw
    b2 = np.asarray(b) + t * hw
    poly = np.array([a2 + nrm * hw, b2 + nrm * hw, b2 - nrm * hw, a2 - nrm * hw])
    cv2.fillConvexPoly(mask, np.round(poly * 16).astype(np.int32), value, cv2.LINE_8, 4)


def cardboard_mask(shape, kps, box, info) -> np.ndarray:
    """Body-part boxes along the skeleton, clipped to the person box. uint8 0/1."""
    mask = np.zeros(shape, np.uint8)
    size = max(float(box[2]), float(box[3]))
    lab = kps[:, 2] > 0
    head_only, torso, _ = _part_groups(info)
    for a, b in info.skeleton:
        if lab[a] and lab[b]:
            _rotated_rect(mask, kps[a, :2], kps[b, :2], PART_WIDTH["limb"] * size, 1)
    tj = np.nonzero(torso & lab)[0]
    if len(tj) >= 3:
        hull = cv2.convexHull(np.round(kps[tj, :2] * 16).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, 4)
        grow = max(1, int(round(PART_WIDTH["torso"] * size)))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                          (2 * grow + 1, 2 * grow + 1)))
    hj = np.nonzero(head_only & lab)[0]
    if len(hj):
        c = kps[hj, :2].mean(axis=0)
        spread = float(np.max(np.hypot(*(kps[hj, :2] - c).T))) if len(hj) > 1 else 0.0
        r = max(PART_WIDTH["head"] * size, 1.3 * spread)
        cv2.circle(mask, (int(round(c[0] * 16)), int(round(c[1] * 16))),
                   int(round(r * 16)), 1, -1, cv2.LINE_8, 4)
    return mask & _box_mask(shape, box).astype(np.uint8)


def _skeleton_seed(shape, kps, box, info) -> np.ndarray:
    seed = np.zeros(shape, np.uint8)
    size = max(float(box[2]), float(box[3]))
    th = max(1, int(round(PART_WIDTH["seed"] * size)))
    lab = kps[:, 2] > 0
    for a, b in info.skeleton:
        if lab[a] and lab[b]:
            pa = tuple(int(round(v)) for v in kps[a, :2])
            pb = tuple(int(round(v)) for v in kps[b, :2])
            cv2.line(seed, pa, pb, 1, th)
    for j in np.nonzero(lab)[0]:
        cv2.circle(seed, tuple(int(round(v)) for v in kps[j, :2]), th, 1, -1)
    return seed & _box_mask(shape, box).astype(np.uint8)


def grabcut_mask(crop_bgr, kps, box, info, iters: int = GRABCUT_ITERS) -> np.ndarray:
    """GrabCut seeded by the box and the skeleton. uint8 0/1."""
    shape = crop_bgr.shape[:2]
    inbox = _box_mask(shape, box)
    card = cardboard_mask(shape, kps, box, info).astype(bool)
    seed = _skeleton_seed(shape, kps, box, info).astype(bool)
    gc = np.full(shape, cv2.GC_BGD, np.uint8)
    gc[inbox] = cv2.GC_PR_BGD
    gc[card] = cv2.GC_PR_FGD
    gc[seed] = cv2.GC_FGD
    if not (gc == cv2.GC_BGD).any() or not seed.any():
        return np.zeros(shape, np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(crop_bgr), gc, None, bgd, fgd, iters,
                cv2.GC_INIT_WITH_MASK)
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels = cv2.connectedComponents(fg, connectivity=8)
    keep = np.unique(labels[seed & (fg > 0)])
    return np.isin(labels, keep[keep > 0]).astype(np.uint8)


def smooth_alpha(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Binary mask -> edge-smoothed alpha uint8 (0.5 on the hard edge), 0 off the image."""
    sigma = max(1.0, EDGE_SIGMA * max(mask.shape))
    a = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    a *= valid
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ build


def _json_boxes(ann_path: Optional[str]) -> Dict[int, Tuple[float, float, float, float]]:
    if not ann_path or not os.path.isfile(ann_path):
        return {}
    with open(ann_path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        return {}
    out = {}
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and "id" in ann and "bbox" in ann:
            out[ann["id"]] = tuple(float(v) for v in ann["bbox"])
    return out


def build_pool(cfg, level: str = "grabcut", margin: float = 0.1, max_side: int = 256,
               min_height: float = 48.0, min_joints: int = 6, verbose: bool = True,
               smooth: bool = True) -> Dict:
    """Build the pool arrays (the dict ``np.savez`` writes) from ``cfg``'s training split.

    ``level``: one of LEVELS, or ``mixed`` (NODA Table I's last row: the three levels in one
    pool, person n of the split at LEVELS[n % 3]); ``smooth``: the Gaussian edge smoothing
    of the matte (False: a hard 0/255 alpha, NODA Table I's rows without "Smo.")."""
    if level not in LEVELS + ("mixed",):
        raise ValueError(f"level must be one of {LEVELS + ('mixed',)}, got {level!r}")
    index = load_index(cfg, "train")
    info = index.info
    boxes_json = _json_boxes(cfg.data.train_ann) if cfg.data.format != "mpii" else {}
    _, limb, _ = joint_roles(info)
    skipped: Counter = Counter()
    crops, kps_out, boxes_out, person_out, img_ids, inst_ids = [], [], [], [], [], []
    padding = float(cfg.data.padding)
    order = np.argsort(index.image_paths.astype(str), kind="stable")
    cache_path, cache_img = None, None
    for n_person, i in enumerate(order):
        level_i = LEVELS[n_person % len(LEVELS)] if level == "mixed" else level
        kps = index.keypoints[i]
        lab = kps[:, 2] > 0
        box = boxes_json.get(int(index.instance_id[i]))
        if box is None:
            pts = kps[lab, :2]
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            gx, gy = FALLBACK_BOX_GROW * (x1 - x0), FALLBACK_BOX_GROW * (y1 - y0)
            box = (x0 - gx, y0 - gy, x1 - x0 + 2 * gx, y1 - y0 + 2 * gy)
        if box[3] < min_height:
            skipped[f"box under {min_height:g} px tall"] += 1
            continue
        if lab.sum() < min_joints:
            skipped[f"fewer than {min_joints} annotated joints"] += 1
            continue
        if not (lab & limb).any():
            skipped["no annotated limb joint"] += 1
            continue
        path = index.image_paths[i]
        if path != cache_path:
            cache_path, cache_img = path, cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if cache_img is None:
            skipped["unreadable image"] += 1
            continue
        # the placement box: the index's aspect-fixed box without padding, the same
        # convention as the crop kernel's person box (box[4:8]) the NODA kernel gets
        anchor = (index.center[i][0], index.center[i][1], index.scale[i][0] / padding,
                  index.scale[i][1] / padding)
        crop, valid, ckps, cbox, cfix = crop_person(cache_img, box, kps, margin, max_side,
                                                    anchor)
        if level_i == "box":
            mask = _box_mask(crop.shape[:2], cbox).astype(np.uint8)
        elif level_i == "cardboard":
            mask = cardboard_mask(crop.shape[:2], ckps, cbox, info)
        else:
            mask = grabcut_mask(crop, ckps, cbox, info)
        mask &= valid.astype(np.uint8)
        if mask.sum() < MIN_FG_FRACTION * cbox[2] * cbox[3]:
            skipped[f"{level_i} foreground under {MIN_FG_FRACTION:g} of the box"] += 1
            continue
        alpha = (smooth_alpha(mask, valid) if smooth
                 else (mask * valid * 255).astype(np.uint8))
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        crops.append(np.ascontiguousarray(np.dstack([rgb, alpha])))
        kps_out.append(ckps)
        boxes_out.append(cfix)
        person_out.append(cbox)
        img_ids.append(int(index.image_id[i]))
        inst_ids.append(int(index.instance_id[i]))
    if verbose:
        detail = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "none"
        print(f"build-pool: {level} level, kept {len(crops)} of {len(index)} people; "
              f"skipped: {detail}")
    if not crops:
        raise ValueError("build-pool: no usable people (all skipped)")
    sizes = [c.size for c in crops]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    settings = dict(version=POOL_VERSION, margin=margin, max_side=max_side,
                    min_height=min_height, min_joints=min_joints, edge_sigma=EDGE_SIGMA,
                    input_size=list(cfg.model.input_size), padding=padding,
                    grabcut_iters=GRABCUT_ITERS, train_ann=cfg.data.train_ann,
                    smooth=smooth)
    return dict(
        rgba=np.concatenate([c.reshape(-1) for c in crops]),
        offsets=offsets,
        shapes=np.array([c.shape[:2] for c in crops], np.int32),
        kps=np.stack(kps_out).astype(np.float32),
        boxes=np.stack(boxes_out).astype(np.float32),
        person_boxes=np.stack(person_out).astype(np.float32),
        image_id=np.array(img_ids, np.int64),
        instance_id=np.array(inst_ids, np.int64),
        level=np.array(level),
        dataset=np.array(info.name),
        settings=np.array(json.dumps(settings)),
        skipped=np.array(json.dumps(dict(skipped))),
    )


def main(argv=None) -> int:
    b = argparse.ArgumentParser(prog="python -m dali_pose.tools.build_pool",
                                description="NODA: cut a foreground pool of people out of the "
                                            "training annotations")
    add_config_args(b)
    b.add_argument("--out", required=True, help="output .npz")
    b.add_argument("--level", choices=LEVELS + ("mixed",), default="grabcut",
                   help="mask level; mixed: the three levels in one pool")
    b.add_argument("--no-smooth", dest="smooth", action="store_false",
                   help="hard mask edges (no Gaussian edge smoothing of the matte)")
    b.add_argument("--margin", type=float, default=0.1,
                   help="crop margin per side, fraction of the person box")
    b.add_argument("--max-side", type=int, default=256, help="longest crop side in px")
    b.add_argument("--min-height", type=float, default=48.0,
                   help="skip boxes shorter than this (source px)")
    b.add_argument("--min-joints", type=int, default=6,
                   help="skip people with fewer annotated joints")
    args = b.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    arrays = build_pool(cfg, args.level, args.margin, args.max_side, args.min_height,
                        args.min_joints, smooth=args.smooth)
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **arrays)
    print(f"build-pool: wrote {len(arrays['offsets'])} people to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
