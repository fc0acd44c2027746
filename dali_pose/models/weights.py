"""Weight files: reading them as data, and loading a state dict with one-line errors.

Every file goes through ``torch.load(..., weights_only=True)``: tensors and plain types,
never code. A file that cannot be read, whose tensors do not fit the model or hold NaN or
infinity, is a :class:`WeightsError` whose one line names the file, the model and the first
mismatch (torch's own message lists every tensor: 171 lines for an HRNet of another width).
Writing checkpoints and model files is :mod:`dali_pose.engine.checkpoint`'s.
"""
from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Mapping, Optional

import torch

from ..errors import WeightsError  # noqa: F401  (re-exported)


def read_weights_file(path: str, what: str = "weights file"):
    """``torch.load(path, weights_only=True)`` on the CPU, errors as one line naming it.

    A file whose pickle asks for anything beyond tensors and plain data (a function such as
    ``posix.system``, a class) is refused with that reason (torch's refusal names it; where
    torch stops before it, at a plain pickle's framing, :func:`_foreign_global` finds it);
    the message never suggests loading it with the protection off. The pickle's globals are
    read first (its opcodes, nothing run): torch's refusal searches its own message in time
    quadratic in a global's length, minutes for a 100 KB file that names a long one."""
    name = _foreign_global(path)
    if name:
        _refuse(what, path, name)
    try:
        with warnings.catch_warnings():  # its note on a plain pickle's protocol: noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise WeightsError(f"{what} {path} does not exist") from e
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        name = m.group(1) if m else _foreign_global(path)
        if name:  # a function or class: what a malicious pickle asks for
            _refuse(what, path, name, e)
        raise WeightsError(f"cannot read {what} {path} (truncated or not a torch file?): "
                           f"{_reason(text)}") from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise WeightsError(f"cannot read {what} {path} (truncated or not a torch file?): "
                           f"{_first_line(e)}") from e


