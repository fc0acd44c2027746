"""The one description of a numba operator: what DALI's ``numba_function`` needs, stated once.

Every kernel module builds its operator as a :class:`NumbaOp` next to its kernel: names,
dtypes and shapes of the outputs and inputs (DALI passes outputs first, then inputs, to
``cpu_run`` / ``gpu_run``; the shapes give the ``setup`` that sizes the outputs), and the
CUDA launch shape. The DALI graph (:mod:`dali_pose.loader.graph`) turns a ``NumbaOp`` into a DALI
operator without restating any of it. This module imports neither DALI nor the config.

Factories are ``functools.lru_cache``'d on exactly the values their kernel bakes in, so the
same values give the same ``NumbaOp`` object, and the graph compiles each object once per
device: a config change the kernel does not use (an output folder, an epoch count, a
probability fed as data) compiles nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numba
import numpy as np

DTYPES = ("float32", "int32", "int64", "uint8")


PEOPLE = "P"  # a port dimension: the sample's number of people


@dataclass(frozen=True)
class Port:
    """One output or input of an operator: per sample, an array of ``dtype`` and ``shape``.

    Each entry of ``shape`` is a constant size, :data:`PEOPLE` (the sample's P people: the
    first dimension of the operator's input 0) or None (any size; inputs only). An
    output's shape is derived from it, so no operator writes its own ``setup``.
    """

    name: str
    dtype: str
    shape: Tuple[Union[int, str, None], ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"port {self.name}: dtype {self.dtype!r} not in {DTYPES}")
        if not self.name.isidentifier():
            raise ValueError(f"port {self.name!r}: not a Python identifier")
        for d in self.shape:
            if not (d is None or d == PEOPLE or (isinstance(d, int) and d >= 0)):
                raise ValueError(f"port {self.name}: dimension {d!r} is not a size, "
                                 f"{PEOPLE!r} or None")

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per cached factory call
class NumbaOp:
    """A DALI ``numba_function`` operator, described once.

    ``cpu_run(*outputs, *inputs)`` is a plain Python function (DALI ``njit``s it itself, and
    numba refuses to jit a jitted function); ``cpu_kernel`` is the same, jitted, for direct
    calls. The ports state every output's shape (:class:`Port`); :attr:`setup` is derived
    from them. DALI 2.4's setup wrapper builds the input-shape view with the number of
    *outputs*, so the derived ``setup`` reads only input 0 (the number of people), and an
    operator needs at least as many inputs as outputs. ``gpu_run`` is the CUDA variant
    (grid-stride loops, so any launch shape is correct), launched once per sample with
    ``blocks`` x ``threads_per_block``; ``blocks_per_sm > 0`` asks the graph to launch that
    many blocks per streaming multiprocessor of the device instead of ``blocks``.
    ``num_draws``: length of the per-person random-draws input, when the operator has one
    (the draws are data, see :mod:`dali_pose.draws`); ``params`` is the kernel's per-person
    geometry in plain Python, for tests and pictures.
    """

    name: str
    outputs: Tuple[Port, ...]
    inputs: Tuple[Port, ...]
    cpu_run: Callable
    gpu_run: Optional[Callable] = None
    blocks: Tuple[int, int, int] = (1, 1, 1)
    threads_per_block: Tuple[int, int, int] = (1, 1, 1)
    blocks_per_sm: int = 0
    num_draws: int = 0
    params: Optional[Callable] = None

    def __post_init__(self):
        if len(self.outputs) > 6 or len(self.inputs) > 6:
            raise ValueError(f"{self.name}: DALI numba operators take at most 6 outputs and "
                             f"6 inputs")
        if len(self.inputs) < len(self.outputs):
            # DALI 2.4's setup wrapper reads as many input shapes as there are outputs:
            # fewer inputs would make it read past the end of DALI's shape arrays.
            raise ValueError(f"{self.name}: needs at least as many inputs as outputs")
        for p in self.outputs:
            if None in p.shape:
                raise ValueError(f"{self.name}: output {p.name} has a free dimension")
        if any(PEOPLE in p.shape for p in self.outputs) and (
                not self.inputs or self.inputs[0].shape[:1] != (PEOPLE,)):
            raise ValueError(f"{self.name}: outputs sized by people need input 0 to start "
                             f"with the people axis")
        names = [p.name for p in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: output names {names} repeat")

    @functools.cached_property
    def cpu_kernel(self) -> Callable:
        return numba.njit(self.cpu_run)

    @functools.cached_property
    def setup(self) -> Callable:
        """DALI's ``setup(outs, ins)``: every output's shape per sample, from its port."""
        return _port_setup(self.outputs)

    def launch(self, sm_count: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
        """(blocks, threads_per_block) on a device with ``sm_count`` multiprocessors."""
        if self.blocks_per_sm > 0:
            return (self.blocks_per_sm * max(1, int(sm_count)), 1, 1), self.threads_per_block
        return self.blocks, self.threads_per_block


def _port_setup(outputs: Tuple[Port, ...]) -> Callable:
    """A ``setup`` writing each output's port shape, :data:`PEOPLE` read from input 0. The
    sizes go in as an (n, max ndim) int64 table (-1: people), a constant a jitted
    ``setup`` can index (a tuple of tuples of different lengths cannot be looped over)."""
    n = len(outputs)
    ndim = np.array([p.ndim for p in outputs], np.int64)
    sizes = np.zeros((n, max([1, *ndim])), np.int64)
    for o, p in enumerate(outputs):
        sizes[o, :p.ndim] = [-1 if d == PEOPLE else d for d in p.shape]
    by_people = any(PEOPLE in p.shape for p in outputs)

    def setup(outs, ins):
        for i in range(len(outs[0])):
            people = ins[0][i][0] if by_people else 0
            for o in range(n):
                for d in range(ndim[o]):
                    v = sizes[o, d]
                    outs[o][i][d] = people if v < 0 else v

    return setup
