"""The DALI loader: the graph (:mod:`.graph`), its external sources (:mod:`.sources`), the
epoch plan (:mod:`.plan`), the batch schema (:mod:`.batch`), the copy of crops into
batches (:mod:`.scatter`), the NODA pool file (:mod:`.pool`) and the iterator behind
``build_loader`` (:mod:`.iterator`); DALI's own warp as a test oracle (:mod:`.oracle`).
Importing this package imports DALI."""
from .iterator import PoseLoader, build_loader
from .plan import ImageEpoch, image_epoch, image_groups

__all__ = ["ImageEpoch", "PoseLoader", "build_loader", "image_epoch", "image_groups"]
