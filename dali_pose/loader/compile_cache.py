"""A persistent, per-machine compile cache for the DALI numba operators.

DALI's numba plugin (``nvidia.dali.plugin.numba.NumbaFunction``) compiles, at construction,
a C callback (numba ``cfunc``) around each CPU ``run_fn`` and ``setup_fn``, and a CUDA
kernel for a GPU ``run_fn``; DALI itself only keeps their addresses. Compiling takes 1-6 s
per operator on a small CPU, in every process. :class:`CachedNumbaFunction` (the graph's
``NumbaFunction``; same arguments) builds the same operator, but:

* CPU: DALI's own wrapper code runs unchanged; only the ``cfunc`` decorator it calls is
  swapped, for the duration of the construction, for one whose numba ``CFunc`` loads and
  saves its compile result here (numba's own serialisation of a compile result: object
  code, function descriptor, environments, as numba's ``cache=True`` does). A hit
  compiles nothing (no typing, no LLVM).
* CUDA: the kernel is compiled as DALI compiles it (same argument types and NVVM options)
  to PTX, stored here, and loaded into the device's context; the driver's own JIT cache
  keeps the PTX -> SASS step. A kernel that cannot be loaded from PTX falls back to
  DALI's own path.

The key of an entry (its file name is the key's SHA-256) holds everything that decides the
compiled code: the function DALI compiles, fingerprinted with everything it reaches (its
bytecode, closure values such as baked-in sizes, tables and flags, the njit functions it
calls and their closures and the globals they read, with numba's options); a hash of the
source files of every dali_pose module involved and of every ``dali_pose/kernels`` module
(so a kernel edit never loads stale code, even where numba would not see it); the
signature DALI builds from the port dtypes and ndims; the Python, NumPy, numba, llvmlite
and DALI versions, DALI's plugin source and numba's code-generation settings; the CPU
(LLVM triple, CPU name and features) or, for CUDA, the compute capability and toolkit
(and numba-cuda's version). Anything the fingerprint cannot read
(an unknown object in a closure) means no caching for that operator (one line), never a
wrong hit.

Location: ``$DALI_POSE_CACHE`` if set (``off`` disables the cache), else
``$XDG_CACHE_HOME/dali_pose`` (default ``~/.cache/dali_pose``), entries in ``operators/``.
Entries are written to a temporary file and renamed into place, so processes filling the
cache at once (torchrun ranks) each see either nothing or a whole entry; an unwritable or
unreadable directory is reported in one line and the operators are compiled as without a
cache. Delete the directory to reclaim space (an edited kernel leaves its old entries).

:data:`stats` counts, per process, entries loaded, compiled and stored (tests read it).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import pickle
import platform
import secrets
import sys
import threading
import types
import uuid
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Dict, Optional

import numba
import numpy as np
from numba.core import serialize
from numba.core.compiler import CompileResult
from numba.core.dispatcher import Dispatcher
from nvidia.dali import Pipeline
from nvidia.dali.plugin import numba as dali_numba
from nvidia.dali.plugin.numba import NumbaFunction

FORMAT = 2  # bump when what an entry holds changes (2: per-process unique names)
ENV_VAR = "DALI_POSE_CACHE"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # dali_pose/


def _unique_function_names() -> None:
    """Number this process's numba functions from a random start.

    numba names a compiled function by its qualified name and a per-process counter
    (``FunctionIdentity._unique_ids``, from 1), and links the functions a cfunc calls into
    its object code as ``linkonce_odr``: the JIT binds a loaded entry's calls to the first
    function of that name already in the process. Two processes compiling different
    closures of one function (two operators' kernels, DALI's per-dtype array lambdas)
    in the same order give them the same names, so an entry stored by one process and
    loaded by another that compiled something else under that name called the other code
    (a kernel of another size or dtype writing past DALI's buffers: heap corruption). A
    random 40-bit start per process (2**20 names each) makes names from different
    processes distinct."""
    from numba.core.bytecode import FunctionIdentity

    if not getattr(FunctionIdentity, "_dali_pose_unique", False):
        FunctionIdentity._unique_ids = itertools.count(1 + (secrets.randbits(40) << 20))
        FunctionIdentity._dali_pose_unique = True


_unique_function_names()

#: per process: entries ``loaded`` (a compile avoided), ``compiled`` (a miss), ``stored``,
#: ``uncacheable`` (compiled without the cache: unkeyable or unserialisable); the
#: ``cuda_`` counts are the CUDA kernels among them
stats: Dict[str, int] = {"loaded": 0, "compiled": 0, "stored": 0, "uncacheable": 0,
                         "cuda_loaded": 0, "cuda_compiled": 0}

_lock = threading.RLock()
_said: set = set()


def _say_once(what: str, line: str) -> None:
    if what not in _said:
        _said.add(what)
        print(f"dali_pose: {line}", file=sys.stderr, flush=True)


def cache_dir() -> Optional[Path]:
    """The directory entries go to (``operators/`` under the cache root), None when off."""
    value = os.environ.get(ENV_VAR, "")
    if value.strip().lower() == "off":
        return None
    if value:
        root = Path(value).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dali_pose"
    return root / "operators"


# ---------------------------------------------------------------- the key ------------

class Unkeyable(Exception):
    """A value the fingerprint cannot state exactly: the operator is not cached."""


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@functools.lru_cache(maxsize=None)
def _own_file_digest(path: str) -> str:
    """Hash of one dali_pose source file, once per process (edits while a process runs are
    not seen by that process, as with any imported module)."""
    return _file_digest(path)


def _is_own(path: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def kernels_digest() -> str:
    """Hash of every ``dali_pose/kernels`` module's source: part of every key."""
    h = hashlib.sha256()
    for p in sorted((PACKAGE_DIR / "kernels").glob("*.py")):
        h.update(p.name.encode() + b"\0" + _own_file_digest(str(p)).encode())
    return h.hexdigest()


class _Fingerprint:
    """A deterministic byte stream of everything a function's compiled code depends on."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.files = set()  # dali_pose source files involved
        self._seen: Dict[int, int] = {}
        self._keep = []  # keeps the ids in _seen unique while walking

    def put(self, *parts) -> None:
        for p in parts:
            self.h.update(repr(p).encode() + b"\x1f")

    def walk(self, obj) -> None:  # noqa: C901 (one case per kind of value)
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, obj)
            return
        if isinstance(obj, np.generic):
            self.put("np", obj.dtype.str, obj.tobytes())
            return
        if isinstance(obj, np.ndarray):
            self.put("ndarray", obj.dtype.str, obj.shape, np.ascontiguousarray(obj).tobytes())
            return
        if isinstance(obj, types.ModuleType):
            self.put("module", obj.__name__)
            if _is_own(getattr(obj, "__file__", None) or ""):
                self.files.add(obj.__file__)
            return
        if isinstance(obj, numba.core.types.Type):
            self.put("nbtype", str(obj))
            return
        if isinstance(obj, np.dtype):
            self.put("dtype", obj.str)
            return
        ref = self._seen.get(id(obj))
        if ref is not None:  # recursion (a function calling itself) or a shared value
            self.put("ref", ref)
            return
        self._seen[id(obj)] = len(self._seen)
        self._keep.append(obj)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
            self.put("namedtuple", type(obj).__module__, type(obj).__qualname__)
            for v in obj:
                self.walk(v)
        elif isinstance(obj, (tuple, list)):
            self.put(type(obj).__name__, len(obj))
            for v in obj:
                self.walk(v)
        elif isinstance(obj, dict):
            self.put("dict", len(obj))
            for k in sorted(obj, key=repr):
                self.walk(k)
                self.walk(obj[k])
        elif isinstance(obj, (set, frozenset)):
            self.put("set", sorted(repr(v) for v in obj))
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif hasattr(obj, "py_func") and hasattr(obj, "targetoptions"):  # a numba dispatcher
            self.put("dispatcher", type(obj).__module__, type(obj).__qualname__)
            self.walk({k: v for k, v in obj.targetoptions.items() if k != "cache"})
            self.walk(obj.py_func)
        elif isinstance(obj, (types.BuiltinFunctionType, np.ufunc, type)):
            self.put("named", getattr(obj, "__module__", None) or "",
                     getattr(obj, "__qualname__", None) or obj.__name__)
        elif is_dataclass(obj):
            self.put("dataclass", type(obj).__module__, type(obj).__qualname__)
            for f in fields(obj):
                self.walk(f.name)
                self.walk(getattr(obj, f.name))
        else:
            raise Unkeyable(f"{type(obj).__module__}.{type(obj).__qualname__}")

    def _code(self, code: types.CodeType) -> None:
        self.put("code", code.co_code, code.co_names, code.co_varnames, code.co_freevars,
                 code.co_cellvars, code.co_argcount, code.co_kwonlyargcount, code.co_flags)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self._code(c)
            else:
                self.walk(c)

    def _function(self, fn: types.FunctionType) -> None:
        code = fn.__code__
        self.put("function", fn.__module__, fn.__qualname__)
        if _is_own(code.co_filename):
            self.files.add(code.co_filename)
        self._code(code)
        self.walk(fn.__defaults__)
        self.walk(fn.__kwdefaults__)
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                self.put("empty cell")
                continue
            self.walk(value)
        # numba freezes the globals a function reads at compile time: they are its code too
        names = set()
        stack = [code]
        while stack:
            c = stack.pop()
            names.update(c.co_names)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        g = fn.__globals__
        for name in sorted(names):
            if name in g:
                self.put("global", name)
                self.walk(g[name])

    def digest(self) -> str:
        h = self.h.copy()
        # by path inside the package: checkouts holding the same code share entries
        files = {str(Path(p).resolve().relative_to(PACKAGE_DIR)): p for p in self.files}
        for rel in sorted(files):
            h.update(rel.encode() + b"\0" + _own_file_digest(files[rel]).encode())
        return h.hexdigest()


def fingerprint(fn) -> str:
    """Hash of a function's compiled-code ingredients (see the module docstring); raises
    :class:`Unkeyable`."""
    fp = _Fingerprint()
    fp.walk(fn)
    return fp.digest()


@functools.lru_cache(maxsize=None)
def _environment() -> tuple:
    """What every key holds: versions, DALI's wrapper source, the CPU, the kernels."""
    import llvmlite
    import nvidia.dali as dali
    from numba.core import config
    from numba.core.registry import cpu_target

    # numba settings (NUMBA_OPT, ...) that change the code it generates
    settings = tuple(str(getattr(config, k, None)) for k in (
        "OPT", "BOUNDSCHECK", "DEBUGINFO_DEFAULT", "FASTMATH", "LOOP_VECTORIZE",
        "SLP_VECTORIZE", "ENABLE_AVX"))
    return (FORMAT, sys.version, sys.implementation.cache_tag, platform.machine(),
            np.__version__, numba.__version__, llvmlite.__version__, dali.__version__,
            _file_digest(dali_numba.__file__), cpu_target.target_context.codegen().magic_tuple(),
            settings, kernels_digest())


@functools.lru_cache(maxsize=None)
def _cuda_environment() -> tuple:
    from numba import cuda

    try:
        from importlib.metadata import version
        numba_cuda = version("numba-cuda")
    except Exception:  # noqa: BLE001 (not installed: numba's built-in CUDA target)
        numba_cuda = None
    return numba_cuda, tuple(cuda.runtime.get_version())


def _label(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "op")
    return "".join(c if c.isalnum() else "_" for c in name.replace("<locals>", ""))[:60]


# ---------------------------------------------------------------- the store ----------

def _path(key: tuple, label: str) -> Optional[Path]:
    d = cache_dir()
    if d is None:
        return None
    return d / f"{label}-{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.nbc"


def _load(path: Optional[Path], key: tuple):
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            fmt, stored_key, payload = pickle.loads(f.read())
    except FileNotFoundError:
        return None
    except OSError as e:  # the folder itself (a file in its path, no permission): one line
        _say_once("dir", f"the compile cache {path.parent} cannot be read ({e}); numba "
                         f"operators are compiled in every process (set {ENV_VAR})")
        return None
    except Exception as e:  # noqa: BLE001 (unreadable, truncated, from another version)
        _say_once(f"read {path}", f"ignoring the unreadable compile-cache entry {path} "
                                  f"({type(e).__name__}: {e}); compiling")
        return None
    if fmt != FORMAT or stored_key != repr(key):
        return None
    return payload


def _store(path: Optional[Path], key: tuple, payload) -> None:
    if path is None:
        return
    try:
        data = serialize.dumps((FORMAT, repr(key), payload))
    except Exception as e:  # noqa: BLE001 (an environment numba cannot pickle)
        stats["uncacheable"] += 1
        _say_once(f"pickle {path.name}", f"{path.name} cannot be stored in the compile "
                                         f"cache ({type(e).__name__}: {e})")
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: readers see no entry or a whole one
        stats["stored"] += 1
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _say_once("dir", f"the compile cache {path.parent} is not writable ({e}); numba "
                         f"operators are compiled in every process (set {ENV_VAR})")


_in_process: Dict[Path, CompileResult] = {}  # entries compiled or loaded by this process


class _EntryCache:
    """numba's per-function cache interface (``load_overload`` / ``save_overload``), for
    the one compile result a ``CFunc`` asks for, in one entry file."""

    def __init__(self, key: tuple, label: str, dispatchers=()):
        self.key, self.path = key, _path(key, label)
        self.dispatchers = {id(d) for d in dispatchers}

    def load_overload(self, sig, target_context):
        cres = _in_process.get(self.path)
        if cres is not None:  # the same code again in this process: one copy of it
            stats["loaded"] += 1
            return cres
        payload = _load(self.path, self.key)
        if payload is None:
            return None
        # numba's own cache calls target_context.refresh(), which imports every lowering
        # registry (~1-2 s per process, scipy included): loading object code needs only
        # the runtime (NRT) symbols it links against
        from numba.core.runtime import rtsys

        rtsys.initialize(target_context)
        try:
            cres = CompileResult._rebuild(target_context, *payload)
        except Exception as e:  # noqa: BLE001
            _say_once(f"rebuild {self.path}", f"ignoring the compile-cache entry {self.path} "
                                              f"({type(e).__name__}: {e}); compiling")
            return None
        stats["loaded"] += 1
        _in_process[self.path] = cres
        return cres

    def save_overload(self, sig, cres):
        stats["compiled"] += 1
        # A "dynamic global" is an address of this process baked into the code. numba's own
        # cache refuses them all; the one DALI's wrapper makes is harmless: it passes the
        # njit ``run_fn`` as a value, which numba lowers to the dispatcher object's address,
        # and a call through a dispatcher-typed value is bound at compile time (in a C
        # callback nothing boxes it), so the stale address is never read. Any other kind
        # stays uncached.
        dynamic = cres.library._dynamic_globals if cres.library.has_dynamic_globals else ()
        stale = [g for g in dynamic if int(g.rsplit(".", 1)[1], 16) not in self.dispatchers]
        if any(not x.can_cache for x in cres.lifted) or stale:
            stats["uncacheable"] += 1
            return
        self.store(cres._reduce())
        if self.path is not None:
            _in_process[self.path] = cres

    def store(self, payload):
        _store(self.path, self.key, payload)


# ---------------------------------------------------------------- the operator -------

class CachedNumbaFunction(NumbaFunction):
    """DALI's ``NumbaFunction`` whose compiled functions come from the cache (see the
    module docstring); the graph's ``NumbaFunction``, same arguments."""

    def _key(self, role: str, fn, *sig) -> Optional[tuple]:
        try:
            return (_environment(), role, _label(fn), fingerprint(fn), repr(sig))
        except Unkeyable as e:
            stats["uncacheable"] += 1
            _say_once(f"key {_label(fn)}", f"{_label(fn)} holds a {e}, which the compile "
                                           f"cache cannot key: compiled without the cache")
            return None

    @contextlib.contextmanager
    def _cfuncs_cached(self, key: Optional[tuple]):
        """Swap the ``cfunc`` decorator DALI's wrapper code calls for one that caches."""
        if key is None or cache_dir() is None:
            yield
            return

        def cfunc(sig, **options):
            def compile_cached(pyfunc):
                from numba.core.ccallback import CFunc
                from numba.core import sigutils

                res = CFunc(pyfunc, sigutils.normalize_signature(sig), locals={},
                            options=options)
                # one entry per wrapper DALI compiles (run_cfunc, setup_cfunc)
                closure = [c.cell_contents for c in pyfunc.__closure__ or ()]
                res._cache = _EntryCache(key + (pyfunc.__name__, str(res._sig)),
                                         f"{key[2]}-{pyfunc.__name__}",
                                         [v for v in closure if isinstance(v, Dispatcher)])
                res.compile()
                return res
            return compile_cached

        with _lock:
            original = dali_numba.cfunc
            dali_numba.cfunc = cfunc
            try:
                yield
            finally:
                dali_numba.cfunc = original

    def _get_run_fn_cpu(self, run_fn, out_types, in_types, outs_ndim, ins_ndim,
                        batch_processing):
        key = self._key("cpu run", run_fn, out_types, in_types, outs_ndim, ins_ndim,
                        batch_processing)
        with self._cfuncs_cached(key):
            return super()._get_run_fn_cpu(run_fn, out_types, in_types, outs_ndim, ins_ndim,
                                           batch_processing)

    def _get_setup_fn_cpu(self, setup_fn):
        if setup_fn is None:
            return super()._get_setup_fn_cpu(setup_fn)
        with self._cfuncs_cached(self._key("cpu setup", setup_fn)):
            return super()._get_setup_fn_cpu(setup_fn)

    def _get_run_fn_gpu(self, run_fn, types_, dims):
        device_id = Pipeline.current().device_id
        cc = _device_cc(device_id)
        key = self._key("cuda run", run_fn, types_, dims, cc)
        if key is None:
            return super()._get_run_fn_gpu(run_fn, types_, dims)
        key += (_cuda_environment(),)
        entry = _EntryCache(key, f"{key[2]}-cuda")
        image = _load(entry.path, key)
        if image is None:
            image = _compile_cuda(run_fn, types_, dims, cc)
            stats["compiled"] += 1
            stats["cuda_compiled"] += 1
            if image is None:
                stats["uncacheable"] += 1
                return super()._get_run_fn_gpu(run_fn, types_, dims)
            entry.store(image)
        else:
            stats["loaded"] += 1
            stats["cuda_loaded"] += 1
        try:
            return _load_cuda(image, device_id)
        except Exception as e:  # noqa: BLE001 (the driver refused it: DALI's own path)
            _say_once("cuda load", f"loading a cached CUDA kernel failed ({type(e).__name__}: "
                                   f"{e}); compiling with DALI's own path")
            return super()._get_run_fn_gpu(run_fn, types_, dims)


def _device_cc(device_id) -> tuple:
    from numba import cuda

    with cuda.gpus[int(device_id or 0)]:
        return tuple(cuda.get_current_device().compute_capability)


def _compile_cuda(run_fn, types_, dims, cc) -> Optional[dict]:
    """PTX of ``run_fn`` as DALI's plugin compiles it (its argument types and NVVM options);
    None where the kernel needs more than its PTX to load (linked files)."""
    from numba import types as nbt
    from numba.cuda.compiler import compile_cuda

    options = {"fastmath": False, "opt": 3}
    args = [nbt.Array(dali_numba._to_numba[t], nd, "C") for t, nd in zip(types_, dims)]
    cres = compile_cuda(run_fn, nbt.void, args, nvvm_options=dict(options), fastmath=False,
                        cc=cc)
    tgt = cres.target_context
    if hasattr(tgt, "prepare_cuda_kernel"):  # numba's built-in CUDA target
        code = run_fn.__code__
        lib, _ = tgt.prepare_cuda_kernel(cres.library, cres.fndesc, False, True,
                                         dict(options), code.co_filename, code.co_firstlineno)
    else:  # the numba-cuda package
        from numba.cuda.compiler import kernel_fixup

        lib = cres.library
        kernel_fixup(lib.get_function(cres.fndesc.llvm_func_name), debug=False)
        lib._entry_name = cres.fndesc.llvm_func_name
    if getattr(lib, "_linking_files", None) or getattr(lib, "needs_cudadevrt", False):
        return None
    return {"ptx": lib.get_asm_str(cc=cc), "entry": lib._entry_name}


def _load_cuda(image: dict, device_id) -> int:
    """The CUfunction handle of a stored kernel, loaded in the device's context (which keeps
    the module)."""
    from numba import cuda

    with cuda.gpus[int(device_id or 0)]:
        module = cuda.current_context().create_module_ptx(image["ptx"])
        handle = module.get_function(image["entry"]).handle
    return int(getattr(handle, "value", handle))

