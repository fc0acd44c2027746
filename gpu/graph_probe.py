"""Build the GPU DALI graph of dali_pose on a machine WITHOUT a GPU, as far as it goes.

Run from the repo root (read-only is fine):
    PYTHONDONTWRITEBYTECODE=1 NUMBA_CACHE_DIR=$TMPDIR/numba_cache \
        python gpu/graph_probe.py

What it does:
  * calls DALI 2.4's own toolkit check with numba.cuda's real toolkit version (needs only
    libcudart / NVRTC, no driver): shows whether "Unsupported CUDA toolkit version" fires
    without dali_pose's shim, and that the shim fixes it;
  * stubs only what needs a driver: DALI's driver-compat check, and the device query and
    the module load of dali_pose's compile cache (dali_pose/loader/compile_cache.py). The
    compile step is the cache's, which compiles as DALI does (compile_cuda with exactly the
    argument types DALI builds from out_types/in_types and outs_ndim/ins_ndim as
    pipeline.py passes them, its NVVM options, then PTX for sm_90 = H200), so a dtype /
    ndim mismatch between a kernel's NumbaOp description and its CUDA kernel fails here;
    the PTX goes to a compile cache of the probe's own (a temporary folder, or
    $DALI_POSE_CACHE: run twice with the same one and every kernel loads from it);
  * defines the full GPU graph (train + val, AID and every other dropping method, combined
    target, float16 and uint8 crops, NODA with a tiny fake pool) through
    dali_pose.loader.graph with device_id=0, and the oracle graph (nvJPEG + DALI's
    warp_affine, dali_pose.loader.oracle), and reports how far pipe.build() gets without
    a device.
"""
import os
import sys
import traceback
import types as pytypes

ROOT = os.getcwd()
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

from numba import cuda  # noqa: E402
from numba import types as nbt  # noqa: E402

import nvidia.dali as dali  # noqa: E402
from nvidia.dali.plugin import numba as dali_numba  # noqa: E402
from nvidia.dali.plugin.numba import NumbaFunction  # noqa: E402

CC = (9, 0)  # H200
report = []


def say(*a):
    s = " ".join(str(x) for x in a)
    report.append(s)
    print(s, flush=True)


say("DALI", dali.__version__, "| numba.cuda implementation:", getattr(cuda, "implementation", "?"))
try:
    say("numba.cuda.runtime.get_version():", cuda.runtime.get_version())
except Exception as e:  # noqa: BLE001
    say("numba.cuda.runtime.get_version() failed:", type(e).__name__, e)
say("DALI minimal_numba_version table:", dict(dali_numba.minimal_numba_version))

# 1. DALI's own toolkit gate, without and with the shim
saved = dict(dali_numba.minimal_numba_version)
try:
    NumbaFunction._check_minimal_numba_version()
    say("toolkit gate WITHOUT shim: passes")
except Exception as e:  # noqa: BLE001
    say("toolkit gate WITHOUT shim: RAISES", type(e).__name__, e)
from dali_pose.loader import graph as P  # noqa: E402

P.allow_newer_cuda_toolkit()
P._sm_count = lambda device_id: 132  # an H200's multiprocessors (no device to ask)
say("table after shim:", dict(dali_numba.minimal_numba_version))
try:
    NumbaFunction._check_minimal_numba_version()
    say("toolkit gate WITH shim: passes")
except Exception as e:  # noqa: BLE001
    say("toolkit gate WITH shim: RAISES", type(e).__name__, e)
try:
    NumbaFunction._check_cuda_compatibility()
    say("driver-compat check: passes")
except Exception as e:  # noqa: BLE001
    say("driver-compat check (needs a driver, stubbed below):", type(e).__name__, str(e)[:120])

# 2. stubs for what needs a device
NumbaFunction._check_cuda_compatibility = staticmethod(lambda throw=True: True)
import numba.cuda.dispatcher as _disp  # noqa: E402

_disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
compiled = []
from dali_pose.loader import compile_cache  # noqa: E402

if not os.environ.get(compile_cache.ENV_VAR):  # a cache of its own, filled by this run
    import tempfile

    os.environ[compile_cache.ENV_VAR] = tempfile.mkdtemp(prefix="graph_probe_cache_")
_compile_cuda = compile_cache._compile_cuda


def _compile_recorded(run_fn, types, dims, cc):
    """The compile cache's CUDA compile (DALI's argument types and NVVM options, to PTX),
    recorded; a failure is reported and the graph goes on."""
    args = [str(nbt.Array(dali_numba._to_numba[t], nd, "C")) for t, nd in zip(types, dims)]
    name = getattr(run_fn, "__name__", "?")
    try:
        image = _compile_cuda(run_fn, types, dims, cc)
        ok = image is not None and ".entry" in image["ptx"]
        size = len(image["ptx"]) if image else 0
        compiled.append((name, args, ok, size))
        say(f"  compiled GPU run_fn {name}: args {args} -> PTX {size} chars, .entry={ok}")
        return image
    except Exception as e:  # noqa: BLE001
        compiled.append((name, args, False, 0))
        say(f"  COMPILE FAILED GPU run_fn {name}: args {args}: {type(e).__name__}: "
            f"{str(e)[:600]}")
        return {"ptx": "", "entry": "?"}


