"""dali_pose.evaluation.metrics and dali_pose.evaluation.postprocess: agreement with the official tools.

Synthetic ground truth covers the logic everywhere; the real samples in ../shared/data
(skipped when absent) check COCO/CrowdPose files and reproduce the official MPII PCKh on
published predictions.
"""
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO as CocoApi
from pycocotools.cocoeval import COCOeval

from dali_pose.datasets import COCO, CROWDPOSE, CROWDPOSE_AREA_FACTOR, MPII
from dali_pose.evaluation import metrics as M
from dali_pose.evaluation.postprocess import (index_to_results, oks_matrix, oks_nms, rescore,
                                   to_coco_results)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MPII_DIR = DATA / "mpii-sample"
NO_DATA = "real sample data not present: "  # conftest counts these skips in the summary
needs_coco = pytest.mark.skipif(not (DATA / "coco-sample").is_dir(),
                                reason=NO_DATA + "coco-sample")
needs_crowd = pytest.mark.skipif(not (DATA / "crowdpose-sample").is_dir(),
                                 reason=NO_DATA + "crowdpose-sample")
needs_mpii = pytest.mark.skipif(not (MPII_DIR / "annot" / "gt_valid.mat").is_file(),
                                reason=NO_DATA + "mpii-sample")


# --------------------------------------------------------------------------- fixtures


def make_gt(k=17, n_images=5, per_image=4, crowdpose=False, seed=0):
    """Synthetic keypoint ground truth: random people, v in {0, 1, 2}, one crowd region."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    aid = 1
    for i in range(n_images):
        img = {"id": 100 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480}
        if crowdpose:
            img["crowdIndex"] = float([0.05, 0.15, 0.2, 0.5, 0.8, 0.95][i % 6])
        images.append(img)
        for _ in range(per_image):
            w, h = rng.uniform(30, 300), rng.uniform(60, 400)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            kp = np.zeros((k, 3))
            kp[:, 0] = rng.uniform(x, x + w, k)
            kp[:, 1] = rng.uniform(y, y + h, k)
            kp[:, 2] = rng.choice([0, 1, 2], size=k, p=[0.2, 0.3, 0.5])
            kp[kp[:, 2] == 0, :2] = 0
            ann = {"id": aid, "image_id": img["id"], "category_id": 1, "iscrowd": 0,
                   "bbox": [x, y, w, h], "keypoints": kp.round(2).ravel().tolist(),
                   "num_keypoints": int((kp[:, 2] > 0).sum())}
            if not crowdpose:
                ann["area"] = w * h * 0.7
            anns.append(ann)
            aid += 1
    # one crowd region and one person without keypoints (both ignored by COCOeval)
    crowd = dict(anns[0], id=aid, iscrowd=1)
    empty = dict(anns[1], id=aid + 1, keypoints=[0] * (3 * k), num_keypoints=0)
    anns += [crowd, empty]
    names = list((CROWDPOSE if crowdpose else COCO).joints)
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}]}


def people(gt):
    """The annotations COCOeval counts (not crowd, some labelled joint)."""
    return [a for a in gt["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]


def gt_as_results(gt):
    """Ground truth as predictions; unlabelled joints at the box centre (as a model would)."""
    out = []
    for a in people(gt):
        kp = np.asarray(a["keypoints"], float).reshape(-1, 3)
        x, y, w, h = a["bbox"]
        kp[kp[:, 2] == 0, :2] = (x + w / 2, y + h / 2)
        kp[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "category_id": 1,
                    "keypoints": kp.ravel().tolist(), "score": 1.0})
    return out


def perturbed_results(gt, seed=1, info=COCO):
    """Noisy copies of the people (noise ~ person size), dropped people, false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for a, r in zip(people(gt), gt_as_results(gt)):
        if rng.random() < 0.15:
            continue
        kp = np.asarray(r["keypoints"]).reshape(-1, 3)
        size = np.sqrt(a["bbox"][2] * a["bbox"][3])
        kp[:, :2] += rng.normal(0, rng.uniform(0.01, 0.12) * size, (len(kp), 2))
        kp[:, 2] = rng.uniform(0, 1, len(kp))
        out.append(dict(r, keypoints=kp.ravel().tolist(), score=float(rng.uniform(0.2, 1))))
    for img in gt["images"]:
        for _ in range(2):
            kp = np.c_[rng.uniform(0, 640, info.num_joints), rng.uniform(0, 480,
                                                                         info.num_joints),
                       rng.uniform(0, 1, info.num_joints)]
            out.append({"image_id": img["id"], "category_id": 1,
                        "keypoints": kp.ravel().tolist(), "score": float(rng.uniform(0, 0.6))})
    return out


