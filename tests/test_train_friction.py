"""train.py as a newcomer meets it: --config required, train.log, clean epoch lines with an
ETA, per-iteration loss in TensorBoard, named sample rates, AdamW and a cosine schedule, a
NaN loss / a full disk / Ctrl-C each as one line, and the README's loader snippet running
as written.

The runs here call ``train.main`` in this process: the loader's numba operators compile
once for all of them."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from dali_pose.config import load_config
from dali_pose.errors import ConfigError
from dali_pose.engine.schedule import build_optimizer, build_scheduler, cosine_factor

pytest.importorskip("nvidia.dali")
from conftest import SMALL_LOADER, doc_code, synthetic_data, train_argv  # noqa: E402
from dali_pose.tools.synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402


# --------------------------------------------------------------------------- units ----

def test_train_py_requires_a_config(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--config is required" in err and "configs/synthetic.yaml" in err
    with pytest.raises(SystemExit):
        train.parse_args(["--config", "x.yaml", "--resume", "auto", "--overwrite"])
    assert "cannot go with --resume" in capsys.readouterr().err


def test_cosine_schedule_and_adamw():
    tc = load_config(None, ["train.optimizer=adamw", "train.lr_schedule=cosine",
                            "train.epochs=4", "train.warmup_iters=2", "train.lr=0.01",
                            "train.weight_decay=0.05"]).train
    p = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer([p], tc, tc.lr)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.05
    sched = build_scheduler(opt, tc, iters_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    total = 20
    for it, lr in enumerate(lrs):
        warm = 0.001 + 0.999 * it / 2 if it < 2 else 1.0
        assert lr == pytest.approx(0.01 * warm * 0.5 * (1 + math.cos(math.pi * it / total)))
    assert lrs[10] == pytest.approx(0.005)  # half-way: half the rate
    assert cosine_factor(total, total, 0, 0.001) == pytest.approx(0.0, abs=1e-12)
    adam = build_optimizer([p], load_config(None).train, 1e-3)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("name,after", [("adamw", 1 - 0.01 * 0.05), ("adam", 1 - 0.01)])
def test_adamw_decouples_the_weight_decay(name, after):
    """One step with a zero gradient from w = 1 (lr 0.01, weight decay 0.05): AdamW shrinks
    the weight by lr * decay * w; Adam adds decay * w to the gradient, and its normalised
    step moves the weight by lr (its eps aside)."""
    tc = load_config(None, [f"train.optimizer={name}", "train.lr=0.01",
                            "train.weight_decay=0.05"]).train
    w = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([w], tc, tc.lr)
    w.grad = torch.zeros(3)
    opt.step()
    assert w.detach().tolist() == pytest.approx([after] * 3, rel=1e-6)


@pytest.mark.parametrize("item", ["train.optimizer=sgd", "train.optimizer=Adam",
                                  "train.lr_schedule=step", "train.lr_schedule=linear"])
def test_optimizer_and_schedule_are_checked_at_load(item):
    key = item.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': .* is not one of"):
        load_config(None, [item])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_imports_ends_quietly(tmp_path, sig):
    """The signal lands while train.py imports torch (a finder sends it when train.py asks
    for torch): no traceback, no output; SIGINT exits 130, SIGTERM its default death."""
    driver = tmp_path / "drv.py"
    driver.write_text(
        "import importlib.abc, os, runpy, signal, sys\n"
        "class Finder(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        f"            os.kill(os.getpid(), signal.{sig})\n"
        "        return None\n"
        "sys.meta_path.insert(0, Finder())\n"
        f"sys.argv = [{str(ROOT / 'train.py')!r}, '--config', 'x.yaml']\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
        "print('not reached')\n")
    p = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (p.stdout, p.stderr) == ("", "")
    code = getattr(signal, sig)
    assert p.returncode == (128 + code if sig == "SIGINT" else -code)


# ------------------------------------------------------------------ train.main runs ----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=6, num_val=2)


def _argv(d, out, *extra):
    return train_argv(d, out, *SMALL_LOADER, "train.epochs=2", "train.log_every=2", *extra)


class _FakeWriter:
    """Stands in for tensorboard's SummaryWriter (not installed here): records scalars."""
    scalars = []

    def __init__(self, log_dir):
        pass

    def add_scalar(self, tag, value, step):
        _FakeWriter.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        pass


class _FakeBar:
    """Stands in for tqdm, writing its life to stdout so that the order is visible."""

    def __init__(self, total, desc, **kw):
        self.n = 0
        print(f"<bar {desc}>")

    def update(self, k):
        self.n += k

    def set_postfix(self, d, refresh=False):
        self.postfix = d

    def close(self):
        print("<bar closed>")


