import json

import cv2
import numpy as np
import pytest

from dali_pose.datasets import (COCO, CROWDPOSE, MPII, DatasetError, box_to_center_scale,
                                load_coco_style, load_mpii)

from conftest import shared


def _write_coco(tmp_path, anns, images=None, k=17):
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    cv2.imwrite(str(img_dir / "a.jpg"), np.zeros((100, 120, 3), np.uint8))
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 100}]
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": [f"j{i}" for i in range(k)]}]}
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return str(p), str(img_dir)


def _ann(aid=7, bbox=(10, 10, 40, 60), kps=None, **kw):
    kps = kps if kps is not None else [20, 30, 2] + [0, 0, 0] * 16
    return {"id": aid, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
            "keypoints": kps, "area": 100.0, **kw}


def test_center_scale_closed_form():
    c, s = box_to_center_scale(10, 20, 30, 80, 192 / 256, 1.25)
    assert c == (25.0, 60.0)
    assert s == pytest.approx((80 * 0.75 * 1.25, 80 * 1.25))
    c, s = box_to_center_scale(0, 0, 100, 10, 0.75, 1.0)
    assert s == pytest.approx((100, 100 / 0.75))


def test_good_file(tmp_path):
    ann, img = _write_coco(tmp_path, [_ann(), _ann(8, iscrowd=1), _ann(9, kps=[0] * 51)])
    lines = []
    idx = load_coco_style(ann, img, COCO, 0.75, log=lines.append)
    # printed (not a Python warning a filter can hide), with the annotations named
    assert lines == [f"{ann}: kept 1 people; 1 crowd annotations (annotation 8); 1 people "
                     f"with no labelled keypoints (annotation 9)"]
    assert len(idx) == 1 and idx.instance_id[0] == 7
    assert idx.keypoints.shape == (1, 17, 3)
    # HRNet sanitising: w - 1, h - 1 after clipping, then centre and aspect fix.
    np.testing.assert_allclose(idx.center[0], [10 + 39 / 2, 10 + 59 / 2])
    np.testing.assert_allclose(idx.scale[0], [59 * 0.75 * 1.25, 59 * 1.25])


@pytest.mark.parametrize("ann,needle", [
    (_ann(kps=[1, 2, 2] * 16), "annotation 7 has 48 keypoint values, expected 51"),
    (_ann(bbox=(1, 2, float("nan"), 4)), "annotation 7 has a NaN"),
    (_ann(bbox=(1, 2, -3, 4)), "annotation 7 has a non-positive bbox"),
    (_ann(bbox=(1, 2, 3)), "annotation 7 has a malformed bbox"),
    (_ann(kps=[float("nan"), 2, 2] + [0] * 48), "annotation 7 has NaN"),
    ({"id": 5, "image_id": 1, "category_id": 1, "keypoints": [0] * 51}, "annotation 5 has no 'bbox'"),
    ({**_ann(), "image_id": 99}, "annotation 7 refers to unknown image_id 99"),
])
def test_bad_annotations_name_file_and_id(tmp_path, ann, needle):
    p, img = _write_coco(tmp_path, [ann])
    with pytest.raises(DatasetError) as e:
        load_coco_style(p, img, COCO, 0.75)
    assert needle in str(e.value) and "ann.json" in str(e.value)


def test_missing_image(tmp_path):
    p, img = _write_coco(tmp_path, [_ann()], images=[{"id": 1, "file_name": "nope.jpg",
                                                       "width": 120, "height": 100}])
    with pytest.raises(DatasetError, match="nope.jpg of annotation 7 does not exist"):
        load_coco_style(p, img, COCO, 0.75)


