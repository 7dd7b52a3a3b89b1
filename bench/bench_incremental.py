"""Incremental runs against full retrains (issue 18), through the embed_graph flow.

For each dataset and each kept share s (0.95, 0.99): version 1 holds a seeded random s of the
edges, version 2 all of them. In one process (one Ray, one machine state):
  1. full run on v1 (lake A);   2. incremental run v1 -> v2 (lake A);
  3. full retrain on v2 (lake B, after a full run on v1 there too: same starting state).
Figures: the stage times of the table (full: walk + train; incremental: diff + update),
their ratio; Micro-F1 at 10/50/90 % (DeepWalk protocol, --repeats splits) of both v2 tables;
ROC-AUC of the added edges against as many sampled non-edges of v2 (`link_auc`: the
pipeline's Hadamard logistic-regression scorer, and dot and cosine); a classifier trained
on v1's vectors (50 % split) scored on v2's: the drop against scoring v1's own vectors, for the
incremental table and the full retrain without and with an orthogonal Procrustes alignment to v1.
Sweep (--sweep '[{"incremental_lr_scale": 0.2}, {}]'): the same v1 / v2, no flow: full tables
trained in this process, then the update (workers/train/incremental.update_tables) once per
settings dict; Micro-F1, added-edge AUC, tokens and CPU seconds of each against the retrains'.
Chain (--chain 10): v0 = 90 % of the edges (full run), then ten versions each adding 1 % of the
edges back, each run incremental; Micro-F1 at 50 % of the tenth against a full retrain of it.

usage: .venv/bin/python bench/bench_incremental.py [--datasets blogcatalog,ppi] [--keep 0.95,0.99]
       [--chain 10] [--chain-datasets blogcatalog] [--radius 1] [--repeats 3] [--retrain-seeds 3]
       [--out bench_incremental.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TABLE_STAGES = {"full": ("walk", "train"), "incremental": ("diff", "update")}


def read_edges(ds: Path) -> tuple[str, np.ndarray]:
    lines = (ds / "edges.tsv").read_text().splitlines()
    return lines[0], np.array([ln.split("\t")[:2] for ln in lines[1:]], dtype=np.int64)


def write_version(folder: Path, header: str, edges: np.ndarray, num_nodes: int) -> Path:
    """An edge file of one version (stats.json with the node count: int ids keep isolated nodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edges.tsv").write_text(header + "\n" + "\n".join(f"{a}\t{b}" for a, b in edges) + "\n")
    (folder / "stats.json").write_text(json.dumps({"num_nodes": int(num_nodes)}))
    return folder / "edges.tsv"


def run_flow(lake: Path, edges: Path, dataset: str, extra: list[str]) -> dict:
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    ov = [f"lake.uri={lake}", f"input.edges={edges}", f"lake.dataset={dataset}", "eval.align_to_previous=false",
          "eval.artifacts=false", "eval.reconstruction=false", *extra]
    t0, cpu0 = time.perf_counter(), tree_cpu()
    s = embed_graph(load_config(None, ov))
    s["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    s["bench_cpu_s"] = cpu_since(cpu0)
    return s


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and its descendants (Ray's raylet and workers), by pid."""
    import psutil
    out = {}
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the process tree spent since `before` (a process gone since then is not counted;
    Ray keeps its workers, so a run's own work is): the whole run, every stage, on every core."""
    now = tree_cpu()
    return round(sum(t - before.get(pid, 0.0) for pid, t in now.items()), 2)


def table_seconds(s: dict, clock: str = "wall_s") -> float:
    """The stage seconds of the run's table (TABLE_STAGES of its kind): wall, or with clock="cpu_s"
    the process tree's CPU seconds over those stages (`stage_cpu_clock`)."""
    kind = (s.get("run_kind") or {}).get("kind", "full")
    return round(sum(s["stages"].get(k, {}).get(clock, 0.0) for k in TABLE_STAGES[kind]), 3)


@contextmanager
def stage_cpu_clock():
    """Adds `cpu_s` to every stage the flows in this process time: CPU seconds (user + system) of
    this process and its descendants (Ray's raylet and workers) over the stage. On a machine shared
    with other jobs the wall seconds of a stage follow the load (the update stage of one BlogCatalog
    5 % run sat 14.4 s wall on under 2 s of CPU), its CPU seconds follow its work, so the stage
    ratio is given in both. Bench instrumentation only: it wraps tasks/run.Stopwatch.run while the
    bench runs and restores it after."""
    from embedlake.tasks.run import Stopwatch
    wall_only = Stopwatch.run

    def run_with_cpu(self, name, fn, *args, **kwargs):
        before = tree_cpu()
        out = wall_only(self, name, fn, *args, **kwargs)
        self.stages[name]["cpu_s"] = cpu_since(before)
        return out
    Stopwatch.run = run_with_cpu
    try:
        yield
    finally:
        Stopwatch.run = wall_only


def vectors(lake: Path, dataset: str, run_id: str, n: int) -> np.ndarray:
    """The run's table as rows 0..n-1 by (int) node id."""
    from embedlake.lake import Lake
    from embedlake.workers.train.incremental import read_table
    man = Lake(str(lake)).manifest(dataset, "deepwalk", run_id)
    ids, X = read_table(Lake(str(lake)), man.files["embeddings"])
    out = np.zeros((n, X.shape[1]), dtype=np.float32)
    out[ids.astype(np.int64)] = X
    return out


def labels_of(ds: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [ln.split("\t")[:2] for ln in (ds / "labels.tsv").read_text().splitlines()[1:]]
    a = np.array(rows, dtype=np.int64)
    return a[:, 0], a[:, 1]


def micro_f1(X: np.ndarray, labels, repeats: int) -> dict:
    from embedlake.workers.evaluate.classify import node_classification
    nc = node_classification(X, labels[0], labels[1], ratios=(0.1, 0.5, 0.9), repeats=repeats, threads=None)
    return {str(k): round(float(v), 4) for k, v in nc["micro_f1"].items()}


LINK_SCORES = ("hadamard", "dot", "cosine")


def link_auc(X: np.ndarray, added: np.ndarray, full_edges: np.ndarray, n: int, seed: int = 0) -> dict:
    """ROC-AUC of the added edges against as many uniform non-edges of the full graph, by the
    pipeline's link-prediction scorer (workers/evaluate/links.link_prediction: Hadamard features
    into a 2-fold cross-fitted logistic regression, the eval.link_prediction default's first
    operator) and by the direct dot and cosine scores."""
    from embedlake.workers.evaluate.links import link_prediction, sample_non_edges
    from embedlake.workers.graph.csr import build_csr
    g = build_csr(full_edges[:, 0], full_edges[:, 1], n)
    neg = sample_non_edges(g.indptr, g.indices, len(added), seed)
    lp = link_prediction(X, added[:, 0], added[:, 1], neg[0], neg[1], operators=LINK_SCORES, seed=seed, threads=None)
    return {k: round(float(v), 4) for k, v in lp["roc_auc"].items()}


def hadamard_draws(X: np.ndarray, added: np.ndarray, full_edges: np.ndarray, n: int, draws: int) -> dict:
    """The pipeline's Hadamard AUC of the added edges over `draws` seeded non-edge samples and
    cross-fitting splits: with a few hundred added edges one draw is noisy, so the mean and the
    spread say whether a gap to the retrains is more than that noise."""
    from embedlake.workers.evaluate.links import link_prediction, sample_non_edges
    from embedlake.workers.graph.csr import build_csr
    g = build_csr(full_edges[:, 0], full_edges[:, 1], n)
    aucs = []
    for seed in range(draws):
        neg = sample_non_edges(g.indptr, g.indices, len(added), seed)
        lp = link_prediction(X, added[:, 0], added[:, 1], neg[0], neg[1], operators=("hadamard",), seed=seed,
                             threads=None)
        aucs.append(float(lp["roc_auc"]["hadamard"]))
    return {"mean": round(float(np.mean(aucs)), 4), "min": round(min(aucs), 4), "max": round(max(aucs), 4),
            "sd": round(float(np.std(aucs)), 4), "draws": draws}


def retrain_seeds(lake: Path, edges: Path, name: str, extra: list[str], seeds: int, n: int) -> list[np.ndarray]:
    """Tables of `seeds` - 1 more full retrains of the same graph (train.seed = 1, 2, ...): the
    retrain's own spread, which the incremental run's figures are judged against."""
    out = []
    for s in range(1, seeds):
        run = run_flow(lake / f"seed{s}", edges, name, extra + ["train.incremental=off", f"train.seed={s}"])
        out.append(vectors(lake / f"seed{s}", name, run["run_id"], n))
    return out


def retrain_spread(tables: list[np.ndarray], labels, repeats: int, added: np.ndarray, edges: np.ndarray,
                   n: int) -> dict:
    """Micro-F1 and added-edge AUC of every retrain table, and their means."""
    f1 = [micro_f1(X, labels, repeats) for X in tables]
    auc = [link_auc(X, added, edges, n) for X in tables]
    return {"micro_f1": f1, "auc": auc,
            "micro_f1_mean": {k: round(float(np.mean([f[k] for f in f1])), 4) for k in f1[0]},
            "auc_mean": {k: round(float(np.mean([a[k] for a in auc])), 4) for k in auc[0]}}


def procrustes(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """X rotated onto ref (orthogonal Procrustes over every row)."""
    u, _, vt = np.linalg.svd(X.astype(np.float64).T @ ref.astype(np.float64))
    return (X @ (u @ vt)).astype(np.float32)


def transfer_f1(X1: np.ndarray, X2: np.ndarray, labels, seed: int = 0) -> dict:
    """A classifier fitted on v1's rows of a 50 % split, scored on the test rows of v1 and of v2:
    Micro-F1 of both and the drop."""
    from embedlake.workers.evaluate.classify import classify_split, label_matrix, split_permutation
    nodes, _, Y = label_matrix(*labels)
    perm = split_permutation(len(nodes), seed)
    tr, te = perm[: len(perm) // 2], perm[len(perm) // 2:]

    def unit(X):
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    A, B = unit(X1[nodes]), unit(X2[nodes])
    own = classify_split(A[tr], Y[tr], A[te], Y[te], multilabel=True, tol=1e-3)[0]
    moved = classify_split(A[tr], Y[tr], B[te], Y[te], multilabel=True, tol=1e-3)[0]
    return {"v1": round(own, 4), "v2": round(moved, 4), "drop": round(own - moved, 4)}


def pair_figures(ds: Path, name: str, keep: float, work: Path, extra: list[str], repeats: int, seeds: int = 1
                 ) -> dict:
    """v1 = keep of the edges, v2 = all: full v1, incremental v1 -> v2, full v2 (see the module doc)."""
    header, edges = read_edges(ds)
    n = int(json.loads((ds / "stats.json").read_text())["num_nodes"])
    rng = np.random.default_rng(int(keep * 1000))
    mask = rng.random(len(edges)) < keep
    v1 = write_version(work / f"{name}-{keep}-v1", header, edges[mask], n)
    v2 = write_version(work / f"{name}-{keep}-v2", header, edges, n)
    lake_a, lake_b = work / f"{name}-{keep}-A", work / f"{name}-{keep}-B"
    s1 = run_flow(lake_a, v1, name, extra)
    inc = run_flow(lake_a, v2, name, extra)
    s1b = run_flow(lake_b, v1, name, extra)
    full = run_flow(lake_b, v2, name, extra + ["train.incremental=off"])
    X1, Xi = vectors(lake_a, name, s1["run_id"], n), vectors(lake_a, name, inc["run_id"], n)
    X1b, Xf = vectors(lake_b, name, s1b["run_id"], n), vectors(lake_b, name, full["run_id"], n)
    labels = labels_of(ds)
    ti, tf = table_seconds(inc), table_seconds(full)
    spread = retrain_spread([Xf, *retrain_seeds(work / f"{name}-{keep}-seeds", v2, name, extra, seeds, n)], labels,
                            repeats, edges[~mask], edges, n) if seeds > 1 else None
    return {
        "dataset": name, "keep": keep, "edges_v1": int(mask.sum()), "edges_v2": len(edges),
        "incremental": inc["run_kind"], "full_kind": full["run_kind"]["kind"],
        "cpu_s": {"incremental": inc["bench_cpu_s"], "full": full["bench_cpu_s"],
                  "ratio": round(inc["bench_cpu_s"] / full["bench_cpu_s"], 4) if full["bench_cpu_s"] else None},
        "seconds": {"incremental": ti, "full": tf, "ratio": round(ti / tf, 4) if tf else None,
                    "incremental_stages": inc["stages"], "full_stages": full["stages"]},
        "stage_cpu_s": ratio_of(table_seconds(inc, "cpu_s"), table_seconds(full, "cpu_s")),
        "micro_f1": {"incremental": micro_f1(Xi, labels, repeats), "full": micro_f1(Xf, labels, repeats)},
        "added_edge_auc": {"incremental": link_auc(Xi, edges[~mask], edges, n),
                           "full": link_auc(Xf, edges[~mask], edges, n),
                           "v1": link_auc(X1, edges[~mask], edges, n)},
        "transfer": {"incremental": transfer_f1(X1, Xi, labels), "full": transfer_f1(X1b, Xf, labels),
                     "full_aligned": transfer_f1(X1b, procrustes(Xf, X1b), labels)},
        "retrain_seeds": spread,
    }


def ratio_of(incremental: float, full: float) -> dict:
    return {"incremental": incremental, "full": full, "ratio": round(incremental / full, 4) if full else None}


def chain_figures(ds: Path, name: str, steps: int, work: Path, extra: list[str], repeats: int) -> dict:
    """v0 = 90 % of the edges, then `steps` versions adding 1 % each back, every run incremental;
    Micro-F1 of the last against a full retrain of it."""
    header, edges = read_edges(ds)
    n = int(json.loads((ds / "stats.json").read_text())["num_nodes"])
    order = np.random.default_rng(7).permutation(len(edges))
    start, step = len(edges) - steps * (len(edges) // 100), len(edges) // 100
    lake = work / f"{name}-chain"
    runs = [run_flow(lake, write_version(work / f"{name}-c0", header, edges[order[:start]], n), name, extra)]
    for i in range(1, steps + 1):
        cut = start + i * step
        runs.append(run_flow(lake, write_version(work / f"{name}-c{i}", header, edges[order[:cut]], n), name, extra))
    last_edges = work / f"{name}-c{steps}" / "edges.tsv"
    full = run_flow(work / f"{name}-chain-full", last_edges, name, extra + ["train.incremental=off"])
    labels = labels_of(ds)
    Xi, Xf = vectors(lake, name, runs[-1]["run_id"], n), vectors(work / f"{name}-chain-full", name, full["run_id"], n)
    return {"dataset": name, "steps": steps, "kinds": [r["run_kind"]["kind"] for r in runs],
            "change": [r["run_kind"].get("change_fraction") for r in runs[1:]],
            "seconds": {"incremental": [table_seconds(r) for r in runs[1:]], "full": table_seconds(full)},
            "stage_cpu_s": {"incremental": [table_seconds(r, "cpu_s") for r in runs[1:]],
                            "full": table_seconds(full, "cpu_s")},
            "cpu_s": {"incremental": [r["bench_cpu_s"] for r in runs[1:]], "full": full["bench_cpu_s"]},
            "micro_f1_last": {"incremental": micro_f1(Xi, labels, repeats), "full": micro_f1(Xf, labels, repeats)}}


def in_process_table(g, walk, train, seed: int, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(W_in, W_out, CPU seconds) of a full run's walk + train stages, in this process: all walks
    of every node interleaved by walk number, as the flow's one-table engine trains them."""
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    from embedlake.workers.train.skipgram import train_sgns
    from embedlake.workers.train.stages import sgns_settings
    t0 = time.process_time()
    walks = random_walks(g.indptr, g.indices, None, np.arange(g.num_nodes), walk.walks_per_node, walk.length, walk.seed,
                         threads=threads)
    tokens, offsets = walks_to_sentences(walks)
    W_in, W_out, _ = train_sgns(tokens, offsets, g.num_nodes, threads=threads,
                                **{**sgns_settings(train), "seed": seed})
    return W_in, W_out, round(time.process_time() - t0, 2)


def sweep_figures(ds: Path, name: str, keep: float, variants: list[dict], seeds: int, repeats: int,
                  threads: int, auc_draws: int = 1) -> dict:
    """Update settings compared without the flow: v1 / v2 as in `pair_figures`, the full tables
    trained here (v2 with train.seed 0 .. seeds-1), then workers/train/incremental.update_tables,
    the very update a run does, once per variant (a dict of train.* fields) from v1's tables."""
    from embedlake.config import TrainConfig, WalkConfig
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.diff import graph_diff
    from embedlake.workers.train.incremental import update_tables
    _, edges = read_edges(ds)
    n = int(json.loads((ds / "stats.json").read_text())["num_nodes"])
    mask = np.random.default_rng(int(keep * 1000)).random(len(edges)) < keep
    g1, g2 = build_csr(edges[mask, 0], edges[mask, 1], n), build_csr(edges[:, 0], edges[:, 1], n)
    walk, labels, added = WalkConfig(), labels_of(ds), edges[~mask]
    W1, O1, _ = in_process_table(g1, walk, TrainConfig(), 0, threads)
    full = [in_process_table(g2, walk, TrainConfig(), s, threads) for s in range(max(1, seeds))]
    spread = retrain_spread([f[0] for f in full], labels, repeats, added, edges, n)
    out = {"dataset": name, "keep": keep, "retrain": {**spread, "cpu_s": [f[2] for f in full],
           "auc_draws": [hadamard_draws(f[0], added, edges, n, auc_draws) for f in full],
           "transfer": [transfer_f1(W1, f[0], labels) for f in full],
           "transfer_aligned": [transfer_f1(W1, procrustes(f[0], W1), labels) for f in full]}, "variants": []}
    print(json.dumps({"retrain": {k: out["retrain"][k] for k in ("micro_f1", "auc", "auc_draws", "transfer",
                                                                  "transfer_aligned")}}), flush=True)
    diff = graph_diff(np.arange(n), g1, np.arange(n), g2)
    for v in variants:
        train = TrainConfig(**v)
        t0 = time.process_time()
        X, _, info = update_tables(W1, O1, diff, (g2.indptr, g2.indices, None, False), walk, train, "deepwalk",
                                   train.incremental_radius, threads)
        out["variants"].append({"settings": v, "cpu_s": round(time.process_time() - t0, 2), "tokens": info["tokens"],
                                "edge_walks_per_edge": info["edge_walks_per_edge"], "lr_scale": info["lr_scale"],
                                "micro_f1": micro_f1(X, labels, repeats), "auc": link_auc(X, added, edges, n),
                                "auc_draws": hadamard_draws(X, added, edges, n, auc_draws),
                                "transfer": transfer_f1(W1, X, labels)})
        print(json.dumps(out["variants"][-1]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="blogcatalog,ppi")
    ap.add_argument("--keep", default="0.95,0.99")
    ap.add_argument("--chain", type=int, default=10)
    ap.add_argument("--chain-datasets", default="blogcatalog")
    ap.add_argument("--radius", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--retrain-seeds", type=int, default=1, help="full retrains of v2 (train.seed 0..N-1): "
                    "their spread and means, what the incremental figures are judged against")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (section.key=value)")
    ap.add_argument("--sweep", default=None, help="JSON list of train.* settings dicts: compare update settings "
                    "in this process (no flow, no Ray) against --retrain-seeds in-process retrains")
    ap.add_argument("--threads", type=int, default=2, help="numba threads of --sweep")
    ap.add_argument("--auc-draws", type=int, default=1, help="--sweep: Hadamard AUC over this many seeded "
                    "non-edge draws and splits (mean, min, max, sd)")
    ap.add_argument("--out", default="bench_incremental.json")
    args = ap.parse_args()
    if args.sweep is not None:
        sweeps = [sweep_figures(SHARED / "datasets" / name, name, float(keep), json.loads(args.sweep),
                                args.retrain_seeds, args.repeats, args.threads, args.auc_draws)
                  for name in args.datasets.split(",") if name for keep in args.keep.split(",") if keep]
        Path(args.out).write_text(json.dumps({"sweeps": sweeps}, indent=1))
        return 0
    extra = list(args.set) + ([f"train.incremental_radius={args.radius}"] if args.radius is not None else [])
    out: dict = {"settings": extra, "pairs": [], "chains": []}
    os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / "embedlake-bench-prefect"))
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="elb", dir="/tmp"))   # a private Ray
    from embedlake.tasks.runtime import configure_env
    configure_env()
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180), tempfile.TemporaryDirectory(prefix="bench-inc-") as tmp, \
            stage_cpu_clock():
        work = Path(tmp)
        for name in [d for d in args.datasets.split(",") if d]:
            for keep in [float(k) for k in args.keep.split(",") if k]:
                out["pairs"].append(pair_figures(SHARED / "datasets" / name, name, keep, work, extra, args.repeats,
                                                 args.retrain_seeds))
                print(json.dumps(out["pairs"][-1]), flush=True)
        for name in [d for d in args.chain_datasets.split(",") if d] if args.chain else []:
            out["chains"].append(chain_figures(SHARED / "datasets" / name, name, args.chain, work, extra,
                                               args.repeats))
            print(json.dumps(out["chains"][-1]), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
