"""Pose metrics that reproduce the official tools, on in-memory predictions.

Three scorers, each returning a flat ``dict`` whose keys are the names printed by
:func:`format_table` (and written to the metrics json by ``evaluate.py``):

``evaluate_coco(gt, results, dataset="coco")``
    COCO keypoint AP/AR through pycocotools' ``COCOeval``: ``AP AP50 AP75 APM APL AR AR50
    AR75 ARM ARL`` are exactly ``COCOeval(...).stats`` (fractions in [0, 1]; -1 where
    pycocotools reports -1, i.e. no ground truth in that area range). Plus the occlusion
    breakdown of the constraint-cue paper (Table 1), ``AP_vis`` and ``AP_invis``; see
    *Occlusion breakdown* below.

``evaluate_coco(gt, results, dataset="crowdpose")``
    The official CrowdPose tool (``crowdposetools``, a fork of ``COCOeval``), reproduced by
    :class:`CrowdPoseEval`: ``AP AP50 AP75 AR AR50 AR75 AP_easy AP_medium AP_hard``.

``evaluate_mpii(preds, gt_mat, visible=None)``
    PCKh of the official MPII evaluation (``gt_valid.mat``), in percent, per joint group:
    ``PCKh@0.5/Head`` ... ``PCKh@0.5/Mean``, the same at 0.1, and with ``visible`` the
    NODA paper's (Table II) split into visible and occluded joints.

Inputs
------
* ``gt`` (COCO/CrowdPose): a keypoint json path, its loaded ``dict``, or a
  ``pycocotools.coco.COCO``. It is checked against the dataset: the person category and
  every annotation must have ``K`` joints (17 COCO, 14 CrowdPose); CrowdPose images must
  carry ``crowdIndex``. A path or dict is never modified; a COCO object receives only the
  bookkeeping fields COCOeval itself adds (``ignore``, ``_ignore``).
* ``results``: a COCO results json path or a list of dicts ``{"image_id", "category_id"
  (1; default 1), "keypoints": 3K numbers x, y, score (0-based source-image pixels; the
  third value is not used by the metric), "score"}``, as ``dali_pose.evaluation.postprocess`` writes
  them. Unknown image ids, a wrong number of keypoint values, NaN/inf values are errors.
  The list is not modified (pycocotools' ``loadRes`` writes into its input; we give it
  shallow copies).
* ``preds`` (MPII): float array (N, 16, 2), 0-based source-image pixels, in the order of
  ``gt_valid.mat`` (MPII joint order of ``dali_pose.datasets.MPII``).

Every input problem raises :class:`EvaluationError` (a ``ValueError``) whose message names
the file (or "predictions") and the offending key, entry or shape.

COCO: identical to ``COCOeval``
-------------------------------
The ground truth and ``loadRes(results)`` go unchanged through the stock ``COCOeval`` with
``iouType="keypoints"`` and the COCO sigmas of ``dali_pose.datasets.COCO`` (the same numbers
as pycocotools' defaults); the ten numbers are its ``stats``. Only one convenience differs
from calling pycocotools by hand: an annotation without ``num_keypoints`` or ``iscrowd``
(pycocotools would raise ``KeyError``) gets the count of its joints with v > 0, resp. 0, on a
copy.

Occlusion breakdown (AP_vis, AP_invis)
--------------------------------------
The same ``COCOeval`` run, on a *masked copy of the ground truth*: for ``AP_vis`` only the
joints labelled visible (v = 2) are kept, for ``AP_invis`` only those labelled occluded
(v = 1); the other joints get v = 0 and ``num_keypoints`` becomes the number of joints kept.
Detections are untouched. Therefore, exactly as in COCOeval for the kept joints:

* OKS between a detection and a ground truth averages ``exp(-d^2 / (2 s^2 k^2))`` over the
  kept joints only (object scale ``s^2`` = the annotation's ``area``, unchanged);
* a ground truth with no kept joint (e.g. a fully visible person, for ``AP_invis``) has
  ``num_keypoints == 0`` and is therefore *ignored*, as COCOeval ignores people without
  labelled joints: it is not a positive, and a detection matched to it (OKS by COCOeval's
  distance-to-the-doubled-box rule) is ignored rather than counted as a false positive.
  AP_invis thus measures localisation of occluded joints on the people that have some,
  without penalising correct detections of fully visible people. (The box rule looks at
  all predicted joints: a prediction that puts unlabelled joints at (0, 0), as ground
  truth copied into results does, can fall outside the doubled box and count as a false
  positive; real models predict every joint near the person.)
* crowd annotations stay crowd regions. If no ground truth has a kept joint the value is
  -1 (pycocotools' "undefined").

CrowdPose: identical to the official tool
-----------------------------------------
:class:`CrowdPoseEval` is ``COCOeval`` with these differences, all taken from the official
``crowdposetools/cocoeval.py``:

1. sigmas for the 14 CrowdPose joints (``dali_pose.datasets.CROWDPOSE.sigmas``);
2. the area of a ground truth, for the OKS scale and the area-range test, is
   ``bbox_w * bbox_h * 0.53`` (``CROWDPOSE_AREA_FACTOR``); an ``area`` field in the json is
   ignored (CrowdPose has none);
3. only the area range 'all' (the official tool also computes 'medium'/'large' but never
   reports them; results for 'all' do not depend on them);
4. ``AP_easy/medium/hard``: the whole evaluation repeated on the images of one crowd-index
   bucket, from each image's ``crowdIndex``: easy ``ci < 0.2``, medium ``0.2 <= ci < 0.8``,
   hard ``ci >= 0.8``. These are the thresholds the official code uses
   (``get_type_result(first=0.2, second=0.8)``); the CrowdPose paper's text says 0.1 for
   easy. ``crowd_thresholds`` changes them. A bucket without ground truth gives -1, as the
   official tool does. The official tool rounds these three to 4 decimals; we do not.
5. AR50/AR75 and AP50/AP75 as in COCO (the official code selects IoU thresholds with a
   tolerance of 0.01, which picks the same ones).

MPII (``gt_valid.mat``, PCKh): :mod:`dali_pose.evaluation.mpii`, re-exported here.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools.coco import COCO as _COCO
from pycocotools.cocoeval import COCOeval

from ..errors import EvaluationError  # noqa: F401  (re-exported)
from ..datasets import (CROWDPOSE, CROWDPOSE_AREA_FACTOR, DATASETS, MPII, DatasetInfo,
                        check_coco_gt, is_integer, is_number, numbers, read_json,
                        which_dataset)
from ..errors import show
from .mpii import (MPII_GROUPS, MPII_HEAD_FACTOR, MPII_MAT_JOINTS,  # noqa: F401 (re-exported)
                   MPII_MEAN_EXCLUDES, MpiiGroundTruth, evaluate_mpii, iter_groups,
                   load_mpii_gt, load_visible)

__all__ = [
    "EvaluationError", "COCO_KEYS", "CROWDPOSE_KEYS", "MPII_GROUPS", "CrowdPoseEval",
    "load_gt", "load_results", "check_results", "evaluate_coco", "MpiiGroundTruth",
    "load_mpii_gt", "load_visible", "evaluate_mpii", "format_table", "write_metrics",
    "MPII_GROUPS", "MPII_HEAD_FACTOR", "MPII_MAT_JOINTS", "MPII_MEAN_EXCLUDES", "iter_groups",
]




COCO_KEYS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
CROWDPOSE_KEYS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium",
                  "AP_hard")
# COCOeval.stats positions of the CrowdPose numbers (the official tool reports the same).
_CROWDPOSE_STATS = {"AP": 0, "AP50": 1, "AP75": 2, "AR": 5, "AR50": 6, "AR75": 7}
CROWDPOSE_THRESHOLDS = (0.2, 0.8)

GtLike = Union[str, os.PathLike, dict, _COCO]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet(verbose: bool):
    """pycocotools prints progress on stdout; keep it unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _read_json(path, what: str):
    return read_json(path, what, EvaluationError)


