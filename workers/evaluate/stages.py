"""Evaluation stage bodies run inside Ray workers: plain functions over arrays and lake URIs.

Imports neither Prefect nor Ray (tasks/evaluate.py wraps them). Each evaluation is its own
function so the task can run them side by side on different workers:

- ``holdout_stage``: link-prediction split BEFORE embedding (train CSR + test / non-edge pairs)
- ``classify_stage``, ``link_stage``, ``reconstruct_stage``: the figures of one table
- ``align_stage``: Procrustes alignment onto a previous committed run, stability figures and
  the aligned table written to the lake
- ``metrics_rows`` / ``metrics_from_rows`` / ``write_metrics_table``: the long metrics table

Lake layout written here (all named by the run's record, so nothing is visible before commit):

    metrics/<dataset>/<method>/run_id=<run_id>/part-00000.parquet    files["metrics"]  (Delta table)
    reports/<dataset>/<method>/run_id=<run_id>/report.md, quality.svg    files["report"]   (internal)
    reports/<dataset>/<method>/run_id=<run_id>/rotation.npy             files["rotation"] (internal)
    embeddings/<dataset>/<method>.aligned/run_id=<run_id>/partition=<k>/part-<k>.parquet  files["aligned"]

The aligned table is a Delta table beside (not inside) the run's embeddings table.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa

from embedlake.config import EvalConfig
from embedlake.lake import Lake, embeddings_table, fixed_vectors

ALIGNED_SUFFIX = ".aligned"


# ---------------------------------------------------------------------------------------------
# link-prediction hold-out (before embedding)
# ---------------------------------------------------------------------------------------------

def _arc_weights(indptr, indices, weights, src, dst) -> np.ndarray:
    """Weights of arcs (src, dst) of the CSR: arc keys row * n + col are sorted (rows in order,
    neighbours sorted within each row), so one searchsorted finds them all."""
    n = np.int64(indptr.size - 1)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    keys = rows * n + np.asarray(indices, np.int64)
    return np.asarray(weights, np.float32)[np.searchsorted(keys, src * n + dst)]


def holdout_stage(csr: tuple, test_share: float, seed: int):
    """Split the full graph for link prediction: returns (train CSR tuple, split dict, its info).

    The test edges are removed from the graph that walks / FastRP see; the equal number of
    non-edges is drawn on the FULL graph so a held-out edge is never a negative. Split seed =
    ``seed``, non-edge seed = ``seed + 1``.
    """
    from embedlake.workers.evaluate.links import sample_non_edges, split_edges
    from embedlake.workers.graph.csr import build_csr
    t0 = time.perf_counter()
    indptr, indices, weights, directed = csr
    n = int(indptr.size - 1)
    tr_s, tr_d, te_s, te_d = split_edges(indptr, indices, test_share, seed, directed=directed)
    w = None if weights is None else _arc_weights(indptr, indices, weights, tr_s, tr_d)
    g = build_csr(tr_s, tr_d, n, weights=w, directed=directed)
    neg_s, neg_d = sample_non_edges(indptr, indices, te_s.size, seed + 1, directed=directed)
    info = {"test_share": float(test_share), "test_edges": int(te_s.size), "non_edges": int(neg_s.size),
            "train_edges": int(tr_s.size), "train_arcs": g.num_arcs, "directed": bool(directed),
            "seconds": round(time.perf_counter() - t0, 3)}
    split = {"test_src": te_s, "test_dst": te_d, "neg_src": neg_s, "neg_dst": neg_d, "info": info}
    return (g.indptr, g.indices, g.weights, g.directed), split, info


# ---------------------------------------------------------------------------------------------
# figures of one table
# ---------------------------------------------------------------------------------------------

def classify_options(eval_cfg: EvalConfig) -> dict:
    """node_classification's keyword arguments from eval.* (protocol, solver tolerance, node cap).

    eval.mode=exact: every repeat and labelled node. eval.mode=sampled (default): the first
    ``sampled_repeats`` repeats of the same protocol (the same splits, so their F1 are the exact
    protocol's for those repeats), a bootstrap interval over each split's test nodes, the
    labelled set capped at classify_max_nodes and a row sample of it preconditioning the solver.
    Why: the fits cost about n x d x labels per product and scale with the repeats; one repeat
    of three cuts them threefold, and the interval says how far the exact mean may lie."""
    common = dict(ratios=tuple(eval_cfg.train_ratios), seed=eval_cfg.seed, tol=eval_cfg.classify_tol)
    if eval_cfg.mode == "exact":
        return dict(common, repeats=eval_cfg.repeats, max_nodes=None)
    return dict(common, repeats=eval_cfg.sampled_repeats, max_nodes=eval_cfg.classify_max_nodes or None,
                bootstrap=eval_cfg.bootstrap, spectrum_rows=eval_cfg.spectrum_rows or None,
                spectrum_rank=eval_cfg.spectrum_rank,
                small_ratio=eval_cfg.sampled_small_ratio, small_repeats=eval_cfg.repeats)


def classify_stage(X: np.ndarray, labels, eval_cfg: EvalConfig, norms: np.ndarray | None = None) -> dict:
    """Node classification in one task (every ratio and repeat; tasks/evaluate.py runs it when the
    splits make one group, eval.mode=sampled's default); ``classify_split_stage`` is the same
    work cut into tasks. ``seconds``: CPU seconds. ``norms``: the table's row norms when the caller
    has them (``figures_stage``)."""
    from embedlake.workers.evaluate.classify import node_classification
    if labels is None:
        return {}
    ni, li = labels[0], labels[1]
    t0 = time.process_time()
    res = node_classification(X, ni, li, norms=norms, **classify_options(eval_cfg))
    res["seconds"] = round(time.process_time() - t0, 3)       # CPU seconds, as merge_classify_results'
    return res


def classification_splits(eval_cfg: EvalConfig, tasks: int | None = None) -> list[list[tuple[float, int]]]:
    """Every (ratio, repeat) of the protocol in at most ``tasks`` groups (None = one per repeat),
    one Ray task per group (``classify_split_stage``). A repeat's splits stay together, ratios
    ascending, so each warm-starts from the previous one (``split_chain_f1``: its training set is
    a superset); whole repeats are dealt round-robin. Why a cap: a task costs some scheduling,
    so more tasks than the cluster's CPUs only adds overhead; for the same reason a repeat of
    the small ratios only (eval.mode=sampled) joins the least loaded group."""
    from embedlake.workers.evaluate.classify import protocol_splits
    opts = classify_options(eval_cfg)
    splits = protocol_splits(eval_cfg.train_ratios, opts["repeats"], opts.get("small_ratio", 0.0),
                             opts.get("small_repeats", 0))
    chains = [[s for s in splits if s[1] == rep] for rep in sorted({s[1] for s in splits})]
    top = max(sum(r for r, _ in c) for c in chains)
    heavy = [c for c in chains if sum(r for r, _ in c) >= 0.5 * top]
    k = len(heavy) if not tasks else max(1, min(int(tasks), len(heavy)))
    groups = [[s for chain in heavy[i::k] for s in chain] for i in range(k)]
    for chain in (c for c in chains if sum(r for r, _ in c) < 0.5 * top):     # short chains: no task of their own
        min(groups, key=lambda g: sum(r for r, _ in g)).extend(chain)
    return groups


def labelled_set_stage(X: np.ndarray, labels, eval_cfg: EvalConfig):
    """The labelled rows every split task scores (sample, normalisation, Gram spectrum), built
    once: at d=512 the Gram product and its eigh cost as much as a split's fit."""
    from embedlake.workers.evaluate.classify import labelled_set
    t0 = time.process_time()
    opts = classify_options(eval_cfg)
    ls = labelled_set(X, labels[0], labels[1], max_nodes=opts["max_nodes"], seed=opts["seed"],
                      spectrum_rows=opts.get("spectrum_rows"), spectrum_rank=opts.get("spectrum_rank", 0))
    return ls.compact(), time.process_time() - t0          # its own rows only, not the table behind them


def label_selection_stage(labels, eval_cfg: EvalConfig, num_rows: int):
    """The labelled nodes a sharded graph's node classification scores (their rows are then
    gathered from the shards that own them: ``labelled_rows_stage``)."""
    from embedlake.workers.evaluate.classify import label_selection
    opts = classify_options(eval_cfg)
    return label_selection(labels[0], labels[1], max_nodes=opts["max_nodes"], seed=opts["seed"], num_rows=num_rows)


def labelled_rows_stage(selection, eval_cfg: EvalConfig, positions: list[np.ndarray], *parts: np.ndarray):
    """``labelled_set_stage``'s (labelled set, CPU seconds) from the selected rows, gathered by
    shard: ``parts[k]`` are the rows of the selection's nodes at ``positions[k]``. Equals
    ``labelled_set_stage`` on the whole table (the same rows, normalised the same way)."""
    from embedlake.workers.evaluate.classify import labelled_set_of_rows
    t0 = time.process_time()
    d = parts[0].shape[1] if parts else 0
    rows = np.empty((selection.nodes.size, d), dtype=parts[0].dtype if parts else np.float32)
    for pos, part in zip(positions, parts):
        rows[pos] = part
    opts = classify_options(eval_cfg)
    ls = labelled_set_of_rows(rows, selection, spectrum_rows=opts.get("spectrum_rows"), seed=opts["seed"],
                              spectrum_rank=opts.get("spectrum_rank", 0))
    return ls.compact(), time.process_time() - t0          # its unit rows, not its base design as well


def sharded_reconstruction(call, get, bounds: list[tuple[int, int]], num_arcs: int, directed: bool, dim: int,
                           eval_cfg: EvalConfig) -> dict:
    """``reconstruct_stage``'s figures on a sharded graph: rounds of per-shard calls
    (workers/evaluate/sharded.py; ``call`` / ``get`` run them, on Ray in tasks/evaluate.py)."""
    from embedlake.workers.evaluate.sharded import ShardedGraph
    from embedlake.workers.evaluate.sharded import sharded_reconstruction as run
    t0 = time.perf_counter()
    res = run(call, get, ShardedGraph(bounds, num_arcs, not directed),
              **reconstruction_options(eval_cfg, bounds[-1][1], dim))
    res = work_limited(res, eval_cfg)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    res["shards"] = len(bounds)
    return res


MIN_WORK_QUERIES = 50              # eval.reconstruction_work never samples fewer queries than this


def reconstruction_options(eval_cfg: EvalConfig, num_nodes: int, dim: int) -> dict:
    """reconstruction_map's keyword arguments from eval.*; the query sample is cut to the work
    budget eval.reconstruction_work. Why: a query scores every node (dim operations each, plus
    about 64 for placing the score and the breadth-first search), so a fixed number of queries
    would make the evaluation's share of a run grow with the graph (measured on a 1.09 M-node,
    37 M-arc R-MAT graph at d = 64: 28 ms of CPU per query, 14 s for 500)."""
    if eval_cfg.mode == "exact":                   # every query, no ring sampled, no search cut short
        return dict(hops=tuple(eval_cfg.reconstruction_hops), sample=None, seed=eval_cfg.seed,
                    ball_cap=num_nodes + 1, relevant_cap=0)
    sample = eval_cfg.reconstruction_sample or None
    if eval_cfg.reconstruction_work:
        afford = max(MIN_WORK_QUERIES, eval_cfg.reconstruction_work // max(1, num_nodes * (dim + 64)))
        sample = afford if sample is None or afford < sample else sample
    return dict(hops=tuple(eval_cfg.reconstruction_hops), sample=sample, seed=eval_cfg.seed,
                ball_cap=eval_cfg.reconstruction_ball_cap, relevant_cap=eval_cfg.reconstruction_relevant_cap)


def work_limited(res: dict, eval_cfg: EvalConfig) -> dict:
    """Says in the figures when the work budget, not eval.reconstruction_sample, set the queries,
    and which eval.mode produced them (sampled: ``queries`` of ``eligible``, interval ``ci95``)."""
    asked = eval_cfg.reconstruction_sample or res["eligible"] if eval_cfg.mode == "sampled" else res["eligible"]
    res["work_limited"] = bool(res["queries"] < min(asked, res["eligible"]))
    res["mode"] = eval_cfg.mode
    return res


def classify_split_stage(prepared, eval_cfg: EvalConfig, splits: list[tuple[float, int]]) -> dict:
    """The F1 of some (ratio, repeat) splits of ``labelled_set_stage``'s ``prepared`` = (labelled
    set, its CPU seconds), for ``merge_classify_results``; the merged figures equal
    ``classify_stage``'s. Its seconds are CPU seconds: split tasks run side by side, so their wall
    times overlap (and on a busy machine include the others' turns)."""
    from embedlake.workers.evaluate.classify import full_ratios, split_chain_f1
    ls, _ = prepared
    t0 = time.process_time()
    opts = classify_options(eval_cfg)
    full = full_ratios(opts["ratios"], opts["repeats"], opts.get("small_ratio", 0.0), opts.get("small_repeats", 0))
    f1 = split_chain_f1(ls, splits, seed=opts["seed"], tol=opts["tol"], bootstrap=opts.get("bootstrap", 0),
                        full_ratios=full)
    return {"info": ls.info(), "f1": f1, "seconds": time.process_time() - t0}


def merge_classify_results(parts: list[dict], eval_cfg: EvalConfig, prepare_s: float = 0.0) -> dict:
    """``classify_stage``'s figures from the split tasks' parts; ``seconds`` = the tasks' summed
    CPU seconds plus ``prepare_s`` (the labelled set's): the CPU time spent, comparable with one
    task's wall time (one thread); ``tasks`` = how many split tasks."""
    from embedlake.workers.evaluate.classify import classification_summary
    opts = classify_options(eval_cfg)
    f1 = {(c[0], c[1]): (c[2], c[3]) for p in parts for c in p["f1"]}
    sd = {(c[0], c[1]): (c[4], c[5]) for p in parts for c in p["f1"]} if opts.get("bootstrap") else None
    res = classification_summary(parts[0]["info"], eval_cfg.train_ratios, opts["repeats"], f1, sd)
    res["seconds"] = round(prepare_s + sum(p["seconds"] for p in parts), 3)
    res["tasks"] = len(parts)
    return res


def link_stage(X: np.ndarray, split: dict, eval_cfg: EvalConfig, operators: list[str] | None = None) -> dict:
    """Link prediction with `operators` (default eval.lp_operators): one task per operator runs them
    side by side (`merge_link_results` joins them)."""
    from embedlake.workers.evaluate.links import link_prediction
    t0 = time.perf_counter()
    res = link_prediction(X, split["test_src"], split["test_dst"], split["neg_src"], split["neg_dst"],
                          operators=tuple(eval_cfg.lp_operators if operators is None else operators),
                          seed=eval_cfg.seed, hits_k=tuple(eval_cfg.hits_k))
    res["test_share"] = split["info"]["test_share"]
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def merge_link_results(parts: list[dict]) -> dict:
    """One link_prediction dict from per-operator results (same pairs and folds: the figures equal
    those of a single call with every operator)."""
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            elif k == "seconds":
                out[k] = max(out.get(k, 0.0), v)
            else:
                out[k] = v
    return out


def figures_stage(X: np.ndarray, labels, csr: tuple | None, eval_cfg: EvalConfig) -> dict:
    """Node classification (``labels`` not None: ``classify_stage``) and reconstruction (``csr``
    not None: ``reconstruct_stage``) of one table in one task: {"node_classification", "reconstruction"}.

    Why one task: in the pipeline the two cost less than a task's fixed price (a worker's imports,
    its numba kernels loaded, its turn on a loaded machine): the evaluate stage took 2-6 s of wall
    on deezer_europe and BlogCatalog whatever its components cost (docs/evaluation.md), so one
    warm worker pays that price once and the labelled set never enters the object store.

    ``out["timeline"]`` (not a figure: the evaluate task logs it and drops it): when the task
    started and ended in its worker (epoch seconds, comparable with the driver's clock on one
    machine), its CPU seconds, the worker's pid and how far the worker had taken numba before
    (`numba_in_worker`), so the stage log shows what a user waits for besides the compute (dispatch,
    the worker's imports, the round trip).

    With both figures, the table's row norms are computed once here (`row_norms`) and handed to
    both: the reconstruction normalises every row for its cosine scores and node classification
    reads the labelled rows' norms (when its design stays in place), the same numbers bit for bit
    (issue 22, eleventh round). Both run inside `heap.task_heap`: in a worker, glibc reuses the pages
    of their freed temporaries instead of faulting in new ones (issue 22, twelfth round)."""
    from embedlake.workers.evaluate.rows import row_norms
    from embedlake.workers.heap import task_heap
    started, cpu0, numba_state = time.time(), time.process_time(), numba_in_worker()
    out, parts = {}, {}
    with task_heap():
        norms = row_norms(X, np.arange(np.shape(X)[0])) if labels is not None and csr is not None else None
        if labels is not None:
            with usage_of(parts, "node_classification"):
                out["node_classification"] = classify_stage(X, labels, eval_cfg, norms)
        if csr is not None:
            with usage_of(parts, "reconstruction"):
                out["reconstruction"] = reconstruct_stage(X, csr, eval_cfg, norms)
    out["timeline"] = {"started": started, "ended": time.time(), "cpu_s": round(time.process_time() - cpu0, 3),
                       "pid": os.getpid(), "numba": numba_state, "parts": parts}
    return out


@contextlib.contextmanager
def usage_of(parts: dict, name: str):
    """parts[name] = (CPU seconds, page faults, involuntary context switches) of this process over
    the block (getrusage). Why: node classification took 0.21-0.24 CPU-s instead of 0.13-0.15 in
    some pipeline runs on a quiet machine (issue 22, twelfth round); the evaluate task's timeline line
    then says whether that run's component faulted more pages or was preempted more often."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    try:
        yield
    finally:
        b = resource.getrusage(resource.RUSAGE_SELF)
        parts[name] = (round(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime, 3), b.ru_minflt - a.ru_minflt,
                       b.ru_nivcsw - a.ru_nivcsw)


def numba_in_worker() -> str:
    """"initialised" (a kernel was compiled or loaded in this process: its typing and target
    registries, which import scipy.linalg, are loaded), "imported" or "absent". Why: the figures
    task's kernels cost a worker that has not initialised numba about 0.3 CPU-s more (import 0.12-0.17,
    scipy.linalg 0.13-0.15, the registries; docs/evaluation.md, eighth round)."""
    if "numba.np.arraymath" in sys.modules:
        return "initialised"
    return "imported" if "numba" in sys.modules else "absent"


def reconstruct_stage(X: np.ndarray, csr: tuple, eval_cfg: EvalConfig, norms: np.ndarray | None = None) -> dict:
    """RESTORE-style mAP of the 1..h-hop neighbourhoods of the graph the table was trained on
    (``norms``: the table's row norms when the caller has them, ``figures_stage``)."""
    from embedlake.workers.evaluate.geometry import reconstruction_map
    t0 = time.perf_counter()
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)      # Ray sets it to the task's CPUs
    res = reconstruction_map(X, csr[0], csr[1], threads=threads, symmetric=True if not csr[3] else None, norms=norms,
                             **reconstruction_options(eval_cfg, len(csr[0]) - 1, np.shape(X)[1]))
    res = work_limited(res, eval_cfg)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


# ---------------------------------------------------------------------------------------------
# alignment to the previous run (scheduled re-trains)
# ---------------------------------------------------------------------------------------------

def reference_run(lake: Lake | str, dataset: str, method: str, run_id: str) -> dict | None:
    """The previous committed run of dataset/method (newest other than run_id), as a small dict:
    its run id, dim and which files serve as reference coordinates (its own aligned table when it
    has one, so coordinates stay in the first run's frame across a chain of re-trains)."""
    lake = Lake(lake)
    try:
        runs = [m for m in lake.manifests(dataset, method) if m.run_id != run_id]
    except Exception:  # noqa: BLE001 - no manifests folder yet
        return None
    if not runs:
        return None
    m = runs[-1]
    kind = "aligned" if m.files.get("aligned") else "embeddings"
    return {"run_id": m.run_id, "kind": kind, "dim": (m.extra or {}).get("dim"),
            "paths": [e["path"] for e in m.files.get(kind, [])]}


def _read_vectors(lake: Lake, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tables = [lake.read_parquet(p, columns=["node", "vector"]) for p in paths]
    t = fixed_vectors(pa.concat_tables(tables))
    vec = t.column("vector").combine_chunks()
    d = vec.type.list_size
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    ids = t.column("node").to_numpy(zero_copy_only=False)
    return ids, X


def comparable_ids(ids: np.ndarray) -> np.ndarray:
    """Node ids as one sortable kind (str or int64), so two tables' ids can be matched."""
    ids = np.asarray(ids)
    if ids.dtype == object or ids.dtype.kind in "US":
        return ids.astype(str)
    return ids.astype(np.int64)


def shared_rows(ids_new: np.ndarray, ids_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (in each table) of the node ids both tables contain, matched by original id."""
    a, b = comparable_ids(ids_new), comparable_ids(ids_ref)
    if a.dtype.kind != b.dtype.kind:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    _, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    return ia.astype(np.int64), ib.astype(np.int64)


def relative_distance(A: np.ndarray, B: np.ndarray) -> float:
    """|A - B|_F / |B|_F: how far two tables of the same rows are, coordinate by coordinate."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    return float(np.linalg.norm(A - B) / max(np.linalg.norm(B), 1e-12))


def stability(X_new: np.ndarray, ids_new: np.ndarray, X_ref: np.ndarray, ids_ref: np.ndarray, *,
              k: int = 10, sample: int = 1000, seed: int = 0) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Align X_new onto X_ref (orthogonal Procrustes on the shared nodes) and measure the change.

    Returns (figures, aligned X_new (all rows) or None, rotation or None). Figures: shared nodes,
    relative distance before/after the rotation, and the mean Jaccard of the top-k cosine
    neighbour sets of the shared nodes (rotation-invariant: the same before and after)."""
    from embedlake.workers.evaluate.geometry import neighbourhood_overlap, procrustes_align
    rn, rr = shared_rows(ids_new, ids_ref)
    out: dict = {"shared_nodes": int(rn.size), "nodes": int(X_new.shape[0]), "reference_nodes": int(X_ref.shape[0])}
    if X_new.shape[1] != X_ref.shape[1]:
        out["skipped"] = f"dimension {X_new.shape[1]} differs from the reference's {X_ref.shape[1]}"
        return out, None, None
    if rn.size < max(2, X_new.shape[1]):
        out["skipped"] = f"only {rn.size} shared nodes for a {X_new.shape[1]}-d rotation"
        return out, None, None
    aligned, R = procrustes_align(X_new, X_ref, shared=(rn, rr), return_rotation=True)
    out["distance_before"] = relative_distance(X_new[rn], X_ref[rr])
    out["distance_after"] = relative_distance(aligned[rn], X_ref[rr])
    out[f"neighbourhood_overlap@{k}"] = neighbourhood_overlap(X_new[rn], X_ref[rr], k=k, sample=sample, seed=seed)
    return out, aligned.astype(np.float32), R


def align_stage(lake: Lake | str, dataset: str, method: str, run_id: str, X: np.ndarray, node_ids: np.ndarray,
                reference: dict, eval_cfg: EvalConfig, bounds: list[tuple[int, int]]) -> dict:
    """Stability figures against ``reference`` (see ``reference_run``) and, when the rotation is
    defined, the aligned table + rotation written to the lake. Returns {"metrics", "files"}."""
    from embedlake import storage
    from embedlake.workers.graph.store import node_id_array
    lake = Lake(lake)
    t0 = time.perf_counter()
    with storage.using(lake.env):
        ids_ref, X_ref = _read_vectors(lake, reference["paths"])
        fig, aligned, R = stability(np.asarray(X), np.asarray(node_ids), X_ref, ids_ref,
                                    sample=eval_cfg.stability_sample, seed=eval_cfg.seed)
        fig.update(reference_run=reference["run_id"], reference_kind=reference["kind"])
        files: dict[str, list[dict]] = {}
        if aligned is not None:
            method_dir = aligned_method(method)
            files["aligned"] = [lake.write_parquet(Lake.part_path("embeddings", dataset, method_dir, run_id, i),
                                                   embeddings_table(node_id_array(node_ids[lo:hi]), aligned[lo:hi]))
                                .to_dict() for i, (lo, hi) in enumerate(bounds)]
            rel = f"{Lake.run_dir('reports', dataset, method, run_id)}/rotation.npy"
            files["rotation"] = [lake.write_npy(rel, R).to_dict()]
    fig["seconds"] = round(time.perf_counter() - t0, 3)
    return {"metrics": fig, "files": files}


def aligned_method(method: str) -> str:
    return method + ALIGNED_SUFFIX


def run_dirs(dataset: str, method: str, run_id: str) -> list[str]:
    """Every folder this stage writes for a run (removed when the run fails before its commit)."""
    return [Lake.run_dir("metrics", dataset, method, run_id), Lake.run_dir("reports", dataset, method, run_id),
            Lake.run_dir("embeddings", dataset, aligned_method(method), run_id)]


# ---------------------------------------------------------------------------------------------
# the metrics table: one row per figure (long format, easy to stack across runs)
# ---------------------------------------------------------------------------------------------

METRICS_SCHEMA = pa.schema([("dataset", pa.string()), ("method", pa.string()), ("run_id", pa.string()),
                            ("task", pa.string()), ("metric", pa.string()), ("key", pa.string()),
                            ("value", pa.float64()), ("text", pa.string())])


def metrics_rows(metrics: dict) -> list[dict]:
    """Flatten {task: {metric: scalar | {key: scalar}}} into rows (task, metric, key, value, text).

    Numbers (and booleans) go to ``value``, strings to ``text``; lists (e.g. the ratios, which
    are also the keys) are left out. ``metrics_from_rows`` inverts it."""
    rows = []

    def emit(task, metric, key, v):
        if isinstance(v, bool) or isinstance(v, (int, float, np.integer, np.floating)):
            rows.append({"task": task, "metric": metric, "key": key, "value": float(v), "text": None})
        elif isinstance(v, str):
            rows.append({"task": task, "metric": metric, "key": key, "value": None, "text": v})

    for task, figs in metrics.items():
        if not isinstance(figs, dict):
            emit(task, "", "", figs)
            continue
        for metric, v in figs.items():
            if isinstance(v, dict):
                for key, x in v.items():
                    emit(task, metric, str(key), x)
            else:
                emit(task, metric, "", v)
    return rows


def metrics_from_rows(rows) -> dict:
    """Rows (dicts or a pyarrow table) -> the nested metrics dict (numbers as float)."""
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    out: dict = {}
    for r in rows:
        v = r["value"] if r.get("text") is None else r["text"]
        if r["metric"] == "":
            out[r["task"]] = v
            continue
        t = out.setdefault(r["task"], {})
        if r["key"] == "":
            t[r["metric"]] = v
        else:
            t.setdefault(r["metric"], {})[r["key"]] = v
    return out


def numeric_view(metrics: dict) -> dict:
    """What the table keeps of a metrics dict (lists dropped, numbers as float): for comparisons."""
    return metrics_from_rows(metrics_rows(metrics))


def metrics_table(dataset: str, method: str, run_id: str, metrics: dict) -> pa.Table:
    """The run's rows of the metrics table (METRICS_SCHEMA), each column built from its buffers
    (``arrow_column``). Why not ``pa.Table.from_pylist``: any ``pa.array`` call imports pandas
    (pyarrow asks it whether the input is one of its types), 0.3 CPU-s and 0.7 s of wall in the
    driver, whose evaluate task had not imported it: most of the report's cost (issue 22)."""
    rows = metrics_rows(metrics)
    for r in rows:
        r.update(dataset=dataset, method=method, run_id=run_id)
    return pa.Table.from_arrays([arrow_column([r[f.name] for r in rows], f.type) for f in METRICS_SCHEMA],
                                schema=METRICS_SCHEMA)


def arrow_column(values: list, kind: pa.DataType) -> pa.Array:
    """A float64 or string Arrow array of Python values (None = null) from its buffers, without
    ``pa.array`` (see ``metrics_table``)."""
    valid = np.array([v is not None for v in values], dtype=bool)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    nulls = int(valid.size - valid.sum())
    if pa.types.is_floating(kind):
        data = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
        return pa.Array.from_buffers(pa.float64(), len(values), [bitmap, pa.py_buffer(data)], null_count=nulls)
    encoded = [b"" if v is None else str(v).encode() for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(values), [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def metrics_path(dataset: str, method: str, run_id: str) -> str:
    """The run's file of the metrics Delta table (metrics/<dataset>/<method>, partitioned by run_id;
    the rows keep their run_id column too, which every Delta reader accepts)."""
    return f"{Lake.run_dir('metrics', dataset, method, run_id)}/part-00000.parquet"


def write_report_stage(lake: Lake | str, dataset: str, method: str, run_id: str, metrics: dict,
                       context: list[dict], compressed: list[dict]) -> dict:
    """Write the metrics table, the markdown report and the SVG plot of one run.

    ``context``: other runs (dicts with dataset, method, run_id, metrics) shown beside this one;
    ``compressed``: quality-vs-bytes rows (see workers/report.compressed_rows). Returns
    {"files": {"metrics": [...], "report": [...]}, "markdown": str, "svg": str}. The plot is a
    hand-written SVG (no matplotlib), so this costs milliseconds and needs no worker of its own."""
    from embedlake import storage
    from embedlake.workers.evaluate import report as rp
    lake = Lake(lake)
    this = {"dataset": dataset, "method": method, "run_id": run_id, "metrics": metrics}
    runs = [this] + [c for c in context if (c["method"], c["run_id"]) != (method, run_id)]
    svg = rp.quality_svg(runs, compressed, title=f"{dataset}: quality per method")
    md = rp.report_markdown(runs, compressed, title=f"{dataset} / {method} run {run_id}")
    base = Lake.run_dir("reports", dataset, method, run_id)        # internal files beside the metrics table
    with storage.using(lake.env):
        files = {"metrics": [lake.write_parquet(metrics_path(dataset, method, run_id),
                                                metrics_table(dataset, method, run_id, metrics)).to_dict()],
                 "report": [lake.write_bytes(f"{base}/report.md", (md + "\n![quality](quality.svg)\n").encode())
                            .to_dict(), lake.write_bytes(f"{base}/quality.svg", svg.encode()).to_dict()]}
    return {"files": files, "markdown": md, "svg": svg}
