"""The README's main job, end to end on a tiny synthetic dataset."""
import importlib.util
from pathlib import Path

import cv2
import pytest
import yaml

pytest.importorskip("nvidia.dali")
from dali_pose.synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _overrides(d, out):
    return [f"data.train_ann={d}/annotations/person_keypoints_train.json",
            f"data.train_images={d}/images/train",
            f"data.val_ann={d}/annotations/person_keypoints_val.json",
            f"data.val_images={d}/images/val", f"out_dir={out}", "loader.batch_size=4"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    generate(str(d), seed=1, num_train=4, num_val=2)
    return d


def test_train_py_runs_loader_and_writes_outputs(tiny, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_main", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    args = ["--config", str(ROOT / "configs" / "synthetic.yaml")]
    for o in _overrides(tiny, out):
        args += ["--set", o]
    mod.main(args)
    text = capsys.readouterr().out
    assert "samples/s" in text
    grid = cv2.imread(str(out / "preview.png"))
    assert grid is not None and grid.shape[0] >= 256
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loader"]["batch_size"] == 4 and saved["out_dir"] == str(out)


def test_preview_cli_val_split(tiny, tmp_path):
    from dali_pose.preview import main

    out = tmp_path / "grid.png"
    args = ["--out", str(out), "--split", "val", "--num", "2"]
    for o in _overrides(tiny, tmp_path):
        args += ["--set", o]
    main(args)
    grid = cv2.imread(str(out))
    assert grid.shape == (256 + 2, 2 * (192 + 2), 3)