def _info(dataset: Union[str, DatasetInfo]) -> DatasetInfo:
    if isinstance(dataset, DatasetInfo):
        return dataset
    if dataset not in DATASETS:
        raise EvaluationError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    return DATASETS[dataset]


_which_dataset = which_dataset


def _make_coco(dataset: dict, verbose: bool = False):
    coco = _COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------- ground truth


def load_gt(gt: GtLike, dataset: Union[str, DatasetInfo] = "coco", verbose: bool = False):
    """A checked ``pycocotools.coco.COCO`` for ``dataset`` from a path, dict or COCO.

    Raises :class:`EvaluationError` when the file is not a keypoint file of ``dataset``: the
    wrong number of joints (e.g. a CrowdPose json with ``dataset="coco"``), no
    ``crowdIndex`` for CrowdPose, keypoints of the wrong length or NaN, no person with
    labelled joints, ``area`` missing for COCO. A dict is copied (COCOeval adds bookkeeping
    fields to the annotations); a COCO object is used as is, as COCOeval would, unless an
    annotation lacks ``num_keypoints`` or ``iscrowd`` (then a completed copy is made, with
    the count of joints with v > 0, resp. 0).
    """
    return _load_gt(gt, dataset, verbose)[0]


def _load_gt(gt: GtLike, dataset, verbose: bool):
    """(COCO, source name) -- see :func:`load_gt`."""
    info = _info(dataset)
    if isinstance(gt, _COCO):
        data, src, coco = gt.dataset, "ground truth (COCO object)", gt
    elif isinstance(gt, dict):
        data, src, coco = gt, "ground truth (dict)", None
        if isinstance(data.get("annotations"), list):
            data = dict(data, annotations=[dict(a) if isinstance(a, dict) else a
                                           for a in data["annotations"]])
    else:
        src = os.fspath(gt)
        data, coco = _read_json(src, "ground-truth file"), None
    # the loader's check (of a validation split): one set of rules for both
    check_coco_gt(data, info, src, EvaluationError, scoring=True)
    fill = any("num_keypoints" not in a or "iscrowd" not in a for a in data["annotations"])
    if fill:
        data = dict(data)
        data["annotations"] = [
            dict({"iscrowd": 0, "num_keypoints": int(np.count_nonzero(np.asarray(
                a["keypoints"] if a.get("category_id", 1) == 1 else [])[2::3] > 0))}, **a)
            for a in data["annotations"]]
        coco = None
    if coco is None:
        coco = _make_coco(data, verbose)
    return coco, src


