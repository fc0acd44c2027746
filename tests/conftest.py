import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
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


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts) -> Path:
    """A path under ../shared/data; the test is skipped when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real sample data not present: {p}")
    return p


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
    root = str(Path(__file__).resolve().parents[1])
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
