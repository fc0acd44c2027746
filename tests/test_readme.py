"""The README's code runs as written: the loop of "Using the loader in your own trainer",
where the set-up command leaves the main job's files (configs/synthetic.yaml reading
data/synthetic), here a tiny rendering of that dataset: two epochs of one batch each."""
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from conftest import SYNTHETIC_CONFIG, doc_code  # noqa: E402


def test_the_readme_trainer_loop_runs_as_written(tmp_path, monkeypatch):
    from dali_pose.tools.synthetic import generate

    code = doc_code("README.md", "## Using the loader in your own trainer")
    # 8 images, ~20 people: one batch of 16 per epoch (loader.drop_last)
    generate(str(tmp_path / "data" / "synthetic"), seed=1, num_train=8, num_val=1)
    (tmp_path / "configs").mkdir()
    shutil.copy(SYNTHETIC_CONFIG, tmp_path / "configs" / "synthetic.yaml")
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 (the README's own code)
    steps = ns["epochs"] * len(ns["train"])
    assert ns["epoch"] == ns["epochs"] - 1 and steps >= 2
    assert torch.isfinite(ns["loss"])
    state = next(iter(ns["optimizer"].state.values()))
    assert int(state["step"]) == steps  # every epoch yielded its batches and stepped