def direct_cocoeval(gt, results, eval_cls=COCOeval):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = CocoApi()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        e = eval_cls(coco, dt, "keypoints")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


# --------------------------------------------------------------------------- COCO


def test_coco_ground_truth_scores_one():
    gt = make_gt()
    m = M.evaluate_coco(gt, gt_as_results(gt))
    assert list(m) == list(M.COCO_KEYS) + ["AP_vis", "AP_invis"]
    for key in ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_vis", "AP_invis"):
        assert m[key] == pytest.approx(1.0), key


def test_coco_matches_direct_cocoeval():
    gt = make_gt(n_images=6, per_image=5, seed=3)
    res = perturbed_results(gt, seed=4)
    m = M.evaluate_coco(gt, res)
    ref = direct_cocoeval(gt, res)
    assert [m[k] for k in M.COCO_KEYS] == [float(v) for v in ref.stats]
    assert 0.05 < m["AP"] < 0.95  # a meaningful, not degenerate, comparison


def test_coco_inputs_not_modified_and_numpy_keypoints():
    gt = make_gt(seed=5)
    res = perturbed_results(gt, seed=6)
    gt0, res0 = copy.deepcopy(gt), copy.deepcopy(res)
    res_np = [dict(r, keypoints=np.asarray(r["keypoints"])) for r in res]
    m1 = M.evaluate_coco(gt, res)
    assert gt == gt0 and res == res0
    assert M.evaluate_coco(gt, res_np) == m1


def _hand_oks(gt_kp, dt_kp, area, sigmas, keep):
    """OKS over the joints in ``keep`` (the definition, written out)."""
    var = (2 * np.asarray(sigmas)) ** 2
    d2 = ((gt_kp[:, :2] - dt_kp[:, :2]) ** 2).sum(1)
    return float(np.mean(np.exp(-d2 / var / (area + np.spacing(1)) / 2)[keep]))


def test_ap_vis_invis_count_only_their_joints():
    gt = make_gt(seed=7)
    res = gt_as_results(gt)
    v = {a["id"]: np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] for a in gt["annotations"]}
    # ruin the occluded joints only: AP_vis stays perfect, AP_invis collapses
    bad_occ = copy.deepcopy(res)
    for r, a in zip(bad_occ, people(gt)):
        kp = np.asarray(r["keypoints"]).reshape(-1, 3)
        kp[v[a["id"]] == 1, :2] += 200.0
        r["keypoints"] = kp.ravel().tolist()
    m = M.evaluate_coco(gt, bad_occ)
    assert m["AP_vis"] == pytest.approx(1.0)
    assert m["AP_invis"] < 0.2
    assert m["AP"] < 1.0
    # and the masked OKS is the OKS over the kept joints
    gt_vis = M._masked_gt(M.load_gt(gt), 2, False)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_vis.loadRes(copy.deepcopy(bad_occ))
        e = COCOeval(gt_vis, dt, "keypoints")
        e.evaluate()
    img = gt["images"][0]["id"]
    g = [a for a in gt["annotations"] if a["image_id"] == img][0]
    ious = e.ious[img, 1]
    gts = gt_vis.loadAnns(gt_vis.getAnnIds(imgIds=[img]))
    j = [x["id"] for x in gts].index(g["id"])
    dts = sorted(dt.loadAnns(dt.getAnnIds(imgIds=[img])), key=lambda d: -d["score"])
    i = 0  # first detection of the image is the copy of its first person (all score 1)
    want = _hand_oks(np.asarray(g["keypoints"]).reshape(-1, 3),
                     np.asarray(dts[i]["keypoints"]).reshape(-1, 3), g["area"], COCO.sigmas,
                     v[g["id"]] == 2)
    assert ious[i, j] == pytest.approx(want, abs=1e-12)


