"""MPII: the official validation ground truth (``gt_valid.mat``) and PCKh, in percent.

``evaluate_mpii(preds, gt_mat, visible=None)`` returns per joint group ``PCKh@0.5/Head`` ...
``PCKh@0.5/Mean``, the same at 0.1, with ``visible`` the NODA paper's (Table II) split into
visible and occluded joints, and with ``per_joint=True`` each of the 16 joints, left and
right apart (NODA Fig. 1). :func:`visible_from_release` reads the visibility flags of the
validation people from the MPII release annotation (``mpii_human_pose_v1_u12_1.mat``).
``preds``: float (N, 16, 2), 0-based source-image pixels, in ``gt_valid.mat``'s order (MPII
joint order of ``dali_pose.datasets.MPII``). Every input problem raises
:class:`EvaluationError` naming the file and the offending key or shape.

MPII: the official PCKh
-----------------------
As in the official evaluation (MATLAB ``evaluatePCKh`` / HRNet ``mpii.py``): predictions are
made 1-based (+1) and compared with ``pos_gt_src``; a joint is correct when its distance is
``<= thr * 0.6 * ||headbox[1] - headbox[0]||``; only joints with ``jnt_missing == 0`` count.
Per joint PCKh = 100 * correct / labelled. Groups average left and right joints (Head =
head_top; Shoulder, Elbow, Wrist, Hip, Knee, Ankle); Mean = average over all joints except
pelvis and thorax weighted by their labelled counts. PCKh@0.1 uses threshold 0.1 exactly
(HRNet's printed ``Mean@0.1`` indexes its threshold sweep at 0.11).

With ``visible`` (N, 16) (1 = visible; the MPII ``is_visible`` flag, e.g.
``visible_valid.npy``) the same formulas are applied to two subsets of the labelled joints:
``_vis`` (labelled and visible) and ``_occ`` (labelled and not visible); unlabelled joints
are in neither. A group whose subset is empty is NaN (``null`` in json, ``-`` in tables);
e.g. MPII never marks head_top occluded. Counts are reported as ``count``, ``count_vis``,
``count_occ`` (labelled joints per group).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..datasets import MPII
from ..errors import EvaluationError

# MPII groups by joint name (dali_pose.datasets.MPII order); Mean leaves out pelvis/thorax.
MPII_GROUPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("Head", ("head_top",)),
    ("Shoulder", ("left_shoulder", "right_shoulder")),
    ("Elbow", ("left_elbow", "right_elbow")),
    ("Wrist", ("left_wrist", "right_wrist")),
    ("Hip", ("left_hip", "right_hip")),
    ("Knee", ("left_knee", "right_knee")),
    ("Ankle", ("left_ankle", "right_ankle")),
)
MPII_MEAN_EXCLUDES = ("pelvis", "thorax")
MPII_HEAD_FACTOR = 0.6  # PCKh reference length = 0.6 x head-box diagonal
# joint names as stored in gt_valid.mat ('dataset_joints'), in dali_pose's MPII order
MPII_MAT_JOINTS = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck",
                   "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")


# --------------------------------------------------------------------------- MPII


@dataclass(frozen=True)
class MpiiGroundTruth:
    """The official MPII validation ground truth (``gt_valid.mat``), N people.

    joints: (N, 16, 2) float64, **1-based** MATLAB pixels as stored (``pos_gt_src``);
    missing: (N, 16) bool (``jnt_missing``); headboxes: (N, 2, 2) float64, 1-based
    ``[[x1, y1], [x2, y2]]`` (``headboxes_src``). Joint order: ``dali_pose.datasets.MPII``.
    """

    joints: np.ndarray
    missing: np.ndarray
    headboxes: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.joints)

    @property
    def joints0(self) -> np.ndarray:
        """(N, 16, 2) 0-based pixels (the convention of predictions)."""
        return self.joints - 1.0

    @property
    def head_size(self) -> np.ndarray:
        """(N,) PCKh reference length: 0.6 x head-box diagonal."""
        d = self.headboxes[:, 1, :] - self.headboxes[:, 0, :]
        return np.linalg.norm(d, axis=1) * MPII_HEAD_FACTOR


def load_mpii_gt(path) -> MpiiGroundTruth:
    """Read ``gt_valid.mat`` (``jnt_missing`` 16xN, ``pos_gt_src`` 16x2xN, ``headboxes_src``
    2x2xN, ``dataset_joints``) and check it is MPII's."""
    if isinstance(path, MpiiGroundTruth):
        return path
    path = os.fspath(path)
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError,
            scipy.io.matlab.MatReadError) as e:
        raise EvaluationError(f"cannot read MPII ground truth {path} as a .mat file: {e}") \
            from e
    for key in ("jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in mat:
            raise EvaluationError(f"{path}: no '{key}' (not the official MPII gt_valid.mat?)")
    miss, pos, hb = mat["jnt_missing"], mat["pos_gt_src"], mat["headboxes_src"]
    if pos.ndim != 3 or pos.shape[:2] != (16, 2):
        raise EvaluationError(f"{path}: 'pos_gt_src' has shape {pos.shape}, expected "
                              f"(16, 2, N) for the 16 MPII joints")
    n = pos.shape[2]
    if miss.shape != (16, n) or hb.shape != (2, 2, n):
        raise EvaluationError(f"{path}: 'jnt_missing' {miss.shape} / 'headboxes_src' "
                              f"{hb.shape} do not match 'pos_gt_src' {pos.shape}")
    if "dataset_joints" in mat:
        names = tuple(str(np.asarray(x).reshape(-1)[0]) for x in
                      np.asarray(mat["dataset_joints"]).reshape(-1))
        if names != MPII_MAT_JOINTS:
            raise EvaluationError(f"{path}: 'dataset_joints' is {names}, expected the MPII "
                                  f"order {MPII_MAT_JOINTS}")
    joints = np.ascontiguousarray(np.transpose(pos, (2, 0, 1)), dtype=np.float64)
    headboxes = np.ascontiguousarray(np.transpose(hb, (2, 0, 1)), dtype=np.float64)
    if not np.isfinite(headboxes).all():
        raise EvaluationError(f"{path}: 'headboxes_src' has NaN or infinite values")
    gt = MpiiGroundTruth(joints=joints, missing=np.transpose(miss).astype(bool),
                         headboxes=headboxes, source=path)
    if (gt.head_size <= 0).any():
        raise EvaluationError(f"{path}: person {int(np.argmax(gt.head_size <= 0))} has an "
                              f"empty head box")
    return gt


def load_visible(visible, n: int, source: str = "visible") -> np.ndarray:
    """(N, 16) bool is-visible flags from an array or ``.npy`` path; values must be 0/1."""
    if isinstance(visible, (str, os.PathLike)):
        source = os.fspath(visible)
        try:
            visible = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EvaluationError(f"cannot read visibility file {source}: {e}") from e
    v = np.asarray(visible)
    if v.shape != (n, 16):
        raise EvaluationError(f"{source}: visibility flags have shape {v.shape}, expected "
                              f"({n}, 16) (one 0/1 flag per ground-truth person and joint)")
    if not np.isin(v, (0, 1)).all():
        raise EvaluationError(f"{source}: visibility flags must be 0 or 1")
    return v.astype(bool)


def _check_mpii_preds(preds, n: int, source: str) -> np.ndarray:
    p = np.asarray(preds)
    if p.dtype.kind not in "fiu":
        raise EvaluationError(f"{source}: predictions must be numbers, got dtype {p.dtype}")
    if p.shape != (n, 16, 2):
        raise EvaluationError(f"{source}: predictions have shape {p.shape}, expected "
                              f"({n}, 16, 2): (x, y) 0-based pixels for the {n} people of "
                              f"the ground truth, in its order")
    bad = ~np.isfinite(p).all(axis=(1, 2))
    if bad.any():
        raise EvaluationError(f"{source}: {int(bad.sum())} people have NaN or infinite "
                              f"coordinates (first: person {int(np.argmax(bad))})")
    return p.astype(np.float64)


def _group_index() -> List[Tuple[str, List[int]]]:
    return [(g, [MPII.joints.index(j) for j in js]) for g, js in MPII_GROUPS]


def _pckh(correct: np.ndarray, counted: np.ndarray, per_joint_keys: bool = False):
    """Group PCKh (percent) and counts from per-person-joint (N,16) bool arrays; with
    ``per_joint_keys`` also each joint by its MPII name (left and right apart)."""
    count = counted.sum(axis=0).astype(np.float64)
    hits = (correct & counted).sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = 100.0 * hits / count
    values, counts = {}, {}
    if per_joint_keys:
        for j, name in enumerate(MPII.joints):
            values[name] = float(per_joint[j])
            counts[name] = int(count[j])
    for g, idx in _group_index():
        values[g] = float(np.mean(per_joint[idx]))
        counts[g] = int(count[idx].sum())
    mean_idx = [i for i, j in enumerate(MPII.joints) if j not in MPII_MEAN_EXCLUDES]
    total = count[mean_idx].sum()
    # = sum_j PCKh_j * count_j / total (the official count-weighted mean), written pooled
    values["Mean"] = float(100.0 * hits[mean_idx].sum() / total) if total else float("nan")
    counts["Mean"] = int(total)
    return values, counts


def evaluate_mpii(preds, gt_mat, visible=None, thresholds: Sequence[float] = (0.5, 0.1),
                  source: str = "predictions", per_joint: bool = False) -> Dict[str, float]:
    """Official MPII PCKh of ``preds`` (N, 16, 2) 0-based pixels, ground-truth order.

    gt_mat: path of ``gt_valid.mat`` or an :class:`MpiiGroundTruth`. visible: optional (N, 16)
    0/1 array or ``.npy`` path (1 = visible) for the visible/occluded breakdown.

    Returns percent values ``PCKh@{t}/{group}`` for each threshold and group (Head ...
    Ankle, Mean), ``count/{group}`` (labelled joints); with ``visible`` also
    ``PCKh@{t}_vis/{group}``, ``PCKh@{t}_occ/{group}``, ``count_vis/...``, ``count_occ/...``;
    with ``per_joint`` also every joint by name (``PCKh@0.5/left_wrist``, NODA Fig. 1), after
    the groups.
    """
    gt = load_mpii_gt(gt_mat)
    if isinstance(preds, (str, os.PathLike)):
        source = os.fspath(preds)
        try:
            preds = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EvaluationError(f"cannot read MPII predictions {source} (an .npy (N, 16, 2) "
                                  f"array): {e}") from e
    p = _check_mpii_preds(preds, len(gt), source)
    labelled = ~gt.missing
    subsets = [("", labelled)]
    if visible is not None:
        vis = load_visible(visible, len(gt))
        subsets += [("_vis", labelled & vis), ("_occ", labelled & ~vis)]
    # as the official code: 1-based predictions against 1-based ground truth
    err = np.linalg.norm((p + 1.0) - gt.joints, axis=2)  # (N, 16)
    scaled = err / gt.head_size[:, None]
    out: Dict[str, float] = {}
    counts_out: Dict[str, int] = {}
    for t in thresholds:
        correct = scaled <= float(t)
        for suffix, counted in subsets:
            values, counts = _pckh(correct, counted, per_joint)
            for g, v in values.items():
                out[f"PCKh@{t:g}{suffix}/{g}"] = v
            for g, c in counts.items():
                counts_out[f"count{suffix}/{g}"] = c
    out.update(counts_out)
    return out


def iter_groups() -> Iterable[str]:
    """Names of the MPII groups in table order (Head ... Ankle, Mean)."""
    return [g for g, _ in MPII_GROUPS] + ["Mean"]


def visible_from_release(release, val_people, source: str = "release") -> np.ndarray:
    """The is_visible flags (N, 16) uint8 of the validation people, from the MPII release.

    ``release``: the release annotation (``mpii_human_pose_v1_u12_1.mat``, read with
    ``scipy.io.loadmat(..., struct_as_record=False, squeeze_me=True)``: ``RELEASE.annolist``
    of images, each with ``image.name`` and ``annorect`` people holding
    ``annopoints.point`` with ``id`` (MPII joint id 0..15, dali_pose's MPII order),
    ``x``, ``y`` (1-based) and ``is_visible``), a path to it, or that loaded object.
    ``val_people``: sequence of (image name, joints (16, 2) 1-based, missing (16,) bool),
    e.g. HRNet's valid.json images with ``gt_valid.mat``'s joints. Each person is the
    annorect of its image whose labelled joints lie nearest (< 1 px on average) to its
    own; 1 = visible, 0 = occluded or not labelled. A person without such a match is an
    error naming it.
    """
    if isinstance(release, (str, os.PathLike)):
        import scipy.io

        source = os.fspath(release)
        try:
            release = scipy.io.loadmat(source, struct_as_record=False, squeeze_me=True)
        except (OSError, ValueError, TypeError, NotImplementedError) as e:
            raise EvaluationError(f"cannot read the MPII release annotation {source}: {e}") \
                from e
    if isinstance(release, dict):
        if "RELEASE" not in release:
            raise EvaluationError(f"{source}: no 'RELEASE' (not the MPII release annotation?)")
        release = release["RELEASE"]
    by_image: Dict[str, list] = {}
    for img in np.atleast_1d(release.annolist):
        name = str(getattr(img.image, "name", ""))
        people = []
        for rect in np.atleast_1d(getattr(img, "annorect", [])):
            pts = getattr(getattr(rect, "annopoints", None), "point", None)
            if pts is None:
                continue
            xy = np.full((16, 2), np.nan)
            vis = np.zeros(16, np.uint8)
            for p in np.atleast_1d(pts):
                j = int(p.id)
                xy[j] = (float(p.x), float(p.y))
                v = np.asarray(getattr(p, "is_visible", 0)).reshape(-1)
                # the release stores is_visible as 0/1, '0'/'1' or empty
                vis[j] = 1 if v.size and str(v[0]).strip() in ("1", "1.0", "True") else 0
            people.append((xy, vis))
        by_image.setdefault(name, []).extend(people)
    out = np.zeros((len(val_people), 16), np.uint8)
    for n, (name, joints, missing) in enumerate(val_people):
        lab = ~np.asarray(missing, bool)
        best, best_d = None, np.inf
        for xy, vis in by_image.get(str(name), []):
            both = lab & np.isfinite(xy[:, 0])
            if not both.any():
                continue
            d = float(np.mean(np.linalg.norm(xy[both] - np.asarray(joints)[both], axis=1)))
            if d < best_d:
                best, best_d = vis, d
        if best is None or best_d >= 1.0:
            raise EvaluationError(f"{source}: validation person {n} (image {name}) has no "
                                  f"annotated person within 1 px in the release")
        out[n] = best
    return out
