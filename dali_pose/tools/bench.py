"""Loader benchmark: the DALI loader (GPU and CPU backends) against the classic one.

    python -m dali_pose.tools.bench [--config CFG] [--set KEY=VALUE ...]
        [--backends dali-gpu,dali-cpu,reference] [--batches N] [--rounds R] [--warmup W]
        [--scaling] [--epochs-memory N] [--train-step] [--smoke] [--json OUT]
    python -m dali_pose.tools.bench --startup ...   (time to the first batch: bench_startup)

Backends (all on the training split, full training augmentation of the config):
  dali-gpu   ``build_loader(device='gpu')`` (skipped, with a message, without CUDA)
  dali-cpu   ``build_loader(device='cpu')`` as configured: each image decoded once per
             epoch for all its people, cut by the numba warp
  dali-cpu-oracle, dali-gpu-oracle  DALI's decode + ``warp_affine`` instead
             (:mod:`dali_pose.loader.oracle`), one person per image: a baseline
  reference  :mod:`dali_pose.tools.reference`: a torch DataLoader with ``loader.num_threads``
             worker processes (OpenCV decode + warpAffine, NumPy heatmaps)

The modules: :mod:`.bench_backends` (the loaders under test, process and machine probes),
:mod:`.bench_rounds` (the timing), :mod:`.bench_report` (the tables); this one parses the
command line and dispatches.

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
sample is a crop (a person): a DALI sample is an image and its people, and the breakdown
states the people per read. The oracle backends have no breakdown.

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
import json
import os
import platform
import resource
import sys
from typing import List

from ..config import DataConfig, add_config_args, load_config, to_dict
from .bench_backends import BACKENDS, Backend, _cores, _load, _peak_rss_mb
from .bench_report import _clean, format_report
from .bench_rounds import (DALI_STAGES, dali_stages, epochs_memory,  # noqa: F401
                           run_interleaved, scaling, train_step)


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
        "occlusion": cfg.occlusion.method,
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
            if name.startswith("dali") and not name.endswith("-oracle"):
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
