"""Compressed tables vs Faiss, side by side in one run.

Part 1, BlogCatalog DeepWalk vectors (d=128, from a committed run; made with the embed_graph flow
when the lake has none): per codec, bytes per vector, ratio, recall@10, node-classification
Micro-F1 change, build and decode time; next to Faiss IndexPQ 16x8 (L2, exactly as
../shared/bench/peers.py builds it, and inner product), Faiss OPQ16,PQ16, and Faiss's scalar
quantisers (fp16, 8-bit, 4-bit) and LSH (sign bits).

Recall protocol (peers.py's): L2-normalised vectors, the first `--queries` rows as queries, exact
top-10 by inner product (= cosine), the query itself removed from both lists (if it is not in an
approximate list, its last entry is dropped instead), queries stay exact (asymmetric search). The
same function scores every method.

Part 2, `--big` generated clustered vectors (default 1M x 128): build time per codec, ours in
process with one thread vs the matching Faiss index (train + add) with one thread.

Part 3, `--learned`: the learned tables (hash, compose, qr, unified) built by the pipeline's
compress flow from the same committed run (they retrain from its graph with its walk / train
settings, at `--learned-ratio` x fewer float parameters); Micro-F1 at each label ratio next to the
full table's on the same splits. (Faiss has no learned-table counterpart.)

    .venv/bin/python bench/bench_compress.py [--lake DIR] [--from blogcatalog/deepwalk] [--big 1000000]
    .venv/bin/python bench/bench_compress.py --skip-part1 --big 0 --learned
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def ensure_source(lake: str, source: str) -> None:
    from embedlake.lake import Lake
    ds, method = source.split("/")[:2]
    if Lake(lake).manifests(ds, method):
        return
    print(f"no committed {source} in {lake}: running embed_graph on BlogCatalog (d=128)...", file=sys.stderr)
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    d = SHARED / "datasets" / "blogcatalog"
    embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={d / 'edges.tsv'}",
                                   f"input.labels={d / 'labels.tsv'}", "eval.repeats=1", f"method={method}"]))


def no_polysemous(idx) -> None:
    """Faiss IndexPQ trains a polysemous code ordering by default (for Hamming pre-filtering);
    our codecs do not, so timings compare PQ training alone unless noted."""
    import faiss
    inner = faiss.downcast_index(idx.index) if isinstance(idx, faiss.IndexPreTransform) else idx
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def unit(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def neighbours_without_self(I, q_ids, k=10):
    out = np.empty((I.shape[0], k), dtype=np.int64)
    for a, row in enumerate(I):
        row = [int(x) for x in row if x != q_ids[a] and x >= 0]
        out[a] = row[:k]
    return out


def recall(exact, approx):
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact, approx)]))


def ours_topk(table, Xq, q_ids, k=10, rerank=None, candidates=100):
    S = table.rerank_scores(Xq, rerank, candidates) if rerank is not None else table.scores(Xq)
    S[np.arange(len(q_ids)), q_ids] = -np.inf
    part = np.argpartition(-S, k, axis=1)[:, :k + 1]
    order = np.argsort(-np.take_along_axis(S, part, 1), axis=1)
    return neighbours_without_self(np.take_along_axis(part, order, 1), q_ids, k)


def faiss_topk(index, Xq, q_ids, k=10):
    _, I = index.search(Xq, k + 1)
    return neighbours_without_self(I, q_ids, k)


def part1(args) -> dict:
    import faiss

    import embedlake
    from embedlake.lake import Lake
    from embedlake.config import CompressConfig
    from embedlake.workers.compress import codecs as cz
    from embedlake.workers.compress.store import load_labels
    from embedlake.workers.evaluate.classify import node_classification
    faiss.omp_set_num_threads(1)
    ensure_source(args.lake, args.source)
    ds, method = args.source.split("/")[:2]
    man = Lake(args.lake).manifest(ds, method)
    ids, X = embedlake.load_matrix(args.lake, ds, method, man.run_id)
    labels = load_labels(args.lake, ds, man.extra.get("graph"), ids)
    n, d = X.shape
    Xn = np.ascontiguousarray(unit(X), dtype=np.float32)
    q_ids = np.arange(min(args.queries, n))
    flat = faiss.IndexFlatIP(d)
    flat.add(Xn)
    exact = faiss_topk(flat, Xn[q_ids], q_ids)
    nc_kw = dict(ratios=(0.1, 0.5, 0.9), repeats=args.repeats, seed=0)
    base = node_classification(X, labels[0], labels[1], **nc_kw) if labels is not None else None
    rows = []

    def add(name, impl, bpv, build_s, approx, decoded=None, decode_s=None, extra=None):
        r = {"codec": name, "impl": impl, "bytes_per_vector": bpv, "ratio": round(4 * d / bpv, 2),
             "recall_at_10": round(recall(exact, approx), 4), "build_s": round(build_s, 3)}
        if decode_s is not None:
            r["decode_s"] = round(decode_s, 4)
        if decoded is not None and base is not None:
            nc = node_classification(decoded, labels[0], labels[1], **nc_kw)
            r["micro_f1_change"] = {k: round(nc["micro_f1"][k] - base["micro_f1"][k], 4) for k in nc["micro_f1"]}
        r.update(extra or {})
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)

    ours = {}
    for name in ("fp16", "int8", "int4", "binary", "pq", "opq", "lowrank"):
        p = cz.codec_params(name, CompressConfig(lowrank_dim=32, opq_method="eigen"))
        t, tm = cz.build(name, X, p, threads=1)
        t0 = time.perf_counter()
        D = cz.decode(name, t.cols, t.state, t.params, d)
        dec = time.perf_counter() - t0
        t._decoded = D
        ours[name] = t
        add(name, "embedlake", t.bytes_per_vector, tm["fit_s"] + tm["encode_s"], ours_topk(t, X[q_ids], q_ids),
            D, dec)
    add("binary+int8 rescoring", "embedlake", ours["binary"].bytes_per_vector, 0.0,
        ours_topk(ours["binary"], X[q_ids], q_ids, rerank=ours["int8"], candidates=100),
        extra={"note": "Hamming top-100, re-scored against the int8 table (its bytes not counted)"})
    p = cz.codec_params("opq", CompressConfig(opq_method="faiss", opq_iter=20))
    t, tm = cz.build("opq", X, p, threads=1)
    add("opq (Faiss OPQMatrix rotation, 20 it)", "embedlake", t.bytes_per_vector, tm["fit_s"] + tm["encode_s"],
        ours_topk(t, X[q_ids], q_ids), t.decode())

    # Faiss, same data, same recall function
    def fx(name, factory, metric, bpv, data=Xn, decodable=True, polysemous=False):
        t0 = time.perf_counter()
        idx = faiss.index_factory(d, factory, metric)
        if not polysemous:
            no_polysemous(idx)
        idx.train(data)
        idx.add(data)
        b = time.perf_counter() - t0
        D = None
        dec = None
        if decodable:
            t1 = time.perf_counter()
            D = idx.reconstruct_n(0, n)
            dec = time.perf_counter() - t1
        add(name, "faiss", bpv, b, faiss_topk(idx, Xn[q_ids], q_ids), D, dec)
    L2, IP = faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT
    fx("IndexPQ 16x8 (L2, as peers.py)", "PQ16", L2, 16, polysemous=True)   # build incl. polysemous training
    fx("IndexPQ 16x8 (L2, no polysemous)", "PQ16", L2, 16)
    fx("IndexPQ 16x8 (IP)", "PQ16", IP, 16)
    fx("OPQ16,PQ16 (L2)", "OPQ16,PQ16", L2, 16)
    fx("SQfp16", "SQfp16", IP, 2 * d)
    fx("SQ8 (per-dimension range)", "SQ8", IP, d)
    fx("SQ4 (per-dimension range)", "SQ4", IP, d // 2)
    t0 = time.perf_counter()
    lsh = faiss.IndexLSH(d, d, False, False)    # sign bits of the raw coordinates, Hamming search
    lsh.train(Xn)
    lsh.add(Xn)
    add("IndexLSH sign bits", "faiss", d // 8, time.perf_counter() - t0, faiss_topk(lsh, Xn[q_ids], q_ids))
    return {"dataset": ds, "source_run": man.run_id, "rows": n, "dim": d, "queries": int(len(q_ids)),
            "baseline_micro_f1": base["micro_f1"] if base else None, "rows_out": rows}


def part2(args) -> dict:
    import faiss

    from embedlake.workers.compress import codecs as cz
    faiss.omp_set_num_threads(1)
    n, d = args.big, 128
    rng = np.random.default_rng(0)
    C = rng.standard_normal((1000, d)).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        X[i:i + m] = C[rng.integers(0, 1000, m)] + 0.5 * rng.standard_normal((m, d)).astype(np.float32)
    out = []
    cz.build("int8", X[:10])        # compile numba kernels outside the timings
    cz.build("int4", X[:10])
    for name in args.big_codecs.split(","):
        p = cz.codec_params(name)
        t, tm = cz.build(name, X, p, threads=1)
        t0 = time.perf_counter()
        cz.decode(name, t.cols, t.state, t.params, d)
        r = {"codec": name, "impl": "embedlake", "fit_s": round(tm["fit_s"], 3), "encode_s": round(tm["encode_s"], 3),
             "build_s": round(tm["fit_s"] + tm["encode_s"], 3), "decode_s": round(time.perf_counter() - t0, 3),
             "train_sample": p.get("train_sample")}
        out.append(r)
        print(json.dumps(r), file=sys.stderr)
        del t
    Xn = unit(X) if "pq" in args.big_codecs else None
    faiss_eq = {"fp16": ("SQfp16", X), "int8": ("SQ8", X), "int4": ("SQ4", X), "pq": ("PQ16", Xn),
                "opq": ("OPQ16,PQ16", Xn)}
    for name in args.big_codecs.split(","):
        if name not in faiss_eq or (name == "opq" and not args.big_faiss_opq):
            continue
        fac, data = faiss_eq[name]
        t0 = time.perf_counter()
        idx = faiss.index_factory(d, fac, faiss.METRIC_INNER_PRODUCT)
        no_polysemous(idx)      # codes only, like ours
        idx.train(data)
        t1 = time.perf_counter()
        idx.add(data)
        t2 = time.perf_counter()
        r = {"codec": name, "impl": f"faiss {fac}", "fit_s": round(t1 - t0, 3), "encode_s": round(t2 - t1, 3),
             "build_s": round(t2 - t0, 3)}
        out.append(r)
        print(json.dumps(r), file=sys.stderr)
        del idx
    return {"rows": n, "dim": d, "threads": 1, "rows_out": out}


def part3(args) -> dict:
    """Learned compositional tables through the compress flow; F1 next to the full table's."""
    from embedlake.config import load_config
    from embedlake.flows.compress import compress
    from embedlake.lake import Lake
    ensure_source(args.lake, args.source)
    codecs = args.learned_codecs.split(",")
    cfg = load_config(None, [f"lake.uri={args.lake}", f"compress.codecs={json.dumps(codecs)}",
                             f"compress.compose_ratio={args.learned_ratio}", f"eval.repeats={args.repeats}"])
    s = compress(cfg, source=args.source)
    ds, method = args.source.split("/")[:2]
    lake = Lake(args.lake)
    rows = []
    for codec, t in s["tables"].items():
        m = lake.manifest(ds, t["method"], s["run_id"])
        p = m.extra["params"]
        K = p.get("table_rows") or p.get("buckets")
        base = m.metrics.get("baseline_node_classification", {}).get("micro_f1", {})
        got = m.metrics.get("node_classification", {}).get("micro_f1", {})
        rows.append({"codec": codec, "table_rows": K, "param_ratio": round(s["rows"] / K, 3),
                     "bytes_per_vector": t["bytes_per_vector"], "byte_ratio": t["ratio"], "build_s": t["build_s"],
                     "micro_f1": {k: round(v, 4) for k, v in got.items()},
                     "full_micro_f1": {k: round(v, 4) for k, v in base.items()},
                     "micro_f1_change": m.metrics.get("micro_f1_change")})
    return {"dataset": ds, "rows": s["rows"], "dim": s["dim"], "run_id": s["run_id"], "rows_out": rows}


