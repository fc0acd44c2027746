"""Weight files: reading them as data, and loading a state dict with one-line errors.

Every file goes through ``torch.load(..., weights_only=True)``: tensors and plain types,
never code. A file that cannot be read, or whose tensors do not fit the model, is a
:class:`WeightsError` whose one line names the file, the model and the first mismatch
(torch's own message lists every tensor: 171 lines for an HRNet of another width).
"""
from __future__ import annotations

import pickle
from typing import Mapping

import torch


class WeightsError(ValueError):
    """A weight or checkpoint file is unreadable or does not fit; the message names it."""


def read_weights_file(path: str, what: str = "weights file"):
    """``torch.load(path, weights_only=True)`` on the CPU, errors as one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise WeightsError(f"{what} {path} does not exist") from e
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"cannot read {what} {path} (truncated or not a torch file?): "
                           f"{first}") from e


def check_fit(path: str, got: Mapping, model: torch.nn.Module, describe: str) -> None:
    """Raise one readable line when state dict ``got`` (from ``path``) does not fit
    ``model`` exactly; ``describe`` says which model the config asks for."""
    want = model.state_dict()
    missing = [k for k in want if k not in got]
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
    """``model.load_state_dict(state)`` after :func:`check_fit`."""
    check_fit(path, state, model, describe)
    model.load_state_dict(state)
