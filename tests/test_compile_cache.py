"""The persistent compile cache of the numba operators (dali_pose.loader.compile_cache).

Proofs by load counts (``compile_cache.stats``) and numba's own compile events, never by
timings: a second process with the same config compiles nothing and gives the same batch;
a changed kernel-relevant value (or kernel source) misses; two processes filling an empty
cache at once both succeed; an unwritable cache still builds and trains. Every test points
``DALI_POSE_CACHE`` at a tmp dir of its own (the session's is set in conftest.py).
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
from dali_pose.config import load_config  # noqa: E402
from dali_pose.datasets import COCO  # noqa: E402
from dali_pose.kernels.crop import crop_op  # noqa: E402
from dali_pose.loader import compile_cache  # noqa: E402
from dali_pose.loader.graph import graph_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# One process: build the loaders of a tiny dot dataset (train, then val), take a batch of
# each; print the cache's counts, numba's compile events and a digest of the batches.
LOADER_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    from numba.core import event
    compiles = event.RecordingListener()
    event.register("numba:compile", compiles)
    sys.path.insert(0, "tests")
    from test_loader import _dot_dataset
    from dali_pose.config import load_config
    from dali_pose.loader import build_loader, compile_cache
    index = _dot_dataset(Path(sys.argv[1]), 3)
    cfg = load_config(None, ["loader.batch_size=2", "loader.pipelines=1",
                             "loader.num_threads=1", *sys.argv[2:]])
    h = hashlib.sha256()
    for split in ("train", "val"):
        batch = next(iter(build_loader(cfg, split, index=index, log=None)))
        for k in ("image", "heatmap", "target_weight", "keypoints"):
            h.update(batch[k].numpy().tobytes())
    print(json.dumps({"stats": compile_cache.stats, "compiles": len(compiles.buffer),
                      "digest": h.hexdigest()}))
""")

# One process: a one-operator pipeline (the Gaussian target operator of sys.argv[1] sigma).
TARGET_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    from dali_pose.codecs import build_codec
    from dali_pose.config import load_config
    from dali_pose.loader import compile_cache
    from dali_pose.loader.graph import apply
    op = build_codec(load_config(None, [f"model.sigma={sys.argv[1]}"]).model).target_op(17)
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, :, :2] = [40.0, 60.0]
    kps[0, :, 2] = 2
    box = np.array([[48.0, 64.0, 60.0, 100.0]], np.float32)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        k = fn.external_source(source=lambda: [kps], batch=True, dtype=types.FLOAT)
        b = fn.external_source(source=lambda: [box], batch=True, dtype=types.FLOAT)
        o = apply(op, keypoints=k, person_box=b)
        return o.heatmap, o.target_weight

    p = pipe()
    p.build()
    heatmap, weight = (np.array(o[0]) for o in p.run())
    print(json.dumps({"stats": compile_cache.stats, "peak": float(heatmap.max()),
                      "weight": float(weight.sum())}))
