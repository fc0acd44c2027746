"""Dataset metadata and the per-person index.

Coordinates everywhere in the index are **source-image pixels, 0-based, pixel centres on
integers** (the OpenCV/UDP convention). MPII's 1-based MATLAB coordinates are shifted by -1
on load. A box is stored as ``center`` (x, y) and ``scale`` (w, h): the box size in pixels
after the aspect-ratio fix to the network input and the padding (x1.25), so the crop covers
exactly ``scale`` pixels. (HRNet stores scale/200; we keep pixels, as mmpose 1.x does.)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import DatasetError  # noqa: F401  (re-exported)


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




@dataclass(frozen=True)
class PoseIndex:
    """One row per person instance (struct of arrays; N rows, K joints).

    image_paths (N,) str; center (N,2) f64 px; scale (N,2) f64 px (box w, h after aspect fix
    and padding); keypoints (N,K,3) f32 (x, y px, visibility 0/1/2); area (N,) f32;
    image_id (N,) i64; instance_id (N,) i64 (annotation id, or detection row for det boxes);
    score (N,) f32 (1 for ground truth, detector score for det boxes); image_size (N, 2) i64
    (w, h) of the stored image as the annotations give it (0, 0 where they do not, MPII).
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
    skipped: Dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.image_paths)


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


