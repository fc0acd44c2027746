"""GPU-machine probes for dali_pose's GPU backend (run by run_gpu_check.sh from the repo root).

    python gpu_probe.py env       versions: driver, torch, numba(-cuda), DALI, imports
    python gpu_probe.py gate      DALI 2.4's CUDA-toolkit gate for GPU numba_function, with and
                                  without dali_pose.loader.graph.allow_newer_cuda_toolkit
    python gpu_probe.py numba     one GPU numba_function (the project's target kernel, its
                                  DALI argument types) in a DALI pipeline vs the CPU kernel,
                                  and the DALI "grid volume" warnings it prints per sample
    python gpu_probe.py dot       the README's dot test on the GPU loader (5 epochs): max /
                                  mean error, next to the CPU loader's; stderr warning count
    python gpu_probe.py perimage  per-image decoding on the GPU: dot test (float32, uint8) and
                                  GPU crops vs the CPU loader's
    python gpu_probe.py noda      GPU loader with a NODA pool + AID (the torch-CUDA pool views
                                  through a GPU external source), vs the CPU loader
    python gpu_probe.py profile   3 GPU-loader batches under torch.profiler (CUPTI sees DALI's
                                  work too): memcpy HtoD / DtoH / DtoD counts and bytes, kernels;
                                  a DtoH inside the iterator would be a host round trip

Each prints lines "KEY: value" that run_gpu_check.sh collects into the summary.
"""
import contextlib
import os
import sys
import tempfile
import time
import traceback

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


DEVICES = os.environ.get("PROBE_DEVICES", "gpu,cpu").split(",")  # cpu only: dry run


def out(key, value):
    print(f"{key}: {value}", flush=True)


@contextlib.contextmanager
def fd2_to_file():
    """Redirect fd 2 (DALI's C++ std::cerr) into a temp file; yields a callable -> text."""
    sys.stderr.flush()
    tmp = tempfile.TemporaryFile(mode="w+b")
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    text = {"v": ""}
    try:
        yield lambda: text["v"]
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        text["v"] = tmp.read().decode("utf8", "replace")
        tmp.close()
        sys.stderr.write(text["v"][-4000:])


def grid_warnings(text):
    return sum(1 for ln in text.splitlines() if "It is recommended that the grid volume" in ln)


def env():
    import platform
    out("python", platform.python_version())
    try:
        import torch
        out("torch", f"{torch.__version__} cuda {torch.version.cuda} "
                     f"available {torch.cuda.is_available()}")
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out("gpu", f"{p.name} cc {p.major}.{p.minor} SMs {p.multi_processor_count} "
                       f"mem {p.total_memory / 2**30:.0f} GiB")
    except Exception as e:  # noqa: BLE001
        out("torch", f"FAILED {type(e).__name__}: {e}")
    try:
        import numba
        from numba import cuda
        out("numba", f"{numba.__version__} cuda.implementation "
                     f"{getattr(cuda, 'implementation', '?')}")
        try:
            import importlib.metadata as md
            out("numba-cuda", md.version("numba-cuda"))
        except Exception:  # noqa: BLE001
            out("numba-cuda", "not installed")
        out("numba cuda.runtime.get_version (toolkit)", cuda.runtime.get_version())
        out("numba cuda driver version", cuda.driver.driver.get_version())
        out("numba cuda.is_available", cuda.is_available())
    except Exception as e:  # noqa: BLE001
        out("numba", f"FAILED {type(e).__name__}: {e}")
    for mod in ("nvidia.dali", "cv2", "yaml", "pycocotools", "scipy", "cuda.core",
                "cuda.bindings"):
        try:
            m = __import__(mod, fromlist=["x"])
            out(f"import {mod}", f"ok {getattr(m, '__version__', '')} "
                                 f"{os.path.dirname(getattr(m, '__file__', '') or '')}")
        except Exception as e:  # noqa: BLE001
            out(f"import {mod}", f"MISSING {type(e).__name__}: {e}")


def gate():
    from nvidia.dali.plugin import numba as dn
    from nvidia.dali.plugin.numba import NumbaFunction
    from numba import cuda
    out("toolkit version numba reports", cuda.runtime.get_version())
    out("DALI minimal_numba_version", dict(dn.minimal_numba_version))
    for label in ("without shim", "with shim"):
        if label == "with shim":
            from dali_pose.loader.graph import allow_newer_cuda_toolkit
            allow_newer_cuda_toolkit()
        try:
            NumbaFunction._check_minimal_numba_version()
            NumbaFunction._check_cuda_compatibility()
            out(f"gate {label}", "passes")
        except Exception as e:  # noqa: BLE001
            out(f"gate {label}", f"RAISES {type(e).__name__}: {e}")