def _numpy_globals() -> list:
    """What a NumPy array or scalar in a checkpoint asks for (mmpose's checkpoints keep the
    dataset's ``sigmas`` as arrays in ``meta``): building arrays of data, nothing else; torch
    refuses them by default. The old module path is what files from NumPy 1.x name."""
    import numpy as np

    try:
        from numpy._core import multiarray  # NumPy 2
    except ImportError:
        from numpy.core import multiarray
    dtypes = getattr(np, "dtypes", None)
    return [np.ndarray, np.dtype,
            *((f, f"numpy.{m}.multiarray.{f.__name__}") for f in (multiarray._reconstruct,
                                                                  multiarray.scalar)
              for m in ("core", "_core")),
            *(getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType"))]


def _refuse(what: str, path: str, name: str, cause: Optional[BaseException] = None):
    if len(name) > 120:  # a pickle can make the name as long as it likes
        name = name[:117] + "..."
    raise WeightsError(f"{what} {path} is refused: it asks for the global {name}, which "
                       f"tensors and plain data never need; dali_pose reads weight files as "
                       f"data and never runs code from them") from cause


# Globals of the pickles torch writes for tensors and containers; any other is named as the
# reason a file is refused where torch's refusal does not name one (a plain pickle.dump of
# protocol 4 or 5 stops torch at its first FRAME opcode, before any global).
_DATA_GLOBALS = ("torch.", "collections.", "numpy.", "_codecs.", "builtins.set",
                 "builtins.frozenset", "builtins.bytearray", "builtins.complex", "builtins.slice",
                 # protocol 2 (torch.save's default) names the builtins module as Python 2 did
                 "__builtin__.set", "__builtin__.frozenset", "__builtin__.bytearray",
                 "__builtin__.complex", "__builtin__.slice")
# Longer than any real module.name; torch's refusal of a long one takes time quadratic in it
_MAX_GLOBAL = 256
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def _foreign_global(path: str, max_ops: int = 1_000_000) -> Optional[str]:
    """The first global (module.name) the pickle in ``path`` (a plain pickle, or a torch zip
    file's ``data.pkl``) asks for that tensors and plain data do not need, found by reading
    its opcodes (``pickletools.genops``: nothing is built or run); None if there is none or
    the file cannot be read as a pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                with z.open(member) as f:
                    return _scan_globals(f, max_ops)
        with open(path, "rb") as f:
            # a plain pickle, or torch's legacy format: pickles one after another (magic
            # number, protocol, system info, the data), then raw storage bytes
            for _ in range(5):
                found = _scan_globals(f, max_ops)
                if found:
                    return found
            return None
    except Exception:  # anything unreadable: torch's own reason stands
        return None


def _scan_globals(f, max_ops: int) -> Optional[str]:
    recent, memo, last = [], {}, None  # strings pushed (STACK_GLOBAL takes the last two)
    for i, (op, arg, _) in enumerate(pickletools.genops(f)):
        if i >= max_ops:
            return None
        name, found, top = op.name, None, None
        if name in ("GLOBAL", "INST"):
            found = arg.replace(" ", ".")
        elif name == "STACK_GLOBAL" and len(recent) >= 2:
            found = f"{recent[-2]}.{recent[-1]}"
        elif name in _STRING_OPS:
            top = arg
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):  # the stack is unchanged
            memo[len(memo) if name == "MEMOIZE" else arg] = last
            continue
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            top = memo.get(arg)
        if isinstance(top, str):
            recent.append(top)
        last = top
        if found and (len(found) > _MAX_GLOBAL or not found.startswith(_DATA_GLOBALS)):
            return found
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _reason(text: str) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. "Unsupported
    operand 100"), without its advice to retry with the protection off."""
    for line in text.splitlines():
        line = line.strip()
        low = line.lower()
        if line and "weights_only" not in low and "weights only" not in low \
                and not low.startswith(("check the documentation", "re-running", "in pytorch")):
            return line[:200]
    return "not a pickle of tensors and plain data"


def check_finite(path: str, state: Mapping) -> None:
    """A ``WeightsError`` naming ``path`` and the first tensor holding NaN or infinity: a
    model loaded from it would train or predict NaN without a word."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() \
                and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(f"{path}: tensor {name} holds {bad} non-finite value(s) "
                               f"(NaN or infinity) of {t.numel()}; the file is damaged or "
                               f"comes from a run that diverged")


def check_fit(path: str, got: Mapping, model: torch.nn.Module, describe: str) -> None:
    """Raise one readable line when state dict ``got`` (from ``path``) does not fit
    ``model`` exactly; ``describe`` says which model the config asks for."""
    want = model.state_dict()
    # BatchNorm's step counter came with PyTorch 0.4.1; older files (torchvision's ResNets)
    # lack it, and it plays no part in a forward pass
    missing = [k for k in want if k not in got and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in got if k not in want]
    shape = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shape):
        return
    parts = []
    if shape:
        k = shape[0]
        parts.append(f"{len(shape)} tensors of another shape (first: {k} is "
                     f"{tuple(got[k].shape)} in the file, {tuple(want[k].shape)} in the model)")
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} (first: {keys[0]})")
    raise WeightsError(f"{path}: the weights do not fit the config's model ({describe}): "
                       + "; ".join(parts))


def load_state(model: torch.nn.Module, state: Mapping, path: str, describe: str) -> None:
    """``model.load_state_dict(state)`` after :func:`check_fit` and :func:`check_finite`."""
    check_fit(path, state, model, describe)
    check_finite(path, state)
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------- layouts -------
# dali_pose's modules have the official HRNet / SimpleBaseline names, so the three layouts
# people have on disk differ only by the wrapping of the dict and key prefixes.

_PREFIXES = ("module.", "backbone.", "head.", "keypoint_head.")  # DDP, mmpose 1.x / 0.x


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            key = key[len(p):]
    return key


def pose_state_dict(obj, path: str):
    """(state dict with dali_pose's key names, layout name) of a loaded pose weight file:
    a dali_pose checkpoint (``{"model", "config", ...}``), an mmpose checkpoint
    (``{"meta", "state_dict"}`` with ``backbone.`` / ``head.`` prefixes; HRNet's own
    ``checkpoint.pth`` also has a ``state_dict``, with DDP's ``module.``), or a plain state
    dict (the official ``pose_hrnet_*.pth`` / ``pose_resnet_*.pth``)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "config" in obj:
        return dict(obj["model"]), "dali_pose checkpoint"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, layout = obj["state_dict"], "mmpose / HRNet training checkpoint"
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, layout = obj, "plain state dict (official HRNet / SimpleBaseline)"
    else:
        raise WeightsError(f"{path}: not a weight file dali_pose knows (a dali_pose "
                           f"checkpoint, an mmpose checkpoint or a plain state dict)")
    return {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}, layout


def load_pose_weights(model: torch.nn.Module, path: str, describe: str) -> str:
    """``model.weights``: a whole pose model from ``path`` in any layout of
    :func:`pose_state_dict`; every tensor must fit. Returns the layout's name."""
    state, layout = pose_state_dict(read_weights_file(path, "model.weights file"), path)
    load_state(model, state, path, f"{describe}; the file is a {layout}")
    return layout


def load_backbone(model: torch.nn.Module, path: str) -> str:
    """``model.pretrained``: initialise the backbone from an ImageNet classification file
    (the official HRNet ImageNet checkpoints, torchvision's ResNets): every tensor whose name
    and shape fit the model's backbone is loaded, the rest is skipped (classification
    heads: ``fc``, ``classifier``, ``incre_modules``, ``downsamp_modules``, HRNet's last
    multi-scale fuse layers). Returns a one-line report. A file that fits less than half of
    the backbone (another architecture or width: a ResNet file's ``layer1`` has the shapes
    of HRNet's) is a ``WeightsError`` naming it."""
    obj = read_weights_file(path, "model.pretrained file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: model.pretrained is not a state dict")
    state = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    head = tuple(getattr(model, "HEAD", ()))
    want = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    fit = {k: v for k, v in state.items() if k in want and v.shape == want[k].shape}
    counted = [k for k in want if not k.endswith("num_batches_tracked")]  # see check_fit
    loaded = [k for k in counted if k in fit]
    if 2 * len(loaded) < len(counted):
        raise WeightsError(f"{path}: only {len(loaded)} of the backbone's {len(counted)} "
                           f"tensors fit (is it the ImageNet file of this architecture and "
                           f"width?)")
    check_finite(path, fit)
    model.load_state_dict(fit, strict=False)
    skipped = sorted(k for k in state if k not in fit)
    missing = sorted(k for k in counted if k not in fit)
    groups = sorted({k.split(".")[0] for k in skipped})
    return (f"{path}: loaded {len(loaded)} of the backbone's {len(counted)} tensors"
            + (f", {len(missing)} backbone tensors not in the file (first: {missing[0]})"
               if missing else "")
            + (f"; skipped {len(skipped)} file tensors ({', '.join(groups)})"
               if skipped else ""))
