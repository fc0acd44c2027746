"""The README's training options, through train.py on a tiny synthetic dataset: one short
run (3 epochs) checked for ``train.val_every``, ``train.base_batch_size``,
``train.grad_clip``, ``train.cpu_threads`` and ``best.pt``; its resume (``best`` restored);
a run started from its weights (``train.init_from``). ``noda.start_epoch`` directly."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("nvidia.dali")
from conftest import read_jsonl, synthetic_data, train_argv, train_main  # noqa: E402
from dali_pose import load_config  # noqa: E402
from dali_pose.loader.plan import occlusion_probs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _args(d, out, *sets):
    return train_argv(d, out, "loader.batch_size=4", "loader.pipelines=1", "model.width=8",
                      "model.stem_width=8", *sets)


def _records(out):
    return read_jsonl(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 3-epoch run, validating every 2nd epoch and at the end, then its resume to 4."""
    d = synthetic_data(tmp_path_factory, num_train=4, num_val=2)
    out = tmp_path_factory.mktemp("run")
    main = train_main()
    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.nn.utils, "clip_grad_norm_",
               lambda params, max_norm, *a, **k: clips.append(max_norm)
               or real_clip(params, max_norm, *a, **k))
    import contextlib
    import io

    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            assert main(_args(d, out, "train.epochs=3", "train.val_every=2",
                              "train.base_batch_size=16", "train.grad_clip=0.5",
                              "train.cpu_threads=3")) == 0
            first = _records(out)
            best_first = torch.load(out / "best.pt", weights_only=False)
            assert main(_args(d, out, "train.epochs=4", "train.val_every=2",
                              "train.base_batch_size=16", "train.grad_clip=0.5",
                              "train.cpu_threads=3") + ["--resume", "auto"]) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return dict(data=d, out=out, text=text.getvalue(), clips=clips, first=first,
                best_first=best_first, main=main)


def test_val_every_validates_every_nth_epoch_and_the_last(run):
    validated = [r["epoch"] for r in run["first"] if "val/AP" in r]
    assert [r["epoch"] for r in run["first"]] == [0, 1, 2]
    assert validated == [1, 2]  # (epoch + 1) % 2 == 0, and the last epoch


def test_base_batch_size_scales_the_learning_rate(run):
    lr = load_config(str(ROOT / "configs" / "synthetic.yaml")).train.lr
    # linear scaling: lr * batch_size * world_size / base_batch_size = lr * 4 / 16
    assert f"lr {lr * 4 / 16:.2e}" in run["text"], run["text"][-2000:]


def test_grad_clip_clips_every_step(run):
    steps = sum(r["steps"] for r in _records(run["out"]))
    assert steps > 0 and run["clips"] == [0.5] * steps


def test_cpu_threads_sets_torchs_threads(run):
    assert "3 torch thread(s) per rank" in run["text"]


def test_best_pt_is_written_on_improvement_only(run):
    aps = {r["epoch"]: r["val/AP"] for r in run["first"] if "val/AP" in r}
    best_epoch = max(aps, key=lambda e: (aps[e], -e))  # the first of the highest
    best = run["best_first"]
    assert best["best"] == {"metric": "AP", "value": aps[best_epoch], "epoch": best_epoch}
    assert best["epoch"] == best_epoch + 1  # best.pt holds that epoch's weights
    flagged = [r["epoch"] for r in run["first"] if r.get("best")]
    improved = [e for e in sorted(aps) if aps[e] > max([aps[f] for f in aps if f < e],
                                                      default=-1.0)]
    assert flagged == improved


def test_resume_restores_the_best_so_far(run):
    out = run["out"]
    first_best = run["best_first"]["best"]
    records = _records(out)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    ap3 = records[3]["val/AP"]
    last = torch.load(out / "last.pt", weights_only=False)
    best = torch.load(out / "best.pt", weights_only=False)
    if ap3 > first_best["value"]:
        assert last["best"] == {"metric": "AP", "value": ap3, "epoch": 3}
        assert best["epoch"] == 4 and records[3].get("best")
    else:  # no improvement after the resume: the best of the first run stays, and best.pt
        assert last["best"] == first_best
        assert best["epoch"] == first_best["epoch"] + 1 and not records[3].get("best")


def test_init_from_starts_from_the_checkpoints_weights(run, tmp_path):
    """A run from the first run's model.pt with a vanishing learning rate ends with its
    weights; without init_from it would start from a fresh initialisation."""
    src = torch.load(run["out"] / "model.pt", weights_only=False)["model"]
    out = tmp_path / "init"
    assert run["main"](_args(run["data"], out, "train.epochs=1", "train.validate=false",
                             "train.lr=0.000000000001", f"train.init_from={run['out'] / 'model.pt'}")
                       + ["--max-batches", "1"]) == 0
    got = torch.load(out / "model.pt", weights_only=False)["model"]
    for name, w in src.items():
        if name.endswith("weight") and w.dim() == 4:  # convolutions: Adam moved them ~1e-12
            torch.testing.assert_close(got[name], w, rtol=0, atol=1e-6)


def test_noda_start_epoch_gates_the_noda_probability():
    cfg = load_config(None, ["noda.prob=0.7", "noda.start_epoch=3", "noda.pool=pool.npz",
                             "occlusion.method=aid",
                             "occlusion.prob=0.4", "occlusion.start_epoch=1"])
    assert [occlusion_probs(cfg, e) for e in range(5)] == [
        (0.0, 0.0), (0.4, 0.0), (0.4, 0.0), (0.4, 0.7), (0.4, 0.7)]
