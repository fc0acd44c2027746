"""One YAML file <-> one frozen dataclass tree.

``load_config(path, overrides=("loader.batch_size=16", ...))`` reads a YAML file, applies
``a.b=c`` overrides (values parsed as YAML scalars/lists), and returns a frozen ``Config``.
An unknown key or a value of the wrong type is a ``ConfigError`` naming the dotted key.
There is no global config: every function that needs settings receives the ``Config``.

Sizes are always ``[w, h]`` (width first), as in mmpose and HRNet configs.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    format: str = "coco"  # coco | mpii | crowdpose
    train_ann: str = "data/synthetic/annotations/person_keypoints_train.json"
    train_images: str = "data/synthetic/images/train"
    val_ann: str = "data/synthetic/annotations/person_keypoints_val.json"
    val_images: str = "data/synthetic/images/val"
    det_file: Optional[str] = None  # COCO results json of person boxes, for val/test
    det_score_min: float = 0.0
    padding: float = 1.25  # box enlargement, HRNet/UDP convention


@dataclass(frozen=True)
class ModelConfig:
    input_size: Tuple[int, int] = (192, 256)  # [w, h] of the crop
    heatmap_size: Tuple[int, int] = (48, 64)  # [w, h] of the targets
    sigma: float = 2.0  # Gaussian sigma in heatmap pixels
    target: str = "gaussian"  # gaussian | combined (UDP classification + offsets)
    # HRNet (dali_pose.hrnet): defaults are HRNet-W32; the synthetic config trains a tiny one.
    width: int = 32  # channels of the highest-resolution branch (W in HRNet-W32)
    stem_width: int = 64  # stem channels; stage 1 bottlenecks output 4x this
    num_blocks: int = 4  # basic blocks per branch in each module
    stage_modules: Tuple[int, ...] = (1, 4, 3)  # modules in stages 2, 3, 4


@dataclass(frozen=True)
class AugConfig:
    flip_prob: float = 0.5
    rot_prob: float = 0.6
    rot_factor: float = 45.0  # degrees; angle ~ N(0, rot_factor) clipped to +-2*rot_factor
    scale_factor: float = 0.35  # scale ~ N(1, sf) clipped to [1-sf, 1+sf]
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # half-body only when more than this many joints are visible
    shift_factor: float = 0.0  # centre += U(-1, 1) * shift_factor * box size


@dataclass(frozen=True)
class OcclusionConfig:
    """Information-dropping augmentation on the crop (AID and its comparison family)."""

    method: str = "none"  # none | aid | cutout | erasing | hide_and_seek | gridmask
    prob: float = 0.5
    num: int = 1  # occluders per crop (aid, cutout)
    radius: Tuple[float, float] = (0.1, 0.2)  # fraction of the input width
    shift_prob: float = 0.5  # aid: probability that the centre is shifted off the keypoint
    shift_spread: float = 0.1  # aid: shift ~ U(-spread, spread) * input width, per axis
    erasing_area: Tuple[float, float] = (0.02, 0.4)  # fraction of the crop area
    erasing_aspect: Tuple[float, float] = (0.3, 3.3)
    grid_sizes: Tuple[int, ...] = (0, 16, 32, 44, 56)  # hide-and-seek patch sizes in pixels
    hide_prob: float = 0.5
    gridmask_ratio: float = 0.5  # GridMask's r: kept stripe width / cell (keeps 1-(1-r)^2)
    gridmask_period: Tuple[int, int] = (32, 96)


@dataclass(frozen=True)
class NodaConfig:
    """Nearby-person occlusion (pasting people from a foreground pool)."""

    prob: float = 0.0
    pool: Optional[str] = None  # .npz written by `python -m dali_pose.noda build-pool`
    scale_range: Tuple[float, float] = (0.8, 1.2)
    max_tries: int = 10


@dataclass(frozen=True)
class LoaderConfig:
    device: str = "cpu"  # gpu | cpu
    batch_size: int = 32
    num_threads: int = 2
    seed: int = 0
    fp16: bool = False  # images as float16
    flip_test: bool = True  # validation: also yield a flipped copy of each crop
    drop_last: bool = True  # training: drop (True) or fill (False) the last partial batch
    prefetch: int = 2
    fast_cpu: bool = True  # CPU backend: region-of-interest decode + fused numba warp
    pipelines: int = 1  # DALI pipelines taking batches in turn, num_threads shared among them


@dataclass(frozen=True)
class TrainConfig:
    """``train.py``: Adam with step decay, as the HRNet/UDP recipes (210 epochs there)."""

    epochs: int = 210
    lr: float = 1e-3
    lr_steps: Tuple[int, ...] = (170, 200)  # epochs after which lr *= lr_factor
    lr_factor: float = 0.1
    amp: bool = True  # CUDA: float16 autocast + gradient scaling (ignored on the CPU)
    log_every: int = 20  # steps between log lines
    validate: bool = True  # after training: flip-test predictions on the val set, scored


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    noda: NodaConfig = field(default_factory=NodaConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/default"


_CHOICES = {
    "data.format": ("coco", "mpii", "crowdpose"),
    "model.target": ("gaussian", "combined"),
    "loader.device": ("gpu", "cpu"),
    "occlusion.method": ("none", "aid", "cutout", "erasing", "hide_and_seek", "gridmask"),
}


def _coerce(value, tp, key: str):
    """Check/convert one YAML value against a dataclass field type; errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}': expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {_CHOICES[key]}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp}")  # pragma: no cover


