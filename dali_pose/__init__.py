"""dali_pose: top-down pose-estimation data loading on NVIDIA DALI (UDP, AID, NODA).

Public entry points: ``load_config``, ``build_loader``, ``decode``, ``load_index``.
DALI is imported only when a loader is built, so the kernels, codecs and metrics import
without it.
"""
from .config import Config, ConfigError, load_config, save_config
from .datasets import DATASETS, DatasetError, load_index


def build_loader(cfg, split, *, device=None, shard_id=0, num_shards=1, index=None):
    from .loader import build_loader as _build

    return _build(cfg, split, device=device, shard_id=shard_id, num_shards=num_shards,
                  index=index)


def decode(output, batch, cfg, output_flipped=None, flip_index=None):
    from .codecs import decode as _decode

    return _decode(output, batch, cfg, output_flipped=output_flipped, flip_index=flip_index)


__all__ = ["Config", "ConfigError", "DATASETS", "DatasetError", "build_loader", "decode",
           "load_config", "load_index", "save_config"]
