import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from dali_pose.draws import gate

# The numba operators' compile cache of this test session (and of the processes its tests
# start): never the user's, which other checkouts share; filled once, it spares every later
# process the compiling. Tests of the cache itself use their own.
_SESSION_CACHE = tempfile.mkdtemp(prefix="dali_pose_test_cache_")
os.environ["DALI_POSE_CACHE"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SYNTHETIC_CONFIG = ROOT / "configs" / "synthetic.yaml"
# Loader settings that keep a test's train.py run small: batches of 4, one pipeline of one
# thread (2 cores are shared by the suite).
SMALL_LOADER = ("loader.batch_size=4", "loader.pipelines=1", "loader.num_threads=1")


def shared(*parts) -> Path:
    """A path under ../shared/data; the test is skipped when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real sample data not present: {p}")
    return p


# --------------------------------------------------- synthetic data and train.py runs ----

def synthetic_data(tmp_path_factory, num_train: int, num_val: int, seed: int = 1) -> Path:
    """A tiny synthetic COCO-style dataset (``dali_pose.tools.synthetic.generate``: 640x480
    JPEGs, ~2.5 people each) in a fresh temporary folder; for module-scoped fixtures."""
    from dali_pose.tools.synthetic import generate

    d = tmp_path_factory.mktemp("syn")
    generate(str(d), seed=seed, num_train=num_train, num_val=num_val)
    return d


def data_overrides(d, val: bool = True) -> list:
    """``--set`` values pointing a config at the synthetic dataset under ``d`` (the training
    split, and the validation split unless ``val`` is false)."""
    over = [f"data.train_ann={d}/annotations/person_keypoints_train.json",
            f"data.train_images={d}/images/train"]
    if val:
        over += [f"data.val_ann={d}/annotations/person_keypoints_val.json",
                 f"data.val_images={d}/images/val"]
    return over


def doc_code(doc: str, heading: str) -> str:
    """The first ```python block after the line ``heading`` of ``doc`` (a Markdown file,
    relative to the repository root), as written there: the docs' code is run by tests."""
    text = (ROOT / doc).read_text()
    assert f"\n{heading}\n" in text, f"{doc} has no line {heading!r}"
    after = text.split(f"\n{heading}\n", 1)[1]
    assert "```python\n" in after, f"{doc}: no python block after {heading!r}"
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def set_args(overrides) -> list:
    """``["--set", o]`` for each override, as the command lines take them."""
    return [a for o in overrides for a in ("--set", str(o))]


def train_argv(d, out, *sets, val: bool = True, config=SYNTHETIC_CONFIG) -> list:
    """train.py's arguments: ``config`` trained on the synthetic dataset under ``d`` into
    ``out``, then ``sets`` (later keys win)."""
    return ["--config", str(config)] + set_args(
        [*data_overrides(d, val), f"out_dir={out}", *sets])


def train_main():
    """``train.main``, loaded from the file (train.py is a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_main", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def start_train(args, script=None, env=None, **popen) -> subprocess.Popen:
    """train.py (or ``script``, a driver around it) started in a fresh process from the
    repository root, text pipes; ``env`` adds variables."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.Popen([sys.executable, str(script or ROOT / "train.py"), *args],
                            cwd=ROOT, env=full, text=True, **popen)


def run_train(args, timeout=600, env=None) -> subprocess.CompletedProcess:
    """train.py run to its end in a fresh process; stdout and stderr captured."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path) -> list:
    """The records of a JSON-lines file (metrics.jsonl); none when it does not exist."""
    path = Path(path)
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def png_declaring(w: int, h: int) -> bytes:
    """A valid-looking PNG header declaring w x h, a tiny IDAT and IEND (not decodable)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@dataclasses.dataclass
class Gated:
    """A kernel operator (``NumbaOp``) and the probability its draws are gated with: the
    probability is data, :mod:`dali_pose.draws` turns it into the gate ``draws[0]``."""

    op: object
    prob: float

    def __getattr__(self, name):
        return getattr(self.op, name)

    def draws(self, rng):
        """Uniform draws for one sample, the gate open with probability ``prob``."""
        d = rng.random(self.op.num_draws).astype(np.float32)
        d[0] = gate(rng.random(), self.prob)
        return d


def run_python(code: str, args=(), env_extra=None, timeout=240) -> str:
    """Run ``code`` in a fresh interpreter (e.g. with NUMBA_DISABLE_JIT=1 or the numba CUDA
    simulator, which must be set before numba is imported); assert success; return stdout."""
    root = str(ROOT)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    if has_gpu and not os.environ.get("NUMBA_ENABLE_CUDASIM"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests skipped for want of ../shared/data (see ``shared``)."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if isinstance(r.longrepr, tuple)
            and "real sample data not present" in str(r.longrepr[2]))
    if n:
        terminalreporter.write_line(f"{n} tests skipped: real sample data not present "
                                    f"({SHARED_DATA})")
