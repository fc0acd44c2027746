"""Write the MPII validation people's is_visible flags (NODA's visible / occluded split).

    python -m dali_pose.tools.mpii_visible --release mpii_human_pose_v1_u12_1.mat \\
        --val-ann data/mpii/annot/valid.json --gt data/mpii/annot/gt_valid.mat \\
        --out data/mpii/annot/visible_valid.npy

The output is uint8 (N, 16) in ``gt_valid.mat``'s order (1 = visible; 0 = occluded or not
labelled), for ``evaluate.py --visible`` and the ``data.val_visible`` config key. HRNet's
``valid.json`` lists the people in ``gt_valid.mat``'s order and names their images; each is
matched to its annotation in the release file by joint positions
(:func:`dali_pose.evaluation.mpii.visible_from_release`).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..datasets import read_json
from ..errors import DaliPoseError, EvaluationError
from ..evaluation.mpii import load_mpii_gt, visible_from_release


def write_visible(release: str, val_ann: str, gt: str, out: str) -> np.ndarray:
    people = read_json(val_ann, "MPII validation annotation", EvaluationError)
    g = load_mpii_gt(gt)
    if not isinstance(people, list) or len(people) != len(g):
        raise EvaluationError(f"{val_ann}: {len(people) if isinstance(people, list) else '?'} "
                              f"people, but {gt} has {len(g)}: not the same split")
    val = [(p.get("image") if isinstance(p, dict) else None, g.joints[n], g.missing[n])
           for n, p in enumerate(people)]
    vis = visible_from_release(release, val)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, vis)
    return vis


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dali_pose.tools.mpii_visible",
                                 description="MPII validation is_visible flags from the "
                                             "release annotation")
    ap.add_argument("--release", required=True, help="mpii_human_pose_v1_u12_1.mat")
    ap.add_argument("--val-ann", required=True, help="HRNet's valid.json")
    ap.add_argument("--gt", required=True, help="gt_valid.mat")
    ap.add_argument("--out", required=True, help="output .npy (N, 16) uint8")
    args = ap.parse_args(argv)
    try:
        vis = write_visible(args.release, args.val_ann, args.gt, args.out)
    except DaliPoseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(vis)} people, {int(vis.sum())} visible joints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
