"""One run per ``out_dir``, and nothing a user wrote there lost.

* :func:`lock`: ``train.py`` holds an exclusive ``flock`` on ``OUT_DIR/.train.lock`` for
  its whole life; a second run on the same ``out_dir`` is refused in one line naming the
  first one's pid. The kernel drops the lock when its process dies, however it dies
  (SIGKILL, a crash, a lost node), so a killed run never leaves it stuck; the file itself
  stays (removing it would race with the next run taking it).
* :func:`check_fresh`: a run that starts from scratch in an ``out_dir`` holding another
  run's results (``last.pt``, ``best.pt``, ``model.pt``, ``metrics.jsonl``) is refused,
  offering ``--resume auto``, another ``out_dir`` or ``--overwrite`` (which deletes that
  run's outputs first, and nothing else: a file of the user's in ``out_dir``, or in ``tb/``
  beside the TensorBoard event files, stays); :func:`check_resume_from`: a run resumed from
  another folder's checkpoint is not mixed into an ``out_dir`` holding other results either.
"""
from __future__ import annotations

import fcntl
import os
from typing import IO, List

from ..errors import ConfigError

LOCK = ".train.lock"
RESULTS = ("last.pt", "best.pt", "model.pt", "metrics.jsonl")
# everything train.py writes in out_dir (--overwrite deletes these, and only these; in tb/
# the TensorBoard event files)
OUTPUTS = RESULTS + ("metrics.superseded.jsonl", "config.yaml", "train.log",
                     "val_results.json", "metrics.json", "val_preds.npy", "preview.png")
TB = "tb"
_EVENTS = "events.out.tfevents."  # the names of TensorBoard's event files


class OutDirBusy(ConfigError):
    """Another ``train.py`` holds the ``out_dir``."""


def lock(out_dir: str) -> IO:
    """Take ``out_dir``'s lock (an open file: keep it for the run's life; closing it or the
    process ending releases the lock) or raise :class:`OutDirBusy`."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, LOCK)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise OutDirBusy(f"config key 'out_dir': {out_dir} is in use by another train.py "
                         f"(pid {holder}); wait for it to end, or choose another out_dir "
                         f"(--set out_dir=...)") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def results_in(out_dir: str) -> List[str]:
    """The result files of a run already in ``out_dir``."""
    return [n for n in RESULTS if os.path.exists(os.path.join(out_dir, n))]


def check_fresh(out_dir: str, resume, overwrite: bool) -> List[str]:
    """A run starting from scratch (no checkpoint to resume): refuse when ``out_dir`` holds
    another run's results, unless ``overwrite``; then delete that run's outputs. Returns
    the names deleted."""
    found = results_in(out_dir)
    if not found:
        return []
    if not overwrite:
        what = ("there is no last.pt to resume from, but it holds"
                if resume == "auto" else "it holds")
        cont = "" if resume == "auto" else "continue it with --resume auto, "
        raise ConfigError(f"config key 'out_dir': {out_dir} already has a run ({what} "
                          f"{', '.join(found)}): {cont}choose another out_dir (--set "
                          f"out_dir=...), or pass --overwrite to delete its outputs")
    gone = []
    for name in OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
            gone.append(name)
    if _remove_events(os.path.join(out_dir, TB)):
        gone.append(TB + "/ (its event files)")
    return gone


def check_resume_from(out_dir: str, ckpt: str) -> None:
    """A run resumed from a checkpoint of another folder (``--resume PATH``) writes into an
    ``out_dir`` without another run's results, or its metrics would mix with theirs."""
    if os.path.realpath(os.path.dirname(os.path.abspath(ckpt))) == os.path.realpath(out_dir):
        return
    found = results_in(out_dir)
    if found:
        raise ConfigError(f"config key 'out_dir': {out_dir} already has another run (it "
                          f"holds {', '.join(found)}), and --resume {ckpt} comes from "
                          f"elsewhere: continue it into a new out_dir (--set out_dir=...)")


def _remove_events(tb: str) -> bool:
    """Delete the TensorBoard event files directly in ``tb`` (where train.py's writer puts
    them; runs a user copied into sub-folders to compare stay) and ``tb`` itself if that
    leaves it empty; whether there were any."""
    if not os.path.isdir(tb) or os.path.islink(tb):
        return False
    found = False
    for f in os.listdir(tb):
        path = os.path.join(tb, f)
        if f.startswith(_EVENTS) and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
            found = True
    if not os.listdir(tb):
        os.rmdir(tb)
    return found