def test_ap_invis_people_without_occluded_joints_are_ignored():
    gt = make_gt(n_images=2, per_image=3, seed=8)
    # person 1: all labelled joints visible -> no occluded joint -> ignored for AP_invis
    a = gt["annotations"][0]
    kp = np.asarray(a["keypoints"]).reshape(-1, 3)
    kp[kp[:, 2] == 1, 2] = 2
    a["keypoints"] = kp.ravel().tolist()
    res = gt_as_results(gt)
    m = M.evaluate_coco(gt, res)
    assert m["AP_invis"] == pytest.approx(1.0)  # its correct detection is not a false positive
    miss = [r for r in res if r["keypoints"] != res[0]["keypoints"]]
    assert M.evaluate_coco(gt, miss)["AP_invis"] == pytest.approx(1.0)  # nor a miss


@needs_coco
def test_coco_real_sample():
    ann = DATA / "coco-sample" / "test_coco.json"
    gt = json.loads(ann.read_text())
    m = M.evaluate_coco(str(ann), gt_as_results(gt))
    assert all(m[k] == pytest.approx(1.0) for k in ("AP", "AR", "AP_vis", "AP_invis"))
    res = perturbed_results(gt, seed=11)
    m = M.evaluate_coco(str(ann), res)
    ref = direct_cocoeval(gt, res)
    assert [m[k] for k in M.COCO_KEYS] == [float(v) for v in ref.stats]


# --------------------------------------------------------------------------- CrowdPose


def test_crowdpose_ground_truth_and_buckets():
    gt = make_gt(k=14, n_images=6, crowdpose=True, seed=12)
    m = M.evaluate_coco(gt, gt_as_results(gt), dataset="crowdpose")
    assert list(m) == list(M.CROWDPOSE_KEYS)
    assert all(v == pytest.approx(1.0) for v in m.values())
    # perfect on easy images (crowdIndex < 0.2), garbage elsewhere
    easy = {i["id"] for i in gt["images"] if i["crowdIndex"] < 0.2}
    hard = {i["id"] for i in gt["images"] if i["crowdIndex"] >= 0.8}
    res = [r if r["image_id"] in easy else
           dict(r, keypoints=(np.asarray(r["keypoints"]) + 150).tolist())
           for r in gt_as_results(gt)]
    m = M.evaluate_coco(gt, res, dataset="crowdpose")
    assert m["AP_easy"] == pytest.approx(1.0)
    assert m["AP_medium"] == 0.0 and m["AP_hard"] == 0.0
    # other thresholds move the boundaries (0.2 and 0.8 are medium resp. hard by default)
    m = M.evaluate_coco(gt, res, dataset="crowdpose", crowd_thresholds=(0.1, 0.9))
    assert m["AP_easy"] == pytest.approx(1.0) and m["AP_hard"] == 0.0
    assert 0.0 < m["AP_medium"] < 1.0  # now holds the perfect 0.15 image
    # a bucket without images is -1, as in the official tool
    for img in gt["images"]:
        img["crowdIndex"] = min(img["crowdIndex"], 0.5)
    assert M.evaluate_coco(gt, res, dataset="crowdpose")["AP_hard"] == -1.0
    assert hard