def print_learned(p3: dict) -> None:
    w = sys.stderr.write
    w(f"\nlearned tables, {p3['dataset']} {p3['rows']} x {p3['dim']} (params ratio = n / K rows)\n")
    w(f"{'codec':<10}{'K rows':>8}{'params x':>10}{'B/vec':>7}{'bytes x':>9}{'build':>9}   Micro-F1 (full) at 10/50/90 %\n")
    for r in p3["rows_out"]:
        f = "  ".join(f"{r['micro_f1'].get(k, float('nan')):.4f} ({r['full_micro_f1'].get(k, float('nan')):.4f})"
                      for k in ("0.1", "0.5", "0.9"))
        w(f"{r['codec']:<10}{r['table_rows']:>8}{r['param_ratio']:>10.2f}{r['bytes_per_vector']:>7}"
          f"{r['byte_ratio']:>9.2f}{r['build_s']:>8.1f}s   {f}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", default="/tmp/embedlake-bench-compress/lake")
    ap.add_argument("--from", dest="source", default="blogcatalog/deepwalk")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="node-classification splits per ratio")
    ap.add_argument("--big", type=int, default=1_000_000, help="rows of the generated build-time table (0 = skip)")
    ap.add_argument("--big-codecs", default="fp16,int8,int4,binary,pq,opq,lowrank")
    ap.add_argument("--big-faiss-opq", action="store_true", help="also time Faiss OPQ16,PQ16 on the big table (slow)")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--learned", action="store_true", help="part 3: learned tables (retrain from the graph)")
    ap.add_argument("--learned-codecs", default="hash,compose,qr,unified")
    ap.add_argument("--learned-ratio", type=float, default=8.0, help="x fewer float parameters than the full table")
    args = ap.parse_args()
    from embedlake.tasks.runtime import configure_env
    configure_env()
    res = {"cpus": os.cpu_count()}
    if not args.skip_part1:
        res["blogcatalog"] = part1(args)
        print_table(res["blogcatalog"])
    if args.big:
        res["build_1m"] = part2(args)
        for r in res["build_1m"]["rows_out"]:
            print(f"  {r['impl']:<22}{r['codec']:<9} fit {r['fit_s']:>8.2f}s  encode {r['encode_s']:>7.2f}s  "
                  f"build {r['build_s']:>8.2f}s", file=sys.stderr)
    if args.learned:
        res["learned"] = part3(args)
        print_learned(res["learned"])
    print(json.dumps(res))


def print_table(p1: dict) -> None:
    w = sys.stderr.write
    w(f"\n{p1['dataset']} {p1['rows']} x {p1['dim']}, recall@10 over {p1['queries']} queries "
      f"(baseline Micro-F1 {p1['baseline_micro_f1']})\n")
    w(f"{'method':<40}{'impl':<11}{'B/vec':>6}{'ratio':>7}{'R@10':>8}{'dMicroF1(max|.|)':>18}{'build':>9}{'decode':>9}\n")
    for r in p1["rows_out"]:
        f1 = r.get("micro_f1_change")
        df = f"{max(f1.values(), key=abs):+.4f}" if f1 else "-"
        dec = f"{r['decode_s']:.3f}s" if r.get("decode_s") is not None else "-"
        w(f"{r['codec']:<40}{r['impl']:<11}{r['bytes_per_vector']:>6}{r['ratio']:>7.2f}{r['recall_at_10']:>8.3f}"
          f"{df:>18}{r['build_s']:>8.2f}s{dec:>9}\n")


if __name__ == "__main__":
    main()
