"""Tests for the synthetic COCO-format keypoint dataset (dali_pose.tools.synthetic)."""
import json
import os

import cv2
import numpy as np
import pytest

from dali_pose import datasets
from dali_pose.tools.synthetic import generate, main, render_scene

K = datasets.COCO.num_joints


def _files(paths):
    out = {}
    for key in ("train_ann", "val_ann"):
        with open(paths[key], "rb") as f:
            out[key] = f.read()
    for key in ("train_images", "val_images"):
        for name in sorted(os.listdir(paths[key])):
            with open(os.path.join(paths[key], name), "rb") as f:
                out[f"{key}/{name}"] = f.read()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    return generate(root, seed=0, num_train=6, num_val=3)


@pytest.fixture(scope="module")
def many_people():
    """Annotations of 40 rendered scenes (enough for occlusions and truncations)."""
    rng = np.random.default_rng(123)
    return [p for _ in range(40) for p in render_scene(rng, 640, 480)["people"]]


def test_layout_and_pycocotools(small):
    from pycocotools.coco import COCO

    root = small["out_dir"]
    assert small["train_ann"] == os.path.join(root, "annotations",
                                              "person_keypoints_train.json")
    assert small["val_ann"] == os.path.join(root, "annotations", "person_keypoints_val.json")
    assert small["train_images"] == os.path.join(root, "images", "train")
    assert small["val_images"] == os.path.join(root, "images", "val")
    for split, n in (("train", 6), ("val", 3)):
        coco = COCO(small[f"{split}_ann"])
        assert len(coco.getImgIds()) == n
        assert coco.getCatIds() == [1]
        cat = coco.loadCats(1)[0]
        assert cat["keypoints"] == list(datasets.COCO.joints)
        assert len(cat["skeleton"]) == len(datasets.COCO.skeleton)
        assert min(min(e) for e in cat["skeleton"]) == 1  # COCO skeleton is 1-based
        assert len(coco.getAnnIds()) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(small[f"{split}_images"], img["file_name"])
            decoded = cv2.imread(path)
            assert decoded.shape == (img["height"], img["width"], 3) == (480, 640, 3)


def test_annotation_fields(small):
    ids, image_ids = set(), set()
    for key in ("train_ann", "val_ann"):
        with open(small[key]) as f:
            data = json.load(f)
        images = {im["id"]: im for im in data["images"]}
        for a in data["annotations"]:
            assert a["id"] not in ids
            ids.add(a["id"])
            assert a["image_id"] in images
            assert a["category_id"] == 1 and a["iscrowd"] == 0
            assert len(a["keypoints"]) == K * 3
            kp = np.array(a["keypoints"], dtype=float).reshape(K, 3)
            assert set(kp[:, 2]) <= {0.0, 1.0, 2.0}
            assert a["num_keypoints"] == int((kp[:, 2] > 0).sum()) >= 3
            assert a["area"] > 0
        assert not set(images) & image_ids  # train and val ids are disjoint
        image_ids |= set(images)


