"""The DALI loader: the graph (:mod:`.graph`), its external sources (:mod:`.sources`), the
epoch/shard schedule (:mod:`.schedule`), the NODA pool file (:mod:`.pool`) and the
iterator behind ``build_loader`` (:mod:`.iterator`). Importing this package imports DALI."""
from .iterator import PoseLoader, build_loader
from .schedule import ImageEpoch, epoch_schedule, image_epoch, image_groups

__all__ = ["ImageEpoch", "PoseLoader", "build_loader", "epoch_schedule", "image_epoch",
           "image_groups"]
