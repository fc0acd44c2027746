"""train.py stopped part-way through an epoch continues at the next step of that epoch.

One chain on the tiny synthetic set (2 epochs of 4 steps, no validation: the validating
chain of ``test_trainer_faults`` resumes part-way too): a run with
``train.ckpt_every_steps=2`` SIGKILLed during epoch 0 step 3 (its last.pt: epoch 0 after 2
steps), ``--resume auto`` stopped by SIGTERM after epoch 1 step 2, ``--resume auto`` to the
end; the weights and every metrics line equal the uninterrupted run's, bit for bit. The
kill and the signal land at exact steps (the fault driver of ``test_trainer_faults``
replaces ``train.pose_loss``), so nothing depends on timing.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("nvidia.dali")
import train  # noqa: E402
from test_trainer_faults import _state as a_checkpoint  # noqa: E402
from conftest import ROOT, read_jsonl, synthetic_data  # noqa: E402
from test_trainer_faults import (DRIVER, _args, _finish, _model, _same_weights,  # noqa: E402
                                 _start)

from dali_pose.engine.checkpoint import read_training_checkpoint, save_atomic  # noqa: E402
from dali_pose.engine.distributed import Dist  # noqa: E402
from dali_pose.errors import ConfigError, WeightsError  # noqa: E402

# The runs of train.py are slow (2-3 min on a shared 2-core machine); the default run's
# test_trainer_faults chain also resumes a SIGTERM part-way through an epoch (with
# validation and best.pt).

_KEYS = ("epoch", "steps", "loss", "lr", "samples", "unique_samples")


def _main(argv, sigterm_at=None, monkeypatch=None):
    """train.main in this process; SIGTERM arrives during its training step ``sigterm_at``."""
    if sigterm_at is not None:
        real, calls = train.pose_loss, [0]

        def pose_loss(*a, **k):
            calls[0] += 1
            if calls[0] == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)

        monkeypatch.setattr(train, "pose_loss", pose_loss)
    try:
        return train.main(argv)
    finally:
        if sigterm_at is not None:
            monkeypatch.undo()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_data(tmp_path_factory, num_train=6, num_val=2)


@pytest.fixture(scope="module")
def chain(tiny, tmp_path_factory):
    d = tiny
    base = tmp_path_factory.mktemp("pre")
    driver = base / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    whole, out = base / "whole", base / "out"
    res = {"data": d, "whole": _main(_args(d, whole, "train.validate=false"))}
    args = _args(d, out, "train.validate=false", "train.ckpt_every_steps=2")
    res["killed"] = _finish(_start(args, "signal_at:SIGKILL:3", driver))
    res["after_kill"] = torch.load(out / "last.pt", weights_only=True)
    res["lines_after_kill"] = read_jsonl(out / "metrics.jsonl")
    mp = pytest.MonkeyPatch()
    res["term"] = _main(args + ["--resume", "auto"], sigterm_at=4, monkeypatch=mp)
    res["after_term"] = torch.load(out / "last.pt", weights_only=True)
    res["lines_after_term"] = read_jsonl(out / "metrics.jsonl")
    res["files_after_term"] = sorted(os.listdir(out))
    res["resumed"] = _main(args + ["--resume", "auto"])
    return whole, out, res


@pytest.mark.slow
def test_a_sigkill_resumes_from_the_last_periodic_checkpoint(chain):
    whole, out, res = chain
    assert res["whole"] == 0
    assert res["killed"][0] == -signal.SIGKILL, res["killed"][2][-3000:]
    last = res["after_kill"]
    # every 2 steps: epoch 0 step 2 was saved, step 3 was lost with the process
    assert last["epoch"] == 0 and last["loader"]["epoch"] == 0
    assert last["loader"]["batch"] == 2 and last["partial"]["steps"] == 2
    assert len(last["partial"]["ranks"][0]["rows"]) == 2 * 4  # 2 batches of 4 people
    assert last["scheduler"]["last_epoch"] == 2  # the schedule stepped once per step
    assert res["lines_after_kill"] == [] and not (out / "best.pt").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_loader_position_and_exits_0(chain):
    whole, out, res = chain
    assert res["term"] == 0
    last = res["after_term"]
    # resumed at epoch 0 step 3; its 4th step is epoch 1 step 2
    assert last["epoch"] == 1 and last["loader"]["epoch"] == 1
    assert last["loader"]["batch"] == 2 and last["partial"]["steps"] == 2
    assert last["record"] == {} and "model.pt" not in res["files_after_term"]
    assert [r["epoch"] for r in res["lines_after_term"]] == [0]
    log = (out / "train.log").read_text()
    assert "no epoch done and 2 steps of epoch 0, continuing with epoch 0 step 3" in log
    assert (f"stopped by SIGTERM at epoch 1 step 2 of 4; {out / 'last.pt'} holds it: "
            f"--resume auto continues with epoch 1 step 3") in log


@pytest.mark.slow
def test_the_resumed_run_equals_the_uninterrupted_one_bit_for_bit(chain):
    whole, out, res = chain
    assert res["resumed"] == 0
    assert "epochs 0-0 done and 2 steps of epoch 1, continuing with epoch 1 step 3" in \
        (out / "train.log").read_text()
    for name in ("model.pt", "last.pt"):
        assert _same_weights(_model(whole / name), _model(out / name)), name
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert "partial" not in b and b["loader"] == a["loader"] and b["epoch"] == 2
    assert b["scheduler"] == a["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # one line per epoch, none twice, none missing; the partial epochs' sums carried over
    lw, lo = read_jsonl(whole / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in lo] == [0, 1]
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]
    assert all(r["unique_samples"] == r["samples"] == 16 for r in lo)


@pytest.mark.slow
def test_stopped_after_an_epochs_last_step_resumes_with_its_end(chain, tmp_path):
    """SIGTERM during epoch 0's last step: last.pt holds all 4 steps of it and no epoch
    end; the resume trains nothing more of epoch 0, ends it (its metrics line) and goes on
    to the uninterrupted run's weights."""
    whole, out, res = chain
    args = _args(res["data"], tmp_path / "run", "train.validate=false")
    mp = pytest.MonkeyPatch()
    assert _main(args, sigterm_at=4, monkeypatch=mp) == 0
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and last["partial"]["steps"] == 4
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == []
    assert _main(args + ["--resume", "auto"]) == 0
    assert _same_weights(_model(whole / "model.pt"), _model(tmp_path / "run" / "model.pt"))
    lw, lo = read_jsonl(whole / "metrics.jsonl"), read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]


