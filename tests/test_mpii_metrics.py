"""MPII: per-joint PCKh (left and right apart) with the visible / occluded split, and the
is_visible file written from a release annotation of the official structure."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dali_pose.datasets import MPII
from dali_pose.errors import EvaluationError
from dali_pose.evaluation import mpii as P
from dali_pose.tools import mpii_visible

MPII_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mpii-sample"


def fake_gt(tmp_path, n=5, seed=0):
    import scipy.io

    rng = np.random.default_rng(seed)
    pos = rng.uniform(50, 400, (16, 2, n))
    hb = np.zeros((2, 2, n))
    hb[0], hb[1] = pos[9] - 20, pos[9] + 20
    miss = np.zeros((16, n), np.uint8)
    miss[3, 1] = 1
    path = tmp_path / "gt_valid.mat"
    scipy.io.savemat(path, {"pos_gt_src": pos, "headboxes_src": hb, "jnt_missing": miss})
    return path, np.transpose(pos, (2, 0, 1)), miss.T.astype(bool)


def test_per_joint_left_right_and_split(tmp_path):
    path, joints, missing = fake_gt(tmp_path)
    preds = joints - 1.0
    li = MPII.joints.index("left_wrist")
    preds[:2, li, 0] += 100  # two left wrists wrong, right wrists all right
    vis = np.ones((5, 16), np.uint8)
    vis[0, li] = 0  # one wrong left wrist is occluded
    m = P.evaluate_mpii(preds, path, visible=vis, per_joint=True)
    assert m["PCKh@0.5/left_wrist"] == pytest.approx(60.0)
    assert m["PCKh@0.5/right_wrist"] == 100.0
    assert m["PCKh@0.5/Wrist"] == pytest.approx(80.0)  # the group: mean of left and right
    assert m["PCKh@0.5_occ/left_wrist"] == 0.0 and m["count_occ/left_wrist"] == 1
    assert m["PCKh@0.5_vis/left_wrist"] == pytest.approx(75.0)
    assert np.isnan(m["PCKh@0.5_occ/right_wrist"])  # no occluded right wrist
    assert m["count/left_hip"] == 4  # one missing
    # without per_joint: the same group values, no joint keys
    plain = P.evaluate_mpii(preds, path, visible=vis)
    assert "PCKh@0.5/left_wrist" not in plain
    assert all(plain[k] == m[k] or np.isnan(plain[k]) for k in plain)


@pytest.mark.skipif(not MPII_DIR.exists(), reason="shared MPII sample data absent")
def test_per_joint_on_published_predictions():
    gt = MPII_DIR / "annot" / "gt_valid.mat"
    vis = MPII_DIR / "annot" / "visible_valid.npy"
    pred = sorted((MPII_DIR / "predictions").glob("*.npy"))[0]
    m = P.evaluate_mpii(str(pred), str(gt), visible=str(vis), per_joint=True)
    for group, names in P.MPII_GROUPS:
        for s in ("", "_vis"):
            vals = [m[f"PCKh@0.5{s}/{j}"] for j in names]
            assert m[f"PCKh@0.5{s}/{group}"] == pytest.approx(np.mean(vals))
        if group == "Head":  # MPII never marks head_top occluded
            assert m["count_occ/head_top"] == 0
    # occluded joints are harder than visible ones for a real model, joint by joint
    for j in ("left_wrist", "right_wrist", "left_ankle", "right_ankle"):
        assert m[f"PCKh@0.5_occ/{j}"] < m[f"PCKh@0.5_vis/{j}"]
    assert 80 < m["PCKh@0.5/Mean"] < 95


def write_release(path, images):
    """A release annotation of the official nesting: RELEASE.annolist(i).image.name,
    .annorect(r).annopoints.point(p).{id, x, y, is_visible}."""
    import scipy.io

    def struct_array(rows, fields):
        a = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
        for i, r in enumerate(rows):
            for f in fields:
                a[0, i][f] = r[f]
        return a

    annolist = []
    for name, people in images:
        rects = []
        for xy, vis in people:
            pts = [dict(id=np.array([[j]]), x=np.array([[x]]), y=np.array([[y]]),
                        is_visible=np.array([[v]]))
                   for j, ((x, y), v) in enumerate(zip(xy, vis)) if np.isfinite(x)]
            rects.append(dict(annopoints=struct_array([dict(point=struct_array(
                pts, ["id", "x", "y", "is_visible"]))], ["point"]),
                x1=np.array([[0]])))
        image = struct_array([dict(name=np.array([name]))], ["name"])
        annolist.append(dict(image=image, annorect=struct_array(rects, ["annopoints", "x1"])))
    release = struct_array([dict(annolist=struct_array(annolist, ["image", "annorect"]))],
                           ["annolist"])
    scipy.io.savemat(path, {"RELEASE": release})


def test_visible_file_from_release(tmp_path):
    gt_path, joints, missing = fake_gt(tmp_path, n=3)
    rng = np.random.default_rng(1)
    vis = (rng.random((3, 16)) < 0.7).astype(np.uint8)
    # images: person 0 and 1 share an image with a decoy; person 2 alone, one joint unlabelled
    decoy = joints[0] + 40.0
    xy2 = joints[2].copy()
    xy2[5] = np.nan
    write_release(tmp_path / "release.mat", [
        ("a.jpg", [(decoy, np.ones(16)), (joints[1], vis[1]), (joints[0], vis[0])]),
        ("b.jpg", [(xy2, vis[2])]),
    ])
    ann = [{"image": "a.jpg"}, {"image": "a.jpg"}, {"image": "b.jpg"}]
    (tmp_path / "valid.json").write_text(json.dumps(ann))
    out = tmp_path / "vis.npy"
    assert mpii_visible.main(["--release", str(tmp_path / "release.mat"), "--val-ann",
                              str(tmp_path / "valid.json"), "--gt", str(gt_path),
                              "--out", str(out)]) == 0
    got = np.load(out)
    want = vis.copy()
    want[2, 5] = 0  # not labelled in the release: not visible
    np.testing.assert_array_equal(got, want)
    # the file plugs into the metric
    m = P.evaluate_mpii(joints - 1.0, gt_path, visible=str(out), per_joint=True)
    assert m["count_vis/Mean"] + m["count_occ/Mean"] == m["count/Mean"]
    # a person with no match is an error naming it
    ann[2]["image"] = "c.jpg"
    (tmp_path / "valid.json").write_text(json.dumps(ann))
    with pytest.raises(EvaluationError, match="person 2 .image c.jpg"):
        mpii_visible.write_visible(str(tmp_path / "release.mat"), str(tmp_path / "valid.json"),
                                   str(gt_path), str(out))


def test_metrics_reexports_mpii():
    from dali_pose.evaluation import metrics

    assert metrics.evaluate_mpii is P.evaluate_mpii and metrics.load_mpii_gt is P.load_mpii_gt
    assert os.path.basename(P.__file__) == "mpii.py"
