"""evaluate.py --checkpoint: a saved model scored exactly as train.py scores it, and clear
errors for checkpoints that do not fit."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402

from conftest import shared  # noqa: E402
from dali_pose import load_config  # noqa: E402
from dali_pose.datasets import DATASETS  # noqa: E402
from dali_pose import build_model  # noqa: E402
from dali_pose.evaluation.inference import load_checkpoint, predict, score  # noqa: E402
from dali_pose.engine.checkpoint import save_model  # noqa: E402
from dali_pose.models.weights import WeightsError  # noqa: E402
from dali_pose.tools.synthetic import generate  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic dataset and an (untrained, seeded) checkpoint of the synthetic model."""
    d = tmp_path_factory.mktemp("syn")
    generate(str(d), seed=3, num_train=2, num_val=3)
    cfg = load_config(str(ROOT / "configs" / "synthetic.yaml"), [
        f"data.train_ann={d}/annotations/person_keypoints_train.json",
        f"data.train_images={d}/images/train",
        f"data.val_ann={d}/annotations/person_keypoints_val.json",
        f"data.val_images={d}/images/val", f"out_dir={d}/run", "loader.batch_size=4"])
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = d / "model.pt"
    save_model(str(ckpt), model, cfg, epoch=3)
    return d, cfg, model, ckpt


def test_checkpoint_round_trip(run):
    _, cfg, model, ckpt = run
    cfg2, model2, epochs = load_checkpoint(str(ckpt))
    assert cfg2 == cfg and epochs == 3 and not model2.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    cfg3, _, _ = load_checkpoint(str(ckpt), overrides=["loader.flip_test=false"])
    assert cfg3.loader.flip_test is False and cfg.loader.flip_test is True


def test_model_mode_scores_like_train_and_like_file_mode(run, tmp_path, capsys):
    d, cfg, model, ckpt = run
    out = tmp_path / "eval" / "m.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--out", str(out), "--vis", "1"]) == 0
    text = capsys.readouterr().out
    assert "AP" in text and "3 epochs" in text
    metrics = json.loads(out.read_text())
    results = json.loads((out.parent / "val_results.json").read_text())
    assert (out.parent / "vis").is_dir() and len(list((out.parent / "vis").iterdir())) == 1
    # train.py's own path (dali_pose.evaluation.inference on the in-memory model) gives the same file
    direct = score(cfg, predict(cfg, model, torch.device("cpu")), str(tmp_path / "direct"))
    assert json.loads((tmp_path / "direct" / "val_results.json").read_text()) == results
    assert direct == pytest.approx(metrics)
    gt = json.loads((d / "annotations" / "person_keypoints_val.json").read_text())
    assert {r["image_id"] for r in results} == {a["image_id"] for a in gt["annotations"]
                                                if a["num_keypoints"] > 0}
    # ... and file mode on the written results agrees
    out2 = tmp_path / "file.json"
    assert evaluate.main(["--dataset", "coco", "--ann", cfg.data.val_ann, "--preds",
                          str(out.parent / "val_results.json"), "--out", str(out2)]) == 0
    assert json.loads(out2.read_text()) == metrics


def test_model_mode_errors(run, tmp_path, capsys):
    d, _, _, ckpt = run
    assert evaluate.main(["--checkpoint", str(ckpt), "--set", "model.width=24"]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "model.width=24" in err and "another shape" in err
    assert evaluate.main(["--checkpoint", str(ckpt), "--set", "model.target=combined"]) == 1
    assert "final_layer.weight" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(ckpt), "--set", "loader.nope=1"]) == 1
    assert "loader.nope" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(ckpt), "--dataset", "mpii"]) == 1
    assert "data.format coco" in capsys.readouterr().err
    for bad in (["--preds", "x.json"], ["--max-batches", "0"]):
        with pytest.raises(SystemExit):  # argparse usage errors, before anything is loaded
            evaluate.main(["--checkpoint", str(ckpt), *bad])
    err = capsys.readouterr().err
    assert "belong to file mode" in err and "--max-batches must be >= 1" in err
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_text("data: {}\n")
    assert evaluate.main(["--checkpoint", str(not_ckpt)]) == 1
    assert f"cannot read checkpoint {not_ckpt}" in capsys.readouterr().err
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a dali_pose checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(SystemExit):  # file mode without its inputs: argparse usage error
        evaluate.main(["--dataset", "coco"])
    with pytest.raises(SystemExit):
        evaluate.main(["--dataset", "coco", "--ann", "a", "--preds", "b", "--set", "x=1"])


def test_mpii_json_rows_are_gt_valid_rows():
    """train.py / evaluate.py save MPII predictions in the val json's row order; HRNet's
    valid.json lists people in gt_valid.mat's order (the sample holds its first 5 rows)."""
    from dali_pose.datasets import load_mpii
    from dali_pose.evaluation.metrics import load_mpii_gt

    m = shared("mpii-sample")
    gt = load_mpii_gt(m / "annot" / "gt_valid.mat")
    index = load_mpii(str(m / "test_mpii.json"), str(m / "images"), 1.0)
    for i in range(len(index)):
        labelled = index.keypoints[i, :, 2] > 0
        np.testing.assert_array_equal(labelled, ~gt.missing[i])
        # one side holds float32-rounded coordinates (< 1166 px: rounding <= 6.1e-5 px);
        # measured max 4.4e-5 px over the 76 labelled joints; 2.3x margin
        np.testing.assert_allclose(index.keypoints[i, labelled, :2], gt.joints0[i][labelled],
                                   rtol=0, atol=1e-4)


def test_mpii_model_mode(tmp_path, capsys):
    m = shared("mpii-sample")
    cfg = load_config(str(ROOT / "configs" / "mpii_w32_256x256.yaml"), [
        f"data.val_ann={m}/test_mpii.json", f"data.val_images={m}/images",
        "loader.device=cpu", "loader.batch_size=4", "model.width=8", "model.stem_width=16",
        "model.num_blocks=1", "model.stage_modules=[1,1,1]", "model.pretrained=null",
        "data.val_gt=null"])
    ckpt = tmp_path / "mpii.pt"
    save_model(str(ckpt), build_model(cfg), cfg, epoch=0)
    out = tmp_path / "eval" / "metrics.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    preds = np.load(out.parent / "val_preds.npy")
    assert preds.shape == (5, 16, 2) and np.isfinite(preds).all() and not out.exists()
    assert "evaluate.py --dataset mpii" in capsys.readouterr().out
    # a partial run (one batch of 4) is saved with NaN rows and said to be partial
    assert evaluate.main(["--checkpoint", str(ckpt), "--out", str(out), "--max-batches",
                          "1"]) == 0
    part = np.load(out.parent / "val_preds.npy")
    assert np.isfinite(part[:4]).all() and np.isnan(part[4]).all()
    assert "partial" in capsys.readouterr().out
    assert evaluate.main(["--checkpoint", str(ckpt), "--vis", "2"]) == 1  # before predicting
    assert "--vis for MPII needs --ann" in capsys.readouterr().err
    # gt_valid.mat has all 2958 validation people; 5 predictions are refused by name
    assert evaluate.main(["--checkpoint", str(ckpt), "--out", str(out), "--ann",
                          str(m / "annot" / "gt_valid.mat")]) == 1
    err = capsys.readouterr().err
    assert "val_preds.npy" in err and "2958" in err
