"""PyTorch Lightning with the loader and no glue: the epoch comes from the trainer, a run
stopped mid-epoch and resumed from its checkpoint trains the very batches of the
uninterrupted run, validation gathers every instance once. Skips without Lightning."""
import numpy as np
import pytest

pytest.importorskip("lightning")
pytest.importorskip("nvidia.dali")

import lightning.pytorch as pl  # noqa: E402

from dali_pose import load_config  # noqa: E402
from dali_pose.integrations.lightning import PoseDataModule, PoseModule  # noqa: E402

from tiny_model import Tiny  # noqa: E402


class Recorder(PoseModule):
    def __init__(self, cfg):
        super().__init__(cfg, model=Tiny())
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["row"].tolist()))
        return super().training_step(batch, batch_idx)


class Crash(pl.Callback):
    """Stops the run (as a kill would) before step ``at`` starts."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_per_image import crowd_dataset

    index = crowd_dataset(tmp_path_factory.mktemp("lightning"),
                          people=(3, 2, 1, 3, 2, 4, 1, 2))
    cfg = load_config(None, ["loader.batch_size=3", "loader.shuffle_buffer=4",
                             "loader.drop_last=false", "loader.image_dtype=uint8",
                             "loader.pipelines=1"])
    return cfg, PoseDataModule(cfg, device="cpu", train_index=index, val_index=index,
                               log=None)


def trainer(tmp_path, epochs, callbacks=(), **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=list(callbacks),
                      default_root_dir=str(tmp_path), **kw)


def test_epochs_advance_and_validation_gathers_every_instance(data, tmp_path):
    cfg, dm = data
    module = Recorder(cfg)
    trainer(tmp_path, 2, enable_checkpointing=False).fit(module, datamodule=dm)
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        plan = loader._plan(epoch)
        assert [rows for e, rows in module.seen if e == epoch] == \
            [plan.batch_rows(k).tolist() for k in range(len(plan.batches))]
    assert module.seen[0][1] != [r for e, r in module.seen if e == 1][0]
    preds = module.predictions
    assert preds.done.all() and np.isfinite(preds.keypoints).all()


@pytest.mark.parametrize("stop", ["mid", "last"])
def test_resume_mid_epoch_trains_the_batches_of_the_uninterrupted_run(data, tmp_path, stop):
    cfg, dm = data
    whole = Recorder(cfg)
    trainer(tmp_path / "a", 2, enable_checkpointing=False, limit_val_batches=0).fit(
        whole, datamodule=dm)
    n = len(dm.train_dataloader()._plan(0).batches)
    k = 2 if stop == "mid" else n - 1  # steps done before the kill (epoch 0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), every_n_train_steps=k,
                                        save_top_k=-1)
    first = Recorder(cfg)
    with pytest.raises(RuntimeError, match="killed"):
        trainer(tmp_path / "b", 2, [ckpt, Crash(k)], limit_val_batches=0).fit(
            first, datamodule=dm)
    assert len(first.seen) == k
    path = sorted((tmp_path / "ck").glob(f"*step={k}*.ckpt"))[0]
    rest = Recorder(cfg)
    trainer(tmp_path / "c", 2, limit_val_batches=0, enable_checkpointing=False).fit(
        rest, datamodule=dm, ckpt_path=str(path))
    assert first.seen + rest.seen == whole.seen


DDP_SCRIPT = """
import json, os, sys
import lightning.pytorch as pl
from dali_pose import load_config
from dali_pose.integrations.lightning import PoseDataModule, PoseModule

mode, out, data, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

from tiny_model import Tiny


class Recorder(PoseModule):  # each rank appends (epoch, rows, a weight) per step to its file
    def training_step(self, batch, batch_idx):
        with open(os.path.join(out, f"{mode}.{self.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps([self.current_epoch, batch["row"].tolist(),
                                float(self.model.conv.weight.double().sum())]) + "\\n")
        if mode == "crash" and self.global_step == k:
            raise RuntimeError("killed")  # on every rank at the same step, as a kill
        return super().training_step(batch, batch_idx)


cfg = load_config(None, [f"data.train_ann={data}/annotations/person_keypoints_train.json",
                         f"data.train_images={data}/images/train",
                         f"data.val_ann={data}/annotations/person_keypoints_val.json",
                         f"data.val_images={data}/images/val", "loader.batch_size=2",
                         "loader.pipelines=1", "loader.num_threads=1",
                         "loader.image_dtype=uint8"])
callbacks = []
if mode == "crash":
    callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ck"),
                                                  every_n_train_steps=k, save_top_k=-1))
trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
                     enable_checkpointing=mode == "crash", default_root_dir=out)
ckpt = None
if mode == "resume":
    ckpt = [os.path.join(out, "ck", f) for f in os.listdir(os.path.join(out, "ck"))
            if f"step={k}" in f][0]
trainer.fit(Recorder(cfg, model=Tiny()), datamodule=PoseDataModule(cfg, device="cpu", log=None),
            ckpt_path=ckpt)
"""


@pytest.mark.slow
def test_two_rank_ddp_killed_mid_epoch_resumes_batch_for_batch(tmp_path):
    """Trainer(strategy="ddp"), 2 CPU processes: stopped at step 2 of epoch 0 on both
    ranks, resumed from the checkpoint of step 2: each rank trains the batches of the
    uninterrupted run, in order, with the same weights before each step."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dali_pose.tools.synthetic import generate

    root = Path(__file__).resolve().parents[1]
    generate(str(tmp_path / "syn"), seed=1, num_train=6, num_val=2)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]),
               OMP_NUM_THREADS="1")
    k = 2
    for mode in ("whole", "crash", "resume"):
        p = subprocess.run([sys.executable, str(script), mode, str(tmp_path),
                            str(tmp_path / "syn"), str(k)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
        assert (p.returncode == 0) == (mode != "crash"), (mode, (p.stdout + p.stderr)[-4000:])

    def seen(mode, rank):
        path = tmp_path / f"{mode}.{rank}.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()]

    for rank in (0, 1):
        whole, crash, rest = seen("whole", rank), seen("crash", rank), seen("resume", rank)
        assert len(crash) == k + 1  # steps 0..k-1 trained, step k began and was killed
        assert len(whole) > k + 1 and [e for e, _, _ in whole].count(0) > k
        assert crash[:k] + rest == whole
    rows = [set(r for e, rs, w in seen("whole", rank) if e == 0 for r in rs)
            for rank in (0, 1)]
    assert not rows[0] & rows[1]  # disjoint shards
