"""Per-instance pose predictions -> a COCO results list: rescoring and OKS-NMS.

A top-down model predicts one pose per person box. Before COCO-style scoring the
predictions of each image are

1. **rescored**: ``score = box_score * mean(joint scores > 0.2)`` (0 when no joint score
   exceeds 0.2), the rule of the HRNet/SimpleBaseline evaluation; and
2. **OKS-NMS'd** (threshold 0.9): greedily, highest score first, a pose is dropped when its
   OKS with an already kept pose of the same image is above the threshold.

Shapes and conventions: N instances, K joints; ``keypoints`` (N, K, 3) float = x, y in
0-based source-image pixels and the joint score (heatmap maximum); ``box_scores`` (N,)
(1 for ground-truth boxes, else the detector's score); ``areas`` (N,) the instance's area
in pixels^2 used as OKS scale (HRNet uses the area of the padded crop box,
``scale_w * scale_h`` of ``dali_pose.datasets.PoseIndex``); ``sigmas`` (K,) in the COCO
convention (``DatasetInfo.sigmas``).

The OKS between poses i and j is the one of HRNet's ``oks_iou``, symmetric in i and j:
``mean_k exp(-|p_ik - p_jk|^2 / ((a_i + a_j) / 2 + eps) / (2 (2 sigma_k)^2))`` over all
joints. Per image the whole (n, n) OKS matrix is computed at once.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional

import numpy as np

from ..datasets import DatasetInfo

__all__ = ["rescore", "oks_matrix", "oks_nms", "to_coco_results", "index_to_results",
           "write_results"]

RESCORE_THRESHOLD = 0.2
OKS_NMS_THRESHOLD = 0.9


def rescore(box_scores, joint_scores, threshold: float = RESCORE_THRESHOLD) -> np.ndarray:
    """(N,) ``box_score * mean of joint_scores above threshold`` (0 if none is above).

    box_scores: (N,); joint_scores: (N, K).
    """
    b = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    j = np.asarray(joint_scores, dtype=np.float64)
    if j.ndim != 2 or j.shape[0] != b.shape[0]:
        raise ValueError(f"rescore: joint_scores {j.shape} must be (N, K) with N = "
                         f"{b.shape[0]} box scores")
    above = j > threshold
    n = above.sum(axis=1)
    total = np.where(above, j, 0.0).sum(axis=1)
    mean = np.divide(total, n, out=np.zeros_like(total), where=n > 0)
    return b * mean


def oks_matrix(keypoints, areas, sigmas) -> np.ndarray:
    """(N, N) OKS between all pairs of poses. keypoints (N, K, >=2) (x, y first)."""
    p = np.asarray(keypoints, dtype=np.float64)[..., :2]
    a = np.asarray(areas, dtype=np.float64).reshape(-1)
    s = np.asarray(sigmas, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] != s.shape[0] or a.shape[0] != p.shape[0]:
        raise ValueError(f"oks_matrix: keypoints {p.shape}, areas {a.shape}, sigmas "
                         f"{s.shape} must be (N, K, 2+), (N,), (K,)")
    var = (2.0 * s) ** 2
    d2 = ((p[:, None] - p[None, :]) ** 2).sum(axis=-1)  # (N, N, K)
    scale = (a[:, None] + a[None, :]) / 2.0 + np.spacing(1)
    e = d2 / var / scale[..., None] / 2.0
    return np.exp(-e).mean(axis=-1)


def oks_nms(keypoints, scores, areas, sigmas, threshold: float = OKS_NMS_THRESHOLD
            ) -> np.ndarray:
    """Indices of the poses kept by greedy OKS-NMS, highest score first.

    A pose is suppressed when its OKS with a kept pose is > ``threshold``. Ties in score
    keep the input order (stable sort).
    """
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc.size == 0:
        return np.zeros(0, dtype=np.int64)
    oks = oks_matrix(keypoints, areas, sigmas)
    order = np.argsort(-sc, kind="stable")
    suppressed = np.zeros(sc.size, dtype=bool)
    keep: List[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= oks[i] > threshold
    return np.asarray(keep, dtype=np.int64)


def to_coco_results(image_ids, keypoints, box_scores, areas, info: DatasetInfo,
                    rescore_threshold: float = RESCORE_THRESHOLD,
                    nms_threshold: Optional[float] = OKS_NMS_THRESHOLD,
                    category_id: int = 1) -> List[dict]:
    """Per-instance predictions -> COCO results (rescored, OKS-NMS per image).

    image_ids (N,) int; keypoints (N, K, 3) x, y (0-based px), joint score; box_scores (N,);
    areas (N,) px^2. ``nms_threshold=None`` skips the NMS. Returns dicts ``{"image_id",
    "category_id", "keypoints": [x, y, s] * K, "score"}`` ordered by image then score.
    """
    ids = np.asarray(image_ids).reshape(-1)
    kp = np.asarray(keypoints, dtype=np.float64)
    b = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    a = np.asarray(areas, dtype=np.float64).reshape(-1)
    k = info.num_joints
    if kp.shape != (ids.shape[0], k, 3) or b.shape != ids.shape or a.shape != ids.shape:
        raise ValueError(f"to_coco_results: image_ids {ids.shape}, keypoints {kp.shape}, "
                         f"box_scores {b.shape}, areas {a.shape}: expected (N,), (N, {k}, 3), "
                         f"(N,), (N,) for dataset '{info.name}'")
    if not (np.isfinite(kp).all() and np.isfinite(b).all() and np.isfinite(a).all()):
        raise ValueError("to_coco_results: NaN or infinite keypoints, scores or areas")
    scores = rescore(b, kp[:, :, 2], rescore_threshold)
    out: List[dict] = []
    uniq, inverse = np.unique(ids, return_inverse=True)
    for u in range(len(uniq)):
        rows = np.flatnonzero(inverse == u)
        if nms_threshold is None:
            keep = rows[np.argsort(-scores[rows], kind="stable")]
        else:
            keep = rows[oks_nms(kp[rows], scores[rows], a[rows], info.sigmas, nms_threshold)]
        iid = ids[rows[0]].item()
        for r in keep:
            out.append({"image_id": iid, "category_id": category_id,
                        "keypoints": kp[r].reshape(-1).tolist(), "score": float(scores[r])})
    return out


def index_to_results(index, keypoints, rows=None, **kwargs) -> List[dict]:
    """COCO results for the rows of a ``dali_pose.datasets.PoseIndex``.

    keypoints: (N, K, 3) decoded predictions for the N index rows, in index order (x, y in
    0-based source-image pixels, joint score), or for the index rows ``rows`` (N,) when
    given. Box scores are ``index.score`` and OKS areas the crop box ``scale_w * scale_h``,
    as HRNet. ``kwargs`` go to :func:`to_coco_results`.
    """
    sel = slice(None) if rows is None else np.asarray(rows)
    area = index.scale[sel, 0] * index.scale[sel, 1]
    return to_coco_results(index.image_id[sel], keypoints, index.score[sel], area, index.info,
                           **kwargs)


def write_results(results: Iterable[dict], path) -> None:
    """Write a COCO results json (creates the parent folder)."""
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(list(results), f)