# --------------------------------------------------------------------------- results


def load_results(path) -> list:
    """A COCO results json (a list of person results)."""
    res = _read_json(path, "predictions file")
    if not isinstance(res, list):
        raise EvaluationError(f"{path}: a predictions file is a list of results (COCO results "
                              f"format), got {type(res).__name__}")
    return res


def check_results(results: Sequence[Mapping], gt_coco, dataset: Union[str, DatasetInfo],
                  source: str = "predictions", gt_source: str = "the ground truth"
                  ) -> List[dict]:
    """Validated shallow copies of ``results`` (keypoints as float lists, category 1).

    Errors: not a list, empty, unknown ``image_id``, ``category_id`` other than 1, wrong
    number of keypoint values, NaN or infinite keypoints or score; and what would make
    pycocotools' ``loadRes`` score another kind of result or fail: a ``caption`` or
    ``segmentation`` field, a ``bbox`` that is not 4 finite numbers, or (when the first
    result has a box, from which loadRes then takes every result's area) a result without one.
    """
    info = _info(dataset)
    k = info.num_joints
    if not isinstance(results, (list, tuple)):
        raise EvaluationError(f"{source}: expected a list of results, got "
                              f"{type(results).__name__}")
    if len(results) == 0:
        raise EvaluationError(f"{source}: no predictions to score")
    image_ids = set(gt_coco.getImgIds())
    first = results[0]
    boxed = isinstance(first, Mapping) and first.get("bbox", []) != []
    out = []
    for i, r in enumerate(results):
        what = f"{source}: result {i}"
        if not isinstance(r, Mapping):
            raise EvaluationError(f"{what} is not an object")
        for key in ("image_id", "keypoints", "score"):
            if key not in r:
                raise EvaluationError(f"{what} has no '{key}' field")
        for key in ("caption", "segmentation"):
            if key in r:
                raise EvaluationError(f"{what} has a '{key}' field: keypoint results have "
                                      f"none (pycocotools would score a {key} result)")
        if r.get("bbox", []) != [] or boxed:
            box = numbers(r.get("bbox", []), f"{what}'s bbox", EvaluationError)
            if box.size != 4 or not np.isfinite(box).all():
                raise EvaluationError(
                    f"{what} has bbox {show(r.get('bbox'), 60)}: 4 finite numbers [x, y, w, h]"
                    f"{' (result 0 has one, so every result needs one)' if boxed else ''}")
        if not is_integer(r["image_id"]):
            raise EvaluationError(f"{what} has image_id {show(r['image_id'], 60)}: image ids "
                                  f"are integers")
        if r["image_id"] not in image_ids:
            raise EvaluationError(f"{what} has image_id {r['image_id']}, which is not in "
                                  f"{gt_source}")
        if r.get("category_id", 1) != 1:
            raise EvaluationError(f"{what} has category_id {show(r['category_id'], 60)}; only "
                                  f"person (1) is scored")
        kp = numbers(r["keypoints"], f"{what}'s keypoints", EvaluationError)
        if kp.size != 3 * k:
            raise EvaluationError(
                f"{what} has {kp.size} keypoint values{_which_dataset(kp.size // 3)}, but "
                f"dataset '{info.name}' needs {3 * k} ({k} joints x 3: x, y, score)")
        if not np.isfinite(kp).all():
            raise EvaluationError(f"{what} (image_id {r['image_id']}) has NaN or infinite "
                                  f"keypoints")
        score = r["score"]
        if not is_number(score):
            raise EvaluationError(f"{what} has a non-numeric score {show(score, 60)} (a JSON "
                                  f"number, not a string)")
        if not math.isfinite(score):
            raise EvaluationError(f"{what} (image_id {r['image_id']}) has a NaN or infinite "
                                  f"score")
        c = dict(r)
        c["category_id"] = 1
        c["keypoints"] = kp.reshape(-1).tolist()
        out.append(c)
    return out


