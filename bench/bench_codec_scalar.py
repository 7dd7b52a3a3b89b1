"""Scalar codecs (workers/compress/scalar.py) vs Faiss's scalar quantisers, side by side in one process.

Generates n x d random float32 rows (standard normal, seeded), then for each thread count (1 and
all) times, best of `--repeats`:
- ours: encode_fp16 / encode_rowwise(bits=8|4) / encode_binary and their decoders (numba pool set
  with numba.set_num_threads);
- Faiss IndexScalarQuantizer QT_fp16 / QT_8bit / QT_4bit: train (its per-dimension min/max; ours
  needs none, per-row scale/bias is computed while encoding) + sa_encode, and sa_decode (OpenMP
  threads set with faiss.omp_set_num_threads). Binary has no Faiss scalar-quantiser counterpart.
Prints one table and the ratios ours / Faiss (< 1: ours is faster), then one JSON line.

Caveat: Faiss QT_8bit / QT_4bit use one min/max per dimension trained on the data, ours one
scale/bias per row (FBGEMM's layout); bytes per vector differ by ours' 4-8 header bytes.

    .venv/bin/python bench/bench_codec_scalar.py [--n 1000000] [--d 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        out = None
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss
    import numba

    from embedlake.workers.compress import scalar as cs

    X = np.random.default_rng(args.seed).standard_normal((args.n, args.d), dtype=np.float32)
    d = args.d
    ours = {
        "fp16": (lambda A: cs.encode_fp16(A), lambda c: cs.decode_fp16(c, d)),
        "int8": (lambda A: cs.encode_rowwise(A, 8), lambda c: cs.decode_rowwise(c, 8, d)),
        "int4": (lambda A: cs.encode_rowwise(A, 4), lambda c: cs.decode_rowwise(c, 4, d)),
        "binary": (lambda A: cs.encode_binary(A), lambda c: cs.decode_binary(c, d)),
    }
    qtypes = {"fp16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit,
              "int4": faiss.ScalarQuantizer.QT_4bit}
    for enc, dec in ours.values():          # compile / load the numba cache outside the timings
        dec(enc(X[:1000]))

    all_threads = numba.config.NUMBA_NUM_THREADS
    rows, summary = [], {"n": args.n, "d": d, "repeats": args.repeats, "cpus": os.cpu_count(), "results": []}
    for threads in sorted({1, all_threads}):
        numba.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        for name, (enc, dec) in ours.items():
            t_enc, cols = best(lambda: enc(X), args.repeats)
            t_dec, _ = best(lambda: dec(cols), args.repeats)
            nbytes = sum(v.nbytes for v in cols.values()) / args.n
            del cols
            r = {"codec": name, "threads": threads, "bytes_per_vec": nbytes,
                 "ours_encode_s": t_enc, "ours_decode_s": t_dec}
            if name in qtypes:
                def build():
                    idx = faiss.IndexScalarQuantizer(d, qtypes[name], faiss.METRIC_L2)
                    idx.train(X)
                    return idx
                t_train, idx = best(build, args.repeats)
                t_fenc, codes = best(lambda: idx.sa_encode(X), args.repeats)
                t_fdec, _ = best(lambda: idx.sa_decode(codes), args.repeats)
                r.update(faiss_bytes_per_vec=codes.shape[1], faiss_train_s=t_train, faiss_encode_s=t_fenc,
                         faiss_decode_s=t_fdec,
                         ratio_encode=t_enc / (t_train + t_fenc), ratio_encode_only=t_enc / t_fenc,
                         ratio_decode=t_dec / t_fdec)
                del codes, idx
            summary["results"].append(r)
            rows.append(r)

    print(f"{args.n} x {d} float32, best of {args.repeats}, seconds; ratio = ours / Faiss (< 1: ours faster); "
          f"Faiss encode = train + sa_encode")
    hdr = (f"{'codec':7s}{'thr':>4s}{'B/vec':>7s} | {'ours enc':>9s}{'faiss trn+enc':>15s}{'ratio':>7s}"
           f"{'(enc only)':>11s} | {'ours dec':>9s}{'faiss dec':>10s}{'ratio':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if "faiss_encode_s" in r:
            f = (f"{r['faiss_train_s']:.3f}+{r['faiss_encode_s']:.3f}".rjust(15) + f"{r['ratio_encode']:7.2f}"
                 + f"{r['ratio_encode_only']:11.2f} | {r['ours_decode_s']:9.3f}{r['faiss_decode_s']:10.3f}"
                 + f"{r['ratio_decode']:7.2f}")
        else:
            f = f"{'n/a':>15s}{'':7s}{'':11s} | {r['ours_decode_s']:9.3f}{'n/a':>10s}"
        print(f"{r['codec']:7s}{r['threads']:4d}{r['bytes_per_vec']:7.1f} | {r['ours_encode_s']:9.3f}{f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
