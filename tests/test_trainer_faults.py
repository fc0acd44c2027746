"""Faults a training run must survive without losing or mixing anything: a second run on the
same out_dir, a re-run into a finished one, a kill between an epoch's writes, SIGTERM /
SIGINT (preemption), a full disk, a NaN loss, damaged and hostile weight files.

Runs of train.py go through a small driver (written by the test) that imports train.py and
injects the fault by replacing one function: a kill exactly between two writes, a signal at
an exact step, no timing races."""
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dali_pose.engine import checkpoint, outdir
from dali_pose.engine.checkpoint import (CheckpointWriteError, complete_epoch,
                                         read_training_checkpoint, remove_temp_files,
                                         save_atomic)
from dali_pose.engine.stopping import StopRequest
from dali_pose.errors import ConfigError, WeightsError
from dali_pose.models.weights import load_state, read_weights_file

pytest.importorskip("nvidia.dali")
from conftest import (SMALL_LOADER, read_jsonl, start_train, synthetic_data,  # noqa: E402
                      train_argv)

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from dali_pose.engine import checkpoint

kind, *arg = os.environ["FAULT"].split(":")
if kind == "kill_after_last":  # SIGKILL right after last.pt of an epoch: no best.pt, no line
    real = checkpoint.save_atomic
    def save_atomic(obj, path):
        real(obj, path)
        if path.endswith("last.pt") and obj["epoch"] == int(arg[0]):
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_atomic = save_atomic
elif kind == "signal_at":  # the signal arrives during training step number arg[1] (1-based)
    real_loss, calls = train.pose_loss, [0]
    def pose_loss(*a, **k):
        calls[0] += 1
        if calls[0] == int(arg[1]):
            os.kill(os.getpid(), getattr(signal, arg[0]))
        return real_loss(*a, **k)
    train.pose_loss = pose_loss
sys.exit(train.main(sys.argv[1:]))
"""


# ------------------------------------------------------------------ unit: files ------

def _state(v: float, epoch: int = 1, record=None) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "epoch": epoch, "config": {}, "best": None,
            "record": record or {}}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_a_malicious_checkpoint_names_the_reason_and_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({**_state(1.0), "model": _Evil()}, str(path))
    for read in (read_training_checkpoint, read_weights_file):
        with pytest.raises(WeightsError) as e:
            read(str(path))
        msg = str(e.value)
        assert "\n" not in msg and "last.pt" in msg
        assert "posix.system" in msg and "refused" in msg, msg
        assert "weights_only" not in msg and "truncated" not in msg, msg


def test_non_finite_weights_are_a_load_error_naming_file_and_tensor(tmp_path):
    from dali_pose import build_model
    from dali_pose.config import load_config
    from dali_pose.models import describe_model
    from dali_pose.models.weights import load_backbone

    cfg = load_config(str(ROOT / "configs" / "synthetic.yaml"))
    model = build_model(cfg)
    state = model.state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][3]
    state[name] = state[name].clone()
    state[name].view(-1)[1] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, str(path))
    with pytest.raises(WeightsError) as e:
        load_state(build_model(cfg), state, str(path), describe_model(cfg))
    assert str(path) in str(e.value) and name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WeightsError, match=name):
        load_backbone(build_model(cfg), str(path))
    state[name].view(-1)[1] = float("inf")
    with pytest.raises(WeightsError, match="non-finite"):
        load_state(build_model(cfg), state, str(path), describe_model(cfg))


def test_disk_full_while_writing_a_checkpoint_is_one_line_and_keeps_the_old(tmp_path,
                                                                          monkeypatch):
    """The temporary file is /dev/full: torch.save raises its RuntimeError wrapping the
    OSError, as on a real full disk."""
    path = tmp_path / "last.pt"
    save_atomic(_state(1.0), str(path))
    real = checkpoint.tempfile.mkstemp

    def full(prefix, suffix, dir):
        fd, tmp = real(prefix=prefix, suffix=suffix, dir=dir)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, tmp

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full)
    with pytest.raises(CheckpointWriteError) as e:
        save_atomic(_state(2.0), str(path))
    monkeypatch.undo()
    msg = str(e.value)
    assert msg == f"cannot write {path}: No space left on device; the previous last.pt is " \
                  f"unchanged", msg
    assert isinstance(e.value, OSError)
    assert read_training_checkpoint(str(path))["model"]["w"][0] == 1.0
    assert os.listdir(tmp_path) == ["last.pt"]


def test_temp_files_of_killed_writes_are_removed(tmp_path):
    for name in ("last.pt.ab12cd.tmp", "best.pt.x9.tmp", "metrics.jsonl.q1w2.tmp",
                 "model.pt.zz.tmp", "notes.txt", "last.pt", "mine.tmp", "data.pt.x.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_temp_files(str(tmp_path)) == ["best.pt.x9.tmp", "last.pt.ab12cd.tmp",
                                                "metrics.jsonl.q1w2.tmp", "model.pt.zz.tmp"]
    # only the leftovers of train.py's own writes go
    assert sorted(os.listdir(tmp_path)) == ["data.pt.x.tmp", "last.pt", "mine.tmp",
                                            "notes.txt"]


def test_checkpoints_get_the_mode_of_any_new_file(tmp_path):
    """Not mkstemp's 0o600: a checkpoint is as readable as a plain torch.save would leave it."""
    old = os.umask(0o022)
    try:
        save_atomic(_state(1.0), str(tmp_path / "best.pt"))
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "best.pt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o644


