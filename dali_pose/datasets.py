"""Dataset metadata and the per-person index.

Coordinates everywhere in the index are **source-image pixels, 0-based, pixel centres on
integers** (the OpenCV/UDP convention). MPII's 1-based MATLAB coordinates are shifted by -1
on load. A box is stored as ``center`` (x, y) and ``scale`` (w, h): the box size in pixels
after the aspect-ratio fix to the network input and the padding (x1.25), so the crop covers
exactly ``scale`` pixels. (HRNet stores scale/200; we keep pixels, as mmpose 1.x does.)
"""
from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .errors import DatasetError  # noqa: F401  (re-exported)
from .errors import show
from .imagefiles import read_size


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    joints: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    upper_body: Tuple[int, ...]
    lower_body: Tuple[int, ...]
    sigmas: Tuple[float, ...]  # OKS sigmas (COCO convention: already divided by 10)
    skeleton: Tuple[Tuple[int, int], ...]  # 0-based joint index pairs, for drawing

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def flip_index(self) -> np.ndarray:
        """``flip_index[j]`` is the joint that ``j`` becomes after a horizontal flip."""
        idx = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            idx[a], idx[b] = b, a
        return idx


COCO = DatasetInfo(
    name="coco",
    joints=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
            "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
            "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
    sigmas=tuple(np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                           .87, .87, .89, .89]) / 10.0),
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
              (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5),
              (4, 6)),
)

CROWDPOSE = DatasetInfo(
    name="crowdpose",
    joints=("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
            "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
            "right_ankle", "head", "neck"),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    upper_body=(0, 1, 2, 3, 4, 5, 12, 13),
    lower_body=(6, 7, 8, 9, 10, 11),
    sigmas=tuple(np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79,
                           .79]) / 10.0),
    skeleton=((12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (0, 6), (1, 7),
              (6, 7), (6, 8), (8, 10), (7, 9), (9, 11)),
)

MPII = DatasetInfo(
    name="mpii",
    joints=("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
            "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
            "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    upper_body=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    lower_body=(0, 1, 2, 3, 4, 5, 6),
    sigmas=(0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062,
            0.072, 0.179, 0.179, 0.072, 0.062),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
              (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15)),
)

DATASETS: Dict[str, DatasetInfo] = {"coco": COCO, "crowdpose": CROWDPOSE, "mpii": MPII}

# CrowdPose's official scorer has no per-annotation area: it uses box w*h times this.
CROWDPOSE_AREA_FACTOR = 0.53
# MPII json: HRNet moves the centre down by 15*scale and pads the box by 1.25 (scale in
# units of 200 px, a legacy of the original MPII tools).
MPII_PIXEL_STD = 200.0
MPII_CENTER_SHIFT = 15.0
# A labelled keypoint further than this share of the image's longer side outside the image
# is an annotation error: it is set unlabelled (as v = 0), counted and reported, so that
# half-body boxes and targets never chase it (a crop of nothing but black, supervised).
KEYPOINT_MARGIN = 0.05
NAMES_SHOWN = 5  # ids named per reason when rows are left out or changed
UNLABELLED = "keypoints far outside their image (set unlabelled)"
# A person box whose centre lies further than KEYPOINT_MARGIN outside its image, or whose
# side is more than this many times the image's longer side, is an annotation error (a box
# at (-1e6, -1e6) would be clipped into a box at the corner): the person is left out,
# counted and reported.
BOX_MAX_SIDE = 2.0
FAR_BOX = "boxes far outside their image"




@dataclass(frozen=True)
class PoseIndex:
    """One row per person instance (struct of arrays; N rows, K joints).

    image_paths (N,) str; center (N,2) f64 px; scale (N,2) f64 px (box w, h after aspect fix
    and padding); keypoints (N,K,3) f32 (x, y px, visibility 0/1/2); area (N,) f32;
    image_id (N,) i64; instance_id (N,) i64 (annotation id, or detection row for det boxes);
    score (N,) f32 (1 for ground truth, detector score for det boxes); image_size (N, 2) i64
    (w, h) of the stored image as the annotations give it (MPII: as its file's header says;
    0, 0 where that is unreadable: the loader then names the file); box_size (N, 2) f64 px:
    the padded box (w, h) *before* the aspect fix (mmpose's ``bbox_scale``, of which the
    mmpose recipe's shift is a fraction; None: ``scale``, see :meth:`box_sizes`).
    ``skipped`` counts rows left out, by reason; ``unlabelled`` the keypoints set unlabelled
    because they lie far outside their image (``KEYPOINT_MARGIN``).
    """

    info: DatasetInfo
    image_paths: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    keypoints: np.ndarray
    area: np.ndarray
    image_id: np.ndarray
    instance_id: np.ndarray
    score: np.ndarray
    image_size: Optional[np.ndarray] = None
    box_size: Optional[np.ndarray] = None
    skipped: Dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.image_paths)

    def box_sizes(self) -> np.ndarray:
        """(N, 2) f64: ``box_size``, or ``scale`` for an index built without it."""
        return self.scale if self.box_size is None else self.box_size


