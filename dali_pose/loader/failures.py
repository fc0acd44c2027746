"""DALI's failures as dataset errors: one line naming the files of the run that failed."""
from __future__ import annotations

from typing import Iterable

from ..datasets import DatasetError


def run_failure(error: Exception, split: str, paths: Iterable[str]) -> DatasetError:
    """The :class:`DatasetError` for DALI's ``error`` on a run of ``split`` images whose
    files are ``paths``: the first line of DALI's message and up to 8 of the files."""
    files = sorted({str(p) for p in paths})
    more = " ..." if len(files) > 8 else ""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DatasetError(f"DALI failed on a batch of {split} images "
                        f"({'; '.join(files[:8])}{more}): {first}")