def numba_op():
    import numpy as np
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from dali_pose.codecs import build_codec
    from dali_pose.config import ModelConfig
    from dali_pose.loader.graph import dali_operator

    k, bs = 17, 8
    kern = build_codec(ModelConfig()).target_op(k)
    rng = np.random.default_rng(0)
    people = [1 + i % 3 for i in range(bs)]  # samples of 1, 2, 3 people (per-image decoding)
    kps = [np.concatenate([rng.uniform(0, 191, (p, k, 1)), rng.uniform(0, 255, (p, k, 1)),
                           rng.choice([0.0, 2.0], (p, k, 1))], 2).astype(np.float32)
           for p in people]
    box = [np.zeros((p, 4), np.float32) for p in people]
    t0 = time.perf_counter()
    pipe = Pipeline(batch_size=bs, num_threads=2, device_id=0)
    with pipe:
        a = fn.external_source(source=lambda: kps, batch=True)
        b = fn.external_source(source=lambda: box, batch=True)
        hm, wt = dali_operator(kern, "gpu", 0)(a.gpu(), b.gpu())
        pipe.set_outputs(hm, wt)
    with fd2_to_file() as err:
        pipe.build()
        build_s = time.perf_counter() - t0
        hm, wt = pipe.run()
        hm, wt = pipe.run()
    out("numba GPU op build s", f"{build_s:.2f}")
    out("numba GPU op grid-volume warnings (build + 2 batches)", grid_warnings(err()))
    hm, wt = hm.as_cpu(), wt.as_cpu()
    worst = 0.0
    for i in range(bs):
        h = np.full((people[i], kern.channels, 64, 48), np.nan, np.float32)
        w = np.full((people[i], k), np.nan, np.float32)
        kern.cpu_kernel(h, w, kps[i], box[i])
        worst = max(worst, float(np.abs(np.array(hm[i]) - h).max()),
                    float(np.abs(np.array(wt[i]) - w).max()))
    out("numba GPU op max |GPU - CPU|", worst)
    out("numba GPU op", "OK" if worst < 1e-5 else "MISMATCH")


def dot():
    import numpy as np
    from dali_pose import build_loader, load_config
    from test_loader import _dot_dataset, dot_errors

    tmp = tempfile.mkdtemp()
    from pathlib import Path
    index = _dot_dataset(Path(tmp), 6)
    over = ["loader.batch_size=6", "aug.rot_prob=1", "aug.half_body_prob=0",
            "loader.num_threads=2"]
    for device in DEVICES:
        cfg = load_config(None, over)
        t0 = time.perf_counter()
        with fd2_to_file() as err:
            errs, flips = dot_errors(build_loader(cfg, "train", device=device, index=index), 5)
        e = np.asarray(errs)
        out(f"dot {device}", f"n={len(e)} max={e.max():.4f} mean={e.mean():.4f} px "
                             f"flipped={sum(flips)}/{len(flips)} "
                             f"({time.perf_counter() - t0:.1f} s)")
        if device == "gpu":
            out("dot gpu grid-volume warnings (5 epochs, 30 samples each)",
                grid_warnings(err()))
            out("dot gpu verdict", "PASS" if len(e) > 30 and e.max() < 0.05 else "FAIL")


def perimage():
    """Per-image decoding on the GPU (nvJPEG region of interest + the CUDA warp of all an
    image's crops): the dot test on images of several people, float32 and uint8, and the
    GPU crops against the CPU loader's (same draws, same geometry)."""
    import numpy as np
    import torch
    from dali_pose import build_loader, load_config
    from dali_pose.normalize import normalize_images
    from test_per_image import crowd_dataset, dot_errors
    from pathlib import Path

    index = crowd_dataset(Path(tempfile.mkdtemp()))
    for dtype in ("float32", "uint8"):
        over = ["loader.batch_size=4", "aug.rot_prob=1", "aug.half_body_prob=0",
                f"loader.image_dtype={dtype}", "loader.shuffle_buffer=4"]
        for device in DEVICES:
            t0 = time.perf_counter()
            loader = build_loader(load_config(None, over), "train", device=device,
                                  index=index)
            e = np.asarray(dot_errors(_CpuBatches(loader), 4))
            out(f"perimage dot {device} {dtype}",
                f"n={len(e)} max={e.max():.4f} mean={e.mean():.4f} px "
                f"({time.perf_counter() - t0:.1f} s)")
            if device == "gpu":
                out(f"perimage dot gpu {dtype} verdict",
                    "PASS" if len(e) > 40 and e.max() < 0.05 else "FAIL")
    if set(DEVICES) != {"gpu", "cpu"}:
        return
    over = ["loader.batch_size=3", "aug.rot_prob=0.5", "occlusion.method=aid",
            "occlusion.prob=0.5", "loader.drop_last=false"]
    crops = {}
    for device in ("gpu", "cpu"):
        loader = build_loader(load_config(None, over), "train", device=device, index=index)
        crops[device] = {int(r): (normalize_images(b["image"][i]).cpu(),
                                  b["heatmap"][i].cpu())
                         for b in loader for i, r in enumerate(b["row"].tolist())}
    same = set(crops["gpu"]) == set(crops["cpu"])
    out("perimage gpu vs cpu: same people", same)
    if same:
        di = max(float((crops["gpu"][r][0] - crops["cpu"][r][0]).abs().max())
                 for r in crops["cpu"])
        dh = max(float((crops["gpu"][r][1] - crops["cpu"][r][1]).abs().max())
                 for r in crops["cpu"])
        out("perimage gpu vs cpu: max |image| diff (normalised)", f"{di:.2e}")
        out("perimage gpu vs cpu: max |heatmap| diff", f"{dh:.2e}")
        out("perimage gpu vs cpu verdict", "PASS" if di < 1e-3 and dh < 1e-5 else "FAIL")


