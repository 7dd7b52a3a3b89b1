"""Where numba keeps the workers' compiled kernels: one folder per version of the kernel sources,
whatever path the code runs from.

numba's own locators file a kernel's machine code under the path of its source folder (in-tree
`__pycache__`, or NUMBA_CACHE_DIR/<that path's hash>), and check only the defining file's content.
Two costs follow:
- every copy of the code compiles every kernel again (20-35 s each, 10-38 MB of LLVM heap left in
  the worker): each Ray Jobs submission (its uploaded working dir is a new path), every clone;
- a kernel inlines functions of other files (skipgram's kernels call sgns_parts'), and after an
  edit of those alone the cache serves stale machine code.

`KernelSourcesLocator` (`locator_class`) files every kernel of workers/ under
<root>/<hash of every workers/ file that uses numba>/<the file's folder within workers/>:
any edit of any kernel source names a new, empty folder (no stale code), and the same sources
share one folder from any path (a submitted job finds what the node compiled before). The root is
NUMBA_CACHE_DIR/embedlake when that is set, else $XDG_CACHE_HOME (~/.cache)/embedlake/numba;
where it cannot be written, numba's own locators take over. Old versions' folders are never
read again and can be deleted."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.machinery
import os
import struct
import sys
import time

WORKERS = os.path.dirname(os.path.abspath(__file__))
CACHING = "numba.core.caching"


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
    """Hash of every workers/ source that uses numba, with its path within workers/ (about 1 MB
    read once per process)."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(WORKERS)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                text = f.read()
            if b"numba" in text:
                h.update(os.path.relpath(path, WORKERS).encode() + b"\0" + text)
    return h.hexdigest()[:16]


def cache_root(cache_dir: str) -> str:
    """NUMBA_CACHE_DIR/embedlake (numba's ``config.CACHE_DIR``) or the user's cache folder."""
    if cache_dir:
        return os.path.join(cache_dir, "embedlake")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "embedlake", "numba")


CHECKED_PATHS: set[str] = set()    # cache folders this process found writable (`ensure_cache_path`)


def locator_class(caching):
    """numba's cache locator for functions defined in workers/ (module docstring); made when numba's
    caching module is loaded, whose classes it extends."""
    from numba.core import config

    class KernelSourcesLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        def __init__(self, py_func, py_file):
            serialise_compiles()
            lazy_link_modules()
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            folder = os.path.relpath(os.path.dirname(os.path.abspath(py_file)), WORKERS)
            self._cache_path = os.path.join(cache_root(config.CACHE_DIR), sources_digest(),
                                            folder.replace(os.sep, "."))

        def get_cache_path(self):
            return self._cache_path

        def ensure_cache_path(self):
            """numba's check (the folder made, a temporary file written in it), once per folder and
            process while the folder exists. Why: numba checks for every kernel a module decorates,
            0.1 ms each, 2-2.5 ms of the figures task's import of geometry.py (21 kernels; issue 22,
            fourteenth round)."""
            if self._cache_path not in CHECKED_PATHS or not os.path.isdir(self._cache_path):
                super().ensure_cache_path()
                CHECKED_PATHS.add(self._cache_path)

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(WORKERS + os.sep):
                return None
            return super().from_function(py_func, py_file)

    return KernelSourcesLocator


def register(caching) -> None:
    """Put the locator first among numba's (once per process)."""
    classes = caching.CacheImpl._locator_classes
    if not any(c.__name__ == "KernelSourcesLocator" for c in classes):
        classes.insert(0, locator_class(caching))


def serialise_compiles() -> None:
    """A signature of a workers/ kernel is looked up and, on a miss, compiled and saved under a file
    lock beside its cache entry: N workers that start on an empty cache (the walk actors of every
    shard, a node's task workers) compile it once and load it N - 1 times, instead of N compiles at
    once (20-35 CPU-s and 10-38 MB of LLVM heap each, docs/scaling.md), and no two processes rewrite
    the kernel's index file at once. The lock is taken inside numba's compiler lock (one compile per
    process at a time, so threads cannot deadlock on it); a holder that died releases it; after
    LOCK_WAIT_S the waiter compiles anyway. Installed when the first workers/ kernel is decorated
    (numba's dispatcher module is still loading when its caching module is)."""
    from numba.core import dispatcher
    from numba.core.compiler_lock import global_compiler_lock
    compile_ = dispatcher.Dispatcher.compile
    if getattr(compile_, "serialised", False):
        return
    held: set[str] = set()

    def compile(self, sig):
        cache = getattr(self, "_cache", None)
        locator = getattr(getattr(cache, "_impl", None), "locator", None)
        if type(locator).__name__ != "KernelSourcesLocator":
            return compile_(self, sig)
        path = os.path.join(cache.cache_path, cache._impl.filename_base + ".lock")
        with global_compiler_lock:
            if path in held:                                  # a recursive compile of the same kernel
                return compile_(self, sig)
            with _file_lock(path), quiet_llvm_lock():
                held.add(path)
                try:
                    return compile_(self, sig)
                finally:
                    held.discard(path)

    compile.serialised = True
    dispatcher.Dispatcher.compile = compile