""")


def _run(code, cache, *args, timeout=600):
    """Run ``code`` in a fresh interpreter with ``DALI_POSE_CACHE=cache``; (result, stderr)."""
    env = dict(os.environ, DALI_POSE_CACHE=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def _entries(cache):
    return sorted((Path(cache) / "operators").glob("*.nbc"))


# ------------------------------------------------------------- in-process: the key ---

@pytest.fixture(scope="module")
def spec_ops(tmp_path_factory):
    """Every numba operator of the graphs a range of configs builds (CPU and GPU specs)."""
    ops = []
    for overrides in ([], ["occlusion.method=aid", "occlusion.prob=1"],
                      ["occlusion.method=cutout", "loader.image_dtype=uint8"],
                      ["occlusion.method=gridmask", "loader.image_dtype=uint8"],
                      ["occlusion.method=hide_and_seek", "model.target=combined"],
                      ["occlusion.method=erasing", "noda.prob=1", "noda.pool=x.npz",
                       "loader.image_dtype=float16"],
                      ["model.codec=msra", "model.target=gaussian"]):
        cfg = load_config(None, overrides)
        for train in (True, False):
            for gpu in (False, True):
                s = graph_spec(cfg, COCO, train=train, gpu=gpu)
                ops += [o for o in (s.crop, s.targets, s.warp, s.dropping, s.noda)
                        if o is not None]
    return list({id(o): o for o in ops}.values())


def test_every_operator_of_every_graph_is_keyed(spec_ops):
    """No operator falls back to compiling uncached for want of a key, and distinct
    operators get distinct keys."""
    keys = {}
    for op in spec_ops:
        fns = [op.cpu_run, op.setup] + ([op.gpu_run] if op.gpu_run is not None else [])
        keys[id(op)] = tuple(compile_cache.fingerprint(getattr(f, "py_func", f))
                             for f in fns)
    assert len(spec_ops) >= 15
    assert len(set(keys.values())) == len(spec_ops)


def test_key_follows_the_baked_in_values_not_the_object():
    """The same values rebuilt (a new NumbaOp object, as in a new process) give the same
    key; any one baked-in value changed gives another."""
    args = dict(input_size=(192, 256), padding=1.25, flip_index=tuple(COCO.flip_index),
                upper_body=tuple(j in COCO.upper_body for j in range(17)), aug=None,
                unbiased=True)

    def key(**changes):
        op = crop_op.__wrapped__(**{**args, **changes})  # past the in-process lru cache
        return compile_cache.fingerprint(op.cpu_run), compile_cache.fingerprint(op.setup)

    base = key()
    assert key() == base
    assert key(input_size=(192, 255))[0] != base[0]
    assert key(padding=1.0)[0] != base[0]
    assert key(unbiased=False)[0] != base[0]  # a different njit function in the closure
    flip = list(args["flip_index"])
    flip[1], flip[2] = flip[2], flip[1]
    assert key(flip_index=tuple(flip))[0] != base[0]  # an array in the closure


def test_key_follows_globals_and_numba_options():
    """numba freezes the globals a kernel reads, and its options change the code."""
    g = {"SCALE": 2.0, "np": np}
    exec("def kern(x):\n    return x * SCALE\n", g)
    first = compile_cache.fingerprint(g["kern"])
    g["SCALE"] = 3.0
    assert compile_cache.fingerprint(g["kern"]) != first
    plain = numba.njit(lambda x: x + 1)
    fast = numba.njit(fastmath=True)(plain.py_func)
    assert compile_cache.fingerprint(plain) != compile_cache.fingerprint(fast)


def test_key_follows_the_kernel_source(tmp_path, monkeypatch):
    """An edit of a dali_pose source file a kernel comes from, even one that leaves the
    bytecode as it was (numba's own cache would not see an edit of a called module), or of
    any kernels/ module, changes the key."""
    pkg = tmp_path / "pkg"
    (pkg / "kernels").mkdir(parents=True)
    src = pkg / "kernels" / "k.py"
    src.write_text("def kern(x):\n    return x + 1\n")
    (pkg / "kernels" / "other.py").write_text("A = 1\n")
    monkeypatch.setattr(compile_cache, "PACKAGE_DIR", pkg)

    def state():
        compile_cache._own_file_digest.cache_clear()
        compile_cache.kernels_digest.cache_clear()
        spec = importlib.util.spec_from_file_location("k_under_test", src)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return compile_cache.fingerprint(mod.kern), compile_cache.kernels_digest()

    first = state()
    assert state() == first
    src.write_text("def kern(x):\n    return x + 1  # an edit numba would not see\n")
    second = state()
    assert second[0] != first[0] and second[1] != first[1]
    (pkg / "kernels" / "other.py").write_text("A = 2\n")
    third = state()
    assert third[0] == second[0] and third[1] != second[1]
    compile_cache._own_file_digest.cache_clear()
    compile_cache.kernels_digest.cache_clear()


def test_an_unknown_closure_value_is_not_cached():
    class Opaque:
        pass

    box = Opaque()

    def kern(x):
        return box

    with pytest.raises(compile_cache.Unkeyable, match="Opaque"):
        compile_cache.fingerprint(kern)


def test_key_holds_the_versions_and_the_cpu(monkeypatch, tmp_path):
    """Another numba / DALI / Python or another CPU (its LLVM name and features) is another
    entry: a key holds them, and an entry stored under one environment is not found under
    another."""
    import llvmlite
    import nvidia.dali as dali
    from numba.core.registry import cpu_target

    env = compile_cache._environment()
    magic = cpu_target.target_context.codegen().magic_tuple()  # (triple, cpu, features)
    assert magic in env and magic[2]  # the features, not only the name
    for version in (sys.version, numba.__version__, llvmlite.__version__, dali.__version__,
                    np.__version__):
        assert version in env
    monkeypatch.setenv("DALI_POSE_CACHE", str(tmp_path))
    key = (env, "cpu run", "kern", "fp", "sig")
    compile_cache._store(compile_cache._path(key, "kern"), key, {"code": 1})
    assert compile_cache._load(compile_cache._path(key, "kern"), key) == {"code": 1}
    for i in range(len(env)):  # any one part of the environment changed: not found
        other = (env[:i] + ("changed",) + env[i + 1:], *key[1:])
        assert compile_cache._load(compile_cache._path(other, "kern"), other) is None


def test_an_entry_is_never_seen_half_written(monkeypatch, tmp_path):
    """A process reading an entry while another writes it (torchrun ranks filling the
    cache) finds the previous whole entry or none, never a part: the write goes to a
    file of its own, renamed into place. Checked half-way through a real write."""
    monkeypatch.setenv("DALI_POSE_CACHE", str(tmp_path))
    key = (compile_cache._environment(), "cpu run", "kern", "fp", "sig")
    path = compile_cache._path(key, "kern")
    old, new = {"code": b"o" * 100_000}, {"code": b"n" * 100_000}
    compile_cache._store(path, key, old)
    seen = []

    class HalfWay:  # a file whose write stops half-way to let a reader look
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            seen.append(compile_cache._load(path, key))
            return self.f.write(data[len(data) // 2:])

    monkeypatch.setattr(compile_cache, "open", lambda p, mode="r": HalfWay(open(p, mode)),
                        raising=False)
    compile_cache._store(path, key, new)
    monkeypatch.undo()
    assert seen == [old]
    monkeypatch.setenv("DALI_POSE_CACHE", str(tmp_path))
    assert compile_cache._load(path, key) == new
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DALI_POSE_CACHE", str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c" / "operators"
    monkeypatch.setenv("DALI_POSE_CACHE", "off")
    assert compile_cache.cache_dir() is None
    monkeypatch.delenv("DALI_POSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "dali_pose" / "operators"


# ------------------------------------------------------------ processes: the store ---

@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache filled by one process building the train and val loaders (its result)."""
    cache = tmp_path_factory.mktemp("cache")
    data = tmp_path_factory.mktemp("dots")
    first, _ = _run(LOADER_SCRIPT, cache, data)
    return cache, data, first


def test_a_second_process_with_the_same_config_compiles_nothing(filled):
    cache, data, first = filled
    assert first["stats"]["compiled"] >= 6 and first["compiles"] > 0
    assert first["stats"]["stored"] == first["stats"]["compiled"]
    assert first["stats"]["uncacheable"] == 0
    n = len(_entries(cache))
    second, _ = _run(LOADER_SCRIPT, cache, data)
    assert second["stats"]["compiled"] == 0 and second["stats"]["stored"] == 0
    assert second["compiles"] == 0  # not one numba compilation in the whole process
    assert second["stats"]["loaded"] == first["stats"]["compiled"] + first["stats"]["loaded"]
    assert second["digest"] == first["digest"]  # the very same batches
    assert len(_entries(cache)) == n


def test_a_changed_kernel_relevant_value_misses(filled):
    """sigma is baked into the Gaussian target kernel: its run function compiles again
    (its setup, the same output shapes, and every other operator load)."""
    cache, data, first = filled
    third, _ = _run(LOADER_SCRIPT, cache, data, "model.sigma=3.0")
    assert third["stats"]["compiled"] == 1 and third["stats"]["stored"] == 1
    assert third["stats"]["loaded"] == first["stats"]["compiled"] + first["stats"]["loaded"] - 1
    assert third["digest"] != first["digest"]


def test_two_processes_filling_an_empty_cache_at_once_both_succeed(tmp_path):
    """Torchrun ranks: both compile and store (atomic renames), a third loads both
    entries; then a damaged entry is compiled again."""
    cache = tmp_path / "cache"
    env = dict(os.environ, DALI_POSE_CACHE=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", TARGET_SCRIPT, "2.0"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["stats"]["compiled"] + r["stats"]["loaded"] == 2  # run + setup
        assert r["peak"] == results[0]["peak"] > 0.9 and r["weight"] == 17
    assert len(_entries(cache)) == 2
    assert not list((cache / "operators").glob(".*tmp"))  # no temporary file left
    third, _ = _run(TARGET_SCRIPT, cache, "2.0")
    assert third["stats"]["loaded"] == 2 and third["stats"]["compiled"] == 0
    assert third["peak"] == results[0]["peak"]
    # an unreadable entry (a disk error, a foreign file) is compiled again and replaced
    for e in _entries(cache):
        e.write_bytes(b"not a cache entry")
    again, err = _run(TARGET_SCRIPT, cache, "2.0")
    assert again["stats"]["compiled"] == 2 and again["stats"]["stored"] == 2
    assert again["peak"] == results[0]["peak"]
    assert "ignoring the unreadable compile-cache entry" in err


def test_an_unwritable_cache_still_builds_with_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result, err = _run(TARGET_SCRIPT, blocker / "cache", "2.0")  # a path under a file
    assert result["stats"]["compiled"] == 2 and result["stats"]["stored"] == 0
    assert result["peak"] > 0.9
    # one line for the whole process (not one per entry it looked for)
    lines = [ln for ln in err.splitlines() if ln.startswith("dali_pose:")]
    assert len(lines) == 1 and "compile cache" in lines[0], err[-2000:]
    assert str(blocker / "cache") in lines[0]


@pytest.mark.slow
def test_an_unwritable_cache_still_trains(tmp_path):
    from dali_pose.tools.synthetic import generate

    d = tmp_path / "syn"
    generate(str(d), seed=1, num_train=4, num_val=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    sets = [f"data.train_ann={d}/annotations/person_keypoints_train.json",
            f"data.train_images={d}/images/train",
            f"data.val_ann={d}/annotations/person_keypoints_val.json",
            f"data.val_images={d}/images/val", f"out_dir={tmp_path / 'run'}",
            "loader.batch_size=4", "train.epochs=1"]
    args = [sys.executable, "train.py", "--config", "configs/synthetic.yaml"]
    for s in sets:
        args += ["--set", s]
    env = dict(os.environ, DALI_POSE_CACHE=str(blocker / "cache"))
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "run" / "model.pt").exists()
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("dali_pose:")]
    assert len(lines) == 1 and "compile cache" in lines[0], p.stderr[-2000:]


# ------------------------------------------------------- python -m ... bench --startup ---

def test_startup_report_from_its_runs(monkeypatch):
    """The start-up bench's report and table, from stated runs (no processes): runs in
    order with the cache folders the cold run fills, ratios, each phase in the table."""
    from dali_pose.tools import bench_startup

    calls = []

    def runner(kind, config, overrides, env):
        calls.append((kind, dict(env)))
        cold = kind == "dali" and len(calls) == 1
        phases = dict(zip(bench_startup.PHASES, (4.0, 10.0, 1.0, 5.0, 0.5) if cold else
                          (4.0, 0.5, 1.0, 0.25, 0.25) if kind == "dali" else
                          (3.0, 2.0, 2.0, 1.0, 1.0)))
        out = dict(phases, process_s=20.0, cpu_s=18.0, cpu_loaders_s=9.0,
                   to_first_batches_s=sum(phases[p] for p in bench_startup.PHASES[1:]))
        if kind == "dali":
            out["cache"] = {"compiled": 7 if cold else 0, "loaded": 1 if cold else 8}
        return out

    rep = bench_startup.startup("configs/synthetic.yaml", ["loader.batch_size=8"],
                                warm_runs=2, log=lambda *a: None, runner=runner)
    assert [k for k, _ in calls] == ["dali", "dali", "dali", "reference"]
    assert calls[0][1] == calls[1][1] == calls[2][1]  # warm runs reuse the cold run's cache
    assert set(calls[0][1]) == {"DALI_POSE_CACHE", "NUMBA_CACHE_DIR"}
    assert not os.path.exists(calls[0][1]["DALI_POSE_CACHE"])  # removed afterwards
    assert rep["warm_median_s"] == 2.0 and rep["warm_over_cold"] == pytest.approx(2.0 / 16.5)
    text = bench_startup.format_report(rep)
    assert "dali cold" in text and "dali warm 2" in text and "classic" in text
    assert "7 compiled, 1 loaded" in text and "16.50" in text and "12% of the cold" in text


@pytest.mark.slow
def test_startup_bench_end_to_end(tmp_path):
    from dali_pose.tools.synthetic import generate

    p = generate(str(tmp_path / "syn"), seed=0, num_train=4, num_val=2)
    args = [sys.executable, "-m", "dali_pose.tools.bench", "--startup", "--warm-runs", "1",
            "--json", str(tmp_path / "s.json"), "--set", "loader.batch_size=4"]
    for k in ("train_ann", "train_images", "val_ann", "val_images"):
        args += ["--set", f"data.{k}={p[k]}"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "s.json").read_text())
    runs = {x["name"]: x for x in rep["runs"]}
    assert runs["dali cold"]["cache"]["compiled"] > 0
    assert runs["dali warm 1"]["cache"]["compiled"] == 0
    assert "classic" in runs and "warm cache:" in r.stdout