# --------------------------------------------------------------------------- evaluators


class CrowdPoseEval(COCOeval):
    """``COCOeval`` as the official CrowdPose tool scores keypoints: ``CrowdPoseEval(gt, dt)``.

    Differences from COCO (module docstring, *CrowdPose*): 14-joint sigmas; ground-truth
    area = bbox w*h*0.53 for both the OKS scale and the area test; area range 'all' only.
    The crowd-index buckets are separate runs on image subsets (:func:`evaluate_coco`).
    """

    def __init__(self, cocoGt=None, cocoDt=None, iouType="keypoints"):
        if iouType != "keypoints":
            raise EvaluationError("CrowdPoseEval scores keypoints only")
        super().__init__(cocoGt, cocoDt, "keypoints")
        p = self.params
        p.kpt_oks_sigmas = np.array(CROWDPOSE.sigmas, dtype=np.float64)
        p.areaRng = [[0 ** 2, 1e5 ** 2]]
        p.areaRngLbl = ["all"]

    def _prepare(self):
        super()._prepare()
        # private copies: the caller's ground truth keeps its own fields
        for key, gts in self._gts.items():
            self._gts[key] = [
                dict(g, area=g["bbox"][2] * g["bbox"][3] * CROWDPOSE_AREA_FACTOR)
                for g in gts]


def _coco_eval(coco_gt, coco_dt, info: DatasetInfo, img_ids=None):
    if info is CROWDPOSE:
        e = CrowdPoseEval(coco_gt, coco_dt)
    else:
        e = COCOeval(coco_gt, coco_dt, "keypoints")
        e.params.kpt_oks_sigmas = np.array(info.sigmas, dtype=np.float64)
    e.params.catIds = [1]  # person: what the keypoint scorers score (check_results)
    if img_ids is not None:
        e.params.imgIds = list(img_ids)
    return e