def box_to_center_scale(x, y, w, h, aspect_ratio: float, padding: float):
    """COCO box (x, y, w, h) -> centre (x+w/2, y+h/2) and padded (w, h) with w/h = aspect.

    ``aspect_ratio`` is input width / input height. Same rule as HRNet's ``_xywh2cs``
    (which then divides by 200; we keep pixels).
    """
    cx, cy = x + w * 0.5, y + h * 0.5
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return (cx, cy), (w * padding, h * padding)


def read_json(path: str, what: str = "annotation file", error=None):
    """``json.load`` with errors that name the file (``error``: the exception class)."""
    error = error or DatasetError
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist (see the README's Datasets section for "
                    f"where each dataset's files go)") from e
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not a JSON text file (binary data at byte "
                    f"{e.start}): expected a json") from e
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from e
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be an annotation file") from None


def _require(obj: dict, key: str, path: str, what: str, error=DatasetError):
    if not isinstance(obj, dict) or key not in obj:
        raise error(f"{path}: {what} has no '{key}' field")
    return obj[key]


def is_number(v) -> bool:
    """A JSON number, or a NumPy one (not a bool, not a string that looks like one)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def is_integer(v) -> bool:
    """A JSON integer, or a NumPy one (1, not 1.5, 1.0, "1" or true)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_id(v) -> bool:
    """An integer that fits the index's int64 id columns (JSON integers have no limit)."""
    return is_integer(v) and -2 ** 63 <= v < 2 ** 63


_JSON_NUMBERS = {int, float}