# Two closures of one function compile to the same numba name in two fresh processes (same
# compile order); an entry stored by one process, loaded by the other after it compiled the
# other closure, must call its own inner function (not the other's, found by name).
CLASH_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba import njit, types
    from numba.core import sigutils
    from numba.core.ccallback import CFunc
    from dali_pose.loader import compile_cache

    def make(c, cached):
        @njit
        def inner(x):  # big enough that LLVM keeps it a call, not inlined
            a = np.empty(int(x) + 8)
            for i in range(a.size):
                a[i] = np.sin(i * 0.5) + np.cos(i * 0.25) * np.exp(-i) + np.log1p(i)
            s = 0.0
            for i in range(a.size):
                s += np.tanh(a[i]) * np.arctan2(a[i], 1.0 + i)
            return s * 0.0 + c

        def f(x):
            return inner(x)

        res = CFunc(f, sigutils.normalize_signature(types.float64(types.float64)),
                    locals={}, options={})
        if cached:
            res._cache = compile_cache._EntryCache(("clash test", c), f"clash{c}", [inner])
        res.compile()
        return res

    if sys.argv[1] == "store":
        out = {"one": make(1.0, True).ctypes(0.0)}
    else:
        two = make(2.0, False)  # compiled here, under the name the stored entry's had there
        one = make(1.0, True)
        out = {"one": one.ctypes(0.0), "two": two.ctypes(0.0)}
    print(json.dumps({"stats": compile_cache.stats, **out}))
""")


def test_a_loaded_entry_calls_its_own_code_not_a_namesake_compiled_here(tmp_path):
    cache = tmp_path / "cache"
    stored, _ = _run(CLASH_SCRIPT, cache, "store")
    assert stored["stats"]["stored"] == 1 and stored["one"] == 1.0
    loaded, _ = _run(CLASH_SCRIPT, cache, "load")
    assert loaded["stats"]["loaded"] == 1
    assert (loaded["one"], loaded["two"]) == (1.0, 2.0)
