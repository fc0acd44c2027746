"""Hugging Face accelerate with the loader, no glue: ``save_state`` / ``load_state`` carry the
loader's state (``register_for_checkpointing``) and resume at the saved batch; the example
script of docs/clients.md runs as written (one process; two under torchrun, slow) and
resumes from its saved state. Skips without accelerate."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("nvidia.dali")

from conftest import (ROOT, SMALL_LOADER, SYNTHETIC_CONFIG, data_overrides,  # noqa: E402
                      doc_code, synthetic_data)

from dali_pose import build_loader, load_config, load_index  # noqa: E402


def test_save_state_and_load_state_resume_the_loader_at_the_saved_batch(tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from test_per_image import crowd_dataset

    index = crowd_dataset(tmp_path, people=(3, 2, 1, 3, 2, 4, 1, 2))
    cfg = load_config(None, ["loader.batch_size=3", "loader.shuffle_buffer=4",
                             "loader.pipelines=1", "loader.image_dtype=uint8"])
    try:
        accelerator = Accelerator(cpu=True)
        loader = build_loader(cfg, "train", device="cpu", index=index, log=None)
        accelerator.register_for_checkpointing(loader)
        loader.set_epoch(1)
        it = iter(loader)
        for _ in range(2):
            next(it)
        accelerator.save_state(str(tmp_path / "state"))
        rest = list(it)  # batches 2.. of the uninterrupted epoch 1
        assert len(rest) == len(loader) - 2 >= 1
        list(loader)  # the loader moves on (epoch 2) before the state is loaded back
        accelerator.load_state(str(tmp_path / "state"))
        assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 2
        again = list(loader)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert len(again) == len(rest)
    for a, b in zip(rest, again):
        assert torch.equal(a["row"], b["row"]) and torch.equal(a["image"], b["image"])
    assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["batch"] == 0


def _example(tmp_path) -> Path:
    """The script of docs/clients.md's accelerate section, as written there."""
    path = tmp_path / "train_accelerate.py"
    path.write_text(doc_code("docs/clients.md", "## accelerate"))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=6, num_val=2)


def _overrides(d, out, *extra):
    return [*data_overrides(d), f"out_dir={out}", *SMALL_LOADER, *extra]


def _run(cmd, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p.stdout


def _people(over):
    cfg = load_config(str(SYNTHETIC_CONFIG), over)
    return len(load_index(cfg, "train", None)), len(load_index(cfg, "val", None))


def test_the_accelerate_example_trains_validates_and_resumes(tiny, tmp_path):
    script, out = _example(tmp_path), tmp_path / "run"
    over = _overrides(tiny, out, "train.epochs=1", "train.ckpt_every_steps=2")
    n_train, n_val = _people(over)
    cfg = str(SYNTHETIC_CONFIG)
    text = _run([sys.executable, str(script), cfg, *over])
    steps = n_train // 4  # loader.drop_last
    assert "epoch 0: loss" in text and f"{steps} steps per rank" in text, text
    assert f"validated {n_val} instances" in text, text
    assert (out / "state" / "custom_checkpoint_0.pkl").exists()
    saved = torch.load(out / "state" / "custom_checkpoint_0.pkl", weights_only=True)
    assert saved["epoch"] == 1 and saved["batch"] == 0  # epoch 0 done
    # the same script with one more epoch continues from the saved state: epoch 1 only
    text = _run([sys.executable, str(script), cfg, *over[:-2], "train.epochs=2"])
    assert "epoch 0:" not in text and "epoch 1: loss" in text, text


@pytest.mark.slow
def test_the_accelerate_example_on_two_torchrun_processes(tiny, tmp_path):
    script, out = _example(tmp_path), tmp_path / "run"
    over = _overrides(tiny, out, "train.epochs=1", "loader.batch_size=2")
    n_train, n_val = _people(over)
    text = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2", str(script),
                 str(SYNTHETIC_CONFIG), *over], timeout=900)
    assert f"{n_train // 2 // 2} steps per rank" in text, text  # each rank half, batches of 2
    assert text.count("epoch 0: loss") == 1  # accelerator.print: the main process only
    assert f"validated {n_val} instances" in text, text  # each once, from both ranks
