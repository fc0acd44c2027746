"""Progress and logs of a training run; only rank 0 shows or writes anything.

* :class:`RunLog`: what the run prints also goes to ``OUT_DIR/train.log`` (appended to on
  a resume), each line as it is printed.
* A tqdm bar per epoch while its steps run (batches/s; in the postfix the loss, learning
  rate, samples/s over all ranks and ``data wait``: the share of wall time spent inside
  ``next(loader)``, the HRNet trainer's ``data_time``). It is closed before validation
  prints anything. Where stderr is not a terminal (CI, a log file) the bar is off and a line
  is printed every ``log_every`` steps instead.
* One line per epoch end, with the time the rest of the run will take (ETA: the mean
  epoch so far, validation included, times the epochs left).
* ``OUT_DIR/metrics.jsonl``: one JSON object per epoch: ``epoch`` (0-based, as printed),
  ``steps``, ``loss``, ``lr``, ``samples_per_s`` (all ranks together) and
  ``samples_per_s_rank0``, ``data_wait`` (a fraction), ``world_size``, ``seconds``,
  ``samples`` (all ranks) and ``unique_samples`` (distinct instances among them),
  ``ranks_in_sync`` (every rank holds the same weights), and ``val/<metric>`` after a
  validation (``best``: true when it improved).
* TensorBoard event files in ``OUT_DIR/tb`` (with ``tensorboard`` installed: ``pip install
  -e ".[tensorboard]"``): ``train/loss`` and ``train/lr`` per iteration (every ``log_every``
  steps, x = iterations since the start), and per epoch (x = epoch) ``epoch/loss``,
  ``epoch/samples_per_s``, ``epoch/data_wait`` and ``val/<metric>``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

from tqdm import tqdm

_EPOCH_SCALARS = ("loss", "samples_per_s", "data_wait")


class MetricsWriteError(OSError):
    """The epoch's line of metrics.jsonl could not be written (one line, naming it)."""


class RunLog:
    """A ``log`` callable: prints a line and appends it to ``path``."""

    def __init__(self, path: str, fresh: bool):
        self.path = path
        self._f = open(path, "w" if fresh else "a")

    def __call__(self, msg: str = "") -> None:
        print(msg, flush=True)
        self.write(msg)

    def write(self, msg: str) -> None:
        """Append ``msg`` to the file only (it was shown another way)."""
        if self._f is not None:
            self._f.write(f"{msg}\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _rate(per_s: float) -> str:
    """Samples/s with 3 significant digits below 100 (a tiny run's 0.43, not 0)."""
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.3g}"


class Progress:
    def __init__(self, main: bool, out_dir: str, log_every: int, epochs: int, log=print):
        self.main, self.log_every, self.epochs, self.log = main, log_every, epochs, log
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.bar: Optional[tqdm] = None
        self.tb = None
        self._epoch_seconds = []
        if main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None
        self._interactive = main and sys.stderr.isatty()

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._interactive:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False,
                            dynamic_ncols=True, unit="batch")
        self.epoch, self.steps = epoch, steps

    def step(self, step: int, loss: float, lr: float, samples_per_s: float,
             data_wait: float, iteration: int = 0) -> None:
        """After step ``step`` (1-based) of the epoch, ``iteration`` (0-based) of the run;
        ``loss`` may be NaN where not synchronised; ``samples_per_s`` over all ranks."""
        if not self.main:
            return
        text = dict(loss=f"{loss:.3e}", lr=f"{lr:.2e}", **{"samples/s": _rate(samples_per_s)},
                    wait=f"{100 * data_wait:.1f}%")
        if not math.isnan(loss) and self.tb is not None:
            self.tb.add_scalar("train/loss", loss, iteration)
            self.tb.add_scalar("train/lr", lr, iteration)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if not math.isnan(loss):
                self.bar.set_postfix(text, refresh=False)
        elif not math.isnan(loss) and (step % self.log_every == 0 or step == 1):
            self.log(f"epoch {self.epoch} step {step}/{self.steps}  loss {text['loss']}  "
                     f"lr {text['lr']}  {text['samples/s']} samples/s  data wait "
                     f"{text['wait']}")

    def end_steps(self) -> None:
        """The epoch's steps are done: close the bar before anything else prints."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, record: dict, seconds: float) -> None:
        """Print the epoch's line (``seconds``: its wall time, validation included), append
        ``record`` to metrics.jsonl and its scalars to TensorBoard."""
        if not self.main:
            return
        self.end_steps()
        self._epoch_seconds.append(seconds)
        r = record
        left = self.epochs - r["epoch"] - 1
        eta = (f", ETA {_duration(left * sum(self._epoch_seconds) / len(self._epoch_seconds))}"
               f" for {left} more epoch{'s' if left != 1 else ''}" if left > 0 else "")
        self.log(f"epoch {r['epoch']}: {r['steps']} steps, mean loss "
                 f"{r['loss']:.3e}, {_rate(r['samples_per_s'])} samples/s, data wait "
                 f"{100 * r['data_wait']:.1f}%, lr {r['lr']:.2e}"
                 + "".join(f", {k[4:]} {v:.3f}" for k, v in r.items() if k.startswith("val/")
                           and k[4:] in ("AP", "PCKh@0.5/Mean"))
                 + (" (best)" if r.get("best") else "")
                 + f"; {_duration(seconds)}{eta}")
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(r) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk: last.pt (written first) holds the line
            raise MetricsWriteError(f"cannot write {self.path}: {e.strerror or e}; "
                                    f"last.pt holds epoch {r['epoch']}: --resume auto "
                                    f"writes its line again") from e
        if self.tb is not None:
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and (
                        k in _EPOCH_SCALARS or k.startswith("val/")):
                    self.tb.add_scalar(k if "/" in k else f"epoch/{k}", v, r["epoch"])
            self.tb.flush()

    def close(self) -> None:
        self.end_steps()
        if self.tb is not None:
            self.tb.close()
