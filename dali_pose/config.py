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
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

import yaml


from .errors import ConfigError  # noqa: F401  (re-exported: dali_pose.config.ConfigError)
from .errors import show
from .kernels.methods import DROPPING_METHODS


_CHOICES = {
    "data.format": ("coco", "mpii", "crowdpose"),
    "model.target": ("gaussian", "combined"),
    "model.codec": ("udp", "msra"),
    "model.arch": ("hrnet", "simplebaseline"),
    "model.init": ("normal", "kaiming"),
    "loader.device": ("gpu", "cpu"),
    "loader.image_dtype": ("float32", "float16", "uint8"),
    "aug.recipe": ("hrnet", "mmpose"),
    "occlusion.method": tuple(DROPPING_METHODS),
    "train.amp_dtype": ("auto", "bfloat16", "float16"),
    "train.optimizer": ("adam", "adamw"),
    "train.lr_schedule": ("steps", "cosine"),
}


# Every section checks its own values when it is made (loading, overrides, dataclasses.replace,
# direct construction): nothing downstream validates config again.

def _fail(key: str, what: str) -> ConfigError:
    """The ConfigError of ``key``; ``.key`` lets the loader say whether the value came from
    the file or from ``--set``."""
    e = ConfigError(f"config key '{key}': {what}")
    e.key = key
    return e


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise _fail(key, what)