def test_crowdpose_area_convention_and_sigmas():
    gt = make_gt(k=14, n_images=3, crowdpose=True, seed=13)
    res = perturbed_results(gt, seed=14, info=CROWDPOSE)
    m = M.evaluate_coco(gt, res, dataset="crowdpose")
    # an 'area' field in the json is ignored: the official tool uses bbox w*h*0.53
    with_area = copy.deepcopy(gt)
    for a in with_area["annotations"]:
        a["area"] = 1.0
    assert M.evaluate_coco(with_area, res, dataset="crowdpose") == m
    # the OKS matrix is the 14-joint OKS with that area
    coco = M.load_gt(gt, "crowdpose")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(res))
        e = M.CrowdPoseEval(coco, dt)
        e.evaluate()
    img = gt["images"][0]["id"]
    gts = coco.loadAnns(coco.getAnnIds(imgIds=[img]))
    dts = sorted(dt.loadAnns(dt.getAnnIds(imgIds=[img])), key=lambda d: -d["score"])
    for j, g in enumerate(gts):
        gk = np.asarray(g["keypoints"]).reshape(-1, 3)
        if (gk[:, 2] == 0).all():
            continue
        area = g["bbox"][2] * g["bbox"][3] * CROWDPOSE_AREA_FACTOR
        for i, d in enumerate(dts):
            want = _hand_oks(gk, np.asarray(d["keypoints"]).reshape(-1, 3), area,
                             CROWDPOSE.sigmas, gk[:, 2] > 0)
            assert e.ious[img, 1][i, j] == pytest.approx(want, abs=1e-12)
    assert "area" not in gts[0]  # the caller's ground truth was not written into
    # AP/AR at 'all' equal a plain COCOeval run with the CrowdPose sigmas and area
    ref_gt = copy.deepcopy(gt)
    for a in ref_gt["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3] * CROWDPOSE_AREA_FACTOR

    class Ref(COCOeval):
        def __init__(self, g, d, t):
            super().__init__(g, d, t)
            self.params.kpt_oks_sigmas = np.array(CROWDPOSE.sigmas)

    ref = direct_cocoeval(ref_gt, res, Ref)
    assert [m[k] for k in ("AP", "AP50", "AP75", "AR", "AR50", "AR75")] == \
        [float(ref.stats[i]) for i in (0, 1, 2, 5, 6, 7)]


# The official CrowdPose tool (crowdposetools, github.com/Jeff-sjtu/CrowdPose,
# crowdpose-api/PythonAPI; not on PyPI, not vendored) run once on the inputs below: its
# COCO / COCOeval("keypoints"), evaluate/accumulate/summarize, stats[0, 1, 2, 5, 6, 7, 8, 9,
# 10]. Run 2026-12-03 outside the repo with Python 3.11 / NumPy 2 shims (unicode = str,
# np.float = float, pycocotools.mask for its uncompiled mask module, which keypoint
# evaluation does not call). It prints the crowd buckets rounded to 4 decimals.
OFFICIAL_CROWDPOSE = {"AP": 0.37569998411061467, "AP50": 0.7815296914306816,
                      "AP75": 0.28192434628078195, "AR": 0.5333333333333333,
                      "AR50": 0.8333333333333334, "AR75": 0.5, "AP_easy": 0.4774,
                      "AP_medium": 0.3955, "AP_hard": 0.3281}


def test_crowdpose_matches_the_official_tools_numbers():
    gt = make_gt(k=14, n_images=6, per_image=4, crowdpose=True, seed=16)
    res = perturbed_results(gt, seed=17, info=CROWDPOSE)
    m = M.evaluate_coco(gt, res, dataset="crowdpose")
    assert list(m) == list(OFFICIAL_CROWDPOSE)
    for k, want in OFFICIAL_CROWDPOSE.items():
        # the same float maths for AP / AR (measured: identical); buckets to its rounding
        tol = 5e-5 if k.startswith("AP_") else 1e-12
        assert m[k] == pytest.approx(want, abs=tol), k


@needs_crowd
def test_crowdpose_real_sample():
    ann = DATA / "crowdpose-sample" / "test_crowdpose.json"
    gt = json.loads(ann.read_text())
    m = M.evaluate_coco(str(ann), gt_as_results(gt), dataset="crowdpose")
    assert m["AP"] == pytest.approx(1.0) and m["AR"] == pytest.approx(1.0)
    assert m["AP_medium"] == pytest.approx(1.0)  # both images have crowdIndex 0.33/0.39
    assert m["AP_easy"] == -1.0 and m["AP_hard"] == -1.0


# --------------------------------------------------------------------------- MPII


def official_pckh(preds0, mat_path, thr):
    """The official MPII PCKh formula, written out with its own array layout (16, 2, N)."""
    import scipy.io

    mat = scipy.io.loadmat(mat_path)
    pos_pred = np.transpose(preds0, (1, 2, 0)) + 1.0  # 1-based, (16, 2, N)
    jnt_visible = 1 - mat["jnt_missing"]
    uv_err = np.linalg.norm(pos_pred - mat["pos_gt_src"], axis=1)
    hb = mat["headboxes_src"]
    headsizes = np.linalg.norm(hb[1, :, :] - hb[0, :, :], axis=0) * 0.6
    scaled = uv_err / (headsizes * np.ones((16, 1)))
    less = (scaled <= thr) * jnt_visible
    jnt_count = np.sum(jnt_visible, axis=1)
    pckh = 100.0 * np.sum(less, axis=1) / jnt_count
    pm = np.ma.array(pckh, mask=False)
    pm.mask[6:8] = True
    cnt = np.ma.array(jnt_count, mask=False)
    cnt.mask[6:8] = True
    ratio = cnt / np.sum(cnt).astype(np.float64)
    return {"Head": pckh[9], "Shoulder": 0.5 * (pckh[13] + pckh[12]),
            "Elbow": 0.5 * (pckh[14] + pckh[11]), "Wrist": 0.5 * (pckh[15] + pckh[10]),
            "Hip": 0.5 * (pckh[3] + pckh[2]), "Knee": 0.5 * (pckh[4] + pckh[1]),
            "Ankle": 0.5 * (pckh[5] + pckh[0]), "Mean": float(np.sum(pm * ratio))}


@needs_mpii
@pytest.mark.parametrize("model", ["hourglass_s8", "newell"])
def test_mpii_reproduces_official_evaluation(model):
    mat = MPII_DIR / "annot" / "gt_valid.mat"
    preds = np.load(MPII_DIR / "predictions" / f"{model}.npy")
    m = M.evaluate_mpii(preds, str(mat))
    for thr in (0.5, 0.1):
        want = official_pckh(preds, str(mat), thr)
        for g, v in want.items():
            # measured identical (0.0 over the 16 values of each model); 1e-9 (percent)
            # only leaves float64 summation order free
            assert m[f"PCKh@{thr:g}/{g}"] == pytest.approx(v, abs=1e-9), (thr, g)
    print(f"{model}: PCKh@0.5 Mean {m['PCKh@0.5/Mean']:.2f}, "
          f"PCKh@0.1 Mean {m['PCKh@0.1/Mean']:.2f}")
    assert 80 < m["PCKh@0.5/Mean"] < 95


@needs_mpii
def test_mpii_ground_truth_and_visibility_breakdown():
    mat = str(MPII_DIR / "annot" / "gt_valid.mat")
    gt = M.load_mpii_gt(mat)
    vis = np.load(MPII_DIR / "annot" / "visible_valid.npy")
    m = M.evaluate_mpii(gt.joints0, mat, visible=vis)
    for g in M.iter_groups():
        assert m[f"PCKh@0.5/{g}"] == 100.0 and m[f"PCKh@0.1_vis/{g}"] == 100.0
        assert m[f"count_vis/{g}"] + m[f"count_occ/{g}"] == m[f"count/{g}"]
    assert np.isnan(m["PCKh@0.5_occ/Head"])  # MPII never marks head_top occluded
    # right on visible joints, far off on occluded ones
    p = gt.joints0.copy()
    p[~vis.astype(bool)] += 500.0
    m = M.evaluate_mpii(p, gt, visible=str(MPII_DIR / "annot" / "visible_valid.npy"))
    assert m["PCKh@0.5_vis/Mean"] == 100.0 and m["PCKh@0.5_occ/Mean"] == 0.0
    occ_share = m["count_occ/Mean"] / m["count/Mean"]
    assert m["PCKh@0.5/Mean"] == pytest.approx(100 * (1 - occ_share))
    # on a real model the two subsets pool to the overall per joint
    preds = np.load(MPII_DIR / "predictions" / "hourglass_s8.npy")
    m = M.evaluate_mpii(preds, gt, visible=vis)
    for g in ("Wrist", "Mean"):
        pooled = (m[f"PCKh@0.5_vis/{g}"] * m[f"count_vis/{g}"]
                  + m[f"PCKh@0.5_occ/{g}"] * m[f"count_occ/{g}"]) / m[f"count/{g}"]
        if g == "Mean":
            assert pooled == pytest.approx(m[f"PCKh@0.5/{g}"], abs=1e-9)
        assert m[f"PCKh@0.5_occ/{g}"] < m[f"PCKh@0.5_vis/{g}"]


def fake_mpii_mat(tmp_path, n=4, names=M.MPII_MAT_JOINTS):
    import scipy.io

    rng = np.random.default_rng(0)
    pos = rng.uniform(50, 400, (16, 2, n))
    hb = np.zeros((2, 2, n))
    hb[0] = pos[9] - 20
    hb[1] = pos[9] + 20
    miss = np.zeros((16, n), np.uint8)
    miss[0, 0] = 1
    dj = np.empty((1, 16), dtype=object)
    for i, s in enumerate(names):
        dj[0, i] = np.array([s])
    path = tmp_path / "gt.mat"
    scipy.io.savemat(path, {"pos_gt_src": pos, "headboxes_src": hb, "jnt_missing": miss,
                            "dataset_joints": dj})
    return path, pos


def test_mpii_synthetic(tmp_path):
    path, pos = fake_mpii_mat(tmp_path)
    preds = np.transpose(pos, (2, 0, 1)) - 1.0
    m = M.evaluate_mpii(preds, path)
    assert m["PCKh@0.5/Mean"] == 100.0 and m["count/Ankle"] == 7
    head = 0.6 * np.sqrt(2 * 40 ** 2)
    preds[:, 15, 0] += 0.5 * head * 1.001  # left wrist just outside the 0.5 radius
    m = M.evaluate_mpii(preds, path)
    assert m["PCKh@0.5/Wrist"] == 50.0
    preds[:, 15, 0] -= 0.002 * head  # just inside
    assert M.evaluate_mpii(preds, path)["PCKh@0.5/Wrist"] == 100.0


# --------------------------------------------------------------------------- bad input


def test_bad_coco_inputs(tmp_path):
    gt = make_gt(seed=20)
    res = gt_as_results(gt)
    with pytest.raises(M.EvaluationError, match=r"result 2 has image_id 999.*not in"):
        M.evaluate_coco(gt, res[:2] + [dict(res[2], image_id=999)])
    with pytest.raises(M.EvaluationError, match=r"result 0 has 42 keypoint values.*crowdpose"):
        M.evaluate_coco(gt, [dict(res[0], keypoints=[1.0] * 42)])
    bad = copy.deepcopy(res)
    bad[1]["keypoints"][4] = float("nan")
    with pytest.raises(M.EvaluationError, match=r"result 1 .*NaN"):
        M.evaluate_coco(gt, bad)
    with pytest.raises(M.EvaluationError, match=r"result 0 .*NaN or infinite score"):
        M.evaluate_coco(gt, [dict(res[0], score=float("nan"))])
    with pytest.raises(M.EvaluationError, match="no predictions"):
        M.evaluate_coco(gt, [])
    with pytest.raises(M.EvaluationError, match="category_id 2"):
        M.evaluate_coco(gt, [dict(res[0], category_id=2)])
    # ground truth of the wrong dataset, both ways, from files
    cp = tmp_path / "crowd.json"
    cp.write_text(json.dumps(make_gt(k=14, crowdpose=True)))
    with pytest.raises(M.EvaluationError, match=r"crowd.json: category 'person' has 14 joints"):
        M.evaluate_coco(str(cp), res, dataset="coco")
    co = tmp_path / "coco.json"
    co.write_text(json.dumps(gt))
    with pytest.raises(M.EvaluationError, match=r"coco.json: .*17 joints.*'crowdpose' has 14"):
        M.evaluate_coco(str(co), res, dataset="crowdpose")
    no_cat = dict(gt, categories=[{"id": 1, "name": "person"}])
    with pytest.raises(M.EvaluationError, match=r"annotation 1 has 51 keypoint values"):
        M.evaluate_coco(no_cat, res, dataset="crowdpose")
    no_ci = make_gt(k=14, crowdpose=True)
    del no_ci["images"][1]["crowdIndex"]
    with pytest.raises(M.EvaluationError, match=r"image 101 has no valid 'crowdIndex'"):
        M.evaluate_coco(no_ci, gt_as_results(no_ci), dataset="crowdpose")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(M.EvaluationError, match="broken.json is not valid JSON"):
        M.evaluate_coco(str(tmp_path / "broken.json"), res)
    with pytest.raises(M.EvaluationError, match="missing.json"):
        M.evaluate_coco(gt, str(tmp_path / "missing.json"))


def test_bad_mpii_inputs(tmp_path):
    path, pos = fake_mpii_mat(tmp_path)
    good = np.transpose(pos, (2, 0, 1)) - 1.0
    with pytest.raises(M.EvaluationError, match=r"shape \(4, 14, 2\), expected \(4, 16, 2\)"):
        M.evaluate_mpii(good[:, :14], path)
    with pytest.raises(M.EvaluationError, match=r"shape \(3, 16, 2\), expected \(4, 16, 2\)"):
        M.evaluate_mpii(good[:3], path)
    nan = good.copy()
    nan[2, 3, 1] = np.nan
    with pytest.raises(M.EvaluationError, match=r"1 people have NaN.*person 2"):
        M.evaluate_mpii(nan, path)
    with pytest.raises(M.EvaluationError, match=r"visibility flags have shape \(4, 14\)"):
        M.evaluate_mpii(good, path, visible=np.ones((4, 14)))
    with pytest.raises(M.EvaluationError, match="must be 0 or 1"):
        M.evaluate_mpii(good, path, visible=np.full((4, 16), 2))
    other, _ = fake_mpii_mat(tmp_path, names=tuple(reversed(M.MPII_MAT_JOINTS)))
    with pytest.raises(M.EvaluationError, match="dataset_joints"):
        M.evaluate_mpii(good, other)
    import scipy.io

    scipy.io.savemat(tmp_path / "x.mat", {"a": np.ones(3)})
    with pytest.raises(M.EvaluationError, match=r"x.mat: no 'jnt_missing'"):
        M.evaluate_mpii(good, tmp_path / "x.mat")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(M.EvaluationError, match="t.json as a .mat"):
        M.evaluate_mpii(good, tmp_path / "t.json")


# --------------------------------------------------------------------------- table


def test_format_table_and_json(tmp_path):
    t = M.format_table({"AP": 0.71234, "AP50": 0.9, "APM": -1.0})
    lines = t.splitlines()
    assert lines[0].split("|")[0].strip() == "AP" and "0.7123" in lines[2]
    g = M.format_table({"PCKh@0.5/Head": 96.5, "PCKh@0.5/Mean": float("nan"),
                        "count/Head": 10, "count/Mean": 20}, title="mpii")
    rows = g.splitlines()
    assert rows[0] == "mpii" and "PCKh@0.5" in rows[1] and "count" in rows[1]
    assert rows[3].startswith("Head") and "96.50" in rows[3] and "10" in rows[3]
    assert rows[4].startswith("Mean") and " - " in rows[4] + " "
    M.write_metrics({"PCKh@0.5/Mean": float("nan"), "AP": np.float64(0.5), "n": np.int64(3)},
                    tmp_path / "a" / "m.json")
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == \
        {"PCKh@0.5/Mean": None, "AP": 0.5, "n": 3}


# --------------------------------------------------------------------------- postprocess


def test_rescore():
    box = np.array([0.9, 0.5, 1.0])
    joints = np.array([[0.1, 0.3, 0.5], [0.1, 0.2, 0.15], [0.21, 0.9, 0.0]])
    np.testing.assert_allclose(rescore(box, joints), [0.9 * 0.4, 0.0, 1.0 * (0.21 + 0.9) / 2])


def _loop_oks_nms(kpts, scores, areas, sigmas, thr):
    """Reference greedy OKS-NMS, one pose against the rest at a time."""
    var = (2 * np.asarray(sigmas)) ** 2
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i, rest = order[0], order[1:]
        keep.append(i)
        nxt = []
        for j in rest:
            d2 = ((kpts[i, :, :2] - kpts[j, :, :2]) ** 2).sum(1)
            e = d2 / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if np.mean(np.exp(-e)) <= thr:
                nxt.append(j)
        order = nxt
    return keep


def test_oks_nms_matches_loop():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 30
        base = rng.uniform(0, 300, (6, 17, 2))
        kpts = base[rng.integers(0, 6, n)] + rng.normal(0, rng.uniform(0.5, 8), (n, 17, 2))
        kpts = np.concatenate([kpts, rng.uniform(0, 1, (n, 17, 1))], axis=2)
        scores = rng.uniform(0, 1, n)
        areas = rng.uniform(2000, 20000, n)
        for thr in (0.5, 0.9):
            got = oks_nms(kpts, scores, areas, COCO.sigmas, thr)
            assert got.tolist() == _loop_oks_nms(kpts, scores, areas, COCO.sigmas, thr)
    m = oks_matrix(kpts, areas, COCO.sigmas)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0), COCO.sigmas).size == 0


