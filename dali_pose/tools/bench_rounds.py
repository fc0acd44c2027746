"""The benchmark's timing (``python -m dali_pose.tools.bench``): interleaved rounds of the
backends, the DALI graph's stage prefixes, the training step, the sweeps and the memory
over epochs. Every function returns plain dicts for :mod:`.bench_report`.
"""
from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from .bench_backends import (Backend, _cores, _machine_ticks, _self_cpu_s, _steal_share,
                             _sync_cuda, _wait_idle)

SCALING_BATCH = (16, 32, 64, 128)
SCALING_INPUT = ((192, 256), (288, 384))  # [w, h]


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
            return tuple(geometry)  # its outputs, in the crop operator's port order
        decoded = G.decode_stage(spec, read, geometry)
        if upto == "decode":
            return (decoded,)
        return (G.warp_stage(spec, read, geometry, decoded),)  # warp+normalize

    return prefix


def _long_runs(cfg, index, n_runs: int):
    """The loader's runs (one DALI batch of reads each) over as many training epochs as
    ``n_runs`` takes, as the loader plans them."""
    from ..loader.plan import image_epoch, image_groups, runs

    bs, seed = cfg.loader.batch_size, cfg.loader.seed
    groups = image_groups(np.asarray(index.image_paths))
    out, epoch = [], 0
    while len(out) < n_runs:
        plan = image_epoch(groups, bs, train=True, seed=seed, epoch=epoch, drop_last=False,
                           buffer=cfg.loader.shuffle_buffer)
        out += runs(plan, bs)
        epoch += 1
    return out[:n_runs]


def dali_stages(cfg, index, device: str, n_batches: int, warmup: int,
                iterator_result: Optional[dict] = None, settle_s: float = 10.0,
                log=print) -> dict:
    """Time growing prefixes of the graph as separate pipelines (see the module docstring)."""
    from ..loader.graph import graph_spec, make_pipeline
    from ..loader.plan import occlusion_probs
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
    extra = ["full decode"]
    rows = {}
    all_runs = _long_runs(cfg, index, n_batches + warmup + 8)
    timed = all_runs[warmup:warmup + n_batches]
    n = sum(len(d) for r in timed for d in r)  # crops (people) of the timed runs
    per_read = n / sum(len(r) for r in timed)
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
    return {"warp": spec.warp.name,
            "unit": "ms per sample (crop); a stage = prefix minus previous prefix",
            "people_per_read": per_read,
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