def _check_prob(section: str, obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _require(0.0 <= v <= 1.0, f"{section}.{name}", f"a probability in [0, 1], got {v}")


def _check_min(section: str, obj, minimum, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        _require(v >= minimum, f"{section}.{name}", f"must be >= {minimum}, got {v}")


def _check_range(key: str, pair, low: float = 0.0, strict: bool = True,
                 high: float = float("inf")) -> None:
    """``pair`` = (min, max) with low < min (low <= min unless strict) <= max < high."""
    lo, hi = pair
    ok = (lo > low if strict else lo >= low) and lo <= hi < high
    bound = f"{low} {'<' if strict else '<='} min <= max" + (
        f" < {high}" if high != float("inf") else "")
    _require(ok, key, f"need {bound}, got {list(pair)}")


# the data paths data.root applies to
_DATA_PATHS = ("train_ann", "train_images", "val_ann", "val_images", "det_file", "val_gt")


@dataclass(frozen=True)
class DataConfig:
    format: str = "coco"  # coco | mpii | crowdpose
    # the dataset's folder: the relative paths below (train_ann ... val_gt) are relative to
    # it (mmpose's data_root); None: relative to where you run. Resolved once, at load: the
    # loaded config holds the joined paths and root None (so a saved config reloads the same)
    root: Optional[str] = None
    train_ann: str = "data/synthetic/annotations/person_keypoints_train.json"
    train_images: str = "data/synthetic/images/train"
    val_ann: str = "data/synthetic/annotations/person_keypoints_val.json"
    val_images: str = "data/synthetic/images/val"
    det_file: Optional[str] = None  # COCO results json of person boxes, for val/test
    val_gt: Optional[str] = None  # MPII: the official gt_valid.mat, to score PCKh
    # MPII: is_visible flags (N, 16) .npy of the val people (tools.mpii_visible), for PCKh
    # of visible / occluded joints in validation and evaluate.py --checkpoint
    val_visible: Optional[str] = None
    det_score_min: float = 0.0
    padding: float = 1.25  # box enlargement, HRNet/UDP convention
    # a truncated, empty or undecodable image: error (name it, stop) | skip (count, report)
    on_bad_image: str = "error"
    # an image larger than this (w * h, as its annotations or header say) is an error before
    # anything decodes it: a small file can declare 30000 x 30000 (2.7 GB of pixels)
    max_image_pixels: int = 50_000_000
    # image names that are absolute or climb out of the image folder ('../') are refused
    # unless this is true (an annotation file must not make the loader read /etc/passwd)
    allow_outside_paths: bool = False

    def __post_init__(self):
        if self.root is not None:
            _require(isinstance(self.root, str) and self.root != "", "data.root",
                     f"must be a folder path, got {show(self.root)}")
            for key in _DATA_PATHS:
                value = getattr(self, key)
                if isinstance(value, str) and value and not os.path.isabs(value):
                    object.__setattr__(self, key, os.path.join(self.root, value))
            object.__setattr__(self, "root", None)
        _require(self.format in _CHOICES["data.format"], "data.format",
                 f"{show(self.format)} is not one of {_CHOICES['data.format']}")
        _require(0 < self.padding < float("inf"), "data.padding",
                 f"must be a finite number > 0, got {self.padding}")
        _require(math.isfinite(self.det_score_min), "data.det_score_min",
                 f"must be a finite number, got {self.det_score_min}")
        _require(self.on_bad_image in ("error", "skip"), "data.on_bad_image",
                 f"{show(self.on_bad_image)} is not one of ('error', 'skip')")
        _check_min("data", self, 1, "max_image_pixels")


@dataclass(frozen=True)
class ModelConfig:
    input_size: Tuple[int, int] = (192, 256)  # [w, h] of the crop
    heatmap_size: Tuple[int, int] = (48, 64)  # [w, h] of the targets
    sigma: float = 2.0  # Gaussian sigma in heatmap pixels
    target: str = "gaussian"  # gaussian | combined (UDP classification + offsets)
    # udp (unbiased, the default) | msra (HRNet's classic processing, for its model zoo)
    codec: str = "udp"
    arch: str = "hrnet"  # hrnet | simplebaseline
    # HRNet (dali_pose.models.hrnet): defaults are HRNet-W32; the synthetic config trains a tiny one.
    width: int = 32  # channels of the highest-resolution branch (W in HRNet-W32)
    stem_width: int = 64  # stem channels; stage 1 bottlenecks output 4x this
    num_blocks: int = 4  # basic blocks per branch in each module
    stage_modules: Tuple[int, ...] = (1, 4, 3)  # modules in stages 2, 3, 4
    depth: int = 50  # SimpleBaseline's ResNet: 50 | 101 | 152
    # normal: convs ~ N(0, 0.001) (HRNet / mmpose, made to start from ImageNet weights);
    # kaiming: PyTorch's default (Kaiming-uniform) in the backbone, far quicker from scratch
    init: str = "normal"
    pretrained: Optional[str] = None  # ImageNet backbone file (HRNet's, torchvision's ResNet)
    weights: Optional[str] = None  # a whole pose model: dali_pose, official or mmpose file

    def __post_init__(self):
        for name in ("input_size", "heatmap_size"):
            w, h = getattr(self, name)
            _require(w >= 2 and h >= 2, f"model.{name}", f"sizes must be >= 2, got {[w, h]}")
        _require(self.sigma > 0, "model.sigma", f"must be > 0, got {self.sigma}")
        _require(self.target in _CHOICES["model.target"], "model.target",
                 f"{show(self.target)} is not one of {_CHOICES['model.target']}")
        for key in ("codec", "arch", "init"):
            _require(getattr(self, key) in _CHOICES[f"model.{key}"], f"model.{key}",
                     f"{show(getattr(self, key))} is not one of {_CHOICES[f'model.{key}']}")
        _require(self.depth in (50, 101, 152), "model.depth",
                 f"{self.depth} is not one of (50, 101, 152)")
        _require(self.codec == "udp" or self.target == "gaussian", "model.codec",
                 "the combined target is UDP's: model.codec must be udp")
        _check_min("model", self, 1, "width", "stem_width", "num_blocks")
        _require(bool(self.stage_modules) and min(self.stage_modules) >= 1,
                 "model.stage_modules",
                 f"non-empty, each >= 1, got {show(list(self.stage_modules))}")


@dataclass(frozen=True)
class AugConfig:
    """The training crop's random box (dali_pose.geometry.draw_box states each recipe's
    rules). ``recipe`` names whose sampler the draws follow; each key left out of a config
    takes that recipe's default (``RECIPE_DEFAULTS``; the field defaults are hrnet's)."""

    recipe: str = "hrnet"  # hrnet (HRNet / UDP-Pose / SimpleBaseline) | mmpose (mmpose 1.x)
    flip_prob: float = 0.5
    rot_prob: float = 0.6
    # hrnet: angle ~ N(0, rot_factor) clipped to +-2*rot_factor; mmpose: rot_factor * T,
    # T ~ N(0, 1) truncated to [-1, 1]
    rot_factor: float = 45.0  # degrees
    # hrnet: scale ~ N(1, sf) clipped to [1-sf, 1+sf]; mmpose: 1 + sf * T
    scale_factor: float = 0.35
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # half-body only when more than this many joints are visible
    # probability that the upper body is preferred: HRNet's randn() < 0.5 is Phi(0.5)
    half_body_upper_prob: float = 0.6914624612740131
    half_body_min_upper: int = 3  # visible upper joints a half-body crop needs (>=)
    half_body_min_lower: int = 3  # visible lower joints a half-body crop needs (>=)
    half_body_padding: float = 1.5  # half-body box = joint extent * this
    # hrnet: centre += U(-1, 1) * shift_factor * box size (0: the official recipes);
    # mmpose: centre += T * shift_factor * box size with probability shift_prob, the box
    # before the aspect fix (PoseIndex.box_size, or the half-body box), as mmpose's
    # RandomBBoxTransform shifts bbox_scale before TopdownAffine fixes the aspect
    shift_factor: float = 0.0
    shift_prob: float = 1.0

    def __post_init__(self):
        _require(self.recipe in _CHOICES["aug.recipe"], "aug.recipe",
                 f"{show(self.recipe)} is not one of {_CHOICES['aug.recipe']}")
        _check_prob("aug", self, "flip_prob", "rot_prob", "half_body_prob",
                    "half_body_upper_prob", "shift_prob")
        _require(0.0 <= self.scale_factor < 1.0, "aug.scale_factor",
                 f"must be in [0, 1), got {self.scale_factor}")
        _check_min("aug", self, 0, "rot_factor", "half_body_min_joints", "shift_factor",
                   "half_body_min_upper", "half_body_min_lower")
        _require(self.half_body_padding > 0, "aug.half_body_padding",
                 f"must be > 0, got {self.half_body_padding}")


# The values a recipe's keys take when a config leaves them out (aug.recipe: mmpose fills
# these; hrnet's are the AugConfig field defaults). The recipe also chooses how the index
# clips ground-truth boxes to their image (dali_pose.datasets.clip_box: HRNet's w - 1 rule
# or mmpose's corner clipping), for both splits. mmpose 1.x: RandomFlip(0.5),
# RandomHalfBody(min_total_keypoints=9, min_upper_keypoints=2, min_lower_keypoints=3,
# padding=1.5, prob=0.3, upper_prioritized_prob=0.7), RandomBBoxTransform(shift 0.16 with
# p 0.3, scale [0.5, 1.5], rotate 80 with p 0.6).
RECIPE_DEFAULTS = {
    "hrnet": {},
    "mmpose": dict(flip_prob=0.5, rot_prob=0.6, rot_factor=80.0, scale_factor=0.5,
                   half_body_prob=0.3, half_body_min_joints=8, half_body_upper_prob=0.7,
                   half_body_min_upper=2, half_body_min_lower=3, half_body_padding=1.5,
                   shift_factor=0.16, shift_prob=0.3),
}


@dataclass(frozen=True)
class OcclusionConfig:
    """Information-dropping augmentation on the crop (AID and its comparison family)."""

    method: str = "none"  # one of dali_pose.kernels.methods.DROPPING_METHODS
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
    start_epoch: int = 0  # occlusion is off before this epoch (the schedules of AID's Table 4)

    def __post_init__(self):
        _require(self.method in _CHOICES["occlusion.method"], "occlusion.method",
                 f"{show(self.method)} is not one of {_CHOICES['occlusion.method']}")
        _check_prob("occlusion", self, "prob", "shift_prob", "hide_prob", "gridmask_ratio")
        _check_min("occlusion", self, 1, "num")
        _check_min("occlusion", self, 0, "shift_spread", "start_epoch")
        _check_range("occlusion.radius", self.radius)
        _check_range("occlusion.erasing_area", self.erasing_area, high=1.0)
        _check_range("occlusion.erasing_aspect", self.erasing_aspect)
        _require(bool(self.grid_sizes) and min(self.grid_sizes) >= 0, "occlusion.grid_sizes",
                 f"non-empty, sizes >= 0, got {show(list(self.grid_sizes))}")
        _check_range("occlusion.gridmask_period", self.gridmask_period, low=1, strict=False)


@dataclass(frozen=True)
class NodaConfig:
    """Nearby-person occlusion (pasting people from a foreground pool)."""

    prob: float = 0.0
    pool: Optional[str] = None  # .npz written by `python -m dali_pose.tools.build_pool`
    scale_range: Tuple[float, float] = (0.8, 1.2)
    max_tries: int = 10
    start_epoch: int = 0  # NODA is off before this epoch
    # the pool's edge smoothing, which build_pool applies and records (--no-smooth: none):
    # true / false make the loader refuse a pool built the other way (NODA Table I compares
    # them); null accepts either
    smooth_edges: Optional[bool] = None

    def __post_init__(self):
        _check_prob("noda", self, "prob")
        _check_range("noda.scale_range", self.scale_range)
        _check_min("noda", self, 1, "max_tries")
        _check_min("noda", self, 0, "start_epoch")


# the seed reaches DALI's pipelines (a C++ integer) and NumPy's generators: a bound every
# one of them takes
MAX_SEED = 2 ** 31 - 1


@dataclass(frozen=True)
class LoaderConfig:
    device: str = "cpu"  # gpu | cpu
    batch_size: int = 32
    num_threads: int = 2
    seed: int = 0
    # float32 / float16: ImageNet-normalised crops; uint8: intensities, normalised on the
    # consumer's device (dali_pose.normalize.normalize_images): 4x less to copy
    image_dtype: str = "float32"
    flip_test: bool = True  # validation: also yield a flipped copy of each crop
    drop_last: bool = True  # training: drop (True) or fill (False) the last partial batch
    prefetch: int = 2
    pipelines: int = 1  # DALI pipelines taking batches in turn, num_threads shared among them
    # each image is decoded once per epoch for all its people; their crops mix in a seeded
    # shuffle buffer of this many
    shuffle_buffer: int = 512

    def __post_init__(self):
        _require(self.device in _CHOICES["loader.device"], "loader.device",
                 f"{show(self.device)} is not one of {_CHOICES['loader.device']}")
        _check_min("loader", self, 1, "batch_size", "num_threads", "prefetch", "pipelines",
                   "shuffle_buffer")
        _require(self.image_dtype in _CHOICES["loader.image_dtype"], "loader.image_dtype",
                 f"{show(self.image_dtype)} is not one of {_CHOICES['loader.image_dtype']}")
        _check_min("loader", self, 0, "seed")
        _require(self.seed <= MAX_SEED, "loader.seed",
                 f"must be <= {MAX_SEED}, got {show(self.seed)}")


@dataclass(frozen=True)
class TrainConfig:
    """``train.py``: Adam with warm-up and step decay, as the HRNet/UDP/mmpose recipes (or
    AdamW, or a cosine decay)."""

    epochs: int = 210
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    lr: float = 1e-3
    # 0 for adam (the HRNet recipe); adamw's usual 0.01 must be written, e.g. 0.05 (ViTPose)
    weight_decay: float = 0.0
    lr_schedule: str = "steps"  # steps: x lr_factor after each of lr_steps | cosine (to 0)
    lr_steps: Tuple[int, ...] = (170, 200)  # epochs after which lr *= lr_factor (steps)
    lr_factor: float = 0.1
    warmup_iters: int = 0  # linear warm-up iterations (mmpose's COCO recipes: 500)
    warmup_ratio: float = 0.001  # warm-up starts at warmup_ratio * lr
    # Linear scaling: with a base batch, lr is for base_batch_size samples per step and is
    # multiplied by (loader.batch_size * world size) / base_batch_size (mmpose's
    # auto_scale_lr); without one, lr is used as it is (the HRNet configs).
    base_batch_size: Optional[int] = None
    grad_clip: float = 0.0  # max total gradient norm; 0 = no clipping
    amp: bool = True  # CUDA: mixed precision (ignored on the CPU)
    amp_dtype: str = "auto"  # auto (bfloat16 where the GPU has it, else float16) | ...
    channels_last: bool = True  # CUDA: channels-last memory format
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm across ranks
    init_from: Optional[str] = None  # a previous run's checkpoint: its weights, a fresh optimiser
    validate: bool = True  # flip-test predictions on the val set, scored
    val_every: int = 1  # epochs between validations (the last epoch always validates)
    log_every: int = 20  # steps between log lines (where there is no progress bar)
    cpu_threads: int = 0  # torch threads per rank; 0 = the rule in dali_pose.engine.distributed
    # also write last.pt every N training steps (counted over the run), mid-epoch, so a
    # SIGKILL loses at most N steps; 0 = only after each epoch (and on SIGTERM / SIGINT)
    ckpt_every_steps: int = 0

    def __post_init__(self):
        _check_min("train", self, 1, "epochs", "log_every", "val_every")
        _check_min("train", self, 0, "warmup_iters", "grad_clip", "cpu_threads",
                   "ckpt_every_steps")
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr",
                 f"must be a finite number > 0, got {self.lr}")
        _require(0 <= self.weight_decay < 1, "train.weight_decay",
                 f"must be in [0, 1), got {self.weight_decay}")
        _require(math.isfinite(self.grad_clip), "train.grad_clip",
                 f"must be finite (0 = no clipping), got {self.grad_clip}")
        for key in ("optimizer", "lr_schedule"):
            _require(getattr(self, key) in _CHOICES[f"train.{key}"], f"train.{key}",
                     f"{show(getattr(self, key))} is not one of {_CHOICES[f'train.{key}']}")
        _require(self.lr_factor > 0, "train.lr_factor", f"must be > 0, got {self.lr_factor}")
        _require(0 < self.warmup_ratio <= 1, "train.warmup_ratio",
                 f"must be in (0, 1], got {self.warmup_ratio}")
        steps = list(self.lr_steps)
        _require(all(s >= 1 for s in steps) and steps == sorted(set(steps)), "train.lr_steps",
                 f"increasing epochs >= 1, got {show(steps)}")
        _require(self.base_batch_size is None or self.base_batch_size >= 1,
                 "train.base_batch_size", f"must be >= 1, got {self.base_batch_size}")
        _require(self.amp_dtype in _CHOICES["train.amp_dtype"], "train.amp_dtype",
                 f"{show(self.amp_dtype)} is not one of {_CHOICES['train.amp_dtype']}")


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

    def __post_init__(self):
        _require(self.noda.prob == 0 or bool(self.noda.pool), "noda.pool",
                 "noda.prob > 0 needs a pool: build one with `python -m "
                 "dali_pose.tools.build_pool --config CFG --out POOL.npz`")
        _require(self.noda.prob == 0 or self.loader.image_dtype != "uint8",
                 "loader.image_dtype", "NODA blends normalised crops: uint8 crops with "
                 "noda.prob > 0 are not supported")




# Every float spelling a user writes: YAML 1.1 reads 1e-3 or 1E5 (no dot) as strings.
# Underscores separate digits, as YAML's own numbers (1_000.0) have them.
_FLOAT = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?")
_INT64 = 2 ** 63


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
            raise _fail(key, f"expected a list, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(key, f"expected {len(args)} values, got {show(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, f"expected true/false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, f"expected an integer, got {show(value)}")
        if not -_INT64 <= value < _INT64:
            raise _fail(key, f"{show(value)} is out of range")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            try:
                value = float(value.strip().replace("_", ""))
            except ValueError:  # what the pattern lets through and float() does not take
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, f"expected a number, got {show(value)}")
        try:
            value = float(value)
        except OverflowError:
            value = float("inf")
        if not math.isfinite(value):
            raise _fail(key, f"must be a finite number, got {show(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, f"expected a string, got {show(value)}")
        return value
    raise _fail(key, f"unsupported type {tp}")  # pragma: no cover


# Keys that no longer exist, and what replaced them (a config setting one is an error).
_REMOVED = {
    "loader.fast_cpu": "the CPU loader always decodes the crops' window and cuts them with "
                       "the numba warp; delete the key",
    "loader.decode_per_image": "every image is decoded once per epoch for all its people "
                               "(NODA too); delete the key",
}


def _build(cls, tree: dict, prefix: str):
    if not isinstance(tree, dict):
        raise _fail(prefix.rstrip('.') or '<root>', f"expected a mapping, got {show(tree)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names, key=str)
    for name in unknown:
        if f"{prefix}{name}" in _REMOVED:
            e = ConfigError(f"config key '{prefix}{name}' was removed: {_REMOVED[prefix + name]}")
            e.key = f"{prefix}{name}"
            raise e
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) else show(unknown[0])
        e = ConfigError(f"unknown config key '{prefix}{show(name, 60).strip(chr(39))}' (known: "
                        f"{', '.join(sorted(names))})")
        e.key = f"{prefix}{unknown[0]}"
        raise e
    kwargs = {}
    for name, value in tree.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _yaml_why(e: Exception) -> str:
    """A YAML error in one line: what went wrong, and where."""
    what = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if what is None:
        lines = str(e).splitlines()
        if not lines:
            return type(e).__name__
        return lines[0] if len(lines[0]) <= 100 else lines[0][:97] + "..."
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    what = str(what)
    return f"{what if len(what) <= 100 else what[:97] + '...'}{where}"


def _apply_override(tree: dict, item: str) -> str:
    """Set one ``key.sub=value`` in ``tree``; returns the dotted key."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set {show(item)} must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {show(item)}: {show(key)} is not a config key (key.sub=value)")
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        # a tag (!!python/...), or what YAML cannot scan (@x, %x, `x, [64,), or what its
        # constructors cannot make (an int of 5000 digits, a 13th month): never a traceback
        why = "nested too deeply" if isinstance(e, RecursionError) else _yaml_why(e)
        raise ConfigError(f"--set {show(item)}: the value is not valid YAML ({why}); "
                          f"quote a string value, e.g. --set '{key}=\"...\"'") from None
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {show(item)}: '{p}' is not a section")
    node[parts[-1]] = value
    return key


def _check_network(cfg: "Config") -> None:
    """The input sizes the model can take: both archs halve the crop 2 + (branches - 1) or
    5 times (HRNet's branches: 1 + len(stage_modules)). That their output is a quarter of
    the crop, the heatmap size, is checked by ``build_model``: a network of the user's own
    may output another size with the loader."""
    m = cfg.model
    halvings = 2 + len(m.stage_modules) if m.arch == "hrnet" else 5
    step = 2 ** halvings
    _require(all(v % step == 0 for v in m.input_size), "model.input_size",
             f"{list(m.input_size)} cannot go through the {m.arch} network: each size must be "
             f"a multiple of {step}, e.g. {[max(step, v // step * step) for v in m.input_size]}")


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an int of 5000 digits, ...
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_why(e)}") from e
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return tree


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: sections merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_tree(path: str) -> dict:
    """The YAML tree of ``path`` with its ``base:`` resolved: ``base: ../x.yaml`` (relative
    to the file) names a config whose keys this one starts from, as mmpose's ``_base_``;
    one level only (a base has no base), so a config reads in two files at most."""
    tree = _read_yaml(path)
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: config key 'base': expected a file name, "
                          f"got {show(base)}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    base_tree = _read_yaml(base_path)
    if "base" in base_tree:
        raise ConfigError(f"config file {path}: config key 'base': {base_path} has a base "
                          "of its own (one level of inheritance only)")
    try:
        return _merge(base_tree, tree)
    except RecursionError:  # sections that contain themselves (recursive YAML anchors)
        raise ConfigError(f"config file {path} over its base {base_path}: a section refers "
                          "to itself or is nested too deeply") from None


def load_config(path: Optional[str] = None, overrides=()) -> Config:
    """Read ``path`` (YAML, its ``base:`` resolved; None = all defaults), apply
    ``overrides`` ("a.b=c"), validate."""
    tree = read_tree(path) if path is not None else {}
    return config_from_dict(tree, overrides, source=path or "<defaults>")


def _with_recipe_defaults(tree: dict) -> None:
    """Fill the aug keys a config leaves out with its ``aug.recipe``'s defaults."""
    aug = tree.get("aug")
    if not isinstance(aug, dict):
        return
    recipe = aug.get("recipe", "hrnet")
    if not isinstance(recipe, str):
        return  # AugConfig names the key
    for k, v in RECIPE_DEFAULTS.get(recipe, {}).items():
        aug.setdefault(k, v)


def _blame(key, overrides: dict, source: str) -> str:
    """Who wrote ``key``: the last ``--set`` item that set it (it, or its section); else
    ``source``."""
    if key:
        key = re.sub(r"\[\d+\]", "", key)
        for k in reversed(list(overrides)):
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return f"--set {show(overrides[k])}"
    return source


def config_from_dict(tree: dict, overrides=(), source: str = "<dict>") -> Config:
    """The Config of a nested mapping (a YAML tree, or ``to_dict`` of a saved config, e.g.
    the one in a checkpoint), with ``overrides`` applied; errors name ``source``, or the
    ``--set`` item where the value came from one."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: a config is a mapping, got {type(tree).__name__}")
    tree = copy.deepcopy(tree)  # overrides must not edit the caller's mapping
    given = {}
    for item in overrides:
        given[_apply_override(tree, item)] = item
    _with_recipe_defaults(tree)
    try:
        cfg = _build(Config, tree, "")
        _check_network(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{_blame(getattr(e, 'key', None), given, source)}: {e}") from None


def to_dict(cfg: Config) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def changed_keys(a: Config, b: Config) -> list:
    """The dotted keys whose values differ between two configs."""
    def flat(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    fa, fb = dict(flat(to_dict(a))), dict(flat(to_dict(b)))
    return [k for k in fa if fa[k] != fb[k]]


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
