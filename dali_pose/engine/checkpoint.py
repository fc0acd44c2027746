"""The training checkpoint and the model file: what they hold, writing them atomically,
reading and checking them. ``train.py`` writes and restores through this module and
``evaluate.py --checkpoint`` (:func:`dali_pose.evaluation.inference.load_checkpoint`) reads
through it.

A training checkpoint (``OUT_DIR/last.pt`` after every epoch, ``best.pt`` whenever the
validation metric improves) is a ``torch.save`` of a dict of plain types and tensors:

    model       the model's state dict (unwrapped from DDP / torch.compile)
    optimizer   optimizer.state_dict()
    scheduler   the learning-rate schedule's state_dict()
    scaler      the float16 gradient scaler's state_dict()
    epoch       epochs completed; training continues with epoch ``epoch`` (0-based, as
                printed and in metrics.jsonl: ``epoch`` 3 follows the line of epoch 2)
    best        {"metric": name, "value": best value so far, "epoch": its epoch} (or None)
    config      the resolved config (``config.to_dict``)
    loader      rank 0's ``loader.state_dict()``: {"epoch", "batch", "seed", "shard_id",
                "num_shards", "batch_size"}; after an epoch {"epoch": the next epoch,
                "batch": 0} (its shuffle and augmentation are functions of (loader.seed,
                epoch, sample), so nothing else is needed to continue it)
    torch_rng   torch's CPU generator state (and ``cuda_rng`` on a GPU)
    record      the epoch's line of ``metrics.jsonl`` (it says ``"best": true`` when this
                state is also ``best.pt``); empty in a part-way checkpoint
    partial     only in a checkpoint taken part-way through epoch ``epoch`` (on SIGTERM /
                SIGINT, or every ``train.ckpt_every_steps``), after ``loader["batch"]``
                steps of it: what the epoch's line of ``metrics.jsonl`` will sum, so the
                resumed epoch's line is the uninterrupted one's: {"steps", "epoch_steps"
                (the epoch's steps in all), "seconds", "data_wait" (seconds), "ranks": per
                rank {"loss_sum", "samples", "rows"}}

so it loads with ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
The model file ``model.pt`` (the final weights) is ``{"model", "config", "epoch"}``.

A part-way checkpoint replaces ``last.pt`` only (never ``best.pt``, no line of
``metrics.jsonl``: the epoch writes those when it ends).

Order of an epoch's writes: ``last.pt`` first, then ``best.pt``, then the line of
``metrics.jsonl``. A run killed between them (or stopped by a full disk) leaves a
``last.pt`` that holds both of the others, and a resume writes them again
(:func:`complete_epoch`): nothing of a finished epoch is lost. A resume from an older
checkpoint (``best.pt``) moves the metrics lines of the epochs it trains again aside.

Every write (:func:`save_atomic`) goes to a temporary file in the same directory, flushed
and fsync'd, then ``os.replace``d over the old one (and the directory fsync'd): a crash at
any moment leaves the old or the new file, never a torn one; the temporary files a killed
write leaves behind are removed by the next run (:func:`remove_temp_files`).
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Callable, List, Optional

import torch

from ..config import to_dict
from ..errors import WeightsError, show
from ..models.weights import read_weights_file

TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config")
_TEMP = ".tmp"  # write_atomic's temporary files: NAME.<random>.tmp
# the files train.py writes through write_atomic (remove_temp_files looks for their leftovers)
ATOMIC_FILES = ("last.pt", "best.pt", "model.pt", "metrics.jsonl")
# where a resume from an older checkpoint puts the metrics lines of the epochs it redoes
SUPERSEDED = "metrics.superseded.jsonl"


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import (no other thread yet)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask): mkstemp's 0o600 would
    hide the checkpoints from the other users a plain ``torch.save`` shares them with."""
    return 0o666 & ~_UMASK


