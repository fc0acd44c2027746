"""The errors a user can cause, under one base class.

The command lines (``train.py``, ``evaluate.py``, the tools) catch :class:`DaliPoseError`
and print its one-line message; anything else is a bug and keeps its traceback. Each
subclass is also a ``ValueError``, so callers that caught that before still do.
"""


class DaliPoseError(ValueError):
    """Bad input from the user; the message is one line naming the file, key or argument."""


class ConfigError(DaliPoseError):
    """A config file or override is wrong; the message names the key."""


class DatasetError(DaliPoseError):
    """Bad dataset input; the message names the file and, where there is one, the annotation."""


class WeightsError(DaliPoseError):
    """A weight or checkpoint file is unreadable or does not fit; the message names it."""


class EvaluationError(DaliPoseError):
    """Bad input to a scorer; the message names the file or argument and what is wrong."""


class NoGpuError(ConfigError):
    """The GPU backend was asked for where CUDA is not available."""

    def __init__(self, key: str = "loader.device"):
        super().__init__(f"config key '{key}': 'gpu', but CUDA is not available here; "
                         f"use --set {key}=cpu")


def show(value, limit: int = 120) -> str:
    """``repr(value)`` cut short for an error message: a few items per list or mapping, a few
    levels deep, at most ``limit`` characters; never expands a large or deeply shared value
    (a YAML anchor bomb is billions of items through its shared references)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