def test_deterministic(tmp_path):
    a = _files(generate(str(tmp_path / "a"), seed=7, num_train=4, num_val=2))
    b = _files(generate(str(tmp_path / "b"), seed=7, num_train=4, num_val=2))
    c = _files(generate(str(tmp_path / "c"), seed=8, num_train=4, num_val=2))
    assert a.keys() == b.keys() == c.keys()
    assert all(a[k] == b[k] for k in a)
    assert a["train_ann"] != c["train_ann"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_val_split_independent_of_num_train(tmp_path):
    a = _files(generate(str(tmp_path / "a"), seed=3, num_train=2, num_val=2))
    b = _files(generate(str(tmp_path / "b"), seed=3, num_train=5, num_val=2))
    assert a["val_ann"] == b["val_ann"]


def test_visibility_conventions(many_people):
    kp = np.stack([p["keypoints"] for p in many_people])  # (N, 17, 3)
    v = kp[..., 2]
    assert (v == 1).sum() > 0, "no occluded (v=1) joints in 40 scenes"
    assert (v == 0).sum() > 0, "no out-of-image (v=0) joints in 40 scenes"
    assert (v == 2).mean() > 0.6
    assert np.all(kp[v == 0][:, :2] == 0)
    lab = kp[v > 0]
    assert np.all(lab[:, 0] >= -0.5) and np.all(lab[:, 0] < 639.5)
    assert np.all(lab[:, 1] >= -0.5) and np.all(lab[:, 1] < 479.5)
    assert all(p["num_keypoints"] >= 3 for p in many_people)


def test_bbox_inside_image_and_holds_keypoints(small, many_people):
    boxes = [p["bbox"] for p in many_people]
    with open(small["train_ann"]) as f:
        data = json.load(f)
    boxes += [a["bbox"] for a in data["annotations"]]
    for x, y, w, h in boxes:
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= 640 and y + h <= 480
    for p in many_people:
        x, y, w, h = p["bbox"]
        kp = p["keypoints"][p["keypoints"][:, 2] > 0]
        assert np.all(kp[:, 0] >= x - 0.5) and np.all(kp[:, 0] <= x + w - 0.5)
        assert np.all(kp[:, 1] >= y - 0.5) and np.all(kp[:, 1] <= y + h - 0.5)


def test_joints_are_drawn_where_the_keypoints_say():
    rng = np.random.default_rng(5)
    diffs, offsets = [], []
    for _ in range(10):
        scene = render_scene(rng, 640, 480)
        img = scene["image"].astype(int)
        bg = scene["background"].astype(int)
        idmap = scene["idmap"]
        for p in scene["people"]:
            i = p["index"]
            for j in np.flatnonzero(p["keypoints"][:, 2] == 2):
                x, y = p["keypoints"][j, :2]
                c, r = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                # the figure was drawn at the keypoint (background changed there) ...
                diffs.append(np.abs(img[r, c] - bg[r, c]).max())
                # ... and the joint's own marker (eye, ear, nose or joint disc) is centred
                # on it: the centroid of the marker's pixels is the keypoint.
                code = 20 * i + j + 1
                assert idmap[r, c] == code
                r0, c0 = max(r - 20, 0), max(c - 20, 0)
                ys, xs = np.nonzero(idmap[r0:r + 21, c0:c + 21] == code)
                w, h = np.ptp(xs) + 1, np.ptp(ys) + 1
                # a whole (unoccluded) round marker of radius >= 3 px
                if len(xs) >= 25 and abs(w - h) <= 1 and len(xs) > 0.7 * w * h:
                    offsets.append((xs.mean() + c0 - x, ys.mean() + r0 - y))
    diffs = np.array(diffs)
    assert len(diffs) > 200
    assert np.median(diffs) > 40 and (diffs > 10).mean() > 0.95
    offsets = np.array(offsets)
    assert len(offsets) > 50
    assert np.abs(offsets).max() < 0.5 and np.abs(offsets.mean(0)).max() < 0.1


def test_jpeg_shows_the_figures(small):
    """In the written JPEG, the neighbourhood of a visible joint is not flat background:
    joint markers contrast with the limb they sit on."""
    with open(small["train_ann"]) as f:
        data = json.load(f)
    names = {im["id"]: im["file_name"] for im in data["images"]}
    contrasts = []
    for a in data["annotations"]:
        img = cv2.imread(os.path.join(small["train_images"], names[a["image_id"]]))
        kp = np.array(a["keypoints"], dtype=float).reshape(K, 3)
        for j in range(5, K):  # body joints: light (left) or dark (right) markers
            if kp[j, 2] == 2:
                c, r = int(np.floor(kp[j, 0] + 0.5)), int(np.floor(kp[j, 1] + 0.5))
                px = img[r, c].astype(float).mean()
                contrasts.append(px > 150 if j % 2 == 1 else px < 100)
    assert len(contrasts) > 50
    assert np.mean(contrasts) > 0.9


def test_load_coco_style(small):
    for split in ("train", "val"):
        lines = []
        index = datasets.load_coco_style(small[f"{split}_ann"], small[f"{split}_images"],
                                         datasets.COCO, 0.75, log=lines.append)
        assert lines == []  # nothing skipped or changed
        with open(small[f"{split}_ann"]) as f:
            assert len(index) == len(json.load(f)["annotations"])
        assert index.keypoints.shape[1:] == (K, 3)


def test_other_size_and_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--seed", "1", "--num-train", "2", "--num-val", "1",
                 "--width", "320", "--height", "256"]) == 0
    assert "train: 2 images" in capsys.readouterr().out
    with open(tmp_path / "annotations" / "person_keypoints_train.json") as f:
        data = json.load(f)
    assert {(im["width"], im["height"]) for im in data["images"]} == {(320, 256)}
    img = cv2.imread(str(tmp_path / "images" / "train" / data["images"][0]["file_name"]))
    assert img.shape == (256, 320, 3)
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert x + w <= 320 and y + h <= 256


def test_cli_help_and_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--num-train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--out", "/nonexistent-not-written", "--num-train", "-1"])
    assert e.value.code == 2
