"""The papers' experiments: every table row, its config, its command and its published numbers.

    python -m dali_pose.tools.reproduce --list            # one line per row
    python -m dali_pose.tools.reproduce --json            # everything, machine-readable
    python -m dali_pose.tools.reproduce --plot RUN_DIR [RUN_DIR ...] --out curves.png
    python -m dali_pose.tools.reproduce --compare RUN_DIR [RUN_DIR ...]
    python -m dali_pose.tools.reproduce --small           # AID 3.1's claim, measured

Papers: AID = Huang et al., "How to Train Your Robust Human Pose Estimator: Pay Attention to
the Constraint Cue" (COCO val Table 1, COCO test-dev Table 2, CrowdPose test Table 3, the
schedule ablation Table 4); NODA = Chen et al., "Nearby-person Occlusion Data Augmentation
for Human Pose Estimation with Non-extra Annotations" (MPII val: ablation Table I,
comparison Table II).

Published numbers are as printed: COCO / CrowdPose AP in percent (our metrics are fractions:
``--compare`` scales them by 100); MPII PCKh@0.5 in percent per joint group, with the
visible / occluded split where the paper gives one (NODA prints the +NODA rows' split as
differences to the baseline; we store baseline + difference). ``--compare`` reads a run's
``config.yaml`` (the resolved config train.py saves) to find its row, and the last
validation in its ``metrics.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from ..config import load_config
from ..errors import DaliPoseError

CONFIG_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
AID = "AID (Huang et al., Pay Attention to the Constraint Cue)"
NODA = "NODA (Chen et al., Nearby-person Occlusion Data Augmentation)"
MPII_GROUPS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean")


@dataclass(frozen=True)
class Experiment:
    """One table row. ``config``: path under configs/ (None where we cannot provide it);
    ``published``: metric -> value as printed (see the module docstring); ``after``: the
    row whose run must finish first (schedule S3 starts from S1's last.pt)."""

    paper: str
    table: str
    row: str
    config: Optional[str]
    published: Dict[str, float] = field(default_factory=dict)
    after: Optional[str] = None
    note: str = ""


def _coco(ap, ap50, ap75, apm, apl, ar, vis=None, invis=None):
    d = dict(AP=ap, AP50=ap50, AP75=ap75, APM=apm, APL=apl, AR=ar)
    if vis is not None:
        d.update(AP_vis=vis, AP_invis=invis)
    return d


def _pckh(values, vis=None, occ=None):
    """Per group PCKh@0.5 (Head ... Ankle, Mean); vis / occ: the Mean's split."""
    d = {f"PCKh@0.5/{g}": v for g, v in zip(MPII_GROUPS, values)}
    if vis is not None:
        d.update({"PCKh@0.5_vis/Mean": vis, "PCKh@0.5_occ/Mean": occ})
    return d


_T1 = "Table 1 (COCO val)"
_T2 = "Table 2 (COCO test-dev)"
_T3 = "Table 3 (CrowdPose test)"
_T4 = "Table 4 (schedules, COCO val)"
_N1 = "Table I (ablation, MPII val)"
_N2 = "Table II (MPII val)"
# NODA's SimpleBaseline-R50 rows stand in both tables (Table I's first and last row)
_RES50 = _pckh((96.4, 95.3, 89.0, 83.2, 88.4, 84.0, 79.6, 88.5), 92.8, 70.8)
_RES50_NODA = _pckh((96.8, 95.9, 90.0, 84.4, 89.2, 85.5, 80.3, 89.4), 93.5, 72.6)
_TESTDEV = ("test-dev, scored by the COCO server only: writing the test-dev results json "
            "(no ground truth) is not provided yet")
_HTC = ("the paper's val boxes are HTC's (person AP 65.1); the config names the AP-56.4 "
        "file: put the HTC file in data.det_file to match")

EXPERIMENTS: List[Experiment] = [
    # AID Table 1: COCO val, HTC person boxes (person AP 65.1), flip test
    Experiment(AID, _T1, "UDPv1 ResNet-50 256x192", "aid/coco_res50_256x192_s1.yaml",
               _coco(74.6, 91.0, 81.8, 70.9, 81.1, 80.1, 78.3, 67.4), note=_HTC),
    Experiment(AID, _T1, "+OA ResNet-50 256x192", "aid/coco_res50_256x192_s3.yaml",
               _coco(75.3, 91.5, 82.8, 71.7, 81.8, 80.9, 79.0, 68.2),
               after="aid/coco_res50_256x192_s1.yaml", note=_HTC),
    Experiment(AID, _T1, "UDPv1 HRNet-W32 256x192", "aid/coco_w32_256x192_s1.yaml",
               _coco(77.2, 91.6, 84.2, 73.7, 83.7, 82.5, 80.7, 69.4), note=_HTC),
    Experiment(AID, _T1, "+OA HRNet-W32 256x192", "aid/coco_w32_256x192_s3.yaml",
               _coco(77.8, 92.1, 84.5, 74.1, 84.1, 82.8, 81.1, 70.3),
               after="aid/coco_w32_256x192_s1.yaml", note=_HTC),
    Experiment(AID, _T1, "UDPv1 HRNet-W48 256x192", "aid/coco_w48_256x192_s1.yaml",
               _coco(77.8, 92.0, 84.2, 74.4, 84.1, 83.0, 81.3, 70.3), note=_HTC),
    Experiment(AID, _T1, "+OA HRNet-W48 256x192", "aid/coco_w48_256x192_s3.yaml",
               _coco(78.4, 92.3, 84.9, 75.1, 84.6, 83.4, 81.7, 70.8),
               after="aid/coco_w48_256x192_s1.yaml", note=_HTC),
    Experiment(AID, _T1, "UDPv1 HRNet-W32 384x288", "aid/coco_w32_384x288_s1.yaml",
               _coco(77.9, 91.7, 83.9, 74.1, 84.5, 83.1, 81.4, 70.5), note=_HTC),
    Experiment(AID, _T1, "+OA HRNet-W32 384x288", "aid/coco_w32_384x288_s3.yaml",
               _coco(78.7, 92.2, 85.0, 75.0, 85.1, 83.6, 81.9, 71.4),
               after="aid/coco_w32_384x288_s1.yaml", note=_HTC),
    Experiment(AID, _T1, "UDPv1 / +OA 2xRSN-50 256x192", None,
               _coco(77.7, 91.7, 84.7, 74.3, 84.2, 83.3, 81.0, 70.8),
               note="not provided: no RSN (residual steps network) model in dali_pose"),
    Experiment(AID, _T1, "UDPv1 / +OA HRNet-W48plus 384x288", None,
               _coco(78.5, 91.9, 84.9, 74.6, 85.2, 83.6, 81.7, 71.5),
               note="not provided: HRNet-W48plus (UDP-Pose's widened HRNet) is not a "
                    "dali_pose model"),
    # AID Table 2: COCO test-dev (the Table 1 models)
    Experiment(AID, _T2, "Simple+UDPv1 ResNet-50 256x192", "aid/coco_res50_256x192_s1.yaml",
               _coco(73.1, 91.9, 80.9, 69.6, 78.9, 79.1), note=_TESTDEV),
    Experiment(AID, _T2, "+OA ResNet-50 256x192", "aid/coco_res50_256x192_s3.yaml",
               _coco(73.7, 92.2, 81.6, 70.4, 79.4, 79.7), note=_TESTDEV),
    Experiment(AID, _T2, "UDPv1 HRNet-W32 256x192", "aid/coco_w32_256x192_s1.yaml",
               _coco(75.6, 92.3, 83.2, 72.3, 81.4, 81.4), note=_TESTDEV),
    Experiment(AID, _T2, "+OA HRNet-W32 256x192", "aid/coco_w32_256x192_s3.yaml",
               _coco(76.2, 92.8, 83.8, 72.9, 81.8, 81.8), note=_TESTDEV),
    Experiment(AID, _T2, "UDPv1 HRNet-W32 384x288", "aid/coco_w32_384x288_s1.yaml",
               _coco(76.5, 92.6, 83.8, 72.9, 82.5, 82.1), note=_TESTDEV),
    Experiment(AID, _T2, "+OA HRNet-W32 384x288", "aid/coco_w32_384x288_s3.yaml",
               _coco(77.0, 92.9, 84.5, 73.6, 82.8, 82.5), note=_TESTDEV),
    Experiment(AID, _T2, "UDPv1 HRNet-W48 256x192", "aid/coco_w48_256x192_s1.yaml",
               _coco(76.1, 92.4, 83.7, 72.7, 81.9, 81.8), note=_TESTDEV),
    Experiment(AID, _T2, "+OA HRNet-W48 256x192", "aid/coco_w48_256x192_s3.yaml",
               _coco(76.7, 92.9, 84.2, 73.4, 82.3, 82.3), note=_TESTDEV),
    Experiment(AID, _T2, "RSN / HRNet-W48plus / extra data / PoseFix rows", None,
               note="not provided: 2xRSN-50 and HRNet-W48plus models, AI Challenger extra "
                    "training data (another keypoint format) and PoseFix refinement are not "
                    "in dali_pose"),
    # AID Table 3: CrowdPose test, ground-truth boxes, trained on train
    Experiment(AID, _T3, "HRNet+UDPv1 W32 256x192", "aid/crowdpose_w32_256x192_s1.yaml",
               dict(AP=76.3, AP50=93.3, AP75=82.9, AR=79.6, AR50=94.7, AR75=85.0)),
    Experiment(AID, _T3, "+OA W32 256x192", "aid/crowdpose_w32_256x192_s3.yaml",
               dict(AP=77.9, AP50=94.4, AP75=84.1, AR=80.9, AR50=85.4, AR75=86.4),
               after="aid/crowdpose_w32_256x192_s1.yaml",
               note="AR50 85.4 as printed (below AR75: likely a typo in the paper)"),
    Experiment(AID, _T3, "+OA W32 256x192, schedule S2", "aid/crowdpose_w32_256x192_s2.yaml",
               dict(AP=77.9, AP50=94.4, AP75=84.1, AR=80.9, AR50=85.4, AR75=86.4),
               note="the S2 variant of the +OA row (the paper finds S2 and S3 equal and does "
                    "not say which one Table 3 used)"),
    # AID Table 4: schedules (curves only: Fig. 3 and 4; plot with --plot)
    Experiment(AID, _T4, "E1: S1, no OA", "aid/coco_w32_256x192_s1.yaml",
               note="the paper gives curves (Fig. 3, 4), no numbers"),
    Experiment(AID, _T4, "E2: S1, OA", "aid/coco_w32_256x192_s1_oa.yaml",
               note="the paper gives curves (Fig. 3, 4), no numbers"),
    Experiment(AID, _T4, "E3: S2, no OA", "aid/coco_w32_256x192_s2_noocc.yaml",
               note="the paper gives curves (Fig. 3, 4), no numbers"),
    Experiment(AID, _T4, "E4: S2, OA", "aid/coco_w32_256x192_s2.yaml",
               note="the paper gives curves (Fig. 3, 4), no numbers"),
    Experiment(AID, _T4, "E5: S3 (S1 no OA, then S1 with OA)", "aid/coco_w32_256x192_s3.yaml",
               after="aid/coco_w32_256x192_s1.yaml",
               note="the paper gives curves (Fig. 3, 4), no numbers"),
    # NODA Table II: MPII val, PCKh@0.5
    Experiment(NODA, _N2, "Simple ResNet-50", "noda/mpii_res50_256x256.yaml",
               _RES50),
    Experiment(NODA, _N2, "Simple+NODA ResNet-50", "noda/mpii_res50_256x256_noda.yaml",
               _RES50_NODA),
    Experiment(NODA, _N2, "Simple ResNet-152", "noda/mpii_res152_256x256.yaml",
               _pckh((97.0, 95.9, 90.0, 85.0, 89.2, 85.3, 81.3, 89.6), 93.5, 72.8)),
    Experiment(NODA, _N2, "Simple+NODA ResNet-152", "noda/mpii_res152_256x256_noda.yaml",
               _pckh((97.0, 95.8, 90.2, 85.1, 89.8, 86.1, 82.4, 90.0), 93.8, 73.3)),
    Experiment(NODA, _N2, "HRNet-W32", "noda/mpii_w32_256x256.yaml",
               _pckh((97.1, 95.8, 90.3, 85.0, 89.0, 87.0, 83.1, 90.0), 93.9, 73.1)),
    Experiment(NODA, _N2, "HRNet-W32+NODA", "noda/mpii_w32_256x256_noda.yaml",
               _pckh((97.4, 96.3, 91.6, 86.9, 89.6, 87.4, 83.8, 90.9), 94.3, 75.8)),
    # NODA Table I: ablation, SimpleBaseline-R50
    Experiment(NODA, _N1, "Simple (no NODA)", "noda/mpii_res50_256x256.yaml",
               _RES50),
    Experiment(NODA, _N1, "Box", "noda/ablation_box.yaml",
               _pckh((96.8, 95.6, 89.7, 84.1, 89.5, 85.3, 80.6, 89.3), 93.5, 71.9)),
    Experiment(NODA, _N1, "Cardboard", "noda/ablation_cardboard.yaml",
               _pckh((96.7, 95.8, 89.3, 84.4, 89.0, 84.8, 80.9, 89.2), 93.4, 72.1)),
    Experiment(NODA, _N1, "GrabCut", "noda/ablation_grabcut.yaml",
               _pckh((96.8, 95.5, 89.6, 84.3, 88.8, 84.3, 79.6, 89.0), 93.2, 71.5)),
    Experiment(NODA, _N1, "GrabCut + smoothing", "noda/ablation_grabcut_smooth.yaml",
               _pckh((97.1, 95.8, 89.5, 84.7, 89.3, 84.8, 80.9, 89.3), 93.5, 71.9)),
    Experiment(NODA, _N1, "GrabCut + smoothing + rescale (NODA)",
               "noda/mpii_res50_256x256_noda.yaml",
               _RES50_NODA),
    Experiment(NODA, _N1, "all three levels + smoothing + rescale", "noda/ablation_mixed.yaml",
               _pckh((96.8, 95.6, 89.4, 84.6, 89.2, 84.9, 80.5, 89.3), 93.4, 72.0)),
]

POOLS = {  # the NODA pools the configs name, and how to build each
    "data/mpii/noda_pool_grabcut.npz": "--level grabcut",
    "data/mpii/noda_pool_grabcut_hard.npz": "--level grabcut --no-smooth",
    "data/mpii/noda_pool_box_hard.npz": "--level box --no-smooth",
    "data/mpii/noda_pool_cardboard_hard.npz": "--level cardboard --no-smooth",
    "data/mpii/noda_pool_mixed.npz": "--level mixed",
}


def config_path(e: Experiment, root: str = CONFIG_ROOT) -> Optional[str]:
    return None if e.config is None else os.path.join(root, e.config)


def commands(e: Experiment, root: str = CONFIG_ROOT) -> Dict[str, str]:
    """The exact commands of a row: ``single`` (one process), ``torchrun`` (the recipe's
    ranks: train.base_batch_size / loader.batch_size on one node), ``pool`` (NODA: build
    the pool first), ``evaluate``."""
    if e.config is None:
        return {}
    cfg = load_config(config_path(e, root))
    rel = f"configs/{e.config}"
    out = {"single": f"python train.py --config {rel}"}
    base = cfg.train.base_batch_size
    ranks = max(1, (base or cfg.loader.batch_size) // cfg.loader.batch_size)
    out["torchrun"] = f"torchrun --nproc_per_node {ranks} train.py --config {rel}"
    if cfg.noda.pool:
        out["pool"] = (f"python -m dali_pose.tools.build_pool --config {rel} --out "
                       f"{cfg.noda.pool} {POOLS.get(cfg.noda.pool, '')}").rstrip()
    out["evaluate"] = (f"python evaluate.py --config {rel} --checkpoint "
                       f"{cfg.out_dir}/model.pt")
    return out


def as_json(root: str = CONFIG_ROOT) -> List[dict]:
    rows = []
    for e in EXPERIMENTS:
        d = asdict(e)
        d["commands"] = commands(e, root)
        d["available"] = e.config is not None
        rows.append(d)
    return rows


def format_list(root: str = CONFIG_ROOT) -> str:
    lines = []
    table = None
    for e in EXPERIMENTS:
        if (e.paper, e.table) != table:
            table = (e.paper, e.table)
            lines.append(f"\n{e.paper.split(' ')[0]} {e.table}")
        head = _headline(e.published)
        if e.config is None:
            lines.append(f"  {e.row:<40} {'-':<40} {head}  [{e.note}]")
            continue
        c = commands(e, root)
        extra = f"  (after {e.after})" if e.after else ""
        lines.append(f"  {e.row:<40} {e.config:<40} {head}{extra}")
        lines.append(f"      {c['torchrun']}")
        if "pool" in c:
            lines.append(f"      first: {c['pool']}")
        if e.note:
            lines.append(f"      note: {e.note}")
    return "\n".join(lines).lstrip("\n")


def _headline(pub: Dict[str, float]) -> str:
    if "AP" in pub:
        s = f"AP {pub['AP']}"
        if "AP_vis" in pub:
            s += f" (vis {pub['AP_vis']}, invis {pub['AP_invis']})"
        if "AR" in pub and "AP_vis" not in pub:
            s += f" AR {pub['AR']}"
        return s
    if "PCKh@0.5/Mean" in pub:
        s = f"PCKh@0.5 {pub['PCKh@0.5/Mean']}"
        if "PCKh@0.5_vis/Mean" in pub:
            s += f" (vis {pub['PCKh@0.5_vis/Mean']}, occ {pub['PCKh@0.5_occ/Mean']})"
        return s
    return "(no published number)"


# ------------------------------------------------------------------ runs


def read_run(run_dir: str) -> List[dict]:
    """The per-epoch records of ``run_dir/metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        raise DaliPoseError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise DaliPoseError(f"{path}: not one JSON object per line: {e}") from e


def val_metric(records: Sequence[dict]) -> Optional[str]:
    """The headline validation key of a run: ``val/AP`` or ``val/PCKh@0.5/Mean``."""
    for key in ("val/AP", "val/PCKh@0.5/Mean"):
        if any(key in r for r in records):
            return key
    return None


def experiments_of(run_dir: str, root: str = CONFIG_ROOT) -> List[Experiment]:
    """The rows whose config a run trained: its saved ``config.yaml`` equals the row's
    resolved config (out_dir aside)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return []
    from ..config import to_dict
    mine = to_dict(load_config(path))
    mine.pop("out_dir", None)
    found = []
    for e in EXPERIMENTS:
        if e.config is None:
            continue
        theirs = to_dict(load_config(config_path(e, root)))
        theirs.pop("out_dir", None)
        if theirs == mine:
            found.append(e)
    return found


def compare_rows(run_dirs: Sequence[str], root: str = CONFIG_ROOT) -> List[dict]:
    """Per run and published metric: ours (percent), the paper's, the difference."""
    rows = []
    for run in run_dirs:
        records = read_run(run)
        last = next((r for r in reversed(records) if val_metric([r])), None)
        # validation rows only: test-dev (Table 2) is not what train.py validates on
        exps = [e for e in experiments_of(run, root) if e.published and e.table != _T2]
        if not exps:
            rows.append(dict(run=run, row=None, metric=None, ours=None, paper=None,
                             diff=None, epoch=last["epoch"] if last else None))
            continue
        for e in exps:
            for k, paper in e.published.items():
                v = None if last is None else last.get(f"val/{k}")
                ours = None
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    ours = 100.0 * v if not k.startswith("PCKh") else float(v)
                rows.append(dict(run=run, row=f"{e.table}: {e.row}", metric=k, ours=ours,
                                 paper=paper, diff=None if ours is None else ours - paper,
                                 epoch=last["epoch"] if last else None))
    return rows


def format_compare(rows: Sequence[dict]) -> str:
    out = [f"{'run':<28} {'row':<44} {'metric':<18} {'ours':>7} {'paper':>7} {'diff':>7}"]
    for r in rows:
        if r["row"] is None:
            out.append(f"{r['run']:<28} (no table row has this run's config)")
            continue
        f = (lambda v: "-" if v is None else f"{v:.1f}")
        d = "-" if r["diff"] is None else f"{r['diff']:+.1f}"
        out.append(f"{r['run']:<28} {r['row'][:44]:<44} {r['metric']:<18} {f(r['ours']):>7} "
                   f"{f(r['paper']):>7} {d:>7}")
    return "\n".join(out)


def plot_runs(run_dirs: Sequence[str], out: str, size=(1200, 480)) -> str:
    """Validation metric (left panel) and training loss (right) against epoch, the runs
    overlaid in distinct colours (AID Fig. 3 and 4), drawn with OpenCV into one PNG."""
    import cv2
    import numpy as np

    runs = [(os.path.basename(os.path.normpath(r)) or r, read_run(r)) for r in run_dirs]
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    colours = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
               (75, 86, 140), (194, 119, 227), (127, 127, 127)]
    key = next((val_metric(rec) for _, rec in runs if val_metric(rec)), None)
    panels = [(key or "validation", key), ("training loss", "loss")]
    pw = w // 2
    for p, (title, k) in enumerate(panels):
        x0, y0, x1, y1 = p * pw + 70, 40, (p + 1) * pw - 20, h - 110
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(img, title, (x0, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        series = []
        for _, rec in runs:
            pts = [(r["epoch"], r[k]) for r in rec if k and isinstance(r.get(k), (int, float))
                   and math.isfinite(r[k])]
            series.append(pts)
        allp = [q for s in series for q in s]
        if not allp:
            cv2.putText(img, "no data", (x0 + 10, y0 + 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
            continue
        ex = [q[0] for q in allp]
        ey = [q[1] for q in allp]
        ex0, ex1 = min(ex), max(max(ex), min(ex) + 1)
        ey0, ey1 = min(ey), max(ey)
        if ey1 <= ey0:
            ey0, ey1 = ey0 - 0.5, ey1 + 0.5

        def to_px(e, v):
            return (int(round(x0 + (e - ex0) / (ex1 - ex0) * (x1 - x0))),
                    int(round(y1 - (v - ey0) / (ey1 - ey0) * (y1 - y0))))

        for frac in (0.0, 0.5, 1.0):
            v = ey0 + frac * (ey1 - ey0)
            _, py = to_px(ex0, v)
            cv2.putText(img, f"{v:.3g}", (x0 - 65, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
            e = ex0 + frac * (ex1 - ex0)
            px, _ = to_px(e, ey0)
            cv2.putText(img, f"{e:.0f}", (px - 10, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "epoch", ((x0 + x1) // 2 - 20, y1 + 34), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for i, pts in enumerate(series):
            c = colours[i % len(colours)]
            px = [to_px(e, v) for e, v in pts]
            for a, b in zip(px, px[1:]):
                cv2.line(img, a, b, c, 2, cv2.LINE_AA)
            for q in px:
                cv2.circle(img, q, 3, c, -1, cv2.LINE_AA)
    for i, (name, _) in enumerate(runs):  # the legend, below the panels
        c = colours[i % len(colours)]
        x, y = 70 + (i % 4) * (w // 4), h - 60 + (i // 4) * 20
        cv2.line(img, (x, y - 4), (x + 24, y - 4), c, 3)
        cv2.putText(img, name[:40], (x + 30, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if not cv2.imwrite(out, img):
        raise DaliPoseError(f"cannot write {out}")
    return out


# ------------------------------------------------------------------ small-scale claims


def occluder_hit_shares(n_scenes: int = 60, seed: int = 0, input_size=(96, 128),
                        methods=("aid", "cutout", "erasing", "hide_and_seek", "gridmask")
                        ) -> Dict[str, dict]:
    """AID 3.1's argument, measured: of the occluded crops (gate open), the share in which
    the dropped pixels cover at least one labelled keypoint, per method, with each method's
    default values (``occlusion`` section defaults, the AID radius for aid and cutout).

    People: ``n_scenes`` scenes of :func:`dali_pose.tools.synthetic.render_scene` (seeded),
    each person cropped without augmentation (box padded 1.25, aspect of ``input_size``
    [w, h], UDP). Every method sees the same crops; each crop's draws come from
    ``default_rng([seed, crop])``. Returns {method: {"crops", "hit", "share"}}.
    """
    import numpy as np

    from ..config import OcclusionConfig
    from ..datasets import box_to_center_scale
    from ..geometry import transform_keypoints, udp_matrix
    from ..kernels.dropping import dropping_op_from
    from .synthetic import render_scene

    w, h = (int(v) for v in input_size)
    rng = np.random.default_rng(seed)
    crops = []
    flip_index = np.arange(17)
    for _ in range(n_scenes):
        for p in render_scene(rng, 320, 240)["people"]:
            (cx, cy), (sw, sh) = box_to_center_scale(*p["bbox"], w / h, 1.25)
            m = udp_matrix(cx, cy, sw, sh, 0.0, float(w), float(h), False)
            k = np.zeros((17, 3), np.float32)
            transform_keypoints(m, np.asarray(p["keypoints"], np.float32), False, flip_index,
                                k)
            crops.append(k)
    marker = np.full((3, h, w), 1e3, np.float32)  # any filled pixel differs from it
    out: Dict[str, dict] = {}
    for method in methods:
        op = dropping_op_from(OcclusionConfig(method=method), (w, h))
        hit = 0
        for i, k in enumerate(crops):
            draws = np.random.default_rng([seed, i]).random(op.num_draws).astype(np.float32)
            draws[0] = 1.0  # the gate: every crop is occluded
            img = np.empty_like(marker)
            op.one(img, marker, k, draws)
            px = np.floor(k[:, :2] + 0.5).astype(int)
            on = (k[:, 2] > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (
                px[:, 1] < h)
            hit += bool(np.any(img[0, px[on, 1], px[on, 0]] != 1e3))
        out[method] = {"crops": len(crops), "hit": hit, "share": hit / max(len(crops), 1)}
    return out


def visibility_counts(cfg, loader_epoch: Optional[int] = None,
                      epochs: int = 1) -> Dict[str, dict]:
    """Per joint of the training split: how many people have it labelled and how many of
    those occluded (NODA Fig. 1).

    From the index (``loader_epoch`` None): occluded = labelled v = 1 (MPII's json has no
    visibility flag: every labelled joint is v = 2 there). From ``epochs`` epochs of the
    training loader from ``loader_epoch`` on: over their crops, labelled = v > 0 in the
    crop and occluded = v = 1 or covered by a NODA occluder (``batch["occluded"]``), so the
    same config with and without ``noda.prob`` shows what NODA adds.
    Returns {joint name: {"labelled", "occluded", "share"}}.
    """
    import numpy as np

    from ..datasets import load_index

    if loader_epoch is None:
        index = load_index(cfg, "train")
        names = index.info.joints
        v = np.asarray(index.keypoints)[:, :, 2]
        lab, occ = (v > 0).sum(0), (v == 1).sum(0)
    else:
        from .. import build_loader

        loader = build_loader(cfg, "train")
        names = loader.info.joints
        lab = occ = 0
        for epoch in range(loader_epoch, loader_epoch + epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                v = batch["keypoints"][..., 2].cpu().numpy()
                covered = batch["occluded"].cpu().numpy() > 0
                lab = lab + (v > 0).sum(0)
                occ = occ + ((v > 0) & ((v == 1) | covered)).sum(0)
    return {n: {"labelled": int(a), "occluded": int(b), "share": float(b) / max(int(a), 1)}
            for n, a, b in zip(names, lab, occ)}


def format_visibility(counts: Dict[str, dict], title: str = "") -> str:
    lines = ([title] if title else []) + [f"{'joint':<16} {'labelled':>9} {'occluded':>9} "
                                          f"{'share':>6}"]
    for n, c in counts.items():
        lines.append(f"{n:<16} {c['labelled']:>9} {c['occluded']:>9} {c['share']:>6.3f}")
    return "\n".join(lines)


def mask_level_iou(n_scenes: int = 20, seed: int = 0) -> Dict[str, dict]:
    """NODA's mask levels against the truth: each level's mask of a synthetic person
    (:mod:`dali_pose.tools.build_pool`'s box, cardboard and GrabCut builders, on the whole
    rendered image with the person's box) against the person's true silhouette (the pixels
    where it is the topmost thing drawn, from the renderer's id map), as IoU. People with
    fewer than 6 labelled joints are left out, as build_pool does. Returns
    {level: {"people", "mean_iou"}}."""
    import numpy as np

    from ..datasets import COCO
    from .build_pool import _box_mask, cardboard_mask, grabcut_mask
    from .synthetic import render_scene

    rng = np.random.default_rng(seed)
    ious: Dict[str, list] = {"box": [], "cardboard": [], "grabcut": []}
    for _ in range(n_scenes):
        scene = render_scene(rng, 320, 240)
        idmap = scene["idmap"].astype(int)
        for p in scene["people"]:
            kps = np.asarray(p["keypoints"], np.float32)
            if (kps[:, 2] > 0).sum() < 6:
                continue
            x, y, w, h = p["bbox"]
            box = (x + (w - 1) / 2.0, y + (h - 1) / 2.0, float(w), float(h))
            truth = (idmap > 0) & ((idmap - 1) // 20 == p["index"])
            shape = idmap.shape
            masks = {"box": _box_mask(shape, box),
                     "cardboard": cardboard_mask(shape, kps, box, COCO).astype(bool),
                     "grabcut": grabcut_mask(scene["image"], kps, box, COCO).astype(bool)}
            for level, m in masks.items():
                union = (m | truth).sum()
                ious[level].append(float((m & truth).sum()) / max(int(union), 1))
    return {k: {"people": len(v), "mean_iou": float(np.mean(v)) if v else float("nan")}
            for k, v in ious.items()}


def format_small(shares: Dict[str, dict]) -> str:
    lines = ["AID 3.1: occluded crops whose dropped pixels cover >= 1 labelled keypoint",
             f"{'method':<14} {'crops':>6} {'hit':>6} {'share':>7}"]
    for m, r in shares.items():
        lines.append(f"{m:<14} {r['crops']:>6} {r['hit']:>6} {r['share']:>7.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dali_pose.tools.reproduce",
                                 description="the AID and NODA tables: configs, commands, "
                                             "published numbers, runs against them")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="every row: config, command, number")
    g.add_argument("--json", action="store_true", help="every row as JSON")
    g.add_argument("--plot", nargs="+", metavar="RUN_DIR",
                   help="validation metric and training loss against epoch, one PNG")
    g.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                   help="each run's last validation next to the paper's numbers")
    g.add_argument("--small", action="store_true",
                   help="the papers' claims at small scale, on synthetic people")
    g.add_argument("--visibility", metavar="CONFIG",
                   help="per-joint labelled / occluded counts of CONFIG's training split "
                        "(with --loader-epoch E: of one loader epoch, NODA included)")
    ap.add_argument("--loader-epoch", type=int, default=None, metavar="E")
    ap.add_argument("--epochs", type=int, default=1, metavar="N",
                    help="--visibility --loader-epoch E: count epochs E .. E+N-1")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="--visibility: override a config value")
    ap.add_argument("--out", default="curves.png", help="--plot: the PNG to write")
    args = ap.parse_args(argv)
    try:
        if args.list:
            print(format_list())
        elif args.json:
            print(json.dumps(as_json(), indent=1))
        elif args.visibility:
            cfg = load_config(args.visibility, args.overrides)
            if args.epochs < 1:
                ap.error("--epochs must be >= 1")
            e = args.loader_epoch
            src = ("the index" if e is None else f"loader epoch {e}" if args.epochs == 1
                   else f"loader epochs {e}-{e + args.epochs - 1}")
            print(format_visibility(visibility_counts(cfg, e, args.epochs),
                                    f"{args.visibility}, training split, from {src}"))
        elif args.small:
            print(format_small(occluder_hit_shares()))
            print("\nNODA mask levels: IoU with the true silhouettes of synthetic people")
            for level, r in mask_level_iou().items():
                print(f"{level:<10} {r['people']:>4} people  mean IoU {r['mean_iou']:.3f}")
        elif args.plot:
            print(f"wrote {plot_runs(args.plot, args.out)}")
        else:
            print(format_compare(compare_rows(args.compare)))
    except DaliPoseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
