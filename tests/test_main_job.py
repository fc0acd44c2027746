"""The README's main job, end to end on a tiny synthetic dataset."""
import json
from pathlib import Path

import cv2
import pytest
import torch
import yaml

pytest.importorskip("nvidia.dali")
from conftest import (data_overrides, read_jsonl, run_train, set_args,  # noqa: E402
                      synthetic_data, train_argv, train_main)

ROOT = Path(__file__).resolve().parents[1]


def _overrides(d, out):
    return [*data_overrides(d), f"out_dir={out}", "loader.batch_size=4"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=4, num_val=2)


def test_train_py_trains_validates_and_writes_outputs(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main()(train_argv(tiny, out, "loader.batch_size=4", "train.epochs=1")) == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "data wait" in text and "AP" in text
    ckpt = torch.load(out / "model.pt")
    assert ckpt["config"]["out_dir"] == str(out) and "final_layer.weight" in ckpt["model"]
    metrics = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "val_results.json").read_text())
    # the AP written is the AP of the results written, scored against the val annotations
    from dali_pose.evaluation.metrics import evaluate_coco

    again = evaluate_coco(str(tiny / "annotations" / "person_keypoints_val.json"), results)
    assert metrics["AP"] == again["AP"] and metrics["AR"] == again["AR"]
    gt = json.loads((tiny / "annotations" / "person_keypoints_val.json").read_text())
    people = [a for a in gt["annotations"] if a["num_keypoints"] > 0]
    # One result per val person, minus those OKS-NMS merges; all of the val images.
    assert 0 < len(results) <= len(people)
    assert {r["image_id"] for r in results} == {a["image_id"] for a in people}
    grid = cv2.imread(str(out / "preview.png"))
    assert grid is not None and grid.shape[0] >= 128  # configs/synthetic.yaml: 128x96 crops
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loader"]["batch_size"] == 4 and saved["out_dir"] == str(out)


def test_preview_cli_val_split(tiny, tmp_path):
    from dali_pose.tools.preview import main

    out = tmp_path / "grid.png"
    main(["--out", str(out), "--split", "val", "--num", "2"]
         + set_args(_overrides(tiny, tmp_path)))
    grid = cv2.imread(str(out))
    assert grid.shape == (256 + 2, 2 * (192 + 2), 3)


@pytest.mark.slow
def test_the_readme_main_job_learns(tmp_path):
    """The README's main job, as a user runs it (minutes): generate the embedded dataset,
    train configs/synthetic.yaml, and reach a validation AP of at least 0.6."""
    import subprocess
    import sys

    data = tmp_path / "synthetic"
    subprocess.run([sys.executable, "-m", "dali_pose.tools.synthetic", "--out", str(data)],
                   cwd=ROOT, check=True, capture_output=True)
    p = run_train(train_argv(data, tmp_path / "run"), timeout=None)  # the config's batch size
    assert p.returncode == 0, p.stderr[-3000:]
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert lines[-1]["val/AP"] >= 0.6, [r["val/AP"] for r in lines]
