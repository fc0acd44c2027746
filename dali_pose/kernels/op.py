"""The one description of a numba operator: what DALI's ``numba_function`` needs, stated once.

Every kernel module builds its operator as a :class:`NumbaOp` next to its kernel: names,
dtypes and ndims of the outputs and inputs (DALI passes outputs first, then inputs, to
``cpu_run`` / ``gpu_run``), the ``setup`` function that sets output shapes, and the CUDA
launch shape. The DALI graph (:mod:`dali_pose.loader.graph`) turns a ``NumbaOp`` into a DALI
operator without restating any of it. This module imports neither DALI nor the config.

Factories are ``functools.lru_cache``'d on exactly the values their kernel bakes in, so the
same values give the same ``NumbaOp`` object, and the graph compiles each object once per
device: a config change the kernel does not use (an output folder, an epoch count, a
probability fed as data) compiles nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numba
import numpy as np

DTYPES = ("float32", "int32", "int64", "uint8")


@dataclass(frozen=True)
class Port:
    """One output or input of an operator: ``ndim`` dimensions of ``dtype`` per sample."""

    name: str
    dtype: str
    ndim: int

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"port {self.name}: dtype {self.dtype!r} not in {DTYPES}")


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per cached factory call
class NumbaOp:
    """A DALI ``numba_function`` operator, described once.

    ``cpu_run(*outputs, *inputs)`` is a plain Python function (DALI ``njit``s it itself, and
    numba refuses to jit a jitted function); ``cpu_kernel`` is the same, jitted, for direct
    calls. ``setup(outs, ins)`` sets every output's shape per sample; DALI 2.4's wrapper
    builds the input-shape view with the number of *outputs*, so a ``setup`` reads at most
    ``ins[0]`` (see shared/notes/dali-facts.md). ``gpu_run`` is the CUDA variant (grid-stride
    loops, so any launch shape is correct), launched once per sample with ``blocks`` x
    ``threads_per_block``; ``blocks_per_sm > 0`` asks the graph to launch that many blocks per
    streaming multiprocessor of the device instead of ``blocks``. ``num_draws``: length of the
    per-sample random-draws input, when the operator has one (the draws are data, see
    :mod:`dali_pose.draws`); ``params`` is the kernel's per-sample geometry in plain Python,
    for tests and pictures.
    """

    name: str
    outputs: Tuple[Port, ...]
    inputs: Tuple[Port, ...]
    cpu_run: Callable
    setup: Callable
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

    @functools.cached_property
    def cpu_kernel(self) -> Callable:
        return numba.njit(self.cpu_run)

    def launch(self, sm_count: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
        """(blocks, threads_per_block) on a device with ``sm_count`` multiprocessors."""
        if self.blocks_per_sm > 0:
            return (self.blocks_per_sm * max(1, int(sm_count)), 1, 1), self.threads_per_block
        return self.blocks, self.threads_per_block


def _shape_table(shapes):
    """(n, max ndim) int64 sizes and (n,) ndims: constants a jitted ``setup`` can index (a
    tuple of tuples of different lengths cannot be looped over in numba)."""
    ndim = np.array([len(s) for s in shapes], np.int64)
    sizes = np.zeros((len(shapes), max([1, *ndim])), np.int64)
    for o, s in enumerate(shapes):
        sizes[o, :len(s)] = s
    return sizes, ndim


def fixed_shapes(*shapes: Tuple[int, ...]) -> Callable:
    """A ``setup`` giving output o the constant shape ``shapes[o]`` in every sample."""
    sizes, ndim = _shape_table(shapes)
    n = len(shapes)

    def setup(outs, ins):
        for i in range(len(outs[0])):
            for o in range(n):
                for d in range(ndim[o]):
                    outs[o][i][d] = sizes[o, d]

    return setup


def like_first_input(*extra: Tuple[int, ...]) -> Callable:
    """A ``setup`` giving output 0 the shape of input 0, outputs 1.. the constant ``extra``."""
    sizes, ndim = _shape_table(extra)
    n = len(extra)

    def setup(outs, ins):
        for i in range(len(outs[0])):
            outs[0][i][:] = ins[0][i][:]
            for o in range(n):
                for d in range(ndim[o]):
                    outs[o + 1][i][d] = sizes[o, d]

    return setup