def _torchrun(args, fault=None, driver=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(ROOT / "train.py")
    if fault:
        env["FAULT"], script = fault, str(driver)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_ranks_stopped_part_way_resume_equal_to_the_uninterrupted_run(tiny, tmp_path):
    """torchrun, 2 CPU ranks: SIGTERM on both during epoch 0 step 3, then --resume auto:
    each rank continues its own shard at batch 3; weights and metrics lines equal."""
    d = tiny
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    extra = ("train.validate=false", "loader.batch_size=2")
    whole, out = tmp_path / "whole", tmp_path / "out"
    p = _torchrun(_args(d, whole, *extra))
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    p = _torchrun(_args(d, out, *extra), "signal_at:SIGTERM:3", driver)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["loader"]["batch"] == 3 and last["loader"]["num_shards"] == 2
    ranks = last["partial"]["ranks"]
    assert len(ranks) == 2 and not set(ranks[0]["rows"]) & set(ranks[1]["rows"])
    p = _torchrun(_args(d, out, *extra) + ["--resume", "auto"])
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "continuing with epoch 0 step 4" in p.stdout
    assert _same_weights(_model(whole / "model.pt"), _model(out / "model.pt"))
    lw, lo = read_jsonl(whole / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in lo] == [0, 1] and all(r["ranks_in_sync"] for r in lo)
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]


# ------------------------------------------------------------------------- unit ------

