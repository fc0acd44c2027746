"""Everything a run will need, checked before its first step (a long run must not fail on a
missing file after hours of training).

:func:`check_run` checks that every file and folder the config names exists (annotations,
image folders, the detection file, MPII's ``gt_valid.mat``, the NODA pool, weight files,
``train.init_from``) and that ``out_dir`` can be written; each problem is one line naming the
config key and the path. What the files hold is checked by the code that reads them, which
``train.py`` runs before its first step too (the indexes, the pool, the weights).
"""
from __future__ import annotations

import os
import tempfile

from ..config import Config, ConfigError


def _exists(key: str, path, folder: bool = False) -> None:
    if path is None:
        return
    ok = os.path.isdir(path) if folder else os.path.isfile(path)
    if not ok:
        kind = "folder" if folder else "file"
        hint = (" (see the README's Datasets section for where each dataset's files go)"
                if key.startswith("data.") else
                " (see the README's Pretrained and published weights section)"
                if key.startswith("model.") else "")
        raise ConfigError(f"config key '{key}': the {kind} {path} does not exist{hint}")


def check_run(cfg: Config, validate: bool = True, write: bool = True) -> None:
    """Raise a one-line ``ConfigError`` for the first input the run would miss later."""
    d = cfg.data
    _exists("data.train_ann", d.train_ann)
    _exists("data.train_images", d.train_images, folder=True)
    if validate:
        _exists("data.val_ann", d.val_ann)
        _exists("data.val_images", d.val_images, folder=True)
        _exists("data.det_file", d.det_file)
        _exists("data.val_gt", d.val_gt)
    if cfg.noda.prob > 0:
        _exists("noda.pool", cfg.noda.pool)
    if cfg.model.weights:
        _exists("model.weights", cfg.model.weights)
    elif cfg.model.pretrained:
        _exists("model.pretrained", cfg.model.pretrained)
    _exists("train.init_from", cfg.train.init_from)
    if write:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=cfg.out_dir):
                pass
        except OSError as e:
            raise ConfigError(f"config key 'out_dir': cannot write to {cfg.out_dir}: "
                              f"{e.strerror or e}") from e
