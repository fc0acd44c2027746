"""PyTorch Lightning glue (``pip install -e ".[lightning]"``): :class:`PoseDataModule` and
a small :class:`PoseModule`.

:class:`PoseDataModule` builds the train and val loaders in ``setup()`` on the trainer's
rank and world size (``trainer.global_rank`` / ``trainer.world_size``: a disjoint shard
each). Nothing else is needed from the user: Lightning calls ``loader.sampler.set_epoch``
at every epoch start (restarts included), and saves and restores the train loader's
``state_dict()`` in its checkpoints (the stateful-dataloader protocol), so a run resumed
from a mid-epoch checkpoint goes on with the batches the interrupted epoch had left.
Validation: every rank yields the same number of batches (``batch["valid"]`` marks the
padding rows), so ``self.log(..., sync_dist=True)`` and ``all_gather`` work;
:class:`PoseModule` collects each rank's predictions and gathers them to rank 0, each
instance once (:func:`dali_pose.integrations.gather.gather_predictions`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # the optional extra
    raise ImportError("dali_pose.integrations.lightning needs PyTorch Lightning: "
                      "pip install -e \".[lightning]\"") from e

from ..codecs import build_codec
from ..evaluation.inference import Predictions
from ..models import build_model
from ..models.losses import pose_loss
from ..normalize import normalize_images
from .gather import gather_predictions


class PoseDataModule(pl.LightningDataModule):
    """The train and val loaders of ``cfg`` for a Lightning ``Trainer``.

    ``device``: the loader backend ('cpu' or 'gpu', default ``cfg.loader.device``; with
    'gpu' each rank uses its current CUDA device); ``train_index`` / ``val_index``: prebuilt
    dataset indexes (default: read from ``cfg.data``). The loaders are built once per rank
    and world size and kept (building one compiles the DALI graph).
    """

    def __init__(self, cfg, device: Optional[str] = None, train_index=None, val_index=None,
                 log=print):
        super().__init__()
        self.cfg, self.device = cfg, device
        self._index = {"train": train_index, "val": val_index}
        self._log = log
        self._loaders = {}  # split -> loader
        self._where = None  # (rank, world size) the loaders were built for

    def _rank_world(self):
        t = self.trainer
        return (0, 1) if t is None else (int(t.global_rank), int(t.world_size))

    def setup(self, stage: Optional[str] = None) -> None:
        from ..loader import build_loader

        where = self._rank_world()
        if where != self._where:
            self._loaders, self._where = {}, where
        splits = ("train", "val") if stage in (None, "fit") else ("val",)
        for split in splits:
            if split not in self._loaders:
                self._loaders[split] = build_loader(
                    self.cfg, split, device=self.device, shard_id=where[0],
                    num_shards=where[1], index=self._index[split],
                    log=self._log if where[0] == 0 else None)

    def train_dataloader(self):
        return self._loaders["train"]

    def val_dataloader(self):
        return self._loaders["val"]


class PoseModule(pl.LightningModule):
    """A small example: the model of ``cfg`` trained with its codec's loss (Adam at
    ``train.lr``); validation predicts every instance in source-image pixels and gathers
    the predictions to rank 0 (:attr:`predictions`, a
    :class:`~dali_pose.evaluation.inference.Predictions`; score them with
    :func:`dali_pose.evaluation.inference.score`). ``val_loss`` is logged with
    ``sync_dist=True`` over the valid rows."""

    def __init__(self, cfg, model: Optional[torch.nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg)
        self.codec = build_codec(cfg)
        self.predictions: Optional[Predictions] = None
        self._val = None  # (index, keypoints, done) of this rank's validation epoch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(normalize_images(image))

    def training_step(self, batch, batch_idx):
        loss = pose_loss(self(batch["image"]).float(), batch, self.cfg.model)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.cfg.train.lr)

    def on_validation_epoch_start(self) -> None:
        index = self.trainer.datamodule.val_dataloader().index
        k = index.info.num_joints
        self._val = (index, np.full((len(index), k, 3), np.nan, np.float32),
                     np.zeros(len(index), bool))

    def validation_step(self, batch, batch_idx):
        output = self(batch["image"]).float()
        flipped = self(batch["image_flipped"]).float() if "image_flipped" in batch else None
        index, keypoints, done = self._val
        valid = batch["valid"]
        loss = pose_loss(output[valid], {k: batch[k][valid] for k in
                                         ("heatmap", "target_weight")}, self.cfg.model)
        self.log("val_loss", loss, sync_dist=True)
        kps = self.codec.decode(output, batch["matrix"], flipped, index.info.flip_index)
        rows = batch["row"][valid].cpu().numpy()
        keypoints[rows] = kps[valid].cpu().numpy()
        done[rows] = True

    def on_validation_epoch_end(self) -> None:
        index, keypoints, done = self._val
        self.predictions = gather_predictions(Predictions(index, keypoints, done))