def _build(cls, tree: dict, prefix: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in tree.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _apply_override(tree: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: '{p}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def _validate(cfg: Config) -> None:
    for name in ("input_size", "heatmap_size"):
        w, h = getattr(cfg.model, name)
        if w < 2 or h < 2:
            raise ConfigError(f"config key 'model.{name}': sizes must be >= 2, got {[w, h]}")
    if cfg.loader.batch_size < 1:
        raise ConfigError("config key 'loader.batch_size': must be >= 1")
    if cfg.loader.num_threads < 1:
        raise ConfigError("config key 'loader.num_threads': must be >= 1")
    if cfg.loader.pipelines < 1:
        raise ConfigError("config key 'loader.pipelines': must be >= 1")
    for key in ("flip_prob", "rot_prob", "half_body_prob"):
        v = getattr(cfg.aug, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"config key 'aug.{key}': a probability in [0, 1], got {v}")
    if not 0.0 <= cfg.aug.scale_factor < 1.0:
        raise ConfigError("config key 'aug.scale_factor': must be in [0, 1)")
    m = cfg.model
    if min(m.width, m.stem_width, m.num_blocks) < 1 or not m.stage_modules \
            or min(m.stage_modules) < 1:
        raise ConfigError("config keys 'model.width', 'model.stem_width', 'model.num_blocks', "
                          "'model.stage_modules': must be >= 1 (stage_modules non-empty)")
    if cfg.train.epochs < 1 or cfg.train.lr <= 0 or cfg.train.log_every < 1:
        raise ConfigError("config keys 'train.epochs', 'train.lr', 'train.log_every': "
                          "must be positive")
    lo, hi = cfg.occlusion.radius
    if not 0.0 < lo <= hi:
        raise ConfigError("config key 'occlusion.radius': need 0 < min <= max")


def load_config(path: Optional[str] = None, overrides=()) -> Config:
    """Read ``path`` (YAML; None = all defaults), apply ``overrides`` ("a.b=c"), validate."""
    tree: dict = {}
    if path is not None:
        try:
            with open(path) as f:
                tree = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    return config_from_dict(tree, overrides, source=path or "<defaults>")


def config_from_dict(tree: dict, overrides=(), source: str = "<dict>") -> Config:
    """The Config of a nested mapping (a YAML tree, or ``to_dict`` of a saved config, e.g.
    the one in a checkpoint), with ``overrides`` applied; errors name ``source``."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: a config is a mapping, got {type(tree).__name__}")
    tree = copy.deepcopy(tree)  # overrides must not edit the caller's mapping
    for item in overrides:
        _apply_override(tree, item)
    try:
        cfg = _build(Config, tree, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config (all keys, overrides applied) as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def add_config_args(parser, default: str = "built-in defaults") -> None:
    """The ``--config`` / ``--set`` pair every command line shares; ``default`` says in the
    help what is used without ``--config``."""
    parser.add_argument("--config", default=None, help=f"YAML config (default: {default})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set loader.batch_size=16 (repeatable)",
    )