def test_to_coco_results_rescoring_nms_and_scoring():
    gt = make_gt(n_images=3, per_image=3, seed=30)
    res = gt_as_results(gt)
    ids = np.array([r["image_id"] for r in res] * 2)
    kp = np.array([np.asarray(r["keypoints"]).reshape(-1, 3) for r in res] * 2)
    kp[:, :, 2] = 0.8
    kp[len(res):, :, :2] += 0.5  # near-duplicates, to be suppressed
    box = np.r_[np.full(len(res), 0.9), np.full(len(res), 0.6)]
    areas = np.full(len(ids), 1e4)
    out = to_coco_results(ids, kp, box, areas, COCO)
    assert len(out) == len(res)
    assert all(r["score"] == pytest.approx(0.72) for r in out)
    assert M.evaluate_coco(gt, out)["AP"] == pytest.approx(1.0)
    assert len(to_coco_results(ids, kp, box, areas, COCO, nms_threshold=None)) == 2 * len(res)
    with pytest.raises(ValueError, match=r"\(N, 17, 3\)"):
        to_coco_results(ids, kp[:, :14], box, areas, COCO)
    assert MPII.num_joints == 16


def test_index_to_results(tmp_path):
    from dali_pose.datasets import load_coco_style

    gt = make_gt(n_images=2, per_image=3, seed=31)
    for img in gt["images"]:
        (tmp_path / img["file_name"]).write_bytes(b"")
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    lines = []  # the crowd and empty annotations are skipped, and said so
    index = load_coco_style(str(ann), str(tmp_path), COCO, 0.75, log=lines.append)
    assert len(lines) == 1 and "skipped" not in lines[0] and "annotation" in lines[0]
    kp = index.keypoints.astype(np.float64).copy()
    labelled = kp[:, :, 2] > 0
    kp[:, :, 2] = 0.9
    for i, a in enumerate(people(gt)):  # unlabelled joints at the box centre
        x, y, w, h = a["bbox"]
        kp[i, ~labelled[i], :2] = (x + w / 2, y + h / 2)
    res = index_to_results(index, kp)
    assert len(res) == len(index) and all(r["score"] == pytest.approx(0.9) for r in res)
    assert M.evaluate_coco(str(ann), res)["AP"] == pytest.approx(1.0)


