"""The trainer (train.py + dali_pose.engine): checkpoints that lose nothing, exact resume after
SIGKILL, the learning-rate schedule, metrics.jsonl, and 2-process DDP on gloo."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dali_pose.engine.checkpoint import read_training_checkpoint, save_atomic
from dali_pose.engine.schedule import build_scheduler, lr_factor
from dali_pose.models.weights import WeightsError

pytest.importorskip("nvidia.dali")
from conftest import (SMALL_LOADER, read_jsonl, start_train, synthetic_data,  # noqa: E402
                      train_argv)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ checkpoints ----

def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "epoch": 1, "config": {}}


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic(_state(1.0), str(path))

    def torn(obj, f):  # writes half a file, then the machine "dies"
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="No space"):
        save_atomic(_state(2.0), str(path))
    monkeypatch.undo()
    assert read_training_checkpoint(str(path))["model"]["w"][0] == 1.0
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_a_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(_state(1.0), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=r"last\.pt") as e:
        read_training_checkpoint(str(path))
    assert "\n" not in str(e.value)
    torch.save({"model": {}}, str(path))  # readable, but not a training checkpoint
    with pytest.raises(WeightsError, match=r"last\.pt: not a dali_pose training checkpoint"):
        read_training_checkpoint(str(path))


def test_lr_schedule_warmup_steps_and_resume():
    from dali_pose.config import TrainConfig

    tc = TrainConfig(lr=1e-3, lr_steps=(2, 3), lr_factor=0.1, warmup_iters=5,
                     warmup_ratio=0.001)
    assert lr_factor(0, 10, (2, 3), 0.1, 5, 0.001) == pytest.approx(0.001)
    assert lr_factor(5, 10, (2, 3), 0.1, 5, 0.001) == pytest.approx(1.0)
    assert lr_factor(19, 10, (2, 3), 0.1, 5, 0.001) == pytest.approx(1.0)
    assert lr_factor(20, 10, (2, 3), 0.1, 5, 0.001) == pytest.approx(0.1)
    assert lr_factor(30, 10, (2, 3), 0.1, 5, 0.001) == pytest.approx(0.01)
    lrs = []
    for resume_at in (None, 17):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=tc.lr)
        sched = build_scheduler(opt, tc, 10)
        got = []
        for it in range(40):
            if it == resume_at:  # a new process, from the saved states
                state = (opt.state_dict(), sched.state_dict())
                opt = torch.optim.Adam([p], lr=tc.lr)
                sched = build_scheduler(opt, tc, 10)
                opt.load_state_dict(state[0])
                sched.load_state_dict(state[1])
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        lrs.append(got)
    assert lrs[0] == lrs[1]
    assert lrs[0][0] == pytest.approx(1e-6) and lrs[0][39] == pytest.approx(1e-5)


# ------------------------------------------------------------------- train.py ------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=6, num_val=2)


def _args(d, out, *extra):
    return train_argv(d, out, *SMALL_LOADER, *extra)


def _run(args, **kw):
    return start_train(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_killed_and_resumed_equals_uninterrupted(tiny, tmp_path):
    """SIGKILL during epoch 1 of 3, then --resume auto: the final weights equal those of the
    run that was never stopped, bit for bit; metrics.jsonl has one line per epoch and the
    loss falls."""
    extra = ["train.epochs=3", "train.validate=false", "occlusion.method=aid"]
    whole = _run(_args(tiny, tmp_path / "whole", *extra))
    killed = _run(_args(tiny, tmp_path / "killed", *extra))
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600
    while not read_jsonl(log) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, killed.stdout.read()  # still inside epoch 1
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(read_jsonl(log)) == 1
    resumed = _run(_args(tiny, tmp_path / "killed", *extra) + ["--resume", "auto"])
    out_w, out_r = whole.communicate(timeout=900)[0], resumed.communicate(timeout=900)[0]
    assert whole.returncode == 0, out_w[-3000:]
    assert resumed.returncode == 0, out_r[-3000:]
    assert "resuming" in out_r and "epochs 0-0 done, continuing with epoch 1" in out_r
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert [r["epoch"] for r in read_jsonl(log)] == [0, 1, 2]
    for r in lines:
        assert {"epoch", "loss", "lr", "samples_per_s", "data_wait", "world_size",
                "seconds"} <= set(r)
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_resume_from_a_truncated_checkpoint_fails_in_one_line(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x80\x02 not a whole checkpoint")
    p = _run(_args(tiny, out, "train.epochs=1") + ["--resume", "auto"])
    text = p.communicate(timeout=300)[0]
    assert p.returncode == 1
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: ") and "last.pt" in last, text[-2000:]


def _torchrun(args, **env):
    """train.py in two processes (torchrun --standalone), run to the end."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(ROOT / "train.py"), *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
                          capture_output=True, text=True, timeout=900)


def test_two_process_ddp_on_gloo(tiny, tmp_path):
    """torchrun --nproc_per_node 2 on the CPU: exits 0; the ranks hold the same weights after
    every epoch; their training samples in an epoch are disjoint and cover it; validation
    gathers each instance exactly once."""
    from dali_pose import load_config, load_index

    out = tmp_path / "ddp"
    args = _args(tiny, out, "train.epochs=2", "loader.batch_size=2")
    p = _torchrun(args, OMP_NUM_THREADS="1")
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    cfg = load_config(str(ROOT / "configs" / "synthetic.yaml"),
                      [a for a in args[3::2]])
    n_train = len(load_index(cfg, "train"))
    n_val = len(load_index(cfg, "val"))
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [0, 1]
    per_rank = n_train // 2 // 2 * 2  # whole batches of 2 (loader.drop_last)
    assert per_rank >= 4
    for r in lines:
        assert r["world_size"] == 2 and r["ranks_in_sync"]
        assert r["samples"] == r["unique_samples"] == 2 * per_rank  # disjoint, the epoch
        # both rates on rank 0's clock: all ranks' samples, and rank 0's half of them
        assert r["samples_per_s"] == pytest.approx(2 * r["samples_per_s_rank0"], rel=1e-12)
        assert r["val_instances"] == n_val
    assert p.stdout.count("train set:") == 1  # rank 1 prints nothing


# ------------------------------------------------------------------------- GPU ------

@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_gpu_training_mixed_precision_channels_last(tiny, tmp_path, amp_dtype):
    """One GPU epoch in each mixed precision, channels-last, the loader on the same GPU."""
    out = tmp_path / amp_dtype
    p = _run(_args(tiny, out, "train.epochs=1", "loader.device=gpu",
                   f"train.amp_dtype={amp_dtype}", "train.channels_last=true"))
    text = p.communicate(timeout=900)[0]
    assert p.returncode == 0, text[-3000:]
    assert f"torch.{amp_dtype} on cuda:0" in text
    (line,) = read_jsonl(out / "metrics.jsonl")
    assert line["loss"] > 0 and "val/AP" in line


@pytest.mark.gpu
def test_two_process_ddp_on_nccl(tiny, tmp_path):  # pragma: no cover - needs 2 GPUs
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL with two ranks needs two GPUs")
    out = tmp_path / "nccl"
    args = _args(tiny, out, "train.epochs=1", "loader.device=gpu", "loader.batch_size=2")
    p = _torchrun(args)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    (line,) = read_jsonl(out / "metrics.jsonl")
    assert line["world_size"] == 2 and line["ranks_in_sync"]
    assert line["samples"] == line["unique_samples"]