def test_a_corrupt_last_pt_offers_best_pt(tmp_path):
    save_atomic(_state(1.0, epoch=3), str(tmp_path / "best.pt"))
    (tmp_path / "last.pt").write_bytes(b"\x80\x02 torn")
    with pytest.raises(WeightsError) as e:
        read_training_checkpoint(str(tmp_path / "last.pt"))
    msg = str(e.value)
    assert "\n" not in msg and f"--resume {tmp_path / 'best.pt'}" in msg
    assert "after epoch 2" in msg  # 3 epochs done: the last one was epoch 2
    for odd in ("x", None, float("nan"), 10**5000):  # a best.pt with an odd epoch: not offered
        save_atomic({"epoch": odd}, str(tmp_path / "best.pt"))
        with pytest.raises(WeightsError) as e:
            read_training_checkpoint(str(tmp_path / "last.pt"))
        assert "best.pt" not in str(e.value) and len(str(e.value)) < 400


def test_complete_epoch_restores_best_pt_and_the_metrics_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"epoch": 0, "loss": 1.0}) + "\n" + '{"epoch": 1, "lo')
    record = {"epoch": 1, "loss": 0.5, "val/AP": 0.25, "best": True}
    state = _state(2.0, epoch=2, record=record)
    save_atomic(_state(1.0, epoch=1), str(tmp_path / "best.pt"))  # the previous best
    said = []
    done = complete_epoch(state, str(tmp_path), str(metrics), said.append)
    assert done == ["metrics.jsonl line of epoch 1", "best.pt of epoch 1"]
    assert [json.loads(x) for x in metrics.read_text().splitlines()] == [
        {"epoch": 0, "loss": 1.0}, record]
    assert read_training_checkpoint(str(tmp_path / "best.pt"))["epoch"] == 2
    assert len(said) == 1
    assert complete_epoch(state, str(tmp_path), str(metrics)) == []  # idempotent


def test_a_resume_from_an_older_checkpoint_sets_aside_the_lines_of_later_epochs(tmp_path):
    """--resume best.pt (what a corrupt last.pt's error offers) after epoch 0 of a run that
    went on to epoch 2: epochs 1 and 2 train again, so their old lines move aside (kept) and
    every epoch has one line in metrics.jsonl."""
    metrics = tmp_path / "metrics.jsonl"
    old = [{"epoch": e, "loss": 1.0 - e / 10} for e in range(3)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in old))
    record = {"epoch": 0, "loss": 1.0, "val/AP": 0.5, "best": True}
    state = _state(1.0, epoch=1, record=record)
    save_atomic(state, str(tmp_path / "best.pt"))
    said = []
    assert complete_epoch(state, str(tmp_path), str(metrics), said.append) == []
    assert read_jsonl(metrics) == old[:1]
    assert read_jsonl(tmp_path / checkpoint.SUPERSEDED) == old[1:]
    assert len(said) == 1 and "epoch(s) 1, 2 moved to" in said[0], said
    # a part-way checkpoint of epoch 1 holds epoch 0 only, too
    metrics.write_text("".join(json.dumps(r) + "\n" for r in old))
    partial = {**_state(1.0, epoch=1), "partial": {"steps": 2}}
    complete_epoch(partial, str(tmp_path), str(metrics))
    assert read_jsonl(metrics) == old[:1]
    assert read_jsonl(tmp_path / checkpoint.SUPERSEDED) == old[1:] * 2  # appended, kept