LOCK_WAIT_S = 300.0


def lazy_link_modules() -> None:
    """A kernel loaded from the cache gets its symbols from its machine code, and its LLVM module
    for linking (the bitcode numba saves beside the machine code) is parsed only when a kernel
    compiled in this process links against it.

    Why (issue 22, fifteenth round): numba parses that bitcode at every cache load, to list the
    symbols the kernel defines (which it needs now) and to keep the module for linking (which a
    worker that only loads kernels never needs). In a fresh worker the figures task's five loads
    parsed 346 KB of bitcode, 14-20 ms (deezer_europe, load 5-10); reading the same names from the
    machine code's ELF symbol table takes 0.05-0.2 ms a kernel, and they are the same set (checked on
    those five kernels: 15-197 names each). A cache entry whose machine code is not a 64-bit
    little-endian ELF object, or a numba without these internals, loads as numba loads it."""
    from numba.core import codegen
    lib = codegen.CPUCodeLibrary
    if getattr(lib._unserialize, "lazy", False):
        return
    unserialize, for_linking = lib._unserialize.__func__, lib._get_module_for_linking

    def _unserialize(cls, cg, state):
        name, kind, data = state
        engine = getattr(cg, "_engine", None)
        symbols = elf_symbols(data[0]) if kind == "object" and hasattr(engine, "_defined_symbols") else None
        if symbols is None:
            return unserialize(cls, cg, state)
        self = cg.create_library(name)
        self.enable_object_caching()
        self._set_compiled_object(data[0])
        self._link_bitcode = data[1]
        self._finalize_final_module()
        engine._defined_symbols |= symbols
        return self

    def _get_module_for_linking(self):
        bitcode = self.__dict__.pop("_link_bitcode", None)
        if bitcode is not None:
            self._shared_module = codegen.ll.parse_bitcode(bitcode)
        return for_linking(self)

    _unserialize.lazy = True
    lib._unserialize = classmethod(_unserialize)
    lib._get_module_for_linking = _get_module_for_linking


def elf_symbols(obj: bytes) -> set[str] | None:
    """Names of the symbols a 64-bit little-endian ELF object defines (functions, data; not sections
    or files), or None when ``obj`` is not one."""
    try:
        if obj[:6] != b"\x7fELF\x02\x01":
            return None
        shoff, = struct.unpack_from("<Q", obj, 0x28)
        size, count = struct.unpack_from("<HH", obj, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * size) for i in range(count)]
        names = set()
        for sec in sections:
            if sec[1] != 2:                                   # SHT_SYMTAB
                continue
            strings = sections[sec[6]][4]
            for at in range(sec[4], sec[4] + sec[5], sec[9]):
                name, info, _, section = struct.unpack_from("<IBBH", obj, at)
                if name and section and info & 0xF not in (3, 4):     # defined; not STT_SECTION / STT_FILE
                    start = strings + name
                    names.add(obj[start:obj.index(b"\0", start)].decode())
        return names
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def quiet_llvm_lock():
    """llvmlite's lock callbacks (numba's "numba:llvm_lock" events) off for the block, then back.

    Why (issue 22, fourteenth round): llvmlite makes every call into LLVM under a lock whose
    callbacks, registered by numba, broadcast an event at each acquire and release, and
    `Dispatcher.compile` listens to them with a timer (its compile-time metadata). Loading a kernel
    from the cache makes hundreds of such calls (numba lists its module's symbols one call each), so
    in a fresh worker the figures task's four cache loads took 32-53 ms with the events and 25-28
    without (deezer_europe, four fresh processes each). Only that timer listens: a workers/ kernel's
    compile metadata then reports no LLVM-lock time. The callbacks are swapped while holding
    llvmlite's lock, so no thread inside a call sees half the change; a nested block finds none and
    restores none. A no-op where llvmlite has no such lock."""
    try:
        from llvmlite.binding import ffi
        lock = ffi.lib._lock
        callbacks, rlock = list(lock._cblist), lock._lock
    except (ImportError, AttributeError):
        yield
        return
    with rlock:
        for acquire, release in callbacks:
            ffi.unregister_lock_callback(acquire, release)
    try:
        yield
    finally:
        with rlock:
            for acquire, release in callbacks:
                ffi.register_lock_callback(acquire, release)


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive flock on ``path`` (made if missing), waited for up to LOCK_WAIT_S."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield                                                 # an unwritable cache: numba copes
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)                                          # releases the lock


class _WhenCachingLoads:
    """A meta-path finder that registers the locator right after numba's caching module executes:
    a dispatcher picks its locator when ``cache=True`` is applied, and importing the workers
    package must not import numba (0.4-2 s; the CLI and the reader never need it)."""

    def find_spec(self, name, path, target=None):
        if name != CACHING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                register(module)

            spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if numba is loaded, else when it loads."""
    if CACHING in sys.modules:
        register(sys.modules[CACHING])
    elif not any(isinstance(f, _WhenCachingLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenCachingLoads())
