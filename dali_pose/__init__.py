"""dali_pose: top-down pose-estimation data loading on NVIDIA DALI (UDP, AID, NODA).

Public entry points: ``load_config``, ``load_index``, ``build_loader``, ``build_model``,
``build_codec`` and ``decode``. The package is laid out by role, imports pointing one way:

    config, datasets, geometry, normalize, draws   the base
    kernels/      pure numba kernels, each with its operator description
    codecs        one object per target type (encode, decode, flip, loss)
    loader/       the DALI graph, its sources, the epoch schedule, build_loader
    models/       networks (build_model) and losses
    evaluation/   inference, post-processing, metrics, pictures
    engine/       the trainer's pieces (distributed set-up, checkpoints, logs)
    tools/        command-line tools nothing here imports (synthetic data, preview,
                  NODA pool builder, benchmark and its classic reference loader)

DALI is imported only when a loader is built, so the kernels, codecs and metrics import
without it.
"""
from .codecs import build_codec, decode
from .config import Config, ConfigError, load_config, save_config
from .datasets import DATASETS, DatasetError, load_index


def build_loader(cfg, split, **kwargs):
    """``dali_pose.loader.build_loader`` (imports DALI on first use)."""
    from .loader import build_loader as _build

    return _build(cfg, split, **kwargs)


def build_model(cfg, num_joints=None, log=None):
    """``dali_pose.models.build_model``: the configured network, its weights applied."""
    from .models import build_model as _build

    return _build(cfg, num_joints, log)


__all__ = ["Config", "ConfigError", "DATASETS", "DatasetError", "build_codec", "build_loader",
           "build_model", "decode", "load_config", "load_index", "save_config"]
