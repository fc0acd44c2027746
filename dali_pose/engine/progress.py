"""Progress and logs of a training run; only rank 0 shows or writes anything.

* A tqdm bar per epoch with loss, learning rate, samples/s and ``data wait``: the share of
  wall time spent inside ``next(loader)`` (the HRNet trainer's ``data_time``). Where stderr
  is not a terminal (CI, a log file) the bar is off and a line is printed every
  ``log_every`` steps instead.
* One summary line per epoch on stdout.
* ``OUT_DIR/metrics.jsonl``: one JSON object per epoch: ``epoch``, ``loss``, ``lr``,
  ``samples_per_s``, ``data_wait`` (a fraction), ``world_size``, ``seconds``, ``samples``
  (all ranks) and ``unique_samples`` (distinct instances among them), ``ranks_in_sync``
  (every rank holds the same weights), and ``val/<metric>`` after a validation.
* TensorBoard event files in ``OUT_DIR/tb`` with the same scalars, when ``tensorboard`` is
  installed (``pip install -e ".[tensorboard]"``).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

from tqdm import tqdm


class Progress:
    def __init__(self, main: bool, out_dir: str, log_every: int):
        self.main, self.log_every = main, log_every
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.bar: Optional[tqdm] = None
        self.tb = None
        if main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None
        self._interactive = main and sys.stderr.isatty()

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._interactive:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        self.epoch, self.steps = epoch, steps

    def step(self, step: int, loss: float, lr: float, samples_per_s: float,
             data_wait: float) -> None:
        """After step ``step`` (1-based); ``loss`` may be NaN where not synchronised."""
        if not self.main:
            return
        text = dict(loss=f"{loss:.3e}", lr=f"{lr:.2e}", sps=f"{samples_per_s:.0f}",
                    wait=f"{100 * data_wait:.1f}%")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if not math.isnan(loss):
                self.bar.set_postfix(text, refresh=False)
        elif not math.isnan(loss) and (step % self.log_every == 0 or step == 1):
            print(f"epoch {self.epoch} step {step}/{self.steps}  loss {text['loss']}  "
                  f"lr {text['lr']}  {text['sps']} samples/s  data wait {text['wait']}",
                  flush=True)

    def end_epoch(self, record: dict) -> None:
        """Close the bar, print the summary line, append ``record`` to metrics.jsonl."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        r = record
        print(f"epoch {r['epoch']}: {r['steps']} steps, mean loss {r['loss']:.3e}, "
              f"{r['samples_per_s']:.0f} samples/s, data wait {100 * r['data_wait']:.1f}% of "
              f"{r['seconds']:.1f} s, lr {r['lr']:.2e}"
              + "".join(f", {k[4:]} {v:.3f}" for k, v in r.items() if k.startswith("val/")
                        and k[4:] in ("AP", "PCKh@0.5/Mean")), flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(r) + "\n")
        if self.tb is not None:
            for k, v in r.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, r["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