def test_malformed_json_and_wrong_dataset(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json is not valid JSON"):
        load_coco_style(str(p), str(tmp_path), COCO, 0.75)
    p2, img = _write_coco(tmp_path, [_ann(kps=[20, 30, 2] + [0] * 39)], k=14)
    with pytest.raises(DatasetError, match="14 joints, but format 'coco' has 17"):
        load_coco_style(p2, img, COCO, 0.75)


# boxes of a 120 x 100 image: inside, over the left, over the right and bottom, the image
BOXES = [(10, 10, 40, 60), (-5, 20, 30, 40), (100, 70, 40, 50), (0, 0, 120, 100)]


def clipped_reference(rule, x, y, w, h, width=120, height=100):
    """The recipes' ground-truth box clipping, written here from the reference loaders:
    (x1, y1, x2, y2)."""
    if rule == "hrnet":  # HRNet / UDP-Pose: from the clipped corner, w - 1 px wide
        x1, y1 = max(0, x), max(0, y)
        return (x1, y1, min(width - 1, x1 + max(0, w - 1)),
                min(height - 1, y1 + max(0, h - 1)))
    # mmpose 1.x: both corners clipped to the image on their own
    return (np.clip(x, 0, width - 1), np.clip(y, 0, height - 1),
            np.clip(x + w, 0, width - 1), np.clip(y + h, 0, height - 1))


@pytest.mark.parametrize("rule", ["hrnet", "mmpose"])
def test_box_rules(tmp_path, rule):
    """Each recipe's clipping, then centre, the box before the aspect fix (box_size) and
    after it (scale); detection boxes are used as given by both."""
    ann, img = _write_coco(tmp_path, [_ann(i + 1, bbox=b) for i, b in enumerate(BOXES)])
    idx = load_coco_style(ann, img, COCO, 0.75, box_rule=rule)
    assert len(idx) == len(BOXES)
    for i, box in enumerate(BOXES):
        x1, y1, x2, y2 = clipped_reference(rule, *box)
        pre = np.array([x2 - x1, y2 - y1]) * 1.25
        np.testing.assert_allclose(idx.center[i], [(x1 + x2) / 2, (y1 + y2) / 2], atol=1e-9)
        np.testing.assert_allclose(idx.box_size[i], pre, atol=1e-9)
        fixed = [pre[0], pre[0] / 0.75] if pre[0] > 0.75 * pre[1] else [pre[1] * 0.75, pre[1]]
        np.testing.assert_allclose(idx.scale[i], fixed, atol=1e-9)
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": list(b),
                                "score": 0.9} for b in BOXES]))
    dets = load_coco_style(ann, img, COCO, 0.75, det_file=str(det), box_rule=rule)
    np.testing.assert_allclose(dets.box_size, np.array(BOXES)[:, 2:] * 1.25)
    np.testing.assert_allclose(dets.center, np.array(BOXES)[:, :2] + np.array(BOXES)[:, 2:] / 2)


def test_box_rule_follows_the_recipe(tmp_path):
    """load_index clips by aug.recipe's rule: the boxes over the image's edges differ."""
    from dali_pose.config import load_config
    from dali_pose.datasets import load_index

    ann, img = _write_coco(tmp_path, [_ann(i + 1, bbox=b) for i, b in enumerate(BOXES)])
    over = [f"data.train_ann={ann}", f"data.train_images={img}"]
    h = load_index(load_config(None, over), "train", log=None)
    m = load_index(load_config(None, over + ["aug.recipe=mmpose"]), "train", log=None)
    x1, _, x2, _ = clipped_reference("mmpose", *BOXES[1])
    np.testing.assert_allclose(m.box_size[1, 0], (x2 - x1) * 1.25)
    x1, _, x2, _ = clipped_reference("hrnet", *BOXES[1])
    np.testing.assert_allclose(h.box_size[1, 0], (x2 - x1) * 1.25)
    assert not np.allclose(h.center, m.center) and not np.allclose(h.box_size, m.box_size)


def test_degenerate_box_skipped_with_count(tmp_path):
    p, img = _write_coco(tmp_path, [_ann(), _ann(8, bbox=(500, 500, 10, 10))])
    lines = []
    idx = load_coco_style(p, img, COCO, 0.75, log=lines.append)
    assert "1 boxes empty after clipping to the image (annotation 8)" in lines[0]
    assert len(idx) == 1 and idx.skipped == {"boxes empty after clipping to the image": 1}