def test_the_out_dir_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    f = outdir.lock(str(tmp_path))
    with pytest.raises(outdir.OutDirBusy) as e:
        outdir.lock(str(tmp_path))
    assert f"pid {os.getpid()}" in str(e.value) and "\n" not in str(e.value)
    f.close()
    outdir.lock(str(tmp_path)).close()
    # a process holding it is SIGKILLed: the lock goes with it
    code = ("import sys, time; from dali_pose.engine import outdir; "
            f"f = outdir.lock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(outdir.OutDirBusy, match=f"pid {p.pid}"):
        outdir.lock(str(tmp_path))
    p.kill()
    p.wait()
    outdir.lock(str(tmp_path)).close()


def test_a_fresh_run_into_a_used_out_dir_is_refused_or_overwritten(tmp_path):
    assert outdir.check_fresh(str(tmp_path), None, False) == []
    for name in ("metrics.jsonl", "last.pt", "train.log", "mine.txt"):
        (tmp_path / name).write_text("x")
    for name in ("tb/events.out.tfevents.1.host", "tb/sub/events.out.tfevents.2.host",
                 "tb/notes.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError) as e:
        outdir.check_fresh(str(tmp_path), None, False)
    msg = str(e.value)
    assert "--resume auto" in msg and "--overwrite" in msg and "another out_dir" in msg
    assert "last.pt, metrics.jsonl" in msg and "\n" not in msg
    assert sorted(outdir.check_fresh(str(tmp_path), None, True)) == [
        "last.pt", "metrics.jsonl", "tb/ (its event files)", "train.log"]
    # what train.py did not write stays, in tb/ too (a run copied into tb/sub to compare)
    assert sorted(os.listdir(tmp_path)) == ["mine.txt", "tb"]
    assert sorted(os.listdir(tmp_path / "tb")) == ["notes.md", "sub"]
    assert os.listdir(tmp_path / "tb" / "sub") == ["events.out.tfevents.2.host"]
    (tmp_path / "last.pt").write_text("x")
    (tmp_path / "tb" / "notes.md").unlink()
    shutil.rmtree(tmp_path / "tb" / "sub")
    (tmp_path / "tb" / "events.out.tfevents.3.host").write_text("x")
    assert outdir.check_fresh(str(tmp_path), None, True) == ["last.pt",
                                                             "tb/ (its event files)"]
    assert os.listdir(tmp_path) == ["mine.txt"]  # tb/ held only event files: gone


def test_a_resume_from_another_folder_is_not_mixed_into_a_used_out_dir(tmp_path):
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    other.mkdir()
    save_atomic(_state(1.0), str(out / "last.pt"))
    save_atomic(_state(1.0), str(other / "best.pt"))
    outdir.check_resume_from(str(out), str(out / "last.pt"))  # its own: fine
    outdir.check_resume_from(str(tmp_path / "new"), str(other / "best.pt"))  # empty: fine
    with pytest.raises(ConfigError) as e:
        outdir.check_resume_from(str(out), str(other / "best.pt"))
    assert "already has another run (it holds last.pt)" in str(e.value)
    assert "new out_dir" in str(e.value) and "\n" not in str(e.value)


def test_a_signal_is_caught_not_raised():
    with StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert stop.requested() and stop.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_ends_the_process_at_once_without_a_traceback():
    code = ("import os, signal, time\n"
            "from dali_pose.engine.stopping import StopRequest\n"
            "with StopRequest() as stop:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.05)\n"
            "    print(stop.signal_name, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "print('not reached')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert p.returncode == 128 + signal.SIGINT
    assert p.stdout == "SIGTERM\n"
    assert p.stderr.strip() == "SIGINT again: stopping now (the checkpoints on disk are whole)"


# ------------------------------------------------------------------- train.py ------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=6, num_val=2)


def _args(d, out, *extra):
    return train_argv(d, out, *SMALL_LOADER, "train.epochs=2", *extra)


def _start(args, fault=None, driver=None):
    """train.py, or with ``fault`` the driver injecting it (``FAULT`` in its environment)."""
    env = {"OMP_NUM_THREADS": "1", **({"FAULT": fault} if fault else {})}
    return start_train(args, script=driver if fault else None, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(p, timeout=600):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _model(path):
    return torch.load(path, weights_only=True)["model"]


def _same_weights(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


_KEYS = ("epoch", "steps", "loss", "lr", "samples", "unique_samples", "val/AP", "best")


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """One chain of runs shared by the tests below (each train.py run costs ~25 s of numba
    compiling on this machine): the uninterrupted run (2 epochs of 4 steps, validating) and,
    beside it, one SIGKILLed right after epoch 0's last.pt (before best.pt and the metrics
    line), with a second train.py started on its out_dir while it runs; then, on the killed
    out_dir, a re-run without --resume, a --resume auto that gets SIGTERM during epoch 1
    step 2, a --resume auto to the end, and one asking for fewer epochs than were done."""
    base = tmp_path_factory.mktemp("runs")
    driver = base / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    killed = base / "killed"
    procs = {"whole": _start(_args(tiny, base / "whole")),
             "killed": _start(_args(tiny, killed), "kill_after_last:1", driver)}
    lock = killed / outdir.LOCK
    deadline = time.time() + 300
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    res = {"second": _finish(_start(_args(tiny, killed)))}
    res.update({k: _finish(p) for k, p in procs.items()})
    res["after_kill"] = {"files": sorted(os.listdir(killed)),
                         "lines": read_jsonl(killed / "metrics.jsonl")}
    (killed / "best.pt.k1ll3d.tmp").write_bytes(b"half")  # a killed write's leftover
    res["fresh"] = _finish(_start(_args(tiny, killed)))
    # the resume's second training step is epoch 1 step 2
    res["term"] = _finish(_start(_args(tiny, killed) + ["--resume", "auto"],
                                 "signal_at:SIGTERM:2", driver))
    res["after_term"] = {"files": sorted(os.listdir(killed)),
                         "lines": read_jsonl(killed / "metrics.jsonl"),
                         "best_epoch": torch.load(killed / "best.pt", weights_only=True)[
                             "epoch"] if (killed / "best.pt").exists() else None,
                         "last_epoch": torch.load(killed / "last.pt",
                                                  weights_only=True)["epoch"]}
    res["resumed"] = _finish(_start(_args(tiny, killed) + ["--resume", "auto"]))
    res["fewer"] = _finish(_start(_args(tiny, killed, "train.epochs=1") + ["--resume", "auto"]))
    return base, res


def test_a_second_run_on_a_busy_out_dir_refuses_in_one_line(runs):
    base, res = runs
    rc, out, err = res["second"]
    assert rc == 1, out + err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: ") and "is in use by another train.py" in err, err
    assert "train set" not in out  # refused before building anything


def test_a_kill_between_the_writes_of_an_epoch_loses_nothing(runs):
    """After the kill: last.pt, no best.pt, no metrics line. A re-run without --resume is
    refused (the dead run's lock does not block it); --resume auto restores best.pt and the
    line of epoch 0 and removes the leftover temp file; the end equals the uninterrupted
    run: weights, best.pt and every metrics line."""
    base, res = runs
    assert res["whole"][0] == 0, res["whole"][2][-3000:]
    assert res["killed"][0] == -signal.SIGKILL, res["killed"][2][-3000:]
    assert "last.pt" in res["after_kill"]["files"]
    assert "best.pt" not in res["after_kill"]["files"] and res["after_kill"]["lines"] == []

    rc, out, err = res["fresh"]
    assert rc == 1 and err.count("\n") == 1, err
    assert "--resume auto" in err and "--overwrite" in err and "another out_dir" in err

    rc, out, err = res["term"]
    assert "resuming" in out and "epochs 0-0 done, continuing with epoch 1" in out, out
    assert "restored from the checkpoint: metrics.jsonl line of epoch 0, best.pt of epoch 0" \
        in out and "best.pt.k1ll3d.tmp" in out, out
    after = res["after_term"]
    assert not [f for f in after["files"] if f.endswith(".tmp")]
    assert [r["epoch"] for r in after["lines"]] == [0] and after["best_epoch"] == 1

    rc, out, err = res["resumed"]
    assert rc == 0, err[-3000:]
    whole, killed = base / "whole", base / "killed"
    lw, lk = read_jsonl(whole / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["epoch"] for r in lk] == [0, 1]
    assert [{k: r.get(k) for k in _KEYS} for r in lk] == \
        [{k: r.get(k) for k in _KEYS} for r in lw]
    for name in ("best.pt", "model.pt"):
        assert _same_weights(_model(whole / name), _model(killed / name)), name
    assert torch.load(killed / "best.pt", weights_only=True)["epoch"] == \
        torch.load(whole / "best.pt", weights_only=True)["epoch"]
    log = (killed / "train.log").read_text()
    assert log.count("resuming") == 2 and "epoch 1:" in log and "SIGTERM" in log


def test_sigterm_finishes_the_step_and_exits_0_keeping_the_last_epoch(runs):
    base, res = runs
    rc, out, err = res["term"]
    assert rc == 0, err[-3000:]
    assert "Traceback" not in out + err
    line = out.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGTERM at epoch 1 step 2 of 4"), out[-2000:]
    assert "--resume auto continues with epoch 1" in line
    assert res["after_term"]["last_epoch"] == 1
    assert "model.pt" not in res["after_term"]["files"]
    # and the run resumed from there ends equal to the uninterrupted one (test above)


def test_resuming_with_fewer_epochs_than_done_is_refused(runs):
    rc, out, err = runs[1]["fewer"]
    assert rc == 1 and err.count("\n") == 1, err
    assert "train.epochs" in err and "holds 2 epochs" in err, err
