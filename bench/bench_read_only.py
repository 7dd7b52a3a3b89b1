"""Kernels on writable against read-only inputs, alternated in one process: skip-gram's window and
per-pair kernels (M tokens/s, one thread) and FastRP (CPU-s), on a 20,000-node random graph's walks.

    .venv/bin/python bench/bench_read_only.py [--rounds 4]

Run on a checkout before workers/kernel_inputs.py (where each kind compiles its own version) it says
whether a read-only array costs speed in a kernel (docs/scaling.md, "Since the fifteenth session");
on one after it, both kinds run the same read-only version."""
from __future__ import annotations

import argparse
import time

import numpy as np

from embedlake.workers.fastrp.kernels import fastrp
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.walks import random_walks
from embedlake.workers.train.skipgram import train_sgns


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy, as Ray's object store hands it."""
    b = np.array(a, copy=True)
    b.flags.writeable = False
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, deg = 20000, 20
    src, dst = rng.integers(0, n, n * deg // 2), rng.integers(0, n, n * deg // 2)
    g = build_csr(np.concatenate([src, dst]), np.concatenate([dst, src]), n)
    indptr, indices = np.asarray(g.indptr), np.asarray(g.indices)
    walks = random_walks(indptr, indices, None, np.arange(n, dtype=np.int64), 2, 40, seed=0, threads=1)
    tok = walks.reshape(-1).astype(np.int32)
    off = np.arange(0, tok.size + 1, 40, dtype=np.int64)
    res: dict = {}
    for r in range(args.rounds + 1):              # round 0 compiles or loads the kernels: not recorded
        for kind in ("writable", "read-only"):
            t, o = (tok, off) if kind == "writable" else (frozen(tok), frozen(off))
            for kernel, shared in (("window M tokens/s", True), ("per-pair M tokens/s", False)):
                st = train_sgns(t, o, n, dim=128, window=5, negatives=5, epochs=1, threads=1, seed=1,
                                shared_negatives=shared)[2]
                if r:
                    res.setdefault((kernel, kind), []).append(st["tokens_per_s"] / 1e6)
            ip, ix = (indptr, indices) if kind == "writable" else (frozen(indptr), frozen(indices))
            t0 = time.process_time()
            fastrp(ip, ix, None, dim=256, threads=1)
            if r:
                res.setdefault(("FastRP CPU-s", kind), []).append(time.process_time() - t0)
    for (what, kind), v in sorted(res.items()):
        print(f"{what:22s} {kind:10s} " + " ".join(f"{x:.3f}" for x in v))


if __name__ == "__main__":
    main()