def test_real_coco_gt_and_detections():
    d = shared("coco-sample")
    lines = []
    gt = load_coco_style(str(d / "test_coco.json"), str(d), COCO, 0.75, log=lines.append)
    assert "2 people with no labelled keypoints" in lines[0]
    assert len(gt) == 12 and gt.skipped == {"people with no labelled keypoints": 2}
    det = load_coco_style(str(d / "test_coco.json"), str(d), COCO, 0.75,
                          det_file=str(d / "test_coco_det_AP_H_56.json"))
    assert len(det) == 118 and (det.keypoints == 0).all()
    assert det.score.min() < det.score.max() <= 1.0


def test_real_crowdpose_and_mpii():
    d = shared("crowdpose-sample")
    lines = []
    cp = load_coco_style(str(d / "test_crowdpose.json"), str(d), CROWDPOSE, 0.75,
                         log=lines.append)
    assert len(lines) == 1 and "kept" in lines[0]
    assert cp.keypoints.shape[1:] == (14, 3)
    # No 'area' in CrowdPose json: the official convention, box w*h*0.53 (checked on
    # synthetic files in test_area_without_an_area_field).
    m = shared("mpii-sample")
    mp = load_mpii(str(m / "test_mpii.json"), str(m / "images"), 1.0)
    raw = json.loads((m / "test_mpii.json").read_text())
    assert len(mp) == len(raw) == 5
    np.testing.assert_allclose(mp.keypoints[0, :, :2], np.array(raw[0]["joints"]) - 1.0)
    s = raw[0]["scale"]
    np.testing.assert_allclose(mp.center[0], [raw[0]["center"][0] - 1,
                                              raw[0]["center"][1] + 15 * s - 1])
    np.testing.assert_allclose(mp.scale[0], [s * 200 * 1.25] * 2)
    assert mp.info is MPII


# The joints of each dataset as its annotation format numbers them, written out here (not
# read from dali_pose) so that a renamed, reordered or mis-paired joint fails.
JOINT_NAMES = {
    "coco": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
             "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
    "crowdpose": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                  "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle", "head", "neck"],
    "mpii": ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
             "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
             "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"],
}


@pytest.mark.parametrize("info", [COCO, CROWDPOSE, MPII], ids=lambda i: i.name)
def test_flip_swaps_left_and_right_by_name(info):
    """A horizontal flip turns left_X into right_X and back; a joint without a side stays."""
    names = JOINT_NAMES[info.name]
    assert list(info.joints) == names

    def mirror(n):
        if n.startswith("left_"):
            return "right_" + n[len("left_"):]
        if n.startswith("right_"):
            return "left_" + n[len("right_"):]
        return n

    expected = [names.index(mirror(n)) for n in names]
    np.testing.assert_array_equal(info.flip_index, expected)
    assert len(info.flip_pairs) == sum(n.startswith("left_") for n in names)


@pytest.mark.parametrize("info,factor", [(CROWDPOSE, 0.53), (COCO, 1.0)],
                         ids=["crowdpose", "coco"])
def test_area_without_an_area_field(tmp_path, info, factor):
    """No 'area' in the json (as in CrowdPose's): CrowdPose's official scorer uses the box's
    w * h * 0.53, COCO the box's w * h; a given 'area' is kept."""
    k = info.num_joints
    kps = [20, 30, 2] + [0, 0, 0] * (k - 1)
    bare = {key: v for key, v in _ann(bbox=(10, 10, 40, 60), kps=kps).items() if key != "area"}
    ann, img = _write_coco(tmp_path, [bare, _ann(8, bbox=(5, 5, 30, 50), kps=kps)], k=k)
    idx = load_coco_style(ann, img, info, 0.75, log=lambda line: None)
    np.testing.assert_allclose(idx.area, [40 * 60 * factor, 100.0], rtol=1e-6)
