"""Scale: ingest -> walks -> training -> int8 compression at 1M, 5M and 20M edges (R-MAT).

Each size runs in its own child process, which measures every stage's wall time and peak RSS
(VmHWM, reset before each stage through /proc/self/clear_refs), so one size cannot inflate the
next. Ingest reads a real TSV file with workers.ingest.ingest_graph (the streaming reader); the
check is that ingest's peak memory above the process baseline stays within 3x the CSR's size.

Settings that keep the 20M run within ~10 minutes on 2 cores: 1 walk per node, length 20,
skip-gram dim 32, window 5, 5 negatives, 1 epoch; average degree ~10 (scale = log2(edges / 10)).

--variant picks the edge list: `int` (src, dst), `weighted` (a third float column, weights in
(0, 10] with 3 decimals; the CSR then holds float32 weights too and walks are weighted) or `str`
(ids written as `n<id>`, read with id_type=str). The CSR size in the ratio is indptr + indices
(+ weights). --stages ingest measures ingest alone (each variant's memory check in ~1/4 the time).

    .venv/bin/python bench/bench_scale.py [--sizes 1e6,5e6,2e7] [--out /tmp/embedlake-scale] [--threads 2]
                                          [--variant int|weighted|str] [--stages ingest]

Writes <out>/scale[-<variant>-<stages>].md (table) and .png (cost vs edges), prints one JSON object with the
figures and the slope (seconds and MiB per million edges) of every stage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from procmem import reset_peak, status_bytes  # noqa: E402  (bench/procmem.py)

STAGES = ("ingest", "walks", "train", "compress")


def _stage(results: dict, name: str, fn, *args, **kw):
    import gc
    gc.collect()
    reset_peak()
    base = status_bytes("VmRSS")
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    wall = time.perf_counter() - t0
    peak = status_bytes("VmHWM")
    results[name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(peak / 2**20, 1),
                     "peak_over_base_mib": round((peak - base) / 2**20, 1)}
    print(f"  {name}: {wall:.1f}s, peak {peak / 2**20:.0f} MiB (+{(peak - base) / 2**20:.0f})", file=sys.stderr,
          flush=True)
    return out


def edge_file(edges: int, workdir: str, variant: str = "int") -> tuple[str, int]:
    """The R-MAT edge list of this size and variant as TSV (written once, reused): (path, scale)."""
    import numpy as np
    import polars as pl

    from embedlake.workers.graph.synthetic import rmat_edges
    scale = max(10, round(math.log2(edges / 10)))
    suffix = "" if variant == "int" else f"-{variant}"
    path = os.path.join(workdir, f"rmat-{edges}{suffix}.tsv")
    if not os.path.exists(path):
        s, d = rmat_edges(scale, edges, seed=1)
        df = pl.DataFrame({"src": s, "dst": d})
        del s, d
        if variant == "weighted":
            w = np.random.default_rng(2).integers(1, 10_001, edges) / 1000.0
            df = df.with_columns(pl.Series("weight", w))
        elif variant == "str":
            df = df.select((pl.lit("n") + pl.col(c).cast(pl.String)).alias(c) for c in ("src", "dst"))
        df.write_csv(path + ".tmp", separator="\t")
        os.replace(path + ".tmp", path)
        del df
    return path, scale


def child(edges: int, workdir: str, threads: int, variant: str = "int", stages: tuple = STAGES) -> dict:
    import numpy as np

    path, scale = edge_file(edges, workdir, variant)
    res: dict = {"edges": edges, "variant": variant, "scale": scale,
                 "file_mib": round(os.path.getsize(path) / 2**20, 1)}

    from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
    spec = EdgeSpec(weighted=variant == "weighted", id_type="str" if variant == "str" else "int")
    g = _stage(res, "ingest", ingest_graph, path, spec)
    csr = g.csr
    res.update(nodes=csr.num_nodes, arcs=csr.num_arcs, csr_mib=round(csr.nbytes / 2**20, 1))
    res["ingest_peak_over_csr"] = round(res["ingest"]["peak_over_base_mib"] / res["csr_mib"], 2)
    del g
    if "walks" not in stages:
        return res

    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    starts = np.arange(csr.num_nodes, dtype=np.int64)
    walks = _stage(res, "walks", random_walks, csr.indptr, csr.indices, csr.weights, starts, 1, 20, 0,
                   mode="deepwalk", threads=threads)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    res["tokens"] = int(tokens.shape[0])

    from embedlake.workers.train.skipgram import train_sgns
    W, _, stats = _stage(res, "train", train_sgns, tokens, offsets, csr.num_nodes, dim=32, window=5, negatives=5,
                         ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0, seed=0, threads=threads)
    del tokens, offsets

    from embedlake.workers.compress import codecs as cw
    table, _ = _stage(res, "compress", cw.build, "int8", W)
    res["int8_bytes_per_vector"] = table.bytes_per_vector
    return res


def _slope(xs, ys) -> float:
    import numpy as np
    A = np.vstack([xs, np.ones(len(xs))]).T
    return float(np.linalg.lstsq(A, ys, rcond=None)[0][0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,5e6,2e7")
    ap.add_argument("--out", default="/tmp/embedlake-scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", choices=("int", "weighted", "str"), default="int")
    ap.add_argument("--stages", choices=("all", "ingest"), default="all")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stages = STAGES if args.stages == "all" else ("ingest",)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.out, args.threads, args.variant, stages)), flush=True)
        return 0
    rows = []
    for size in [int(float(x)) for x in args.sizes.split(",")]:
        print(f"{size:,} edges ({args.variant})", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--out", args.out,
                              "--threads", str(args.threads), "--variant", args.variant, "--stages", args.stages],
                             stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            print(f"child for {size} failed ({out.returncode})", file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    edges = [r["edges"] / 1e6 for r in rows]
    tag = "" if (args.variant, args.stages) == ("int", "all") else f"-{args.variant}-{args.stages}"
    slopes = {st: {"s_per_medge": round(_slope(edges, [r[st]["wall_s"] for r in rows]), 3),
                   "mib_per_medge": round(_slope(edges, [r[st]["peak_over_base_mib"] for r in rows]), 2)}
              for st in stages} if len(rows) > 1 else {}
    md = ["| edges | nodes | arcs | CSR MiB | " + " | ".join(f"{s} s | {s} peak +MiB" for s in stages)
          + " | ingest peak / CSR |",
          "|---" * (5 + 2 * len(stages)) + "|"]
    for r in rows:
        md.append(f"| {r['edges']:,} | {r['nodes']:,} | {r['arcs']:,} | {r['csr_mib']} | "
                  + " | ".join(f"{r[s]['wall_s']} | {r[s]['peak_over_base_mib']}" for s in stages)
                  + f" | {r['ingest_peak_over_csr']} |")
    if slopes:
        md.append("")
        md.append("| stage | s per million edges | peak MiB per million edges |")
        md.append("|---|---|---|")
        md += [f"| {s} | {v['s_per_medge']} | {v['mib_per_medge']} |" for s, v in slopes.items()]
    with open(os.path.join(args.out, f"scale{tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for s in stages:
        a1.plot(edges, [r[s]["wall_s"] for r in rows], "o-", label=s)
        a2.plot(edges, [r[s]["peak_over_base_mib"] for r in rows], "o-", label=s)
    a2.plot(edges, [r["csr_mib"] * 3 for r in rows], "k--", label="3x CSR")
    for a, t in ((a1, "wall time (s)"), (a2, "peak RSS over baseline (MiB)")):
        a.set_xlabel("edges (millions)")
        a.set_ylabel(t)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"scale{tag}.png"), dpi=110)
    print(json.dumps({"rows": rows, "slopes": slopes, "table": os.path.join(args.out, f"scale{tag}.md"),
                      "plot": os.path.join(args.out, f"scale{tag}.png")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