def _mean_precision(e) -> float:
    """Mean precision over IoU thresholds and recall points, area 'all', -1 if undefined."""
    s = e.eval["precision"][:, :, :, 0, :]
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def _masked_gt(coco_gt, keep_v: int, verbose: bool):
    """Copy of the ground truth keeping only joints with v == keep_v (others v=0)."""
    data = dict(coco_gt.dataset)
    anns = []
    for a in data["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3).copy()
        kept = kp[:, 2] == keep_v
        kp[~kept] = 0.0
        anns.append(dict(a, keypoints=kp.reshape(-1).tolist(),
                         num_keypoints=int(np.count_nonzero(kept))))
    data["annotations"] = anns
    return _make_coco(data, verbose)


def evaluate_coco(gt: GtLike, results, dataset: Union[str, DatasetInfo] = "coco",
                  occlusion: bool = True, crowd_thresholds: Tuple[float, float] =
                  CROWDPOSE_THRESHOLDS, verbose: bool = False,
                  source: str = "predictions") -> Dict[str, float]:
    """COCO or CrowdPose keypoint metrics of ``results`` against ``gt``.

    gt: keypoint json path, dict or ``pycocotools.coco.COCO``. results: COCO results json
    path or list of dicts (see module docstring). ``dataset``: 'coco' or 'crowdpose'.
    ``occlusion`` (COCO only): also compute ``AP_vis``/``AP_invis``. ``verbose``: let
    pycocotools print its own summary. ``source`` names in-memory results in error messages
    (a path names itself).

    Returns, for COCO, :data:`COCO_KEYS` (+ ``AP_vis``, ``AP_invis``); for CrowdPose,
    :data:`CROWDPOSE_KEYS`. Values are Python floats in [0, 1], or -1 where undefined.
    """
    info = _info(dataset)
    if info is MPII:
        raise EvaluationError("evaluate_coco scores coco or crowdpose; use evaluate_mpii")
    coco_gt, gt_source = _load_gt(gt, info, verbose)
    if isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
        results = load_results(source)
    res = check_results(results, coco_gt, info, source, gt_source)

    def run(gt_obj, img_ids=None):
        with _quiet(verbose):
            dt = gt_obj.loadRes([dict(r) for r in res])
            e = _coco_eval(gt_obj, dt, info, img_ids)
            e.evaluate()
            e.accumulate()
            if img_ids is None:
                e.summarize()
        return e

    e = run(coco_gt)
    out: Dict[str, float] = {}
    if info is CROWDPOSE:
        for key, i in _CROWDPOSE_STATS.items():
            out[key] = float(e.stats[i])
        lo, hi = crowd_thresholds
        buckets = {"AP_easy": [], "AP_medium": [], "AP_hard": []}
        for img in coco_gt.dataset["images"]:
            ci = img["crowdIndex"]
            name = "AP_easy" if ci < lo else ("AP_medium" if ci < hi else "AP_hard")
            buckets[name].append(img["id"])
        for name, ids in buckets.items():
            out[name] = _mean_precision(run(coco_gt, ids)) if ids else -1.0
    else:
        for key, v in zip(COCO_KEYS, e.stats):
            out[key] = float(v)
        if occlusion:
            for key, v in (("AP_vis", 2), ("AP_invis", 1)):
                out[key] = float(run(_masked_gt(coco_gt, v, verbose)).stats[0])
    return out


# --------------------------------------------------------------------------- output


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if key.startswith("PCKh"):
        return f"{v:.2f}"
    return f"{v:.4f}"


def format_table(metrics: Mapping[str, float], title: Optional[str] = None) -> str:
    """A plain-text table of a metrics dict.

    Keys ``column/row`` (``PCKh@0.5/Wrist``) make a grid, one column per prefix; keys
    without ``/`` (``AP``, ``AP50`` ...) make a header line and a value line. The names are
    the metric keys, so the table and the json match.
    """
    flat = [(k, v) for k, v in metrics.items() if "/" not in k]
    grid_cols: List[str] = []
    grid_rows: List[str] = []
    grid: Dict[Tuple[str, str], object] = {}
    for k, v in metrics.items():
        if "/" in k:
            col, row = k.split("/", 1)
            if col not in grid_cols:
                grid_cols.append(col)
            if row not in grid_rows:
                grid_rows.append(row)
            grid[col, row] = v
    lines: List[str] = []
    if title:
        lines.append(title)
    if flat:
        cells = [(k, _fmt(k, v)) for k, v in flat]
        widths = [max(len(k), len(s)) for k, s in cells]
        lines.append(" | ".join(k.rjust(w) for (k, _), w in zip(cells, widths)))
        lines.append("-+-".join("-" * w for w in widths))
        lines.append(" | ".join(s.rjust(w) for (_, s), w in zip(cells, widths)))
    if grid:
        if flat:
            lines.append("")
        w0 = max(len(r) for r in grid_rows)
        body = {(c, r): _fmt(c, grid.get((c, r))) for c in grid_cols for r in grid_rows}
        widths = [max(len(c), *(len(body[c, r]) for r in grid_rows)) for c in grid_cols]
        lines.append(" " * w0 + " | " + " | ".join(c.rjust(w) for c, w in
                                                   zip(grid_cols, widths)))
        lines.append("-" * w0 + "-+-" + "-+-".join("-" * w for w in widths))
        for r in grid_rows:
            lines.append(r.ljust(w0) + " | " + " | ".join(body[c, r].rjust(w) for c, w in
                                                          zip(grid_cols, widths)))
    return "\n".join(lines)


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return None if math.isnan(v) else v
    return v


def write_metrics(metrics: Mapping[str, float], path) -> None:
    """Write the flat metrics dict as json (NaN -> null); creates the parent folder."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump({k: _jsonable(v) for k, v in metrics.items()}, f, indent=2)
        f.write("\n")
