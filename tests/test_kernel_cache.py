"""numba's compiled kernels are filed by the kernel sources' content (`workers/kernel_cache.py`): a
second copy of the code at another path (a Ray Jobs working dir, a clone) loads what the first
compiled, an edit of any kernel source, even one that defines no kernel of its own, compiles
afresh, and processes that need a kernel at the same moment compile it once. Real processes, real
numba, real copies of the code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# In a fresh process: the uploaded-working-dir import of the code at argv[1] (infra/job_entry.py),
# one call of a small kernel, and whether numba compiled it or loaded it from the cache.
PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/infra")
from job_entry import use_working_dir
assert use_working_dir(sys.argv[1]) == sys.argv[1]
import numpy as np
from embedlake.workers.evaluate import geometry
from embedlake.workers import kernel_cache
value = int(geometry.mix64(np.uint64(12345)))
stats = geometry.mix64.stats
print(json.dumps({"value": value, "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "code": geometry.__file__, "cache": geometry.mix64._cache._cache_path,
                  "digest": kernel_cache.sources_digest()}))
"""


def _copy_code(dest: Path) -> Path:
    for sub in ("embedlake", "workers", "flows", "tasks", "infra"):
        shutil.copytree(REPO / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _probe(code: Path, cache: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(code)], capture_output=True, text=True, env=env,
                         cwd=str(code), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_copy_at_another_path_loads_the_kernels_and_an_edit_of_any_kernel_source_compiles(tmp_path):
    cache = tmp_path / "numba"
    a, b = _copy_code(tmp_path / "a"), _copy_code(tmp_path / "b")
    first = _probe(a, cache)
    assert first["code"].startswith(str(a)) and first["misses"] == 1 and first["hits"] == 0, first
    assert first["cache"] == str(cache / "embedlake" / first["digest"] / "evaluate"), first
    again = _probe(b, cache)                       # other path, same sources: loaded, not compiled
    assert again["code"].startswith(str(b)) and (again["hits"], again["misses"]) == (1, 0), again
    assert again["cache"] == first["cache"] and again["value"] == first["value"]
    # sgns_parts.py defines no kernel mix64 calls, but it is a kernel source: a new folder, compiled again
    parts = b / "workers" / "train" / "sgns_parts.py"
    parts.write_text(parts.read_text() + "\n# edited\n")
    edited = _probe(b, cache)
    assert edited["digest"] != first["digest"] and (edited["hits"], edited["misses"]) == (0, 1), edited
    assert edited["value"] == first["value"]
    unchanged = _probe(a, cache)                   # the first copy still finds its own folder
    assert (unchanged["hits"], unchanged["misses"]) == (1, 0), unchanged


# Three fresh processes that all need one kernel at the same moment, on an empty cache.
AT_ONCE = r"""
import json, sys, time
import numpy as np
from embedlake.workers.evaluate import geometry
scores = np.arange(40, 0, -1, dtype=np.float32)
level, offsets = np.ones(40, dtype=np.int8), np.array([0, 25, 40], dtype=np.int64)
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
t, lv = geometry.sort_segments(scores, level, offsets)
stats = geometry._sort_segments_kernel.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "first": float(t[0])}))
"""


def test_processes_needing_a_kernel_at_once_compile_it_once(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    start = time.time() + 8                       # after every process has imported numba and the module
    procs = [subprocess.Popen([sys.executable, "-c", AT_ONCE, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert time.time() > start and all(r["first"] == 16.0 for r in res), res
    assert sorted((r["hits"], r["misses"]) for r in res) == [(0, 1), (1, 0), (1, 0)], res


def test_llvm_lock_events_are_off_while_a_kernel_loads_and_back_after():
    """`quiet_llvm_lock` (issue 22, fourteenth round): numba's LLVM-lock event callbacks are off
    inside the block, nested blocks included, and registered again after it, also when it raises;
    a kernel compiled or loaded inside runs."""
    import llvmlite.binding as ll
    import numpy as np
    import pytest

    from embedlake.workers import kernel_cache
    from embedlake.workers.evaluate import geometry
    before = list(ll.ffi.lib._lock._cblist)
    assert before                                   # numba registered its callbacks
    with kernel_cache.quiet_llvm_lock():
        assert ll.ffi.lib._lock._cblist == []
        with kernel_cache.quiet_llvm_lock():
            assert ll.ffi.lib._lock._cblist == []
        assert ll.ffi.lib._lock._cblist == []
        assert int(geometry.mix64(np.uint64(1))) == int(geometry.mix64(np.uint64(1))) != 1
    assert ll.ffi.lib._lock._cblist == before
    with pytest.raises(RuntimeError):
        with kernel_cache.quiet_llvm_lock():
            raise RuntimeError("inside")
    assert ll.ffi.lib._lock._cblist == before


def test_a_cache_folder_is_checked_once_per_process_while_it_exists(tmp_path, monkeypatch):
    """`KernelSourcesLocator.ensure_cache_path` (issue 22, fourteenth round): numba's writability check
    (a temporary file in the folder) runs once per folder, not once per kernel decorated, and again
    when the folder has gone."""
    import tempfile

    from numba.core import caching, config

    from embedlake.workers.evaluate import geometry
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    locator = next(c for c in caching.CacheImpl._locator_classes if c.__name__ == "KernelSourcesLocator")
    checks = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: checks.append(k.get("dir")) or real(*a, **k))
    first = locator.from_function(geometry.mix64.py_func, geometry.__file__)
    folder = first.get_cache_path()
    assert folder.startswith(str(tmp_path)) and os.path.isdir(folder) and checks == [folder]
    locator.from_function(geometry.draw_nodes.py_func, geometry.__file__).ensure_cache_path()
    first.ensure_cache_path()
    assert checks == [folder]
    shutil.rmtree(folder)
    locator.from_function(geometry.draw_nodes.py_func, geometry.__file__)
    assert os.path.isdir(folder) and checks == [folder, folder]


# A fresh process loading geometry.mix64 (and the kernels sort_segments uses) from the cache, then compiling a
# kernel that calls mix64, so it links against the loaded one.
LAZY = r"""
import json
import numpy as np
import numba
import llvmlite.binding as ll
parsed = []
parse = ll.parse_bitcode
ll.parse_bitcode = lambda data, *a: parsed.append(len(data)) or parse(data, *a)
from embedlake.workers.evaluate import geometry
from numba.core import codegen
codegen.ll.parse_bitcode = ll.parse_bitcode
value = int(geometry.mix64(np.uint64(12345)))
t, _ = geometry.sort_segments(np.arange(40, 0, -1, dtype=np.float32), np.ones(40, dtype=np.int8),
                              np.array([0, 25, 40], dtype=np.int64))
loaded = sum(geometry.mix64.stats.cache_hits.values()) + sum(geometry._sort_segments_kernel.stats.cache_hits.values())
lib = geometry.mix64.overloads[geometry.mix64.signatures[0]].library
pending = hasattr(lib, "_link_bitcode")
before = len(parsed)
caller = numba.njit(lambda z: geometry.mix64(z) ^ np.uint64(1))
print(json.dumps({"value": value, "first": float(t[0]), "loaded": loaded, "pending": pending, "parsed_before": before,
                  "linked": int(caller(np.uint64(12345))), "parsed_after": len(parsed) - before,
                  "still_pending": hasattr(lib, "_link_bitcode")}))
"""


def test_a_kernel_loaded_from_the_cache_parses_its_bitcode_only_to_link(tmp_path):
    """`lazy_link_modules` (issue 22, fifteenth round): kernels loaded from the cache run with the
    symbols read from their machine code and no bitcode parsed; a kernel compiled afterwards that
    calls one of them links against its module, parsed then, and computes the same values."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = []
    for _ in range(2):                             # the first compiles and saves, the second loads
        out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, again = runs
    assert first["loaded"] == 0 and again["loaded"] == 2, runs
    assert again["pending"] and again["parsed_before"] == 0, again
    assert again["parsed_after"] >= 1 and not again["still_pending"], again
    assert again["value"] == first["value"] and again["first"] == first["first"] == 16.0
    assert again["linked"] == first["linked"] == first["value"] ^ 1


def test_elf_symbols_reads_an_objects_defined_names_and_refuses_other_bytes():
    """`elf_symbols` on machine code LLVM made here: the names the module defines, not the ones it
    only declares; None for bytes that are not a 64-bit little-endian ELF object."""
    import llvmlite.binding as ll

    from embedlake.workers.kernel_cache import elf_symbols
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    mod = ll.parse_assembly("""
        @table = global [2 x i64] [i64 1, i64 2]
        declare i64 @elsewhere(i64)
        define i64 @twice(i64 %x) { %y = call i64 @elsewhere(i64 %x) %z = add i64 %y, %x ret i64 %z }
        define internal i64 @helper(i64 %x) { ret i64 %x }
    """.replace(" %y =", "\n %y =").replace(" %z =", "\n %z =").replace(" ret", "\n ret"))
    obj = ll.Target.from_triple(ll.get_process_triple()).create_target_machine().emit_object(mod)
    names = elf_symbols(obj)
    assert {"table", "twice"} <= names and "elsewhere" not in names, names
    assert elf_symbols(b"not an object") is None and elf_symbols(obj[:40]) is None
