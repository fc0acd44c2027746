"""Why a run stops early, and how it does so without a traceback.

* :class:`StopRequest`: SIGTERM (a cluster's preemption, ``kill``) or SIGINT (Ctrl-C) asks
  the run to stop; ``train.py`` finishes the step it is in, writes ``last.pt`` part-way
  through the epoch (with the loader's epoch and batch: ``--resume auto`` continues at the
  next batch), prints one line saying where ``--resume auto`` continues, and exits 0. A
  second signal ends the process at once (exit 128 + signal number), again
  without a traceback: every file is written atomically, so no file is torn.
  Under ``torchrun`` every rank gets the signal; the ranks agree on the step to stop after
  (one integer all-reduced per step on a CPU group), so no rank waits for another forever.
* :class:`NonFiniteLoss`: the training loss became NaN or infinite; the run stops before
  the epoch's checkpoint (and before any part-way one), so ``last.pt`` keeps the last good
  state.
"""
from __future__ import annotations

import math
import os
import signal
from typing import Optional

from ..errors import DaliPoseError


class NonFiniteLoss(DaliPoseError):
    """The training loss is NaN or infinite; the message names the epoch and step."""

    def __init__(self, value: float, epoch: int, step: int, steps: int, kept: str):
        what = "NaN" if math.isnan(value) else "infinite"
        super().__init__(f"the training loss is {what} at epoch {epoch} step {step} of "
                         f"{steps}; stopped, {kept} (lower train.lr or train.grad_clip, "
                         f"and check the data and the weights the run started from)")


class StopRequest:
    """Catches SIGTERM and SIGINT while installed (``with StopRequest() as stop``);
    ``stop.signal_name`` is the first signal's name, None while none came."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self) -> "StopRequest":
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:  # runs between two bytecodes of the main thread
        if self.signum is not None:
            # os.write, not print: print may be inside a write of the same stream
            os.write(2, f"\n{signal.Signals(signum).name} again: stopping now (the "
                        f"checkpoints on disk are whole)\n".encode())
            os._exit(128 + signum)
        self.signum = signum

    @property
    def signal_name(self) -> Optional[str]:
        return None if self.signum is None else signal.Signals(self.signum).name

    def requested(self, dist=None) -> bool:
        """Whether any rank was asked to stop (a collective when distributed: every rank
        calls it at the same step)."""
        mine = self.signum is not None
        if dist is None or not dist.distributed:
            return mine
        from .distributed import any_rank

        return any_rank(dist, mine)