def _part_way(epoch=1, steps=3, ranks=1):
    state = a_checkpoint(0.5, epoch=epoch)
    state["loader"] = {"epoch": epoch, "batch": steps, "seed": 0, "shard_id": 0,
                       "num_shards": ranks, "batch_size": 4}
    state["partial"] = {"steps": steps, "seconds": 1.0, "data_wait": 0.1, "ranks": [
        {"loss_sum": 0.25, "samples": 4 * steps, "rows": list(range(4 * steps))}] * ranks}
    return state


def test_a_damaged_part_way_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(_part_way(), str(path))
    assert read_training_checkpoint(str(path))["partial"]["steps"] == 3
    broken = _part_way()
    del broken["partial"]["data_wait"]
    wrong = _part_way()
    wrong["partial"]["ranks"] = [{"loss_sum": "0.25", "samples": 12, "rows": []}]
    for damage in ({"partial": {"steps": 3}}, {"loader": {"epoch": 1, "batch": 2}},
                   {"loader": {"epoch": 0, "batch": 3}}, {"partial": broken["partial"]},
                   {"partial": wrong["partial"]},
                   {"partial": {**_part_way()["partial"], "epoch_steps": 2}}):
        save_atomic({**_part_way(), **damage}, str(path))
        with pytest.raises(WeightsError, match="part-way checkpoint") as e:
            read_training_checkpoint(str(path))
        assert "\n" not in str(e.value) and str(path) in str(e.value)


class _Loader:
    def __init__(self):
        self.loaded = None

    def load_state_dict(self, state):
        if state["seed"] != 7:
            raise ValueError("load_state_dict: seed=0, this loader has seed=7")
        self.loaded = state


def test_a_part_way_checkpoint_resumes_only_with_its_ranks_and_plan():
    """Another number of ranks is refused in one line naming the count to use; the
    loader's own refusal (another seed) becomes a one-line ConfigError naming the file;
    the resume point is said in words."""
    with pytest.raises(ConfigError, match=r"with 2 rank\(s\); continue it with 2 "
                                          r"\(torchrun --nproc_per_node 2\)"):
        train._resume_loader(_Loader(), _part_way(ranks=2), Dist(), "out/last.pt")
    with pytest.raises(ConfigError, match="^out/last.pt: load_state_dict: seed=0"):
        train._resume_loader(_Loader(), _part_way(), Dist(), "out/last.pt")
    assert train._resume_point(_part_way(), 2) == \
        "epochs 0-0 done and 3 steps of epoch 1, continuing with epoch 1 step 4"
    assert train._resume_point(_part_way(), 1) == "all 1 epochs are done"
    whole = _part_way()
    whole["partial"]["epoch_steps"] = 3  # stopped after the epoch's last step
    assert train._resume_point(whole, 2) == \
        "epochs 0-0 done and all 3 steps of epoch 1, continuing with its end"
    train._check_epochs(_part_way(), 2, "out/last.pt")
    with pytest.raises(ConfigError, match="stopped part-way through epoch 1; set "
                                          "train.epochs >= 2"):
        train._check_epochs(_part_way(), 1, "out/last.pt")
    with pytest.raises(ConfigError, match="already holds 1 epochs"):
        train._check_epochs(a_checkpoint(0.5, epoch=1), 0, "out/last.pt")
    assert train._resume_point(a_checkpoint(0.5, epoch=1), 2) == \
        "epochs 0-0 done, continuing with epoch 1"


def test_ckpt_every_steps_is_checked_at_load():
    from dali_pose import load_config

    assert load_config(None).train.ckpt_every_steps == 0  # off unless asked for
    assert load_config(None, ["train.ckpt_every_steps=500"]).train.ckpt_every_steps == 500
    for bad, why in (("-1", "must be >= 0"), ("1.5", "expected an integer")):
        with pytest.raises(ConfigError, match=f"'train.ckpt_every_steps': {why}"):
            load_config(None, [f"train.ckpt_every_steps={bad}"])