def numbers(values, what: str, error=DatasetError) -> np.ndarray:
    """``values`` (a flat JSON list of numbers) as float64; anything else (strings, nested
    or ragged lists, null) is ``error`` naming ``what``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return values.astype(np.float64).reshape(-1)
    if isinstance(values, (list, tuple)) and set(map(type, values)) <= _JSON_NUMBERS:
        return np.asarray(values, dtype=np.float64)  # the fast path: plain JSON numbers
    if not isinstance(values, (list, tuple)) or not all(is_number(v) for v in values):
        bad = values if not isinstance(values, (list, tuple)) else next(
            v for v in values if not is_number(v))
        raise error(f"{what} must be a list of numbers, has {show(bad, 60)}")
    return np.asarray(values, dtype=np.float64)


def which_dataset(k: int) -> str:
    """' (a coco/... file?)' naming the datasets with ``k`` joints, or ''."""
    names = [n for n, i in DATASETS.items() if i.num_joints == k]
    return f" (a {'/'.join(names)} file?)" if names else ""


def check_coco_gt(data, info: DatasetInfo, src: str, error=DatasetError,
                  scoring: bool = False) -> Dict[int, dict]:
    """The one check of COCO-style ground truth, shared by the loader and the scorer (so
    neither accepts what the other refuses). Returns {image id: image entry}.

    ``images`` and ``annotations`` are lists; image and annotation ids are unique integers
    of 64 bits; each annotation refers to a known image; image ``width`` and ``height``,
    where given, are positive integers (the loader also needs them given);
    ``category_id`` (default 1) is an integer, ``iscrowd`` (default 0) 0 or 1; a person
    annotation (``category_id`` 1) has 3K finite numeric keypoints, a bbox of 4 finite
    numbers (w, h > 0 unless it is a crowd region) and, where it has one, a finite
    ``area`` >= 0; the person category, where given, has K joints. ``scoring``: also what
    the scorer needs (the validation split is checked so, so that a run does not fail at
    its first validation):
    ``area`` on every COCO person (CrowdPose scores by box area), ``crowdIndex`` on every
    CrowdPose image, and at least one person with labelled keypoints. Every error is
    ``error`` naming ``src`` and the annotation (by id, else by position).
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise error(f"{src}: not a COCO-format keypoint file (needs 'images' and "
                    f"'annotations' lists)")
    k = info.num_joints
    cats = data.get("categories", [])
    for cat in cats if isinstance(cats, list) else []:
        if isinstance(cat, dict) and cat.get("id") == 1 and isinstance(
                cat.get("keypoints"), list) and len(cat["keypoints"]) != k:
            n = len(cat["keypoints"])
            raise error(f"{src}: category 'person' has {n} joints, but format '{info.name}' "
                        f"has {k}{which_dataset(n)}")
    images: Dict[int, dict] = {}
    for j, img in enumerate(data["images"]):
        iid = _require(img, "id", src, f"image entry {j}", error)
        if not is_id(iid):
            raise error(f"{src}: image entry {j} has image id {show(iid, 60)}: image ids must "
                        f"be integers (of 64 bits)")
        if iid in images:
            raise error(f"{src}: image id {iid} appears twice")
        for key in ("width", "height"):
            if key in img:
                _check_side(img[key], key, src, f"image {iid}", error)
        images[iid] = img
    seen, people = set(), 0
    for j, ann in enumerate(data["annotations"]):
        where = f"annotation at position {j}"
        aid = _require(ann, "id", src, where, error)
        if not is_id(aid):
            raise error(f"{src}: {where} has id {show(aid, 60)}: annotation ids must be "
                        f"integers (of 64 bits)")
        what = f"annotation {aid}"
        if aid in seen:
            raise error(f"{src}: annotation id {aid} appears twice (ids must be unique: "
                        f"predictions are matched to people by them)")
        seen.add(aid)
        iid = _require(ann, "image_id", src, what, error)
        if not is_integer(iid) or iid not in images:
            raise error(f"{src}: {what} refers to unknown image_id {show(iid, 60)}")
        cat, crowd = ann.get("category_id", 1), ann.get("iscrowd", 0)
        if not is_integer(cat):
            raise error(f"{src}: {what} has category_id {show(cat, 60)}: expected an integer "
                        f"(1 = person)")
        if not isinstance(crowd, (int, np.integer)) or crowd not in (0, 1):
            raise error(f"{src}: {what} has iscrowd {show(crowd, 60)}: expected 0 or 1")
        if cat != 1:
            continue
        kp = _require(ann, "keypoints", src, what, error)
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else type(kp).__name__
            hint = which_dataset(n // 3) if isinstance(n, int) and n % 3 == 0 else ""
            raise error(f"{src}: {what} has {n} keypoint values, expected {3 * k} ({k} "
                        f"joints x 3 for format '{info.name}'){hint}")
        if not np.isfinite(numbers(kp, f"{src}: {what}'s keypoints", error)).all():
            raise error(f"{src}: {what} has NaN or infinite keypoints")
        box = _require(ann, "bbox", src, what, error)
        if not isinstance(box, list) or len(box) != 4:
            raise error(f"{src}: {what} has a malformed bbox {show(box, 60)} (need "
                        f"[x, y, w, h])")
        b = numbers(box, f"{src}: {what}'s bbox", error)
        if not np.isfinite(b).all():
            raise error(f"{src}: {what} has a NaN or infinite bbox {show(box, 60)}")
        if not ann.get("iscrowd", 0) and (b[2] <= 0 or b[3] <= 0):
            raise error(f"{src}: {what} has a non-positive bbox size {show(box, 60)}")
        if "area" in ann:
            area = ann["area"]
            if not is_number(area) or not math.isfinite(area) or area < 0:
                raise error(f"{src}: {what} has area {show(area, 60)}: a finite number >= 0 "
                            f"(OKS divides by it)")
        elif scoring and info is not CROWDPOSE:
            raise error(f"{src}: {what} has no 'area' field (COCO scores OKS by it)")
        if scoring and not ann.get("iscrowd", 0) and (np.asarray(kp[2::3]) > 0).any():
            people += 1
    if scoring and people == 0:
        raise error(f"{src}: no ground-truth person has labelled keypoints")
    if scoring and info is CROWDPOSE:
        for iid, img in images.items():
            ci = img.get("crowdIndex")
            if not is_number(ci) or not math.isfinite(ci):
                raise error(f"{src}: image {iid} has no valid 'crowdIndex' ({show(ci, 60)}); "
                            f"CrowdPose ground truth needs it for AP easy/medium/hard (not a "
                            f"CrowdPose file?)")
    return images


def _check_side(v, key: str, path: str, what: str, error=DatasetError) -> None:
    """An image entry's ``width`` or ``height``: a positive integer (pixels)."""
    if not is_integer(v) or v <= 0:
        raise error(f"{path}: {what} has {key} {show(v, 60)}: expected a positive integer (the "
                    f"stored image's size in pixels; each file is checked against it)")


def _check_image(img_path: str, path: str, what: str) -> None:
    if not os.path.isfile(img_path):
        raise DatasetError(f"{path}: image {img_path} of {what} does not exist")


def image_path(images_dir: str, name, path: str, what: str, allow_outside: bool,
               hint: str = " (set data.allow_outside_paths: true to read it)") -> str:
    """``images_dir``/``name``; a name that is absolute or climbs out of ``images_dir``
    ('../') is an error (ending in ``hint``) unless ``allow_outside``
    (``data.allow_outside_paths``)."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{path}: {what} has file name {show(name, 60)}: expected a path "
                           f"relative to the image folder")
    joined = os.path.normpath(os.path.join(images_dir, name))
    base = os.path.normpath(images_dir)
    if base == os.curdir:
        inside = joined != os.pardir and not joined.startswith(os.pardir + os.sep)
    else:
        inside = joined.startswith(base.rstrip(os.sep) + os.sep)
    if (os.path.isabs(name) or not inside) and not allow_outside:
        raise DatasetError(f"{path}: {what} has file name {show(name, 60)}, which is outside "
                           f"the image folder {images_dir}{hint}")
    # what is read is what was checked: '..' resolved here, not by the file system
    return joined if os.pardir in name.replace("\\", "/").split("/") else \
        os.path.join(images_dir, name)


def _check_pixels(size, max_pixels: int, path: str, what: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DatasetError(f"{path}: {what} is {w}x{h} = {w * h} pixels, above "
                           f"data.max_image_pixels ({max_pixels}); raise it to read such "
                           f"images")


def box_far_outside(center, wh, size) -> bool:
    """Whether a box (centre (x, y), (w, h) px) is far outside a (w, h) image: its centre
    beyond ``KEYPOINT_MARGIN`` of the longer side, or a side over ``BOX_MAX_SIDE`` times it."""
    w, h = size
    if not (w > 0 and h > 0):
        return False
    longer = max(w, h)
    m = KEYPOINT_MARGIN * longer
    cx, cy = center
    return bool(cx < -m or cx > w - 1 + m or cy < -m or cy > h - 1 + m
                or max(wh) > BOX_MAX_SIDE * longer)


class _Rows:
    """Accumulates index rows, then freezes them into a PoseIndex; what it leaves out or
    changes is counted by reason with the first names, and reported in one line."""

    def __init__(self, info: DatasetInfo, source: str):
        self.info, self.source = info, source
        self.cols = {k: [] for k in ("image_paths", "center", "scale", "box_size",
                                     "keypoints", "area", "image_id", "instance_id", "score",
                                     "image_size")}
        self.skipped: Dict[str, int] = {}
        self.names: Dict[str, List[str]] = {}
        self.unlabelled = 0

    def skip(self, reason: str, name: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if name and len(self.names.setdefault(reason, [])) < NAMES_SHOWN:
            self.names[reason].append(name)

    def add(self, **row) -> None:
        for k, v in row.items():
            self.cols[k].append(v)

    def keypoints_in_image(self, kps: np.ndarray, size, what: str) -> np.ndarray:
        """``kps`` with the labelled keypoints far outside a (w, h) image set unlabelled."""
        w, h = size
        if not (w > 0 and h > 0):
            return kps
        m = KEYPOINT_MARGIN * max(w, h)
        far = (kps[:, 2] > 0) & ((kps[:, 0] < -m) | (kps[:, 0] > w - 1 + m)
                                 | (kps[:, 1] < -m) | (kps[:, 1] > h - 1 + m))
        if far.any():
            kps = kps.copy()
            kps[far] = 0.0
            self.unlabelled += int(far.sum())
            self.skipped.setdefault(UNLABELLED, 0)
            if len(self.names.setdefault(UNLABELLED, [])) < NAMES_SHOWN:
                self.names[UNLABELLED].append(what)
        return kps

    def freeze(self, log: Optional[Callable] = print) -> PoseIndex:
        k = self.info.num_joints
        c = self.cols
        index = PoseIndex(
            info=self.info,
            image_paths=np.array(c["image_paths"], dtype=object),
            center=np.array(c["center"], dtype=np.float64).reshape(-1, 2),
            scale=np.array(c["scale"], dtype=np.float64).reshape(-1, 2),
            box_size=np.array(c["box_size"], dtype=np.float64).reshape(-1, 2),
            keypoints=np.array(c["keypoints"], dtype=np.float32).reshape(-1, k, 3),
            area=np.array(c["area"], dtype=np.float32),
            image_id=np.array(c["image_id"], dtype=np.int64),
            instance_id=np.array(c["instance_id"], dtype=np.int64),
            score=np.array(c["score"], dtype=np.float32),
            image_size=np.array(c["image_size"], dtype=np.int64).reshape(-1, 2),
            skipped={r: n for r, n in self.skipped.items() if n},
            unlabelled=self.unlabelled,
            source=self.source,
        )
        parts = []
        for r in sorted(self.skipped):
            n = self.unlabelled if r == UNLABELLED else self.skipped[r]
            names = self.names.get(r, [])
            more = ", ..." if n > len(names) else ""
            parts.append(f"{n} {r}" + (f" ({', '.join(names)}{more})" if names else ""))
        if parts and log is not None:
            log(f"{self.source}: kept {len(index)} people; " + "; ".join(parts))
        if len(index) == 0:
            raise DatasetError(f"{self.source}: no usable person instances")
        return index


def _parse_keypoints(ann: dict, k: int) -> np.ndarray:
    """The (K, 3) keypoints of an annotation :func:`check_coco_gt` passed."""
    return np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)


def _parse_box(box, path: str, what: str):
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DatasetError(f"{path}: {what} has a malformed bbox {show(box, 60)} (need "
                           f"[x, y, w, h])")
    x, y, w, h = (float(v) for v in numbers(box, f"{path}: {what}'s bbox"))
    if not np.isfinite([x, y, w, h]).all():
        raise DatasetError(f"{path}: {what} has a NaN or infinite bbox {show(box, 60)}")
    if w <= 0 or h <= 0:
        raise DatasetError(f"{path}: {what} has a non-positive bbox size {show(box, 60)}")
    return x, y, w, h


BOX_RULES = ("hrnet", "mmpose")  # how ground-truth boxes are clipped: aug.recipe's


def clip_box(x, y, w, h, width, height, rule: str = "hrnet"):
    """A ground-truth box (x, y, w, h) clipped to a (width, height) image by the recipe
    ``rule``, as (x, y, w, h); None if nothing of it is left (no area).

    hrnet (HRNet / UDP-Pose's COCO loader): the top-left corner clipped to >= 0, the width
    counted in pixels (w - 1) from that corner and clipped to the last pixel, so a box that
    starts left of the image slides in. mmpose (1.x COCO-style loader): each corner,
    (x, y) and (x + w, y + h), clipped to [0, width - 1] x [0, height - 1] on its own.
    """
    if rule == "mmpose":
        x1, y1 = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
        x2 = min(max(x + w, 0.0), width - 1.0)
        y2 = min(max(y + h, 0.0), height - 1.0)
    else:
        x1, y1 = max(0.0, x), max(0.0, y)
        x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
        y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 < x1 or y2 < y1 or (x2 - x1) * (y2 - y1) <= 0:
        return None
    return x1, y1, x2 - x1, y2 - y1


def _image_size(img: dict, path: str, max_pixels: int) -> Tuple[int, int]:
    """(w, h) of an image entry: positive integers (the loader checks each file's stored
    size against them, so they cannot be left out), at most ``max_pixels`` together."""
    what = f"image {img['id']}"
    size = []
    for key in ("width", "height"):
        v = img.get(key)
        _check_side(v, key, path, what)
        size.append(v)
    _check_pixels(size, max_pixels, path, f"{what} ({show(img.get('file_name'), 60)})")
    return size[0], size[1]


class _CocoImages(NamedTuple):
    """A COCO-style json's images, checked: {image id: (w, h)} and {image id: file path};
    :meth:`file` checks an image's file when a row first needs it."""

    sizes: Dict[int, Tuple[int, int]]
    paths: Dict[int, str]
    ann_path: str
    files: Dict[Tuple[int, int], int]  # (device, inode) -> the image id that named it
    checked: set  # the image ids whose file is checked

    def file(self, iid: int, what: str) -> str:
        """Image ``iid``'s path, after checking (once per image) that it is a file and that
        no other image id names it through another name (a symbolic or hard link: the same
        device and inode); ``what`` names the row in the error."""
        path = self.paths[iid]
        if iid in self.checked:
            return path
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise DatasetError(f"{self.ann_path}: image {path} of {what} does not exist")
        other = self.files.setdefault((st.st_dev, st.st_ino), iid)
        if other != iid:
            raise DatasetError(f"{self.ann_path}: image ids {other} and {iid} share the file "
                               f"{self.paths[other]} (also named {path}; their people would "
                               f"be cropped from one photo)")
        self.checked.add(iid)
        return path


def _coco_images(images: Dict[int, dict], ann_path: str, images_dir: str,
                 max_image_pixels: int, allow_outside_paths: bool) -> _CocoImages:
    """Each image entry's size (:func:`_image_size`) and file path (:func:`image_path`);
    two ids naming one file are an error."""
    sizes, paths, owner = {}, {}, {}
    for iid, img in images.items():
        sizes[iid] = _image_size(img, ann_path, max_image_pixels)
        name = _require(img, "file_name", ann_path, f"image {iid}")
        paths[iid] = image_path(images_dir, name, ann_path, f"image {iid}",
                                allow_outside_paths)
        key = os.path.normcase(os.path.normpath(paths[iid]))
        if key in owner:
            raise DatasetError(f"{ann_path}: image ids {owner[key]} and {iid} share the file "
                               f"{show(name, 60)} (their people would be cropped from one "
                               f"photo)")
        owner[key] = iid
    return _CocoImages(sizes, paths, ann_path, {}, set())


def _add_box(rows: _Rows, box, img_path: str, size, aspect_ratio: float, padding: float,
             **row) -> None:
    """One index row for the box (x, y, w, h) px: its centre, its padded size before
    (``box_size``) and after the aspect fix (``scale``)."""
    x, y, w, h = box
    c, s = box_to_center_scale(x, y, w, h, aspect_ratio, padding)
    rows.add(image_paths=img_path, center=c, scale=s, box_size=(w * padding, h * padding),
             image_size=size, **row)


def load_coco_style(ann_path: str, images_dir: str, info: DatasetInfo, aspect_ratio: float,
                    padding: float = 1.25, det_file: Optional[str] = None,
                    det_score_min: float = 0.0, log: Optional[Callable] = print, *,
                    max_image_pixels: int = 50_000_000,
                    allow_outside_paths: bool = False, scoring: bool = False,
                    box_rule: str = "hrnet") -> PoseIndex:
    """COCO or CrowdPose keypoint json -> PoseIndex: the ground-truth people
    (:func:`load_coco_people`), or the detection boxes of ``det_file`` on its images
    (:func:`load_coco_detections`)."""
    limits = dict(max_image_pixels=max_image_pixels, allow_outside_paths=allow_outside_paths,
                  scoring=scoring)
    if det_file is None:
        return load_coco_people(ann_path, images_dir, info, aspect_ratio, padding, log,
                                box_rule=box_rule, **limits)
    return load_coco_detections(ann_path, images_dir, det_file, info, aspect_ratio, padding,
                                det_score_min, log, **limits)


def load_coco_people(ann_path: str, images_dir: str, info: DatasetInfo, aspect_ratio: float,
                     padding: float = 1.25, log: Optional[Callable] = print, *,
                     max_image_pixels: int = 50_000_000, allow_outside_paths: bool = False,
                     scoring: bool = False, box_rule: str = "hrnet") -> PoseIndex:
    """The ground-truth people of a COCO or CrowdPose keypoint json -> PoseIndex.

    The json passes :func:`check_coco_gt` (the scorer's check too; ``scoring``: with what
    only the scorer needs, for a validation split); each image entry needs a positive
    integer ``width`` and ``height`` (at most ``max_image_pixels`` together) and a
    ``file_name`` inside ``images_dir`` (unless ``allow_outside_paths``) that no other image
    id names. Crowd and zero-keypoint people are skipped (as HRNet does), boxes far outside
    their image (:func:`box_far_outside`) skipped, the others clipped to the image by
    ``box_rule`` (:func:`clip_box`: the training recipe's) and empty ones skipped, labelled
    keypoints far outside the image set unlabelled, all counted and reported through
    ``log``.
    """
    if box_rule not in BOX_RULES:
        raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    data = read_json(ann_path)
    images = check_coco_gt(data, info, ann_path, scoring=scoring)
    found = _coco_images(images, ann_path, images_dir, max_image_pixels, allow_outside_paths)
    k = info.num_joints
    rows = _Rows(info, ann_path)
    for ann in data["annotations"]:
        aid = ann["id"]
        what = f"annotation {aid}"
        iid = ann["image_id"]
        if ann.get("category_id", 1) != 1:
            rows.skip("non-person annotations", what)
            continue
        if ann.get("iscrowd", 0):
            rows.skip("crowd annotations", what)
            continue
        size = found.sizes[iid]
        kps = _parse_keypoints(ann, k)
        box = _parse_box(ann["bbox"], ann_path, what)
        kps = rows.keypoints_in_image(kps, size, what)
        if not (kps[:, 2] > 0).any():
            rows.skip("people with no labelled keypoints", what)
            continue
        if "area" in ann:
            area = float(ann["area"])
        elif info.name == "crowdpose":
            area = box[2] * box[3] * CROWDPOSE_AREA_FACTOR
        else:
            area = box[2] * box[3]
        img_path = found.file(iid, what)
        x, y, w, h = box
        clipped = clip_box(x, y, w, h, float(size[0]), float(size[1]), box_rule)
        if clipped is None:
            rows.skip("boxes empty after clipping to the image", what)
            continue
        # clipping would turn a box far outside into one at the image's corner
        if box_far_outside((x + w / 2, y + h / 2), (w, h), size):
            rows.skip(FAR_BOX, what)
            continue
        _add_box(rows, clipped, img_path, size, aspect_ratio, padding, keypoints=kps,
                 area=area, image_id=iid, instance_id=aid, score=1.0)
    return rows.freeze(log)


def load_coco_detections(ann_path: str, images_dir: str, det_file: str, info: DatasetInfo,
                         aspect_ratio: float, padding: float = 1.25,
                         det_score_min: float = 0.0, log: Optional[Callable] = print, *,
                         max_image_pixels: int = 50_000_000,
                         allow_outside_paths: bool = False,
                         scoring: bool = False) -> PoseIndex:
    """The person boxes of a detection results file (``det_file``, a COCO results list) on
    the images of ``ann_path`` -> PoseIndex.

    ``ann_path`` is checked as for :func:`load_coco_people` (its ``annotations`` may be
    absent: an image-info file such as COCO test-dev's will do). One row per detection of
    category 1 with score >= ``det_score_min``, the box used as given (as HRNet and mmpose
    do) unless it is far outside its image (skipped, counted); keypoints are zeros,
    ``instance_id`` the detection's position in the file, ``score`` its score.
    """
    data = read_json(ann_path)
    if isinstance(data, dict) and "annotations" not in data:
        data = {**data, "annotations": []}  # an image-info file (COCO test-dev) will do
    images = check_coco_gt(data, info, ann_path, scoring=scoring)
    found = _coco_images(images, ann_path, images_dir, max_image_pixels, allow_outside_paths)
    rows = _Rows(info, det_file)
    dets = read_json(det_file, "detection file")
    if not isinstance(dets, list):
        raise DatasetError(f"{det_file}: a detection file is a list of results")
    zeros = np.zeros((info.num_joints, 3))
    for i, det in enumerate(dets):
        what = f"detection {i}"
        iid = _require(det, "image_id", det_file, what)
        if not is_integer(iid) or iid not in images:
            raise DatasetError(f"{det_file}: {what} refers to image_id {show(iid, 60)}, "
                               f"which is not in {ann_path}")
        if det.get("category_id", 1) != 1:
            rows.skip("non-person detections")
            continue
        score = _require(det, "score", det_file, what)
        if not is_number(score) or not math.isfinite(score):
            raise DatasetError(f"{det_file}: {what} has score {show(score, 60)}: "
                               f"expected a finite number")
        if score < det_score_min:
            rows.skip(f"detections below score {det_score_min}")
            continue
        box = _parse_box(_require(det, "bbox", det_file, what), det_file, what)
        size = found.sizes[iid]
        img_path = found.file(iid, what)
        x, y, w, h = box
        if box_far_outside((x + w / 2, y + h / 2), (w, h), size):
            rows.skip(f"detection {FAR_BOX}", what)
            continue
        _add_box(rows, box, img_path, size, aspect_ratio, padding, keypoints=zeros,
                 area=w * h, image_id=iid, instance_id=i, score=float(score))
    return rows.freeze(log)


def _mpii_number(v, what: str, path: str) -> float:
    if not is_number(v) or not math.isfinite(v):
        raise DatasetError(f"{path}: {what} must be a finite number, has {show(v, 60)}")
    return float(v)


def load_mpii(ann_path: str, images_dir: str, aspect_ratio: float,
              padding: float = 1.25, log: Optional[Callable] = print, *,
              max_image_pixels: int = 50_000_000,
              allow_outside_paths: bool = False) -> PoseIndex:
    """HRNet/mmpose MPII json (1-based MATLAB pixels) -> PoseIndex (0-based pixels).

    As HRNet: centre y += 15*scale, box side = scale*200*padding; then converted to our
    pixel (w, h) with the aspect fix to the input. ``image_id`` is the row's position in the
    json (MPII json has no ids), ``instance_id`` the same. MPII json has no image sizes:
    each image's is read from its file's header (a few ms each), so that, as for COCO,
    labelled joints far outside the image are set unlabelled and people whose box is far
    outside it (:func:`box_far_outside`) left out, counted and reported, files larger than
    ``max_image_pixels`` refused, and the loader checks each file against its size.
    """
    data = read_json(ann_path)
    if not isinstance(data, list):
        raise DatasetError(f"{ann_path}: an MPII json is a list of people")
    info = MPII
    rows = _Rows(info, ann_path)
    sizes: Dict[str, Tuple[int, int]] = {}
    for i, ann in enumerate(data):
        what = f"annotation {i}"
        img_path = image_path(images_dir, _require(ann, "image", ann_path, what), ann_path,
                              what, allow_outside_paths)
        _check_image(img_path, ann_path, what)
        if img_path not in sizes:
            try:
                size = read_size(img_path) or (0, 0)  # unreadable: the loader names it
            except OSError:
                size = (0, 0)
            _check_pixels(size, max_image_pixels, ann_path, f"image {img_path}")
            sizes[img_path] = size
        size = sizes[img_path]
        center = _require(ann, "center", ann_path, what)
        if not isinstance(center, list) or len(center) != 2:
            raise DatasetError(f"{ann_path}: {what} has a malformed center {show(center, 60)}")
        c = np.array([_mpii_number(v, f"{what}'s center", ann_path) for v in center])
        s = _mpii_number(_require(ann, "scale", ann_path, what), f"{what}'s scale", ann_path)
        if s <= 0:
            raise DatasetError(f"{ann_path}: {what} has a non-positive scale {s}")
        joints = ann.get("joints", [[0, 0]] * 16)
        vis = ann.get("joints_vis", [0] * 16)
        if not (isinstance(joints, list) and len(joints) == 16 and all(
                isinstance(j, list) and len(j) == 2 for j in joints)
                and isinstance(vis, list) and len(vis) == 16):
            raise DatasetError(f"{ann_path}: {what} needs 16 joints (x, y) and 16 joints_vis")
        joints = numbers([v for j in joints for v in j], f"{ann_path}: {what}'s joints"
                         ).reshape(16, 2)
        vis = numbers(vis, f"{ann_path}: {what}'s joints_vis")
        if not np.isfinite(joints).all():
            raise DatasetError(f"{ann_path}: {what} has NaN joints")
        if c[0] != -1:
            c[1] += MPII_CENTER_SHIFT * s
        c -= 1.0  # MATLAB 1-based -> 0-based
        side = s * MPII_PIXEL_STD
        if box_far_outside(c, (side, side), size):
            rows.skip(FAR_BOX, what)
            continue
        (cx, cy), wh = box_to_center_scale(c[0] - side / 2, c[1] - side / 2, side, side,
                                           aspect_ratio, padding)
        kps = np.zeros((16, 3))
        kps[:, :2] = joints - 1.0
        kps[:, 2] = np.where(vis > 0, 2.0, 0.0)
        kps[vis <= 0, :2] = 0.0
        kps = rows.keypoints_in_image(kps, size, what)
        rows.add(image_paths=img_path, center=(cx, cy), scale=wh,
                 box_size=(side * padding, side * padding), keypoints=kps,
                 area=wh[0] * wh[1] / padding ** 2, image_id=i, instance_id=i, score=1.0,
                 image_size=size)
    return rows.freeze(log)


def load_index(cfg, split: str, log: Optional[Callable] = print) -> PoseIndex:
    """The dataset index for ``split`` ('train' or 'val') as configured in ``cfg.data``;
    ``log`` receives the one-line report of what was left out or changed (None: silent)."""
    d = cfg.data
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    ann, images = (d.train_ann, d.train_images) if split == "train" else (d.val_ann,
                                                                           d.val_images)
    w, h = cfg.model.input_size
    aspect = w / h
    limits = dict(max_image_pixels=d.max_image_pixels,
                  allow_outside_paths=d.allow_outside_paths)
    if d.format == "mpii":
        return load_mpii(ann, images, aspect, d.padding, log, **limits)
    det = d.det_file if split == "val" else None
    return load_coco_style(ann, images, DATASETS[d.format], aspect, d.padding, det,
                           d.det_score_min, log, scoring=split == "val",
                           box_rule=cfg.aug.recipe, **limits)
