"""evaluate.py's input checks, second round: results and ground truth that were a
traceback (a string score, a list image id, non-numeric or ragged keypoints, keypoints as
strings in the ground truth) are one line naming the file and the result, exit 1; ground
truth the loader refuses is refused by the scorer (the same check, tests/test_bad_input_data)."""
import copy
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402
from dali_pose.errors import DaliPoseError  # noqa: E402
from dali_pose.evaluation import metrics as M  # noqa: E402
from conftest import png_declaring  # noqa: E402

K = 17


def _gt():
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480}
              for i in (1, 2)]
    anns = []
    for n, iid in enumerate((1, 1, 2)):
        x0 = 50 + 150 * n
        kps = []
        for j in range(K):
            kps += [x0 + 3 * j, 100 + 10 * j, 2]
        anns.append({"id": 10 + n, "image_id": iid, "category_id": 1, "iscrowd": 0,
                     "bbox": [x0, 100, 60, 180], "area": 60 * 180.0, "keypoints": kps,
                     "num_keypoints": K})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person"}]}


def _results(gt):
    return [{"image_id": a["image_id"], "category_id": 1, "score": 0.9,
             "keypoints": [float(v) for v in a["keypoints"]]} for a in gt["annotations"]]


def _run(tmp_path, gt, res, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    rc = evaluate.main(["--dataset", "coco", "--ann", str(tmp_path / "gt.json"), "--preds",
                        str(tmp_path / "res.json"), "--out", str(tmp_path / "m.json")])
    return rc, capsys.readouterr().err.strip()


def test_good_input_scores_one(tmp_path, capsys):
    gt = _gt()
    rc, err = _run(tmp_path, gt, _results(gt), capsys)
    assert rc == 0 and err == ""
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)


def _bad(field, value, index=1):
    def edit(res):
        res[index][field] = value
        return res
    return edit


def _kp(value):
    def edit(res):
        res[0]["keypoints"][4] = value
        return res
    return edit


@pytest.mark.parametrize("edit,needle", [
    (_bad("score", "0.9"), r"result 1 has a non-numeric score '0\.9'"),
    (_bad("score", None), r"result 1 has a non-numeric score None"),
    (_bad("score", [0.9]), r"result 1 has a non-numeric score \[0\.9\]"),
    (_bad("image_id", [1]), r"result 1 has image_id \[1\]: image ids are integers"),
    (_bad("image_id", "1"), r"result 1 has image_id '1'"),
    (_bad("image_id", 1.5), r"result 1 has image_id 1\.5"),
    (_kp("abc"), r"result 0's keypoints must be a list of numbers, has 'abc'"),
    (_kp("5"), r"result 0's keypoints must be a list of numbers, has '5'"),
    (_kp([1, 2]), r"result 0's keypoints must be a list of numbers, has \[1, 2\]"),
    (_bad("keypoints", [[1.0, 2.0, 0.5]] * 16 + [[1.0, 2.0]]), r"result 1's keypoints"),
    (_bad("keypoints", "1 2 3"), r"result 1's keypoints must be a list of numbers"),
    (_bad("bbox", "abc"), r"result 1's bbox must be a list of numbers, has 'abc'"),
    (_bad("bbox", [1, 2, 3]), r"result 1 has bbox \[1, 2, 3\]: 4 finite numbers"),
    (_bad("bbox", [1, 2, 3, 4], index=0), r"result 1 has bbox None: .*every result needs one"),
    (_bad("segmentation", "abc"), r"result 1 has a 'segmentation' field"),
    (_bad("caption", "a person"), r"result 1 has a 'caption' field"),
])
def test_bad_results_are_one_line(tmp_path, capsys, edit, needle):
    gt = _gt()
    rc, err = _run(tmp_path, gt, edit(_results(gt)), capsys)
    assert rc == 1 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "res.json: " in err
    assert re.search(needle, err), err


@pytest.mark.parametrize("edit,needle", [
    (lambda a: a.__setitem__("keypoints", [str(v) for v in a["keypoints"]]),
     r"annotation 11's keypoints must be a list of numbers, has '\d+'"),
    (lambda a: a.__setitem__("area", float("nan")), r"annotation 11 has area nan"),
    (lambda a: a.__setitem__("area", -1.0), r"annotation 11 has area -1\.0"),
    (lambda a: a.__setitem__("id", 10), r"annotation id 10 appears twice"),
    (lambda a: a.__setitem__("id", 10.5), r"position 1 has id 10\.5: annotation ids must"),
    (lambda a: a.pop("id"), r"annotation at position 1 has no 'id' field"),
])
def test_bad_ground_truth_is_one_line(tmp_path, capsys, edit, needle):
    gt = _gt()
    res = _results(gt)
    edit(gt["annotations"][1])
    rc, err = _run(tmp_path, gt, res, capsys)
    assert rc == 1 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "gt.json: " in err
    assert re.search(needle, err), err


def test_numpy_results_from_python_are_still_accepted():
    """In-process callers pass NumPy arrays and scalars (not JSON): still numbers."""
    np = pytest.importorskip("numpy")
    gt = _gt()
    res = [dict(r, keypoints=np.asarray(r["keypoints"], np.float32),
                score=np.float32(r["score"]), image_id=np.int64(r["image_id"]))
           for r in _results(gt)]
    assert M.evaluate_coco(copy.deepcopy(gt), res)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("name,needle", [
    ("../1.png", r"gt\.json: image 1 has file name '\.\./1\.png', which is outside the image "
                 r"folder"),
    ("1.png", r"--vis: image .*1\.png is 30000x30000 pixels, above data\.max_image_pixels"),
])
def test_vis_reads_no_outside_path_and_no_pixel_bomb(tmp_path, capsys, name, needle):
    gt = _gt()
    gt["images"][0]["file_name"] = name
    (tmp_path / "img").mkdir()
    (tmp_path / "1.png").write_bytes(png_declaring(30000, 30000))
    (tmp_path / "img" / "1.png").write_bytes(png_declaring(30000, 30000))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(_results(gt)))
    rc = evaluate.main(["--dataset", "coco", "--ann", str(tmp_path / "gt.json"), "--preds",
                        str(tmp_path / "res.json"), "--out", str(tmp_path / "m.json"),
                        "--vis", "1", "--images", str(tmp_path / "img")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and re.search(needle, err), err


def test_vis_takes_the_configs_image_limits(tmp_path):
    """Model mode draws with its config's data.max_image_pixels and data.allow_outside_paths
    (what the loader read, the drawing may read; no more)."""
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    from dali_pose.config import DataConfig
    from dali_pose.datasets import COCO

    gt = _gt()
    gt["images"][0]["file_name"] = "../1.png"
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((480, 640, 3), np.uint8))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    draw = lambda data: evaluate.visualize_coco(  # noqa: E731
        str(tmp_path / "gt.json"), _results(gt), COCO, 1, str(tmp_path / "vis"),
        str(tmp_path / "img"), data=data)
    with pytest.raises(DaliPoseError, match=r"outside the image folder"):
        draw(DataConfig())
    assert len(draw(DataConfig(allow_outside_paths=True))) == 1
    with pytest.raises(M.EvaluationError, match=r"640x480 pixels, above "
                                                r"data\.max_image_pixels \(307199\)"):
        draw(DataConfig(allow_outside_paths=True, max_image_pixels=640 * 480 - 1))


def test_vis_mpii_json_nested_deep_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(M.EvaluationError, match=r"deep\.json is nested too deeply"):
        evaluate.visualize_mpii("unused.mat", None, 1, str(tmp_path), str(tmp_path),
                                str(tmp_path / "deep.json"))