def test_oks_nms_default_threshold_is_hrnets_0_9():
    """Two poses whose OKS lies between 0.5 and 0.9 (computed here from the OKS rule) are
    both kept by the default NMS (HRNet's 0.9) and merged by a 0.5 one."""
    from dali_pose.evaluation.postprocess import OKS_NMS_THRESHOLD

    assert OKS_NMS_THRESHOLD == 0.9
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.uniform(100, 200, (17, 2)), np.full((17, 1), 0.9)], axis=1)
    b = a.copy()
    b[:, 0] += 6.0  # every joint 6 px to the right
    area = 1e4
    sig = np.asarray(COCO.sigmas)
    oks = np.mean(np.exp(-36.0 / (2 * area * (2 * sig) ** 2)))  # d^2 / (2 s^2 k^2), s^2 = area
    assert 0.6 < oks < 0.85  # measured 0.826
    kp, scores, areas = np.stack([a, b]), np.array([0.9, 0.8]), np.full(2, area)
    assert oks_nms(kp, scores, areas, COCO.sigmas).tolist() == [0, 1]
    assert oks_nms(kp, scores, areas, COCO.sigmas, 0.5).tolist() == [0]
    assert len(to_coco_results(np.array([1, 1]), kp, scores, areas, COCO)) == 2
    assert len(to_coco_results(np.array([1, 1]), kp, scores, areas, COCO,
                               nms_threshold=0.5)) == 1