compile_cache._compile_cuda = _compile_recorded
compile_cache._device_cc = lambda device_id: CC
compile_cache._load_cuda = lambda image, device_id: 1  # the driver step: a fake handle
NumbaFunction._get_run_fn_gpu = lambda self, run_fn, types, dims: 1  # uncached fallback

# 3. the graph
from dali_pose import load_config  # noqa: E402
from dali_pose.loader.sources import BatchSource, PoolSource  # noqa: E402
from dali_pose.loader.oracle import oracle_graph  # noqa: E402
from test_loader import _dot_dataset  # noqa: E402


class _P:  # a tiny pool with the attributes PoolSource reads
    def __init__(self, k):
        n = 3
        self.rgba = np.zeros(n * 20 * 10 * 4, np.uint8)
        self.offsets = np.arange(n) * 20 * 10 * 4
        self.shapes = np.tile([[20, 10]], (n, 1)).astype(np.int32)
        self.boxes = np.tile([[5.0, 10.0, 8.0, 16.0]], (n, 1)).astype(np.float32)
        self.kps = np.zeros((n, k, 3), np.float32)
        self.image_id = np.arange(n) + 1000
        self.instance_id = np.arange(n) + 2000

    def __len__(self):
        return len(self.offsets)


def probe(tag, overrides, split="train", noda=False, oracle=False):
    import tempfile
    from pathlib import Path

    say(f"\n== {tag}: {split}, overrides {overrides}{' + NODA pool' if noda else ''}")
    P.forget_compiled()
    tmp = Path(tempfile.mkdtemp())
    index = _dot_dataset(tmp, 4)
    cfg = load_config(None, ["loader.batch_size=2", "loader.device=gpu"] + overrides)
    train = split == "train"
    spec = P.graph_spec(cfg, index.info, train=train, gpu=True)
    src = BatchSource(index, train=train, seed=0, n_occlusion=spec.n_occlusion,
                      n_noda=spec.noda.num_draws if noda else 0)
    pool_src = PoolSource(src, _P(index.info.num_joints)) if noda else None
    stage = "graph definition"
    try:
        @dali.pipeline_def(batch_size=2, num_threads=1, device_id=0, seed=1,
                           prefetch_queue_depth=2)
        def pipe_fn():
            return tuple((oracle_graph if oracle else P.build_graph)(spec, src, pool_src))

        pipe = pipe_fn()
        stage = "pipe.build()"
        say("  graph defined (Python-level op/argument checks passed)")
        pipe.build()
        say("  pipe.build() SUCCEEDED (unexpected without a GPU)")
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        say(f"  stopped at {stage}: {type(e).__name__}: {' | '.join(msg[:6])[:700]}")
        if stage == "graph definition":
            say(traceback.format_exc()[-2500:])


probe("val", [], split="val")
probe("val oracle (nvJPEG + warp_affine)", [], split="val", oracle=True)
probe("train gaussian", [])
probe("train gaussian oracle", [], oracle=True)
probe("train AID + combined + float16", ["occlusion.method=aid", "occlusion.prob=1",
                                         "model.target=combined",
                                         "loader.image_dtype=float16"])
probe("train AID + uint8", ["occlusion.method=aid", "occlusion.prob=1",
                            "loader.image_dtype=uint8"])
probe("train AID + uint8 oracle", ["occlusion.method=aid", "occlusion.prob=1",
                                   "loader.image_dtype=uint8"], oracle=True)
probe("train NODA + AID", ["occlusion.method=aid", "noda.prob=1", "noda.pool=x.npz"],
      noda=True)
for m in ("cutout", "erasing", "hide_and_seek", "gridmask"):
    probe(f"train {m}", [f"occlusion.method={m}"])

dali_numba.minimal_numba_version.clear()
dali_numba.minimal_numba_version.update(saved)
bad = [c for c in compiled if not c[2]]
say(f"\nGPU kernels compiled with DALI's argument types: {len(compiled) - len(bad)} ok, "
    f"{len(bad)} failed")
st = compile_cache.stats
say(f"compile cache {os.environ[compile_cache.ENV_VAR]}: CUDA kernels compiled "
    f"{st['cuda_compiled']}, loaded from the cache {st['cuda_loaded']}; all entries {st}")
out = os.environ.get("PROBE_OUT")
if out:
    with open(out, "w") as f:
        f.write("\n".join(report) + "\n")
