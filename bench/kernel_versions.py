"""Which workers/ kernels a numba cache holds in more than one version, and which arguments differ.

numba compiles a kernel once per argument types (dtype, dimensions, layout, writability), so a kernel
with several versions in a cache was compiled several times. Run over the test suite's cache after a
run (`.pytest_cache/numba`) or a user's (`~/.cache/embedlake/numba`):

    .venv/bin/python bench/kernel_versions.py .pytest_cache/numba            # versions and differences
    .venv/bin/python bench/kernel_versions.py .pytest_cache/numba --time     # also compile each again, timed

`--time` compiles every version of each kernel with more than one into a scratch cache (set
NUMBA_CACHE_DIR to an empty folder) and prints the seconds: what the extra versions cost a fresh cache.
docs/scaling.md ("Since the fifteenth session") has the figures that led to workers/kernel_inputs.py."""
from __future__ import annotations

import argparse
import glob
import importlib
import os
import pickle
import sys
import time


def cache_indexes(root: str) -> list[tuple[str, str, list]]:
    """(module, kernel, [argument types of each version]) for every index file under root."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.nbi"), recursive=True)):
        parts = os.path.relpath(path, root).split(os.sep)
        if "embedlake" not in parts:
            continue
        sub = parts[parts.index("embedlake") + 2:-1]          # embedlake/<digest>/<folder in workers>/file
        stem = os.path.basename(path).split(".")
        with open(path, "rb") as fh:
            pickle.load(fh)                                   # numba's version stamp
            _, overloads = pickle.loads(fh.read())
        module = ".".join(["embedlake", "workers", *sub, stem[0]])
        out.append((module, stem[1].rsplit("-", 1)[0], [key[0] for key in overloads]))
    return out


def differing_arguments(sigs: list) -> list[tuple[int, list[str]]]:
    """(argument position, its type in each version) where the versions differ."""
    return [(i, [str(s[i]) for s in sigs]) for i in range(len(sigs[0])) if len({str(s[i]) for s in sigs}) > 1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", help="a numba cache folder (NUMBA_CACHE_DIR, or one of its embedlake/ subfolders)")
    ap.add_argument("--time", action="store_true", help="compile every version again and print the seconds")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.cache):
        print(f"kernel_versions: {args.cache}: no such folder", file=sys.stderr)
        return 2
    rows = [r for r in cache_indexes(args.cache) if len(r[2]) > 1]
    extra = 0.0
    for module, kernel, sigs in sorted(rows, key=lambda r: -len(r[2])):
        print(f"{module}.{kernel}: {len(sigs)} versions")
        for i, types in differing_arguments(sigs):
            print(f"    argument {i}: " + " | ".join(types))
        if args.time:
            dispatcher = getattr(importlib.import_module(module), kernel)
            seconds = []
            for sig in sigs:
                t0 = time.perf_counter()
                dispatcher.compile(sig)
                seconds.append(time.perf_counter() - t0)
            extra += sum(seconds[1:])
            print("    compile s: " + ", ".join(f"{s:.2f}" for s in seconds))
    print(f"{len(rows)} kernels with more than one version" + (f"; the extra versions' compile {extra:.1f} s"
                                                              if args.time else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
