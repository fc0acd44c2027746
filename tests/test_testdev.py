"""COCO test-dev: an image-info file (no annotations) with detections gives an index, and
evaluate.py --test-dev writes the unscored results json the server takes."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402

from dali_pose.datasets import COCO, load_coco_style  # noqa: E402
from dali_pose.errors import DatasetError, EvaluationError  # noqa: E402
from dali_pose.evaluation.inference import Predictions  # noqa: E402
from dali_pose.evaluation.metrics import evaluate_coco  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "coco-sample"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared COCO sample data absent")
def test_image_info_with_detections_to_results(tmp_path):
    gt = json.loads((SAMPLE / "test_coco.json").read_text())
    info = {k: v for k, v in gt.items() if k != "annotations"}  # as image_info_test-dev2017
    (tmp_path / "info.json").write_text(json.dumps(info))
    det = str(SAMPLE / "test_coco_det_AP_H_56.json")
    index = load_coco_style(str(tmp_path / "info.json"), str(SAMPLE), COCO, 0.75,
                            det_file=det)
    n_det = sum(1 for d in json.loads(Path(det).read_text()) if d.get("category_id", 1) == 1)
    assert len(index) == n_det
    with pytest.raises(DatasetError, match="annotations"):  # ground truth still needs them
        load_coco_style(str(tmp_path / "info.json"), str(SAMPLE), COCO, 0.75)
    # predictions: each detection's box centre for every joint, score 0.9
    kps = np.zeros((len(index), 17, 3), np.float32)
    kps[:, :, :2] = index.center[:, None, :]
    kps[:, :, 2] = 0.9
    preds = Predictions(index, kps, np.ones(len(index), bool))
    path = evaluate.write_test_dev(preds, str(tmp_path))
    results = json.loads(Path(path).read_text())
    assert results and {"image_id", "category_id", "keypoints", "score"} <= set(results[0])
    assert {r["image_id"] for r in results} <= {im["id"] for im in info["images"]}
    assert all(len(r["keypoints"]) == 51 for r in results)
    # the file is a valid results file for the official scorer
    assert "AP" in evaluate_coco(str(SAMPLE / "test_coco.json"), path)
    partial = Predictions(index, kps, np.arange(len(index)) > 0)
    with pytest.raises(EvaluationError, match="every detection"):
        evaluate.write_test_dev(partial, str(tmp_path))