def _require(obj: dict, key: str, path: str, what: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{path}: {what} has no '{key}' field")
    return obj[key]


def _check_image(img_path: str, path: str, what: str) -> None:
    if not os.path.isfile(img_path):
        raise DatasetError(f"{path}: image {img_path} of {what} does not exist")


def _image_id(iid, path: str, what: str) -> int:
    if isinstance(iid, bool) or not isinstance(iid, int):
        raise DatasetError(f"{path}: {what} has image id {iid!r}: image ids must be integers")
    return iid


class _Rows:
    """Accumulates index rows, then freezes them into a PoseIndex; what it leaves out or
    changes is counted by reason with the first names, and reported in one line."""

    def __init__(self, info: DatasetInfo, source: str):
        self.info, self.source = info, source
        self.cols = {k: [] for k in ("image_paths", "center", "scale", "keypoints", "area",
                                     "image_id", "instance_id", "score", "image_size")}
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


def _parse_keypoints(ann: dict, k: int, path: str, what: str) -> np.ndarray:
    kp = _require(ann, "keypoints", path, what)
    if not isinstance(kp, list) or len(kp) != 3 * k:
        n = len(kp) if isinstance(kp, list) else type(kp).__name__
        raise DatasetError(f"{path}: {what} has {n} keypoint values, expected {3 * k} "
                           f"({k} joints x 3)")
    arr = np.asarray(kp, dtype=np.float64).reshape(k, 3)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: {what} has NaN or infinite keypoints")
    return arr


def _parse_box(box, path: str, what: str):
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DatasetError(f"{path}: {what} has a malformed bbox {box!r} (need [x, y, w, h])")
    x, y, w, h = (float(v) for v in box)
    if not np.isfinite([x, y, w, h]).all():
        raise DatasetError(f"{path}: {what} has a NaN or infinite bbox {box!r}")
    if w <= 0 or h <= 0:
        raise DatasetError(f"{path}: {what} has a non-positive bbox size {box!r}")
    return x, y, w, h


def _clip_box(x, y, w, h, width, height):
    """HRNet's box sanitising: clip to the image; None if nothing is left."""
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 < x1 or y2 < y1 or (x2 - x1) * (y2 - y1) <= 0:
        return None
    return x1, y1, x2 - x1, y2 - y1


def load_coco_style(ann_path: str, images_dir: str, info: DatasetInfo, aspect_ratio: float,
                    padding: float = 1.25, det_file: Optional[str] = None,
                    det_score_min: float = 0.0, log: Optional[Callable] = print) -> PoseIndex:
    """COCO or CrowdPose keypoint json -> PoseIndex.

    Ground-truth boxes (``det_file=None``): crowd and zero-keypoint people are skipped (as
    HRNet does), boxes are clipped to the image and empty ones skipped, labelled keypoints
    far outside the image set unlabelled, all counted and reported through ``log``.
    Detection boxes: one row per detection of category 1 with score >= ``det_score_min``,
    the box used as given (as HRNet and mmpose do); keypoints are zeros. Image and annotation
    ids must be unique integers.
    """
    data = read_json(ann_path)
    # with detections an image-info file (COCO test-dev: images, no annotations) will do
    if not isinstance(data, dict) or "images" not in data or (
            "annotations" not in data and det_file is None):
        raise DatasetError(f"{ann_path}: not a COCO-format keypoint file (needs 'images' "
                           f"and 'annotations')")
    k = info.num_joints
    cats = [c for c in data.get("categories", []) if c.get("id") == 1]
    if cats and "keypoints" in cats[0] and len(cats[0]["keypoints"]) != k:
        raise DatasetError(f"{ann_path}: category 'person' has {len(cats[0]['keypoints'])} "
                           f"joints, but format '{info.name}' has {k}")
    images = {}
    for img in data["images"]:
        iid = _image_id(_require(img, "id", ann_path, "an image entry"), ann_path,
                        "an image entry")
        if iid in images:
            raise DatasetError(f"{ann_path}: image id {iid} appears twice")
        images[iid] = img
    rows = _Rows(info, ann_path if det_file is None else det_file)

    def add_box(box, img, kps, area, inst_id, score, what):
        file_name = _require(img, "file_name", ann_path, f"image {img['id']}")
        img_path = os.path.join(images_dir, file_name)
        _check_image(img_path, ann_path, what)
        x, y, w, h = box
        size = (int(img.get("width", 0) or 0), int(img.get("height", 0) or 0))
        if det_file is None and size[0] > 0 and size[1] > 0:
            clipped = _clip_box(x, y, w, h, float(size[0]), float(size[1]))
            if clipped is None:
                rows.skip("boxes empty after clipping to the image", what)
                return
            x, y, w, h = clipped
        c, s = box_to_center_scale(x, y, w, h, aspect_ratio, padding)
        rows.add(image_paths=img_path, center=c, scale=s, keypoints=kps, area=area,
                 image_id=img["id"], instance_id=inst_id, score=score, image_size=size)

    if det_file is None:
        seen = set()
        for ann in data["annotations"]:
            aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
            what = f"annotation {aid}"
            if aid in seen:
                raise DatasetError(f"{ann_path}: annotation id {aid} appears twice (ids must "
                                   f"be unique: predictions are matched to people by them)")
            seen.add(aid)
            iid = _require(ann, "image_id", ann_path, what)
            if iid not in images:
                raise DatasetError(f"{ann_path}: {what} refers to unknown image_id {iid}")
            if ann.get("category_id", 1) != 1:
                rows.skip("non-person annotations", what)
                continue
            if ann.get("iscrowd", 0):
                rows.skip("crowd annotations", what)
                continue
            kps = _parse_keypoints(ann, k, ann_path, what)
            box = _parse_box(_require(ann, "bbox", ann_path, what), ann_path, what)
            img = images[iid]
            kps = rows.keypoints_in_image(kps, (img.get("width", 0) or 0,
                                                img.get("height", 0) or 0), what)
            if not (kps[:, 2] > 0).any():
                rows.skip("people with no labelled keypoints", what)
                continue
            if "area" in ann:
                area = float(ann["area"])
            elif info.name == "crowdpose":
                area = box[2] * box[3] * CROWDPOSE_AREA_FACTOR
            else:
                area = box[2] * box[3]
            add_box(box, images[iid], kps, area, aid, 1.0, what)
    else:
        dets = read_json(det_file, "detection file")
        if not isinstance(dets, list):
            raise DatasetError(f"{det_file}: a detection file is a list of results")
        zeros = np.zeros((k, 3))
        for i, det in enumerate(dets):
            what = f"detection {i}"
            iid = _require(det, "image_id", det_file, what)
            if iid not in images:
                raise DatasetError(f"{det_file}: {what} refers to image_id {iid}, which is not "
                                   f"in {ann_path}")
            if det.get("category_id", 1) != 1:
                rows.skip("non-person detections")
                continue
            score = float(_require(det, "score", det_file, what))
            if not np.isfinite(score):
                raise DatasetError(f"{det_file}: {what} has a NaN score")
            if score < det_score_min:
                rows.skip(f"detections below score {det_score_min}")
                continue
            box = _parse_box(_require(det, "bbox", det_file, what), det_file, what)
            add_box(box, images[iid], zeros, box[2] * box[3], i, score, what)
    return rows.freeze(log)


def load_mpii(ann_path: str, images_dir: str, aspect_ratio: float,
              padding: float = 1.25, log: Optional[Callable] = print) -> PoseIndex:
    """HRNet/mmpose MPII json (1-based MATLAB pixels) -> PoseIndex (0-based pixels).

    As HRNet: centre y += 15*scale, box side = scale*200*padding; then converted to our
    pixel (w, h) with the aspect fix to the input. ``image_id`` is the row's position in the
    json (MPII json has no ids), ``instance_id`` the same.
    """
    data = read_json(ann_path)
    if not isinstance(data, list):
        raise DatasetError(f"{ann_path}: an MPII json is a list of people")
    info = MPII
    rows = _Rows(info, ann_path)
    for i, ann in enumerate(data):
        what = f"annotation {i}"
        img_path = os.path.join(images_dir, _require(ann, "image", ann_path, what))
        _check_image(img_path, ann_path, what)
        c = np.asarray(_require(ann, "center", ann_path, what), dtype=np.float64)
        s = float(_require(ann, "scale", ann_path, what))
        if c.shape != (2,) or not np.isfinite(c).all() or not np.isfinite(s):
            raise DatasetError(f"{ann_path}: {what} has a malformed or NaN center/scale")
        if s <= 0:
            raise DatasetError(f"{ann_path}: {what} has a non-positive scale {s}")
        joints = np.asarray(ann.get("joints", np.zeros((16, 2))), dtype=np.float64)
        vis = np.asarray(ann.get("joints_vis", np.zeros(16)), dtype=np.float64)
        if joints.shape != (16, 2) or vis.shape != (16,):
            raise DatasetError(f"{ann_path}: {what} needs 16 joints (x, y) and 16 joints_vis, "
                               f"got {joints.shape} and {vis.shape}")
        if not np.isfinite(joints).all():
            raise DatasetError(f"{ann_path}: {what} has NaN joints")
        if c[0] != -1:
            c[1] += MPII_CENTER_SHIFT * s
        c -= 1.0  # MATLAB 1-based -> 0-based
        side = s * MPII_PIXEL_STD
        (cx, cy), wh = box_to_center_scale(c[0] - side / 2, c[1] - side / 2, side, side,
                                           aspect_ratio, padding)
        kps = np.zeros((16, 3))
        kps[:, :2] = joints - 1.0
        kps[:, 2] = np.where(vis > 0, 2.0, 0.0)
        kps[vis <= 0, :2] = 0.0
        rows.add(image_paths=img_path, center=(cx, cy), scale=wh, keypoints=kps,
                 area=wh[0] * wh[1] / padding ** 2, image_id=i, instance_id=i, score=1.0,
                 image_size=(0, 0))
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
    if d.format == "mpii":
        return load_mpii(ann, images, aspect, d.padding, log)
    det = d.det_file if split == "val" else None
    return load_coco_style(ann, images, DATASETS[d.format], aspect, d.padding, det,
                           d.det_score_min, log)
