"""Loader benchmark: the DALI loader (GPU and CPU backends) against the classic one.

    python -m dali_pose.tools.bench [--config CFG] [--set KEY=VALUE ...]
        [--backends dali-gpu,dali-cpu,reference] [--batches N] [--rounds R] [--warmup W]
        [--scaling] [--epochs-memory N] [--train-step] [--smoke] [--json OUT]
    python -m dali_pose.tools.bench --startup ...   (time to the first batch: bench_startup)

Backends (all on the training split, full training augmentation of the config):
  dali-gpu   ``build_loader(device='gpu')`` (skipped, with a message, without CUDA)
  dali-cpu   ``build_loader(device='cpu')`` as configured (by default each image decoded
             once per epoch for all its people, ``loader.decode_per_image``;
             ``loader.fast_cpu`` picks the fused ROI-decode path or the DALI decode +
             warp_affine path where images are decoded per person)
  dali-cpu-person, dali-gpu-person  the same with ``loader.decode_per_image: false``: one
             decode per person
  reference  :mod:`dali_pose.tools.reference`: a torch DataLoader with ``loader.num_threads``
             worker processes (OpenCV decode + warpAffine, NumPy heatmaps)

Every backend's timed batch is a normalised one where the consumer gets it: with
``loader.image_dtype: uint8`` the loader hands over intensities and
:func:`dali_pose.normalize.normalize_images` normalises them inside the timed loop (on the
CPU here: its cost is counted).

All backends are built first, then run interleaved in one process: for each round, for each
backend, ``--warmup`` batches (which also drain what the backend prefetched while the others
ran) and then ``--batches`` timed batches. Before each warm-up the bench waits until the
machine is idle: a loader keeps working after its round (the classic loader's workers finish
the batches in flight, ~1 s of both cores), and that work would land in the next backend's
round. Reported per backend: the median samples/s over the
rounds and its ratio to the reference's; CPU use (CPU seconds of this process, all threads,
plus the backend's worker processes, over wall seconds: "cores"; and CPU ms per sample);
resident memory (this process, and the reference's workers: RSS and PSS, which counts pages
shared with the parent once); GPU memory for dali-gpu (device memory in use, from
``cudaMemGetInfo``, minus the level before the loader was built).

Per-stage time: for the reference, each worker times read / geometry / warp / normalize /
targets per sample (``timing=True``); the remainder of the CPU time is framework overhead
(IPC, collation). For the DALI backends, growing prefixes of the graph are built as their own
pipelines and timed one after another (source, + geometry, + decode, + warp/normalise,
+ occlusion/targets = the whole graph, + the torch iterator = the loader); a stage's cost is
the difference between consecutive prefixes (CPU ms per sample, and wall ms per sample). A
sample is a crop (a person): with per-image decoding a DALI sample is an image and its
people, and the breakdown states the people per decoded image.

``--scaling``: samples/s over batch size (16, 32, 64, 128), threads/workers (1 .. cores) and
input size (256x192, 384x288, heatmaps at 1/4), one dimension at a time from the config.
``--epochs-memory N``: resident memory after each of N full epochs per backend (leak check).
``--train-step`` (CUDA only): HRNet-W32 forward + backward + Adam step with mixed precision
and channels_last on random data, samples/s, and each loader's samples/s divided by it.
``--smoke``: a tiny run (batch 4, 2 rounds of 3 batches, no stage breakdown unless
``--stages``) that checks the benchmark works; CI runs only this.

Without ``--config`` the built-in defaults are used, which point at the synthetic dataset
under ``data/synthetic``; it is generated there first when missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from ..config import DataConfig, add_config_args, load_config, to_dict

BACKENDS = ("dali-gpu", "dali-gpu-person", "dali-cpu", "dali-cpu-person", "reference")
SCALING_BATCH = (16, 32, 64, 128)
SCALING_INPUT = ((192, 256), (288, 384))  # [w, h]
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
        if name.endswith("-person"):
            cfg = dataclasses.replace(cfg, loader=dataclasses.replace(
                cfg.loader, decode_per_image=False))
        self.name, self.cfg, self.index = name, cfg, index
        self.gpu = name.startswith("dali-gpu")
        self.gpu_base_mb = _gpu_used_mb() if self.gpu else None
        t0 = time.perf_counter()
        if name == "reference":
            from .reference import build_reference_loader

            self.loader = build_reference_loader(cfg, "train", cfg.loader.num_threads,
                                                 index=index, timing=True)
        else:
            from ..loader import build_loader
            from ..loader.graph import forget_compiled

            # build_s: no operator shared with what ran before in this process (each one
            # compiled, or loaded from the per-machine cache; DALI_POSE_CACHE=off compiles)
            forget_compiled()
            t0 = time.perf_counter()
            self.loader = build_loader(cfg, "train", device="gpu" if self.gpu else "cpu",
                                       index=index)
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


def timed_round(backend: Backend, n_batches: int, warmup: int, settle_s: float = 10.0) -> dict:
    from ..normalize import normalize_images

    stream = backend.batches()
    _wait_idle(settle_s)
    for _ in range(warmup):
        next(stream)
    _sync_cuda()
    stage_s = None
    samples = 0
    cpu0 = _self_cpu_s() + backend.worker_cpu_s()
    ticks0 = _machine_ticks()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        batch = next(stream)
        normalize_images(batch["image"])  # uint8 crops: the consumer's cost, counted
        samples += int(batch["image"].shape[0])
        st = batch.get("stage_s")
        if st is not None:
            s = st.sum(0).numpy()
            stage_s = s if stage_s is None else stage_s + s
    _sync_cuda()
    wall = time.perf_counter() - t0
    cpu = _self_cpu_s() + backend.worker_cpu_s() - cpu0
    out = {"samples": samples, "seconds": wall, "samples_per_s": samples / wall,
           "cpu_s": cpu, "cpu_cores": cpu / wall, "cpu_ms_per_sample": 1e3 * cpu / samples,
           "steal": _steal_share(ticks0, _machine_ticks())}
    if stage_s is not None:
        out["stage_s"] = stage_s.tolist()
    return out


def run_interleaved(backends: List[Backend], rounds: int, n_batches: int, warmup: int,
                    settle_s: float = 10.0, log=print) -> Dict[str, dict]:
    per = {b.name: [] for b in backends}
    mem_first = {}
    for r in range(rounds):
        for b in backends:
            res = timed_round(b, n_batches, warmup, settle_s)
            per[b.name].append(res)
            if r == 0:
                mem_first[b.name] = b.memory()
            steal = "" if res["steal"] is None else f"  steal {100 * res['steal']:.0f}%"
            log(f"  round {r + 1}/{rounds} {b.name:<10} {res['samples_per_s']:9.1f} samples/s"
                f"  {res['cpu_cores']:.2f} cores{steal}")
    out = {}
    for b in backends:
        rs = per[b.name]
        sps = [x["samples_per_s"] for x in rs]
        mem = b.memory()
        res = {
            "status": "ok",
            "build_s": b.build_s,
            "median_samples_per_s": statistics.median(sps),
            "min_samples_per_s": min(sps),
            "max_samples_per_s": max(sps),
            "cpu_cores": statistics.median(x["cpu_cores"] for x in rs),
            "cpu_ms_per_sample": statistics.median(x["cpu_ms_per_sample"] for x in rs),
            "steal_max": max((x["steal"] for x in rs if x["steal"] is not None), default=None),
            "memory": mem,
            "main_rss_growth_mb": mem["main_rss_mb"] - mem_first[b.name]["main_rss_mb"],
            "rounds": rs,
        }
        if b.name == "reference":
            res["stages"] = _reference_stages(b.cfg, rs)
        out[b.name] = res
    return out


def _reference_stages(cfg, rounds: List[dict]) -> dict:
    from .reference import STAGES

    tot = np.zeros(len(STAGES))
    n = 0
    cpu = 0.0
    for x in rounds:
        if "stage_s" in x:
            tot += np.asarray(x["stage_s"])
            n += x["samples"]
            cpu += x["cpu_s"]
    if not n:
        return {}
    ms = {s: 1e3 * v / n for s, v in zip(STAGES, tot)}
    ms["overhead (IPC, collate, main process)"] = 1e3 * cpu / n - sum(ms.values())
    return {"unit": "CPU ms per sample, thread CPU time measured in the workers",
            "ms_per_sample": ms}


# ----------------------------------------------------------- DALI stage prefixes ----

DALI_STAGES = ("source", "geometry", "decode", "warp+normalize", "occlusion+targets",
               "iterator (to torch)")


def _prefix_graph(upto: str):
    """A graph function for ``make_pipeline``: the loader's stages up to ``upto``, composed
    from the same public stage functions :func:`dali_pose.loader.graph.build_graph` uses
    ('occlusion+targets' is the whole graph; 'full decode' replaces the region-of-interest
    decode by a whole-image one, for comparison)."""
    from nvidia.dali import fn, types

    from ..loader import graph as G

    if upto == "occlusion+targets":
        return G.build_graph

    def prefix(spec, source, pool_source):
        read = G.read_stage(spec, source, pool_source)
        if upto == "source":
            return tuple(v for v in read if v is not None)
        if upto == "full decode":
            return (fn.decoders.image(read.jpeg, device="mixed" if spec.gpu else "cpu",
                                      output_type=types.RGB, adjust_orientation=False),)
        geometry = G.geometry_stage(spec, read)
        if upto == "geometry":
            return tuple(geometry)
        decoded = G.decode_stage(spec, read, geometry)
        if upto == "decode":
            return (decoded,)
        return (G.warp_stage(spec, read, geometry, decoded),)  # warp+normalize

    return prefix


def _long_runs(cfg, index, per_image: bool, n_runs: int):
    """The loader's runs (one DALI batch of decodes each) over as many training epochs as
    ``n_runs`` takes, decoding per image or per person as the loader would."""
    from ..loader.schedule import epoch_schedule, image_epoch, image_groups, person_epoch, runs

    bs, seed = cfg.loader.batch_size, cfg.loader.seed
    groups = image_groups(np.asarray(index.image_paths)) if per_image else None
    out, epoch = [], 0
    while len(out) < n_runs:
        if per_image:
            plan = image_epoch(groups, bs, train=True, seed=seed, epoch=epoch,
                               drop_last=False, buffer=cfg.loader.shuffle_buffer)
        else:
            plan = person_epoch(*epoch_schedule(len(index), bs, train=True, seed=seed,
                                                epoch=epoch, drop_last=False))
        out += runs(plan, bs)
        epoch += 1
    return out[:n_runs]


def dali_stages(cfg, index, device: str, n_batches: int, warmup: int,
                iterator_result: Optional[dict] = None, settle_s: float = 10.0,
                log=print) -> dict:
    """Time growing prefixes of the graph as separate pipelines (see the module docstring)."""
    from ..loader.graph import graph_spec, make_pipeline
    from ..loader.schedule import occlusion_probs
    from ..loader.sources import BatchSource, PoolSource, upload_pool

    gpu = device == "gpu"
    spec = graph_spec(cfg, index.info, train=True, gpu=gpu)
    bs = cfg.loader.batch_size
    device_id = None
    pool = pool_data = None
    if gpu:
        import torch

        device_id = torch.cuda.current_device()
    if spec.noda is not None:  # as the loader does
        from ..loader.pool import load_pool

        pool = load_pool(cfg.noda.pool)
        pool_data = upload_pool(pool, torch.device("cuda", device_id) if gpu else None)
    prefixes = [s for s in DALI_STAGES if s != "iterator (to torch)"]
    extra = ["full decode"] if spec.warp is not None else []
    rows = {}
    all_runs = _long_runs(cfg, index, spec.per_image, n_batches + warmup + 8)
    timed = all_runs[warmup:warmup + n_batches]
    n = sum(len(d) for r in timed for d in r)  # crops (people) of the timed runs
    per_decode = n / sum(len(r) for r in timed)
    for upto in prefixes + extra:
        source = BatchSource(index, train=True, seed=cfg.loader.seed,
                             n_occlusion=spec.n_occlusion,
                             n_noda=spec.noda.num_draws if pool else 0)
        source.start(all_runs, 0, *occlusion_probs(cfg, 0))
        pool_source = None if pool is None else PoolSource(source, pool, pool_data=pool_data)
        with warnings.catch_warnings():  # "output ... of the external source not used"
            warnings.simplefilter("ignore")
            pipe = make_pipeline(spec, source, pool_source, batch_size=bs,
                                 num_threads=cfg.loader.num_threads, device_id=device_id,
                                 prefetch=cfg.loader.prefetch, graph=_prefix_graph(upto))
        _wait_idle(settle_s)  # the previous prefix's pipeline may still be prefetching
        for _ in range(warmup):
            pipe.run()
        _sync_cuda()
        c0, t0 = _self_cpu_s(), time.perf_counter()
        for _ in range(n_batches):
            pipe.run()
        _sync_cuda()
        wall, cpu = time.perf_counter() - t0, _self_cpu_s() - c0
        rows[upto] = {"samples_per_s": n / wall, "wall_ms_per_sample": 1e3 * wall / n,
                      "cpu_ms_per_sample": 1e3 * cpu / n}
        log(f"  prefix up to {upto:<20} {n / wall:9.1f} samples/s  "
            f"{1e3 * cpu / n:6.3f} CPU ms/sample")
        del pipe
        gc.collect()
    if iterator_result is not None:
        rows["iterator (to torch)"] = {
            "samples_per_s": iterator_result["median_samples_per_s"],
            "wall_ms_per_sample": 1e3 / iterator_result["median_samples_per_s"],
            "cpu_ms_per_sample": iterator_result["cpu_ms_per_sample"]}
    stages, prev = {}, None
    for s in DALI_STAGES:
        if s not in rows:
            continue
        cur = rows[s]
        stages[s] = {k: cur[k] - (prev[k] if prev else 0.0)
                     for k in ("wall_ms_per_sample", "cpu_ms_per_sample")}
        prev = cur
    return {"warp": "fused" if spec.warp is not None else "dali",
            "unit": "ms per sample (crop); a stage = prefix minus previous prefix",
            "per_image": spec.per_image, "people_per_decode": per_decode,
            "prefixes": rows, "stages": stages}


# ------------------------------------------------------------------ train step ------

def train_step(cfg, num_joints: int, batch: int, iters: int, warmup: int, rounds: int,
               amp_dtype: str = "float16", log=print) -> dict:
    """HRNet-W32 forward + backward + Adam step, AMP + channels_last, random data."""
    import torch

    from ..models.hrnet import hrnet_w32

    dev = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[amp_dtype]
    model = hrnet_w32(num_joints).to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    w, h = cfg.model.input_size
    x = torch.randn(batch, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_shape = model(x[:1]).shape
    y = torch.rand(batch, *out_shape[1:], device=dev)
    tw = torch.ones(batch, num_joints, 1, 1, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            pred = model(x)
        loss = (((pred.float() - y) ** 2) * tw).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    sps = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        sps.append(batch * iters / (time.perf_counter() - t0))
        log(f"  train step round {r + 1}/{rounds}: {sps[-1]:.1f} samples/s")
    res = {"model": "hrnet_w32", "batch": batch, "amp_dtype": amp_dtype,
           "channels_last": True, "input_size": list(cfg.model.input_size),
           "median_samples_per_s": statistics.median(sps), "rounds": sps,
           "max_memory_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20}
    return res


# ---------------------------------------------------------------- sweeps ------------

def _variant(cfg, **changes):
    """``cfg`` with loader/model fields replaced (heatmaps follow the input at 1/4)."""
    loader = dataclasses.replace(cfg.loader, **{k: v for k, v in changes.items()
                                                if k in ("batch_size", "num_threads")})
    model = cfg.model
    if "input_size" in changes:
        w, h = changes["input_size"]
        model = dataclasses.replace(model, input_size=(w, h), heatmap_size=(w // 4, h // 4))
    return dataclasses.replace(cfg, loader=loader, model=model)


def scaling(cfg, index, names: List[str], rounds: int, n_batches: int, warmup: int,
            settle_s: float = 10.0, log=print) -> List[dict]:
    rows = []
    sweeps = ([("batch_size", b) for b in SCALING_BATCH]
              + [("num_threads", t) for t in range(1, _cores() + 1)]
              + [("input_size", s) for s in SCALING_INPUT])
    for key, value in sweeps:
        vcfg = _variant(cfg, **{key: value})
        label = f"{key}={value[1]}x{value[0]}" if key == "input_size" else f"{key}={value}"
        log(f"scaling: {label}")
        backends = [Backend(n, vcfg, index) for n in names]
        try:
            res = run_interleaved(backends, rounds, n_batches, warmup, settle_s, log=log)
        finally:
            for b in backends:
                b.close()
        ref = res.get("reference", {}).get("median_samples_per_s")
        for n in names:
            r = res[n]
            rows.append({
                "dimension": key, "value": list(value) if key == "input_size" else value,
                "backend": n, "batch_size": vcfg.loader.batch_size,
                "threads": vcfg.loader.num_threads, "input_size": list(vcfg.model.input_size),
                "median_samples_per_s": r["median_samples_per_s"],
                "ratio_to_reference": (r["median_samples_per_s"] / ref) if ref else None,
                "cpu_cores": r["cpu_cores"], "cpu_ms_per_sample": r["cpu_ms_per_sample"],
                "main_rss_mb": r["memory"]["main_rss_mb"],
                "workers_pss_mb": r["memory"].get("workers_pss_mb"),
            })
    return rows


def epochs_memory(backends: List[Backend], epochs: int, log=print) -> Dict[str, dict]:
    """Memory after each of ``epochs`` full epochs of each backend (one after the other)."""
    out = {}
    for b in backends:
        if b._stream is not None:  # leave the interleaved stream; start at an epoch boundary
            b._stream.close()
            b._stream = None
        per = []
        for e in range(epochs):
            n = 0
            t0 = time.perf_counter()
            for batch in b.loader:
                n += int(batch["image"].shape[0])
            _sync_cuda()
            gc.collect()
            m = b.memory()
            m.update(epoch=e, samples=n, seconds=time.perf_counter() - t0)
            per.append(m)
            log(f"  {b.name:<10} epoch {e + 1}/{epochs}: main RSS {m['main_rss_mb']:.1f} MB"
                + (f", workers RSS {m['workers_rss_mb']:.1f} MB" if "workers_rss_mb" in m
                   else "")
                + (f", GPU {m['gpu_mem_mb']:.1f} MB" if "gpu_mem_mb" in m else ""))
        growth = {k: per[-1][k] - per[0][k] for k in per[0]
                  if k.endswith("_mb") and isinstance(per[0][k], float)}
        out[b.name] = {"epochs": per, "growth_first_to_last_mb": growth}
    return out


# --------------------------------------------------------------------- report -------

def _fmt(v, spec="{:.1f}", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return spec.format(v)


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_report(report: dict) -> str:
    meta = report["meta"]
    out = [f"dali_pose.tools.bench: {meta['dataset']} ({meta['rows']} instances), batch "
           f"{meta['batch_size']}, {meta['threads']} threads/workers, input "
           f"{meta['input_size'][1]}x{meta['input_size'][0]}, fast_cpu={meta['fast_cpu']}, "
           f"decode_per_image={meta.get('decode_per_image')}, "
           f"image_dtype={meta.get('image_dtype')}, "
           f"{meta['rounds']} rounds x {meta['batches']} batches (warm-up {meta['warmup']}); "
           f"{meta['cores']} cores, load average {meta['load_before']} -> "
           f"{meta['load_after']}", ""]
    rows, notes = [], []
    for name, r in report["backends"].items():
        if r["status"] != "ok":
            notes.append(f"{name}: {r['status']}: {r.get('reason', '')}")
            continue
        m = r["memory"]
        rows.append([
            name, _fmt(r["median_samples_per_s"]),
            f"{r['min_samples_per_s']:.0f}-{r['max_samples_per_s']:.0f}",
            _fmt(r.get("ratio_to_reference"), "{:.2f}x"), _fmt(r["cpu_cores"], "{:.2f}"),
            _fmt(r["cpu_ms_per_sample"], "{:.2f}"),
            _fmt(r.get("cpu_ratio_to_reference"), "{:.2f}x"), _fmt(m["main_rss_mb"], "{:.0f}"),
            (f"{m['workers_rss_mb']:.0f}/{m['workers_pss_mb']:.0f}"
             if "workers_rss_mb" in m else "-"),
            _fmt(m.get("gpu_mem_mb"), "{:.0f}")])
    hdr = ["backend", "samples/s", "range", "vs ref", "CPU cores", "CPU ms/sample",
           "vs ref (CPU)", "RSS MB", "workers RSS/PSS MB", "GPU MB"]
    out += [_table(hdr, rows)] + notes + ["",
            f"peak RSS: this process {meta.get('peak_rss_mb', float('nan')):.0f} MB; "
            f"largest reaped child {meta.get('children_peak_rss_mb', float('nan')):.0f} MB"]
    for name, r in report["backends"].items():
        st = r.get("stages")
        if not st:
            continue
        if name == "reference":
            rows = [[k, f"{v:.3f}"] for k, v in st["ms_per_sample"].items()]
            out += ["", f"{name} stages ({st['unit']}):", _table(["stage", "ms"], rows)]
        else:
            rows = [[k, f"{v['cpu_ms_per_sample']:.3f}", f"{v['wall_ms_per_sample']:.3f}",
                     _fmt(st["prefixes"].get(k, {}).get("samples_per_s"))]
                    for k, v in st["stages"].items()]
            if "full decode" in st["prefixes"]:
                p = st["prefixes"]["full decode"]
                src = st["prefixes"].get("source", {"cpu_ms_per_sample": 0.0,
                                                    "wall_ms_per_sample": 0.0})
                rows.append(["(full decode instead, for comparison)",
                             f"{p['cpu_ms_per_sample'] - src['cpu_ms_per_sample']:.3f}",
                             f"{p['wall_ms_per_sample'] - src['wall_ms_per_sample']:.3f}",
                             _fmt(p["samples_per_s"])])
            out += ["", f"{name} stages (warp={st['warp']}, "
                        f"{st.get('people_per_decode', 1.0):.2f} people per decoded image; "
                        f"{st['unit']}):",
                    _table(["stage", "CPU ms", "wall ms", "prefix samples/s"], rows)]
    if report.get("train_step"):
        t = report["train_step"]
        if t.get("status", "ok") != "ok":
            out += ["", f"train step: {t['status']}: {t.get('reason', '')}"]
        else:
            out += ["", f"train step (HRNet-W32, AMP {t['amp_dtype']}, channels_last, batch "
                        f"{t['batch']}): {t['median_samples_per_s']:.1f} samples/s"]
            for name, v in t.get("loader_over_training", {}).items():
                out.append(f"  {name}: loader / training = {v:.2f}")
    if report.get("kernels"):
        from .bench_kernels import format_kernels

        out += ["", format_kernels(report["kernels"])]
    if report.get("scaling"):
        rows = [[f"{r['dimension']}={r['value']}", r["backend"],
                 _fmt(r["median_samples_per_s"]), _fmt(r["ratio_to_reference"], "{:.2f}x"),
                 _fmt(r["cpu_cores"], "{:.2f}"), _fmt(r["cpu_ms_per_sample"], "{:.2f}"),
                 _fmt(r["main_rss_mb"], "{:.0f}"), _fmt(r["workers_pss_mb"], "{:.0f}")]
                for r in report["scaling"]]
        out += ["", "scaling (RSS: this process, which keeps what earlier settings built):",
                _table(["setting", "backend", "samples/s", "vs ref", "CPU cores",
                        "CPU ms/sample", "RSS MB", "workers PSS MB"], rows)]
    if report.get("epochs_memory"):
        out += ["", "memory over epochs (MB):"]
        for name, r in report["epochs_memory"].items():
            main = " ".join(f"{e['main_rss_mb']:.0f}" for e in r["epochs"])
            line = f"  {name:<10} main RSS {main}"
            if "workers_pss_mb" in r["epochs"][0]:
                line += "; workers PSS " + " ".join(f"{e['workers_pss_mb']:.0f}"
                                                    for e in r["epochs"])
            if "gpu_mem_mb" in r["epochs"][0]:
                line += "; GPU " + " ".join(f"{e['gpu_mem_mb']:.0f}" for e in r["epochs"])
            growth = ", ".join(f"{k} {v:+.1f}" for k, v in
                               r["growth_first_to_last_mb"].items())
            out.append(line + f"  (growth: {growth})")
    return "\n".join(out)


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ----------------------------------------------------------------------- main -------

def _ensure_dataset(cfg, log=print) -> None:
    """Generate the synthetic dataset where the config points at its missing default."""
    d, default = cfg.data, DataConfig()
    paths = (d.train_ann, d.train_images, d.val_ann, d.val_images)
    if all(os.path.exists(p) for p in paths):
        return
    if paths != (default.train_ann, default.train_images, default.val_ann,
                 default.val_images):
        return  # load_index reports the missing file
    root = os.path.dirname(os.path.dirname(default.train_ann))
    log(f"synthetic dataset missing: generating it under {root} "
        f"(python -m dali_pose.tools.synthetic --out {root})")
    from .synthetic import generate

    generate(root)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m dali_pose.tools.bench",
        description="Benchmark the DALI loader against a classic PyTorch DataLoader.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p)
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated subset of " + ",".join(BACKENDS))
    p.add_argument("--batches", type=int, default=None,
                   help="timed batches per round (default 40; smoke 3)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; smoke 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed batches before each round (default 8; smoke 2)")
    p.add_argument("--stages", action=argparse.BooleanOptionalAction, default=None,
                   help="per-stage breakdown of the DALI backends (default: on, off with "
                        "--smoke)")
    p.add_argument("--stage-batches", type=int, default=None,
                   help="timed batches per stage prefix (default 30)")
    p.add_argument("--scaling", action="store_true",
                   help="also sweep batch size, threads and input size")
    p.add_argument("--scaling-rounds", type=int, default=2)
    p.add_argument("--scaling-batches", type=int, default=None,
                   help="timed batches per round in the sweep (default 15)")
    p.add_argument("--epochs-memory", type=int, default=0, metavar="N",
                   help="resident memory after each of N full epochs per backend")
    p.add_argument("--train-step", action="store_true",
                   help="(CUDA) HRNet-W32 training samples/s, and loader / training")
    p.add_argument("--train-batch", type=int, default=None,
                   help="training batch (default loader.batch_size)")
    p.add_argument("--train-iters", type=int, default=30)
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--kernels", action="store_true",
                   help="time each numba kernel (CPU, and CUDA when available) next to the "
                        "classic OpenCV/NumPy way, per batch of --kernel-batch")
    p.add_argument("--kernel-batch", type=int, default=None,
                   help="samples per kernel batch (default 256; smoke 8)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run that only checks the benchmark works (CI)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.batches = args.batches or (3 if smoke else 40)
    args.rounds = args.rounds or (2 if smoke else 5)
    args.warmup = args.warmup if args.warmup is not None else (2 if smoke else 8)
    args.settle_s = 0.0 if smoke else 10.0  # wait for an idle machine before each round
    args.stage_batches = args.stage_batches or (3 if smoke else 30)
    args.scaling_batches = args.scaling_batches or (3 if smoke else 15)
    args.kernel_batch = args.kernel_batch or (8 if smoke else 256)
    if args.stages is None:
        args.stages = not smoke
    names = [s.strip() for s in args.backends.split(",") if s.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        p.error(f"--backends: unknown {bad}; choose from {','.join(BACKENDS)}")
    args.names = list(dict.fromkeys(names))
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--startup" in argv:  # fresh processes to the first batch: its own module
        from .bench_startup import main as startup_main
        return startup_main([a for a in argv if a != "--startup"])
    args = parse_args(argv)
    log = (lambda *a, **k: None) if args.quiet else (
        lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    import torch

    from ..datasets import load_index

    overrides = list(args.overrides)
    if args.smoke:
        overrides = ["loader.batch_size=4"] + overrides
    cfg = load_config(args.config, overrides)
    _ensure_dataset(cfg, log)
    index = load_index(cfg, "train")
    cuda = torch.cuda.is_available()
    report = {"meta": {
        "config": args.config, "overrides": overrides, "dataset": cfg.data.train_ann,
        "rows": len(index), "batch_size": cfg.loader.batch_size,
        "threads": cfg.loader.num_threads, "input_size": list(cfg.model.input_size),
        "heatmap_size": list(cfg.model.heatmap_size), "target": cfg.model.target,
        "occlusion": cfg.occlusion.method, "fast_cpu": cfg.loader.fast_cpu,
        "decode_per_image": cfg.loader.decode_per_image,
        "image_dtype": cfg.loader.image_dtype,
        "rounds": args.rounds, "batches": args.batches, "warmup": args.warmup,
        "smoke": args.smoke, "cores": _cores(), "load_before": _load(), "cuda": cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "config_resolved": to_dict(cfg),
    }, "backends": {}}
    try:
        import cv2
        import nvidia.dali

        report["meta"].update(dali=nvidia.dali.__version__, opencv=cv2.__version__)
    except Exception:  # pragma: no cover
        pass

    backends: List[Backend] = []
    for name in args.names:
        if name.startswith("dali-gpu") and not cuda:
            msg = "CUDA is not available: dali-gpu skipped"
            log(msg)
            report["backends"][name] = {"status": "skipped", "reason": msg}
            continue
        log(f"building {name} ...")
        try:
            backends.append(Backend(name, cfg, index))
        except Exception as e:  # one broken backend must not hide the others
            log(f"{name}: build failed: {type(e).__name__}: {e}")
            report["backends"][name] = {"status": "error",
                                        "reason": f"{type(e).__name__}: {e}"}
    names_ok = [b.name for b in backends]
    try:
        if backends:
            log(f"timing {', '.join(names_ok)}: {args.rounds} rounds x {args.batches} batches")
            report["backends"].update(run_interleaved(backends, args.rounds, args.batches,
                                                      args.warmup, args.settle_s, log=log))
        ref = report["backends"].get("reference", {}).get("median_samples_per_s")
        ref_cpu = report["backends"].get("reference", {}).get("cpu_ms_per_sample")
        for name in names_ok:
            r = report["backends"][name]
            r["ratio_to_reference"] = r["median_samples_per_s"] / ref if ref else None
            # CPU cost per sample, reference / backend: less sensitive to other load
            r["cpu_ratio_to_reference"] = ref_cpu / r["cpu_ms_per_sample"] if ref_cpu else None
        if args.epochs_memory > 0 and backends:
            log(f"memory over {args.epochs_memory} epochs")
            report["epochs_memory"] = epochs_memory(backends, args.epochs_memory, log=log)
    finally:
        for b in backends:
            b.close()
    if args.stages:
        for name in names_ok:
            if name.startswith("dali"):
                log(f"stages of {name}")
                try:
                    bcfg = next(b.cfg for b in backends if b.name == name)
                    report["backends"][name]["stages"] = dali_stages(
                        bcfg, index, "gpu" if name.startswith("dali-gpu") else "cpu",
                        args.stage_batches, args.warmup, report["backends"][name],
                        args.settle_s, log=log)
                except Exception as e:
                    log(f"{name}: stage breakdown failed: {type(e).__name__}: {e}")
                    report["backends"][name]["stages_error"] = f"{type(e).__name__}: {e}"
    if args.train_step:
        if not cuda:
            msg = "CUDA is not available: train step skipped"
            log(msg)
            report["train_step"] = {"status": "skipped", "reason": msg}
        else:
            log("train step (HRNet-W32)")
            t = train_step(cfg, index.info.num_joints,
                           args.train_batch or cfg.loader.batch_size, args.train_iters,
                           warmup=10, rounds=max(2, min(args.rounds, 5)),
                           amp_dtype=args.amp_dtype, log=log)
            torch.cuda.empty_cache()  # the model and its optimiser state are gone now
            t["status"] = "ok"
            t["loader_over_training"] = {
                n: report["backends"][n]["median_samples_per_s"] / t["median_samples_per_s"]
                for n in names_ok}
            report["train_step"] = t
    if args.scaling:
        names = [n for n in names_ok]
        if names:
            report["scaling"] = scaling(cfg, index, names, args.scaling_rounds,
                                        args.scaling_batches, args.warmup, args.settle_s, log=log)
    if args.kernels:
        from .bench_kernels import kernel_times

        log(f"kernels (batch {args.kernel_batch})")
        report["kernels"] = kernel_times(cfg, index.info.num_joints, args.kernel_batch,
                                         args.rounds, gpu=cuda, log=log)
    report["meta"]["load_after"] = _load()
    report["meta"]["peak_rss_mb"] = _peak_rss_mb()
    report["meta"]["children_peak_rss_mb"] = _peak_rss_mb(resource.RUSAGE_CHILDREN)
    print(format_report(report), flush=True)
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(_clean(report), f, indent=1, allow_nan=False)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