class CheckpointWriteError(OSError):
    """A checkpoint or model file could not be written (a full disk, a lost mount); the
    file it would have replaced is unchanged. One line, naming the file."""

    def __init__(self, path: str, cause: Optional[OSError], hint: str = ""):
        reason = (cause.strerror or str(cause)) if cause is not None else "write failed"
        kept = (f"; the previous {os.path.basename(path)} is unchanged"
                if os.path.exists(path) else "")
        super().__init__(f"cannot write {path}: {reason}{kept}{hint}")
        self.cause = cause
        self.errno = getattr(cause, "errno", None)
        self.path = path


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: str, write, binary: bool = True) -> None:
    """``write(file)`` to ``path`` atomically: a temporary file in the same directory,
    flushed and fsync'd, ``os.replace``d over ``path``, the directory fsync'd; a crash or a
    failed write at any moment leaves the old file or the new one, never a torn one. A
    failed write (torch wraps the ``OSError`` of a full disk in a ``RuntimeError``) is a
    :class:`CheckpointWriteError`; the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=_TEMP,
                               dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            try:
                os.fchmod(f.fileno(), _file_mode())
            except OSError:  # FAT/exFAT refuse a mode their mount does not give: keep 0o600
                pass
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError):
            raise CheckpointWriteError(path, cause) from e
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - a file system without directory fsync
        pass


def remove_temp_files(out_dir: str) -> List[str]:
    """Delete the temporary files that killed :func:`write_atomic` calls left in
    ``out_dir`` (those of :data:`ATOMIC_FILES`; call it while holding the out_dir's lock);
    returns their names."""
    gone = []
    paths = [p for name in ATOMIC_FILES
             for p in glob.glob(os.path.join(glob.escape(out_dir), f"{name}.*{_TEMP}"))]
    for path in paths:
        try:
            os.unlink(path)
            gone.append(os.path.basename(path))
        except FileNotFoundError:  # pragma: no cover - raced with nobody (we hold the lock)
            pass
    return sorted(gone)


# ------------------------------------------------------------ the training checkpoint --

def training_state(model, optimizer, scheduler, scaler, epoch: int, best, cfg,
                   record: dict, cuda_device=None, loader: Optional[dict] = None,
                   partial: Optional[dict] = None) -> dict:
    """The checkpoint after ``epoch`` epochs (the dict of the module docstring);
    ``cuda_device``: also save that GPU's generator state. A part-way checkpoint passes the
    loader's ``state_dict()`` and the epoch's ``partial`` sums (and an empty ``record``)."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "epoch": int(epoch), "best": best, "config": to_dict(cfg),
        "loader": dict(loader) if loader is not None else {"epoch": int(epoch), "batch": 0},
        "torch_rng": torch.get_rng_state(), "record": dict(record)}
    if partial is not None:
        state["partial"] = partial
    if cuda_device is not None:
        state["cuda_rng"] = torch.cuda.get_rng_state(cuda_device)
    return state


def save_training(state: dict, out_dir: str) -> None:
    """``last.pt``, then ``best.pt`` when the epoch's record says it is the best (the order
    :func:`complete_epoch` relies on)."""
    last = os.path.join(out_dir, "last.pt")
    save_atomic(state, last)
    if state["record"].get("best"):
        best = os.path.join(out_dir, "best.pt")
        try:
            save_atomic(state, best)
        except CheckpointWriteError as e:  # last.pt holds it: say how it comes back
            raise CheckpointWriteError(best, e.cause, f"; {last} holds this epoch: "
                                       f"--resume auto writes best.pt again") from e


def read_training_checkpoint(path: str) -> dict:
    """The dict of a training checkpoint (``last.pt`` / ``best.pt``); a missing, truncated,
    corrupt or foreign file is a one-line ``WeightsError`` naming ``path``. A damaged
    ``last.pt`` next to a readable ``best.pt`` says so."""
    try:
        ckpt = read_weights_file(path, "checkpoint")
        missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise WeightsError(f"{path}: not a dali_pose training checkpoint (no "
                               f"{', '.join(repr(k) for k in missing)}; train.py writes "
                               f"last.pt and best.pt in out_dir)")
        if not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
            raise WeightsError(f"{path}: 'epoch' is {show(ckpt['epoch'], 60)}, not a count of "
                               f"epochs")
        if ckpt.get("partial") is not None and not _is_partial(ckpt):
            raise WeightsError(f"{path}: a part-way checkpoint whose 'partial' or 'loader' "
                               f"entry is damaged (train.py writes them together)")
    except WeightsError as e:
        raise WeightsError(f"{e}{_offer_best(path)}") from e
    return ckpt