class _CpuBatches:
    """A loader whose batches are moved to the CPU (dot_errors reads them with NumPy)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for b in self.loader:
            yield {k: v.cpu() for k, v in b.items()}


def noda():
    """GPU loader with a NODA pool (torch CUDA views fed to a GPU external source: not covered
    by tests/) and AID, next to the CPU loader with the same draws (each person of a decoded
    image with its own pool person)."""
    import numpy as np
    import torch
    from dali_pose import build_loader, load_config
    from dali_pose.tools.build_pool import build_pool
    from dali_pose.tools.synthetic import generate

    d = tempfile.mkdtemp()
    generate(d, seed=3, num_train=6, num_val=1)
    base = [f"data.train_ann={d}/annotations/person_keypoints_train.json",
            f"data.train_images={d}/images/train", "loader.batch_size=8"]
    pool_path = os.path.join(d, "pool.npz")
    np.savez(pool_path, **build_pool(load_config(None, base), level="cardboard",
                                     verbose=False))
    over = base + ["noda.prob=1", f"noda.pool={pool_path}", "occlusion.method=aid",
                   "occlusion.prob=0.5"]
    res = {}
    for device in DEVICES:
        t0 = time.perf_counter()
        batches = list(build_loader(load_config(None, over), "train", device=device))
        occ = torch.cat([b["occluded"].cpu() for b in batches])
        kps = torch.cat([b["keypoints"].cpu() for b in batches])
        img = torch.cat([b["image"].cpu() for b in batches])
        res[device] = (occ, kps, img)
        out(f"noda {device}", f"{len(batches)} batches, image on {batches[0]['image'].device}, "
                              f"occluded joints {int(occ.sum())}, head covered "
                              f"{int(occ[:, :5].sum())}, values {sorted(set(occ.unique().tolist()))} "
                              f"({time.perf_counter() - t0:.1f} s)")
    if set(res) != {"gpu", "cpu"}:
        return
    (og, kg, ig), (oc, kc, ic) = res["gpu"], res["cpu"]
    same_draws = torch.equal(kg, kc)
    out("noda gpu vs cpu: same keypoints (same random draws)", same_draws)
    if same_draws:
        out("noda gpu vs cpu: occluded equal", torch.equal(og, oc))
        out("noda gpu vs cpu: max |image| diff (normalised units)", float((ig - ic).abs().max()))
    ok = og.sum() > 0 and og[:, :5].sum() == 0
    out("noda gpu verdict", "PASS" if ok else "FAIL")


def profile():
    import torch
    from torch.profiler import ProfilerActivity, profile as tprof

    from dali_pose import build_loader, load_config
    from test_loader import _dot_dataset
    from pathlib import Path

    index = _dot_dataset(Path(tempfile.mkdtemp()), 12)
    cfg = load_config(None, ["loader.batch_size=4", "occlusion.method=aid",
                             "occlusion.prob=1"])
    it = iter(build_loader(cfg, "train", device="gpu", index=index))
    b = next(it)  # warm-up (prefetch filled)
    out("loader batch devices", {k: str(v.device) for k, v in b.items()})
    torch.cuda.synchronize()
    with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            b = next(it)
        torch.cuda.synchronize()
    kinds = {}
    kernels = 0
    for ev in prof.events():
        name = ev.name or ""
        on_gpu = getattr(ev.device_type, "name", "") == "CUDA"
        if on_gpu and name.lower().startswith("memcpy"):
            key = ("DtoH" if "DtoH" in name else "HtoD" if "HtoD" in name else
                   "DtoD" if "DtoD" in name else name[:40])
            kinds[key] = kinds.get(key, 0) + 1
        elif on_gpu:
            kernels += 1
    out("profile memcpy kinds over 2 batches (all of the process, DALI included)", kinds)
    out("profile CUDA kernels over 2 batches", kernels)
    out("profile host round trip", "YES (DtoH seen)" if kinds.get("DtoH") else "none seen")


if __name__ == "__main__":
    mode = sys.argv[1]
    try:
        {"env": env, "gate": gate, "numba": numba_op, "dot": dot, "perimage": perimage,
         "noda": noda, "profile": profile}[mode]()
    except Exception as e:  # noqa: BLE001
        out(f"{mode} FAILED", f"{type(e).__name__}: {str(e)[:1500]}")
        traceback.print_exc()
        sys.exit(1)
