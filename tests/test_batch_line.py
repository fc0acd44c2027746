"""train.py says once how it set the learning rate when the run's total batch is not the
recipe's (train.base_batch_size), and says nothing when it is."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dali_pose.tools.synthetic import generate

    d = tmp_path_factory.mktemp("syn")
    generate(str(d), seed=1, num_train=4, num_val=1)
    return d


def _train(d, out, base):
    over = [f"data.train_ann={d}/annotations/person_keypoints_train.json",
            f"data.train_images={d}/images/train", f"out_dir={out}", "loader.batch_size=4",
            "loader.pipelines=1", "loader.num_threads=1", "train.epochs=1",
            "train.validate=false", "train.lr=0.002", f"train.base_batch_size={base}"]
    args = [sys.executable, str(ROOT / "train.py"), "--config",
            str(ROOT / "configs" / "synthetic.yaml"), "--max-batches", "1"]
    for o in over:
        args += ["--set", o]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


@pytest.mark.slow
def test_total_batch_line(tiny, tmp_path):
    out = _train(tiny, tmp_path / "a", 8)
    lines = [x for x in out.splitlines() if "base_batch_size" in x]
    assert len(lines) == 1, out[-2000:]
    assert "total batch 4 (1 x 4)" in lines[0] and "0.002 x 4/8 = 0.001" in lines[0]
    assert "base_batch_size" not in _train(tiny, tmp_path / "b", 4)