def test_a_run_logs_cleanly_with_adamw_and_cosine(tiny, tmp_path, capsys, monkeypatch):
    """One run (2 epochs, validating, a terminal): the bar closes before validation prints;
    one line per epoch end with an ETA; train.log holds what was printed; metrics.jsonl names
    both sample rates; TensorBoard gets the loss per iteration and no bookkeeping."""
    fake_tb = types.ModuleType("torch.utils.tensorboard")
    fake_tb.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    import dali_pose.engine.progress as progress

    monkeypatch.setattr(progress, "tqdm", _FakeBar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    out = tmp_path / "run"
    rc = train.main(_argv(tiny, out, "train.optimizer=adamw", "train.lr_schedule=cosine",
                          "train.weight_decay=0.01"))
    printed = capsys.readouterr().out
    assert rc == 0, printed
    lines = printed.splitlines()
    for epoch in (0, 1):
        opened = lines.index(f"<bar epoch {epoch}>")
        closed = lines.index("<bar closed>", opened)
        val = next(i for i, x in enumerate(lines) if i > opened and x.startswith("val ("))
        assert closed < val, printed
    ends = [x for x in lines if re.match(r"epoch \d+: ", x)]
    assert len(ends) == 2
    assert re.search(r"; \d+s, ETA \d+s for 1 more epoch$", ends[0]), ends[0]
    assert "ETA" not in ends[1]
    assert "adamw lr 2.00e-03 (cosine)" in printed
    log = (out / "train.log").read_text().splitlines()
    assert log == [x for x in lines if not x.startswith("<bar")]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["samples_per_s"] == pytest.approx(r["samples"] / r["seconds"])
        assert r["samples_per_s_rank0"] == pytest.approx(r["samples_per_s"])  # one rank
    # cosine over 2 epochs of 4 steps: half-way after epoch 0, 0 after epoch 1
    assert records[0]["lr"] == pytest.approx(1e-3)
    assert records[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    tags = {t for t, _, _ in _FakeWriter.scalars}
    assert {"train/loss", "train/lr", "epoch/loss", "val/AP"} <= tags
    assert not {"train/world_size", "train/seconds", "train/steps", "epoch/world_size"} & tags
    steps = [s for t, _, s in _FakeWriter.scalars if t == "train/loss"]
    assert steps == [0, 1, 3, 4, 5, 7]  # iterations 1, 2, 4 of each epoch (log_every 2)


def test_a_nan_loss_stops_in_one_line_keeping_the_last_good_checkpoint(tiny, tmp_path, capsys,
                                                                       monkeypatch):
    calls = [0]
    real = train.pose_loss

    def nan_at_6(*a, **k):  # epoch 1 step 2
        calls[0] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls[0] == 6 else loss

    monkeypatch.setattr(train, "pose_loss", nan_at_6)
    out = tmp_path / "nan"
    rc = train.main(_argv(tiny, out, "train.validate=false"))
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.count("\n") == 0 and err.startswith("error: the training loss is NaN at "
                                                   "epoch 1 step 2 of 4"), err
    assert f"{out / 'last.pt'} (after epoch 0) is kept" in err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not (out / "model.pt").exists()
    assert (out / "train.log").read_text().splitlines()[-1] == err


def test_a_full_disk_at_best_pt_is_one_line_and_a_resume_restores_the_epoch(
        tiny, tmp_path, capsys, monkeypatch):
    """The disk fills between epoch 0's last.pt and best.pt (the state a kill there leaves):
    one line; --resume auto writes best.pt and the epoch's metrics line with its AP."""
    from dali_pose.engine import checkpoint

    real = checkpoint.tempfile.mkstemp

    def full_at_best(prefix, suffix, dir):
        fd, tmp = real(prefix=prefix, suffix=suffix, dir=dir)
        if prefix == "best.pt.":
            os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, tmp

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full_at_best)
    out = tmp_path / "full"
    argv = _argv(tiny, out, "train.epochs=1")
    rc = train.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err == (f"error: cannot write {out / 'best.pt'}: No space left on device; "
                   f"{out / 'last.pt'} holds this epoch: --resume auto writes best.pt "
                   f"again"), err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not (out / "best.pt").exists() and not (out / "metrics.jsonl").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    monkeypatch.undo()
    assert train.main(argv + ["--resume", "auto"]) == 0
    assert "restored from the checkpoint: metrics.jsonl line of epoch 0, best.pt of " \
           "epoch 0" in capsys.readouterr().out
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["epoch"] == 0 and line["best"] and "val/AP" in line
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 1


def test_a_full_disk_at_the_metrics_line_is_one_line(tmp_path):
    from dali_pose.engine.progress import Progress

    os.symlink("/dev/full", tmp_path / "metrics.jsonl")
    progress = Progress(True, str(tmp_path), 1, 3, log=lambda msg: None)
    record = {"epoch": 1, "steps": 4, "loss": 0.5, "samples_per_s": 0.43,
              "data_wait": 0.01, "lr": 1e-3}
    with pytest.raises(OSError) as e:
        progress.end_epoch(record, 2.0)
    progress.close()
    assert str(e.value) == (f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on "
                            f"device; last.pt holds epoch 1: --resume auto writes its line "
                            f"again")


def test_a_busy_out_dir_is_refused_before_anything_is_built(tiny, tmp_path, capsys):
    """The out_dir's lock held (here by this process, through another open file: flock
    locks conflict between open files): train.py refuses in one line; test_trainer_faults
    does it with two processes."""
    from dali_pose.engine import outdir

    out = tmp_path / "busy"
    held = outdir.lock(str(out))
    try:
        assert train.main(_argv(tiny, out)) == 1
    finally:
        held.close()
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == (
        f"error: config key 'out_dir': {out} is in use by another train.py (pid "
        f"{os.getpid()}); wait for it to end, or choose another out_dir (--set "
        f"out_dir=...)\n")
    assert sorted(os.listdir(out)) == [".train.lock"]


def test_a_signal_while_the_loaders_build_stops_before_the_first_step(tiny, tmp_path,
                                                                        capsys, monkeypatch):
    real = train.build_loader

    def build(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train, "build_loader", build)
    # (into an out_dir of an earlier run, with --overwrite: its outputs go, the user's stay)
    out = tmp_path / "early"
    (out / "tb").mkdir(parents=True)
    for name in ("last.pt", "metrics.jsonl", "mine.txt", "tb/events.out.tfevents.1.h"):
        (out / name).write_text("x")
    try:
        assert train.main(_argv(tiny, out, "train.validate=false") + ["--overwrite"]) == 0
    except KeyboardInterrupt:  # (caught here, or it would end the test session)
        pytest.fail("SIGINT while the loaders build raised KeyboardInterrupt")
    cap = capsys.readouterr()
    assert cap.err == "" and "Traceback" not in cap.out
    lines = cap.out.strip().splitlines()
    assert lines[0] == (f"--overwrite: deleted last.pt, metrics.jsonl, tb/ (its event "
                        f"files) in {out}")
    assert lines[-1] == (
        "stopped by SIGINT before epoch 0; no step had run, so there is no last.pt: the "
        "same command starts afresh")
    assert sorted(os.listdir(out)) == [".train.lock", "config.yaml", "mine.txt", "train.log"]
    assert (out / "train.log").read_text().splitlines() == lines


def test_ctrl_c_stops_quietly_with_exit_0(tiny, tmp_path, capsys, monkeypatch):
    calls = [0]
    real = train.pose_loss

    def sigint_at_2(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train, "pose_loss", sigint_at_2)
    out = tmp_path / "int"
    rc = train.main(_argv(tiny, out, "train.validate=false"))
    cap = capsys.readouterr()
    assert rc == 0 and "Traceback" not in cap.out + cap.err
    assert cap.out.strip().splitlines()[-1] == (
        f"stopped by SIGINT at epoch 0 step 2 of 4; {out / 'last.pt'} holds it: --resume "
        f"auto continues with epoch 0 step 3")
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["loader"]["batch"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # --resume auto continues there; SIGTERM during its validation: the epoch ends (its
    # last.pt, best.pt and metrics line), the run stops before the next one
    monkeypatch.setattr(train, "pose_loss", real)
    real_validate = train.validate

    def validate(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_validate(*a, **k)

    monkeypatch.setattr(train, "validate", validate)
    assert train.main(_argv(tiny, out) + ["--resume", "auto"]) == 0
    cap = capsys.readouterr()
    assert "no epoch done and 2 steps of epoch 0, continuing with epoch 0 step 3" in cap.out
    assert cap.err == "" and "Traceback" not in cap.out
    assert cap.out.strip().splitlines()[-1] == (
        f"stopped by SIGTERM before epoch 1; {out / 'last.pt'} holds epochs 0-0: --resume "
        f"auto continues with epoch 1")
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["epoch"] == 0 and line["steps"] == 4 and "val/AP" in line
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1


def test_non_finite_init_weights_fail_before_the_loaders(tiny, tmp_path, capsys):
    from dali_pose import build_model
    from dali_pose.engine.checkpoint import save_model

    cfg = load_config(str(ROOT / "configs" / "synthetic.yaml"))
    model = build_model(cfg)
    with torch.no_grad():
        model.final_layer.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    save_model(str(path), model, cfg, 3)
    rc = train.main(_argv(tiny, tmp_path / "run", f"train.init_from={path}"))
    cap = capsys.readouterr()
    assert rc == 1 and "train set" not in cap.out
    err = cap.err.strip()
    assert err.count("\n") == 0 and str(path) in err and "final_layer.weight" in err, err


# ------------------------------------------------------------------- the README -------

def test_the_readme_loader_snippet_runs_as_written(tmp_path, monkeypatch):
    """The first python block of "Using the loader in your own trainer", run as written in a
    folder holding what the set-up commands make (configs/, data/synthetic: here 6 images,
    one batch of 16 per epoch)."""
    snippet = doc_code("README.md", "## Using the loader in your own trainer")
    generate(str(tmp_path / "data" / "synthetic"), seed=1, num_train=6, num_val=2)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(snippet, "README.md", "exec"), ns)
    assert torch.isfinite(ns["loss"]) and ns["batch"]["image"].shape[0] == 16
    assert ns["epoch"] == ns["epochs"] - 1
