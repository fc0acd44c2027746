"""evaluate.py in file mode: tables, metrics json, drawings, and clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402

from dali_pose.evaluation.metrics import COCO_KEYS, CROWDPOSE_KEYS, load_mpii_gt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_metrics import fake_mpii_mat, gt_as_results, make_gt  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
needs = {name: pytest.mark.skipif(not (DATA / name).is_dir(),
                                  reason=f"real sample data not present: {name}")
         for name in ("coco-sample", "crowdpose-sample", "mpii-sample")}


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def test_coco_file_mode(tmp_path, capsys):
    gt = make_gt(seed=40)
    ann = write(tmp_path, "gt.json", gt)
    preds = write(tmp_path, "res.json", gt_as_results(gt))
    out = tmp_path / "run" / "metrics.json"
    rc = evaluate.main(["--dataset", "coco", "--ann", ann, "--preds", preds, "--out", str(out),
                        "--vis", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    m = json.loads(out.read_text())
    assert list(m) == list(COCO_KEYS) + ["AP_vis", "AP_invis"]
    assert m["AP"] == pytest.approx(1.0)
    header = next(line for line in text.splitlines() if line.strip().startswith("AP |"))
    assert [c.strip() for c in header.split("|")] == list(m)  # table and json share names
    # no --images: drawn on a blank canvas of the image size, ground truth | prediction
    pngs = sorted((tmp_path / "run" / "vis").glob("*.png"))
    assert len(pngs) == 2
    import cv2

    img = cv2.imread(str(pngs[0]))
    assert img.shape == (480, 1280, 3)


def test_errors_exit_nonzero_with_message(tmp_path, capsys):
    gt = make_gt(seed=41)
    ann = write(tmp_path, "gt.json", gt)
    res = gt_as_results(gt)
    res[3]["image_id"] = 12345
    preds = write(tmp_path, "res.json", res)
    rc = evaluate.main(["--dataset", "coco", "--ann", ann, "--preds", preds,
                        "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "res.json: result 3 has image_id 12345" in err and "gt.json" in err
    assert not (tmp_path / "m.json").exists()
    # CrowdPose ground truth scored as COCO
    crowd = write(tmp_path, "crowd.json", make_gt(k=14, crowdpose=True))
    assert evaluate.main(["--dataset", "coco", "--ann", crowd, "--preds", preds]) == 1
    assert "crowd.json: category 'person' has 14 joints" in capsys.readouterr().err
    # --visible belongs to MPII
    good = write(tmp_path, "good.json", gt_as_results(gt))
    assert evaluate.main(["--dataset", "coco", "--ann", ann, "--preds", good, "--visible",
                          "v.npy", "--out", str(tmp_path / "m.json")]) == 1
    assert "--visible" in capsys.readouterr().err


def test_mpii_file_mode(tmp_path, capsys):
    mat, pos = fake_mpii_mat(tmp_path)
    preds = np.transpose(pos, (2, 0, 1)) - 1.0
    np.save(tmp_path / "p.npy", preds)
    np.save(tmp_path / "v.npy", np.ones((4, 16), np.uint8))
    out = tmp_path / "m.json"
    rc = evaluate.main(["--dataset", "mpii", "--ann", str(mat), "--preds",
                        str(tmp_path / "p.npy"), "--visible", str(tmp_path / "v.npy"),
                        "--out", str(out), "--vis", "1"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["PCKh@0.5/Wrist"] == 100.0 and m["PCKh@0.5/Mean"] == 100.0
    assert m["PCKh@0.5_vis/Wrist"] == 100.0 and m["PCKh@0.5_occ/Wrist"] is None
    table = capsys.readouterr().out
    assert "PCKh@0.5_vis" in table and "Wrist" in table
    assert len(list((tmp_path / "vis").glob("*.png"))) == 1
    # wrong shape
    np.save(tmp_path / "bad.npy", preds[:, :, :1])
    assert evaluate.main(["--dataset", "mpii", "--ann", str(mat), "--preds",
                          str(tmp_path / "bad.npy")]) == 1
    assert "bad.npy: predictions have shape (4, 16, 1)" in capsys.readouterr().err


def test_cli_subprocess_error():
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--dataset", "mpii",
                        "--ann", "/nonexistent/gt_valid.mat", "--preds", "x.npy"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "gt_valid.mat" in r.stderr
    assert "Traceback" not in r.stderr


@needs["coco-sample"]
def test_coco_sample_with_images(tmp_path):
    ann = DATA / "coco-sample" / "test_coco.json"
    gt = json.loads(ann.read_text())
    preds = write(tmp_path, "res.json", gt_as_results(gt))
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--dataset", "coco", "--ann", str(ann), "--preds", preds, "--out",
                          str(out), "--vis", "1", "--images", str(DATA / "coco-sample")]) == 0
    assert json.loads(out.read_text())["AP"] == pytest.approx(1.0)
    (png,) = (tmp_path / "vis").glob("*.png")
    import cv2

    meta = gt["images"][0]
    assert cv2.imread(str(png)).shape == (meta["height"], 2 * meta["width"], 3)


@needs["crowdpose-sample"]
def test_crowdpose_sample(tmp_path):
    ann = DATA / "crowdpose-sample" / "test_crowdpose.json"
    gt = json.loads(ann.read_text())
    preds = write(tmp_path, "res.json", gt_as_results(gt))
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--dataset", "crowdpose", "--ann", str(ann), "--preds", preds,
                          "--out", str(out), "--vis", "2", "--images",
                          str(DATA / "crowdpose-sample")]) == 0
    m = json.loads(out.read_text())
    assert list(m) == list(CROWDPOSE_KEYS) and m["AP"] == pytest.approx(1.0)
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2


@needs["mpii-sample"]
def test_mpii_sample_published_predictions(tmp_path, capsys):
    d = DATA / "mpii-sample"
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--dataset", "mpii", "--ann", str(d / "annot" / "gt_valid.mat"),
                          "--preds", str(d / "predictions" / "newell.npy"), "--visible",
                          str(d / "annot" / "visible_valid.npy"), "--out", str(out),
                          "--vis", "2", "--images", str(d / "images"), "--mpii-json",
                          str(d / "test_mpii.json")]) == 0
    m = json.loads(out.read_text())
    assert 80 < m["PCKh@0.5/Mean"] < 95 and m["PCKh@0.5_occ/Mean"] < m["PCKh@0.5_vis/Mean"]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    gt = load_mpii_gt(d / "annot" / "gt_valid.mat")
    assert len(gt) == 2958