def _is_partial(ckpt: dict) -> bool:
    """Whether ``ckpt['partial']`` and ``ckpt['loader']`` have the shape a part-way
    checkpoint's have (the module docstring)."""
    p, ld = ckpt.get("partial"), ckpt.get("loader")
    try:
        number = (int, float)
        return (isinstance(p["steps"], int) and p["steps"] >= 1
                and isinstance(p.get("epoch_steps", p["steps"]), int)
                and p.get("epoch_steps", p["steps"]) >= p["steps"]
                and isinstance(p["seconds"], number) and isinstance(p["data_wait"], number)
                and isinstance(p["ranks"], list) and len(p["ranks"]) >= 1
                and all(isinstance(r["loss_sum"], number) and isinstance(r["samples"], int)
                        and isinstance(r["rows"], list) for r in p["ranks"])
                and int(ld["epoch"]) == ckpt["epoch"] and int(ld["batch"]) == p["steps"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _offer_best(path: str) -> str:
    if os.path.basename(path) != "last.pt":
        return ""
    best = os.path.join(os.path.dirname(path), "best.pt")
    if not os.path.exists(best):
        return ""
    try:
        epoch = read_weights_file(best, "checkpoint")["epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < 10**9:
            return ""
    except Exception:  # an unreadable best.pt is not worth offering
        return ""
    return (f"; {best} (after epoch {epoch - 1}) is readable: continue from it with "
            f"--resume {best}")


def resume_path(resume: Optional[str], out_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` names: 'auto' is ``out_dir/last.pt`` when it exists (a
    fresh start otherwise), any other value a path that must exist."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(out_dir, "last.pt")
        return path if os.path.exists(path) else None
    if not os.path.exists(resume):
        raise WeightsError(f"--resume {resume}: no such checkpoint")
    return resume


def complete_epoch(state: dict, out_dir: str, metrics_path: str,
                   log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Bring ``out_dir`` in line with the checkpoint ``state`` a run resumes from.

    * What a kill (or a full disk) after ``last.pt`` kept from the checkpoint's epoch:
      its ``best.pt`` and its line of ``metrics.jsonl`` are written again (a torn last line
      is dropped first).
    * The lines of ``metrics.jsonl`` of the epochs the checkpoint does not hold (a resume
      from ``best.pt`` or another older checkpoint: the run trains those epochs again) move
      to ``metrics.superseded.jsonl``, so that each epoch has one line.

    Returns the names restored; says what it did through ``log``."""
    record = state.get("record") or {}
    held = int(state["epoch"])  # the epochs 0 .. held - 1 are in the checkpoint
    done = []
    text = ""
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            text = f.read()
    lines, torn = [], False
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # the torn end of a killed append
            torn = True
    later = [r for r in lines if isinstance(r, dict) and isinstance(r.get("epoch"), int)
             and r["epoch"] >= held]
    if later:
        lines = [r for r in lines if not any(r is x for x in later)]
        aside = os.path.join(out_dir, SUPERSEDED)
        with open(aside, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in later))
        epochs = sorted({r["epoch"] for r in later})
        if log:
            holds = f"epochs 0-{held - 1}" if held else "no finished epoch"
            log(f"the checkpoint holds {holds}: the metrics.jsonl lines of epoch(s) "
                f"{', '.join(map(str, epochs))} moved to {aside} (those epochs train again)")
    have = any(r.get("epoch") == record.get("epoch") for r in lines) if record else True
    if torn or not have or later or (text and not text.endswith("\n")):
        if not have:
            lines.append(record)
            done.append(f"metrics.jsonl line of epoch {record['epoch']}")
        body = "".join(json.dumps(r) + "\n" for r in lines)
        write_atomic(metrics_path, lambda f: f.write(body), binary=False)
    if record.get("best"):
        best_path = os.path.join(out_dir, "best.pt")
        try:
            best_epoch = read_weights_file(best_path, "checkpoint").get("epoch")
        except WeightsError:
            best_epoch = None
        if best_epoch != state["epoch"]:
            save_atomic(state, best_path)
            done.append(f"best.pt of epoch {record['epoch']}")
    if done and log:
        log(f"restored from the checkpoint: {', '.join(done)} (the run was stopped between "
            f"its writes)")
    return done


def save_model(path: str, model: torch.nn.Module, cfg, epoch: int) -> None:
    """A model file ``evaluate.py --checkpoint`` and ``model.weights`` read: ``{"model":
    state dict, "config": the resolved config, "epoch": epochs trained}``."""
    save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "epoch": int(epoch)},
                path)


def read_model_checkpoint(path: str) -> dict:
    """A file ``train.py`` wrote (``last.pt``, ``best.pt`` or ``model.pt``) as a dict with
    at least ``model`` (a state dict) and ``config``; anything else is a one-line
    ``WeightsError`` naming ``path``."""
    ckpt = read_weights_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt) \
            or not isinstance(ckpt["model"], dict):
        raise WeightsError(f"{path}: not a dali_pose checkpoint (a dict with 'model' and "
                           f"'config', as train.py writes)")
    return ckpt
