"""The benchmark's loaders under test and what it measures of them (``python -m
dali_pose.tools.bench``): the process / machine probes (CPU time, steal, memory) and
:class:`Backend`, one loader iterated as an endless stream of batches.

Backends (all on the training split, full training augmentation of the config):
  dali-gpu, dali-cpu  ``build_loader(device=...)`` as configured: each image decoded once
             per epoch for all its people, the numba warp
  dali-gpu-oracle, dali-cpu-oracle  DALI's own decode + ``warp_affine``
             (:mod:`dali_pose.loader.oracle`), one person per image (the first of each:
             ``warp_affine`` takes one crop per sample): the baseline of DALI's operators
  reference  :mod:`dali_pose.tools.reference`: a torch DataLoader with ``loader.num_threads``
             worker processes (OpenCV decode + warpAffine, NumPy heatmaps)
"""
from __future__ import annotations

import gc
import math
import os
import resource
import sys
import time
from typing import List, Optional

BACKENDS = ("dali-gpu", "dali-gpu-oracle", "dali-cpu", "dali-cpu-oracle", "reference")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ------------------------------------------------------------ process metrics -------

def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_ticks() -> Optional[List[int]]:
    """The machine's CPU time counters (/proc/stat, all cores), None where unreadable."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _steal_share(t0: Optional[List[int]], t1: Optional[List[int]]) -> Optional[float]:
    """The share of the machine's CPU time the hypervisor gave to others between two
    :func:`_machine_ticks` (a shared VM's noise: rounds with much steal are slower)."""
    if t0 is None or t1 is None or len(t0) < 8:
        return None
    d = [b - a for a, b in zip(t0, t1)]
    return d[7] / max(1, sum(d[:8]))


def _wait_idle(limit_s: float, window_s: float = 0.2, idle: float = 0.9) -> None:
    """Return once the machine's cores were >= ``idle`` idle over ``window_s`` (at most
    ``limit_s``; 0: at once): what the previous backend still had in flight has finished."""
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        t0 = _machine_ticks()
        time.sleep(window_s)
        t1 = _machine_ticks()
        if t0 is None or t1 is None:
            return
        d = [b - a for a, b in zip(t0, t1)]
        if (d[3] + d[4]) >= idle * max(1, sum(d[:8])):
            return


def _pid_cpu_s(pid: int) -> float:
    """utime + stime of a live process (0 when it is gone or /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _pid_status_mb(pid, key: str) -> float:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) in MB; NaN where unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _pid_pss_mb(pid) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    v = _pid_status_mb("self", "VmRSS")
    if math.isnan(v):  # no /proc: the peak is the best we have
        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return v


def _peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def _gpu_used_mb() -> Optional[float]:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2 ** 20
    except Exception:  # pragma: no cover - driver trouble
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _load() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _sync_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception:  # pragma: no cover
        pass


# ------------------------------------------------------------------- backends -------

class Backend:
    """One loader under test, iterated as an endless stream of batches (epoch after
    epoch: epoch boundaries, with their pipeline refill or worker hand-over, are part of
    what a training run pays)."""

    def __init__(self, name: str, cfg, index):
        oracle = name.endswith("-oracle")
        if oracle:
            from ..loader.oracle import one_person_per_image

            index = one_person_per_image(index)
        self.name, self.cfg, self.index = name, cfg, index
        self.gpu = name.startswith("dali-gpu")
        self.gpu_base_mb = _gpu_used_mb() if self.gpu else None
        t0 = time.perf_counter()
        if name == "reference":
            from .reference import build_reference_loader

            self.loader = build_reference_loader(cfg, "train", cfg.loader.num_threads,
                                                 index=index, timing=True)
        else:
            from ..loader import PoseLoader, build_loader
            from ..loader.graph import forget_compiled
            from ..loader.oracle import oracle_graph

            # build_s: no operator shared with what ran before in this process (each one
            # compiled, or loaded from the per-machine cache; DALI_POSE_CACHE=off compiles)
            forget_compiled()
            t0 = time.perf_counter()
            device = "gpu" if self.gpu else "cpu"
            if oracle:
                self.loader = PoseLoader(cfg, "train", index, device, 0, 1, log=None,
                                         graph=oracle_graph)
            else:
                self.loader = build_loader(cfg, "train", device=device, index=index)
        self.build_s = time.perf_counter() - t0
        self._stream = None

    def batches(self):
        if self._stream is None:
            self._stream = self._forever()
        return self._stream

    def _forever(self):
        while True:
            n = 0
            for batch in self.loader:
                n += 1
                yield batch
            if n == 0:
                raise RuntimeError(f"{self.name}: an epoch yielded no batch (dataset of "
                                   f"{len(self.index)} rows, batch size "
                                   f"{self.cfg.loader.batch_size})")

    def worker_pids(self) -> List[int]:
        it = getattr(self.loader, "_iterator", None)
        return [w.pid for w in getattr(it, "_workers", []) or [] if w.pid is not None]

    def worker_cpu_s(self) -> float:
        return sum(_pid_cpu_s(p) for p in self.worker_pids())

    def memory(self) -> dict:
        pids = self.worker_pids()
        out = {"main_rss_mb": _rss_mb()}
        if pids:
            out["workers"] = len(pids)
            out["workers_rss_mb"] = sum(_pid_status_mb(p, "VmRSS") for p in pids)
            out["workers_pss_mb"] = sum(_pid_pss_mb(p) for p in pids)
            out["workers_peak_rss_mb"] = sum(_pid_status_mb(p, "VmHWM") for p in pids)
        if self.gpu:
            used = _gpu_used_mb()
            if used is not None and self.gpu_base_mb is not None:
                out["gpu_mem_mb"] = used - self.gpu_base_mb
        return out

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader = None
        gc.collect()


