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
from test_trainer_faults import (DRIVER, ROOT, _args, _finish, _lines, _model,  # noqa: E402
                                 _same_weights, _start)

from dali_pose.tools.synthetic import generate  # noqa: E402

# ~2.5 min on a shared 2-core machine; the default run's test_trainer_faults chain also
# resumes a SIGTERM part-way through an epoch (with validation and best.pt)
pytestmark = pytest.mark.slow

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
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    generate(str(d), seed=1, num_train=6, num_val=2)
    base = tmp_path_factory.mktemp("pre")
    driver = base / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    whole, out = base / "whole", base / "out"
    res = {"data": d, "whole": _main(_args(d, whole, "train.validate=false"))}
    args = _args(d, out, "train.validate=false", "train.ckpt_every_steps=2")
    res["killed"] = _finish(_start(args, "signal_at:SIGKILL:3", driver))
    res["after_kill"] = torch.load(out / "last.pt", weights_only=True)
    res["lines_after_kill"] = _lines(out / "metrics.jsonl")
    mp = pytest.MonkeyPatch()
    res["term"] = _main(args + ["--resume", "auto"], sigterm_at=4, monkeypatch=mp)
    res["after_term"] = torch.load(out / "last.pt", weights_only=True)
    res["lines_after_term"] = _lines(out / "metrics.jsonl")
    res["files_after_term"] = sorted(os.listdir(out))
    res["resumed"] = _main(args + ["--resume", "auto"])
    return whole, out, res


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
    lw, lo = _lines(whole / "metrics.jsonl"), _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in lo] == [0, 1]
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]
    assert all(r["unique_samples"] == r["samples"] == 16 for r in lo)


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
    assert _lines(tmp_path / "run" / "metrics.jsonl") == []
    assert _main(args + ["--resume", "auto"]) == 0
    assert _same_weights(_model(whole / "model.pt"), _model(tmp_path / "run" / "model.pt"))
    lw, lo = _lines(whole / "metrics.jsonl"), _lines(tmp_path / "run" / "metrics.jsonl")
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]


def _torchrun(args, fault=None, driver=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(ROOT / "train.py")
    if fault:
        env["FAULT"], script = fault, str(driver)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_two_ranks_stopped_part_way_resume_equal_to_the_uninterrupted_run(tmp_path):
    """torchrun, 2 CPU ranks: SIGTERM on both during epoch 0 step 3, then --resume auto:
    each rank continues its own shard at batch 3; weights and metrics lines equal."""
    d = tmp_path / "syn"
    generate(str(d), seed=1, num_train=6, num_val=2)
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
    lw, lo = _lines(whole / "metrics.jsonl"), _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in lo] == [0, 1] and all(r["ranks_in_sync"] for r in lo)
    assert [{k: r[k] for k in _KEYS} for r in lo] == [{k: r[k] for k in _KEYS} for r in lw]
