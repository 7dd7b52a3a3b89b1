"""Alignment to the previous run on a sharded graph (issues 17 and 22), no task holding the table.

The one-table ``stages.align_stage`` rotates the whole table onto the reference run's rows in one
task. Here each graph shard's task holds only that shard's table rows and node ids, and the tasks
exchange sums and a few rows:

1. ``shard_matches``: the shard's task streams the reference files batch by batch and keeps the
   reference rows of ITS node ids only (ordered by node id, as ``stages.shared_rows`` orders them);
   ``shard_sums`` gives the Procrustes partial sums over them: the shared count, X_newᵀ X_ref
   (d x d), |X_new|², |X_ref|² and |X_new - X_ref|² (the distance before);
2. ``rotation_stage`` (one small task): sums them, takes the SVD (the same maths as
   ``geometry.procrustes_align``: R = U Vᵀ of the summed X_newᵀ X_ref), writes rotation.npy once;
3. ``shard_aligned``: the shard rotates its rows, writes them as its own part of the aligned table
   (part k = shard k, the lake paths of ``align_stage``) and returns |X_new R - X_ref|²;
4. the top-10 neighbourhood overlap of ``geometry.neighbourhood_overlap`` on the same sampled
   shared nodes: the sample is positions in the id-ordered list of shared nodes, located across the
   shards by pivot counts (``shard_pivot_ranks``, ``shard_keys_between``: no task sees all ids);
   only the sample's rows are gathered (``shard_query_rows``), every shard returns its top-k
   candidates for them (``shard_top_k``) and the coordinator keeps the best k of the merged lists.

The coordinator ``sharded_stability`` drives the rounds through two callbacks, so the same code runs
on Ray (tasks/evaluate.py) and in a test without it:

    call(shard, fn, *args) -> a future of fn(X_s, ids_s, *args)   (shard None: fn(*args))
    get(futures) -> their values

Figures equal ``stages.stability`` on the gathered table within float tolerance (sums are added
shard by shard; tests/test_align_sharded.py).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from embedlake.config import EvalConfig
from embedlake.lake import Lake, embeddings_table, fixed_vectors
from embedlake.workers.evaluate.geometry import sample_nodes, unit_rows
from embedlake.workers.evaluate.stages import aligned_method, comparable_ids

PIVOTS_PER_SHARD = 4096       # keys each shard offers to locate the sampled positions (step 4)
SCORE_ELEMS = 8_000_000       # query-by-row scores per block in ``shard_top_k`` (32 MB float32)


# ---------------------------------------------------------------------------------------------
# one shard's work (a Ray task each): fn(X_s, ids_s, *args)
# ---------------------------------------------------------------------------------------------

def _reference_batches(lake: Lake, paths: list[str]):
    """(node ids, vectors float32 [rows, d]) of the reference files, one Parquet batch at a time."""
    import pyarrow.parquet as pq
    for rel in paths:
        with lake.fs.open(lake.url(rel), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["node", "vector"]):
                t = fixed_vectors(pa.Table.from_batches([batch]))
                vec = t.column("vector").combine_chunks()
                d = vec.type.list_size
                X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
                yield t.column("node").to_numpy(zero_copy_only=False), X


def shard_matches(X, ids, lake: Lake | str, paths: list[str]) -> dict:
    """The reference rows of the shard's node ids, ordered by id: {"rows" (the shard's rows),
    "keys" (their ids, comparable), "ref" float32 [m, d], "reference_nodes", "reference_dim"}.
    Streams the reference: the task holds one batch and its matches, never the reference table."""
    from embedlake import storage
    lake = Lake(lake)
    keys = comparable_ids(np.asarray(ids))
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    found_keys, found_rows, total, ref_dim = [], [], 0, None
    with storage.using(lake.env):
        for node, R in _reference_batches(lake, paths):
            total += node.size
            ref_dim = R.shape[1] if ref_dim is None or node.size else ref_dim
            node = comparable_ids(node)
            if node.size == 0 or node.dtype.kind != sorted_keys.dtype.kind:
                continue
            at = np.minimum(np.searchsorted(sorted_keys, node), max(sorted_keys.size - 1, 0))
            hit = sorted_keys[at] == node if sorted_keys.size else np.zeros(node.size, bool)
            found_keys.append(node[hit])
            found_rows.append(R[hit])
    fk = np.concatenate(found_keys) if found_keys else sorted_keys[:0]
    fr = np.concatenate(found_rows) if found_rows else np.empty((0, ref_dim or np.shape(X)[1]), np.float32)
    _, ia, ib = np.intersect1d(sorted_keys, fk, assume_unique=True, return_indices=True)
    return {"rows": order[ia].astype(np.int64), "keys": sorted_keys[ia], "ref": fr[ib],
            "reference_nodes": int(total), "reference_dim": ref_dim}


def shard_sums(X, ids, matched: dict) -> dict:
    """Procrustes partial sums over the shard's shared rows (float64) and its pivot keys (the
    sums are zero when the reference has another dimension: no rotation then, see rotation_stage)."""
    A = np.asarray(X)[matched["rows"]].astype(np.float64)
    B = matched["ref"].astype(np.float64) if matched["ref"].shape[1] == A.shape[1] else np.zeros_like(A)
    every = max(1, math.ceil(A.shape[0] / PIVOTS_PER_SHARD))
    return {"shared": int(A.shape[0]), "nodes": int(np.shape(X)[0]), "cross": A.T @ B,
            "new_sq": float(np.square(A).sum()), "ref_sq": float(np.square(B).sum()),
            "diff_sq": float(np.square(A - B).sum()), "pivots": matched["keys"][::every],
            "reference_nodes": matched["reference_nodes"], "reference_dim": matched["reference_dim"]}


def shard_aligned(X, ids, matched: dict, R: np.ndarray, lake: Lake | str, dataset: str, method: str, run_id: str,
                  part: int) -> dict:
    """The shard's rows rotated (as ``procrustes_align``) written as part ``part`` of the aligned
    table; returns {"diff_sq": |X R - X_ref|² over its shared rows, "file": the part's entry}."""
    from embedlake import storage
    from embedlake.workers.graph.store import node_id_array
    lake = Lake(lake)
    aligned = (np.asarray(X).astype(np.float64) @ R).astype(np.float32)
    diff = aligned[matched["rows"]].astype(np.float64) - matched["ref"].astype(np.float64)
    with storage.using(lake.env):
        entry = lake.write_parquet(Lake.part_path("embeddings", dataset, aligned_method(method), run_id, part),
                                   embeddings_table(node_id_array(np.asarray(ids)), aligned))
    return {"diff_sq": float(np.square(diff).sum()), "file": entry.to_dict()}


def shard_pivot_ranks(X, ids, matched: dict, pivots: np.ndarray) -> np.ndarray:
    """How many of the shard's shared keys are below each pivot."""
    return np.searchsorted(matched["keys"], pivots, side="left").astype(np.int64)


def shard_keys_between(X, ids, matched: dict, lows: np.ndarray, highs: np.ndarray, last: bool):
    """(keys, positions in the shard's shared list, count per interval) of its shared keys in each
    [lows[i], highs[i]) (the last interval open above when ``last``)."""
    keys = matched["keys"]
    a = np.searchsorted(keys, lows, side="left")
    b = np.searchsorted(keys, highs, side="left")
    if last:
        b[-1] = keys.size
    b = np.maximum(a, b)
    pos = np.concatenate([np.arange(i, j) for i, j in zip(a, b)]) if a.size else np.empty(0, np.int64)
    return keys[pos], pos.astype(np.int64), (b - a).astype(np.int64)


def shard_query_rows(X, ids, matched: dict, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows (new, reference) of the shard's shared nodes at ``positions``."""
    pos = np.asarray(positions, np.int64)
    return unit_rows(np.asarray(X)[matched["rows"][pos]]), unit_rows(matched["ref"][pos])


def shard_top_k(X, ids, matched: dict, Qa: np.ndarray, Qb: np.ndarray, query_ids: np.ndarray, offset: int, k: int):
    """Per query, the shard's k best cosine candidates in the new and the reference table:
    (scores_a, ids_a, scores_b, ids_b), ids = offset + position in the shard's shared list; a
    query's own id scores -inf (``top_k_neighbours`` excludes the query itself)."""
    rows = matched["rows"]
    tables = (unit_rows(np.asarray(X)[rows]), unit_rows(matched["ref"]))
    m = rows.size
    kk = min(k, m)
    step = max(1, SCORE_ELEMS // max(m, 1))
    out = []
    for U, Q in zip(tables, (Qa, Qb)):
        scores, picks = [], []
        for i in range(0, Q.shape[0], step):
            S = np.array(Q[i:i + step] @ U.T, dtype=np.float32, copy=True)
            own = np.asarray(query_ids[i:i + step], np.int64) - offset
            inside = (own >= 0) & (own < m)
            S[np.flatnonzero(inside), own[inside]] = -np.inf
            part = np.argpartition(-S, kk - 1, axis=1)[:, :kk] if kk else np.empty((S.shape[0], 0), np.int64)
            scores.append(np.take_along_axis(S, part, 1))
            picks.append(part.astype(np.int64) + offset)
        out += [np.concatenate(scores) if scores else np.empty((0, kk), np.float32),
                np.concatenate(picks) if picks else np.empty((0, kk), np.int64)]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the small task: sums -> rotation
# ---------------------------------------------------------------------------------------------

def rotation_stage(lake: Lake | str, dataset: str, method: str, run_id: str, *sums: dict) -> dict:
    """The shards' sums added: figures as ``stages.stability`` gives them before the rotation,
    R = U Vᵀ of the summed X_newᵀ X_ref (``procrustes_align``) and rotation.npy written once.
    {"metrics", "R" (None when skipped), "files"}."""
    from embedlake import storage
    shared = sum(s["shared"] for s in sums)
    dim = sums[0]["cross"].shape[0]
    ref_dim = next((s["reference_dim"] for s in sums if s["reference_dim"] is not None), None)
    out: dict = {"shared_nodes": int(shared), "nodes": int(sum(s["nodes"] for s in sums)),
                 "reference_nodes": int(sums[0]["reference_nodes"])}
    if ref_dim is not None and ref_dim != dim:
        out["skipped"] = f"dimension {dim} differs from the reference's {ref_dim}"
        return {"metrics": out, "R": None, "files": {}}
    if shared < max(2, dim):
        out["skipped"] = f"only {shared} shared nodes for a {dim}-d rotation"
        return {"metrics": out, "R": None, "files": {}}
    U, _, Vt = np.linalg.svd(sum(s["cross"] for s in sums))
    R = U @ Vt
    ref_norm = max(math.sqrt(sum(s["ref_sq"] for s in sums)), 1e-12)
    out["distance_before"] = math.sqrt(sum(s["diff_sq"] for s in sums)) / ref_norm
    lake = Lake(lake)
    with storage.using(lake.env):
        rel = f"{Lake.run_dir('reports', dataset, method, run_id)}/rotation.npy"
        files = {"rotation": [lake.write_npy(rel, R).to_dict()]}
    return {"metrics": out, "R": R, "ref_norm": ref_norm, "files": files}


# ---------------------------------------------------------------------------------------------
# the coordinator
# ---------------------------------------------------------------------------------------------

def sharded_stability(call: Callable, get: Callable, num_shards: int, lake: Lake | str, dataset: str, method: str,
                      run_id: str, reference: dict, eval_cfg: EvalConfig, k: int = 10) -> dict:
    """``stages.align_stage`` on a sharded table: {"metrics", "files"} with the same figures and
    the aligned table written one part per shard."""
    t0 = time.perf_counter()
    shards = range(num_shards)
    matched = [call(s, shard_matches, lake, reference["paths"]) for s in shards]
    sums = get([call(s, shard_sums, matched[s]) for s in shards])
    rot = get([call(None, rotation_stage, lake, dataset, method, run_id, *sums)])[0]
    fig, files = rot["metrics"], dict(rot["files"])
    if rot["R"] is not None:
        parts = get([call(s, shard_aligned, matched[s], rot["R"], lake, dataset, method, run_id, s) for s in shards])
        fig["distance_after"] = math.sqrt(sum(p["diff_sq"] for p in parts)) / rot["ref_norm"]
        files["aligned"] = [p["file"] for p in parts]
        counts = [s["shared"] for s in sums]
        fig[f"neighbourhood_overlap@{k}"] = _overlap(call, get, matched, sums, counts, eval_cfg, k)
    fig.update(reference_run=reference["run_id"], reference_kind=reference["kind"],
               seconds=round(time.perf_counter() - t0, 3))
    return {"metrics": fig, "files": files}


def _locate(call, get, matched: list, sums: list[dict], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, position in its shared list) of each global position in the id-ordered shared list.
    Every shard's own pivots split its list into runs of at most ``every`` keys, so an interval
    between consecutive merged pivots holds few keys of each shard: only those travel."""
    pivots = np.unique(np.concatenate([s["pivots"] for s in sums if s["shared"]]))
    below = np.sum(get([call(s, shard_pivot_ranks, matched[s], pivots) for s in range(len(sums))]), axis=0)
    j = np.searchsorted(below, positions, side="right") - 1           # below[0] == 0: pivots[0] is the minimum
    wanted = np.unique(j)
    last = bool(wanted[-1] == pivots.size - 1)
    highs = pivots[np.minimum(wanted + 1, pivots.size - 1)]
    found = get([call(s, shard_keys_between, matched[s], pivots[wanted], highs, last) for s in range(len(sums))])
    shard_of, pos_of = np.empty(positions.size, np.int64), np.empty(positions.size, np.int64)
    starts = [np.concatenate(([0], np.cumsum(c))) for _, _, c in found]
    for w, jj in enumerate(wanted):
        keys = np.concatenate([f[0][st[w]:st[w + 1]] for f, st in zip(found, starts)])
        where = np.concatenate([np.full(st[w + 1] - st[w], s) for s, st in enumerate(starts)])
        pos = np.concatenate([f[1][st[w]:st[w + 1]] for f, st in zip(found, starts)])
        order = np.argsort(keys, kind="stable")
        sel = np.flatnonzero(j == jj)
        at = order[positions[sel] - below[jj]]
        shard_of[sel], pos_of[sel] = where[at], pos[at]
    return shard_of, pos_of


def _overlap(call, get, matched: list, sums: list[dict], counts: list[int], eval_cfg: EvalConfig, k: int) -> float:
    """``neighbourhood_overlap`` of the shared rows (new vs reference) at the same sample."""
    m = int(sum(counts))
    q = sample_nodes(m, eval_cfg.stability_sample, eval_cfg.seed)
    shard_of, pos_of = _locate(call, get, matched, sums, q)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    S = len(counts)
    mine = [np.flatnonzero(shard_of == s) for s in range(S)]
    rows = get([call(s, shard_query_rows, matched[s], pos_of[mine[s]]) for s in range(S)])
    d = rows[0][0].shape[1]
    Qa, Qb = np.empty((q.size, d), np.float32), np.empty((q.size, d), np.float32)
    for s in range(S):
        Qa[mine[s]], Qb[mine[s]] = rows[s]
    qids = offsets[shard_of] + pos_of
    cands = get([call(s, shard_top_k, matched[s], Qa, Qb, qids, int(offsets[s]), k) for s in range(S)])
    kk = min(k, m - 1)
    tops = []
    for side in (0, 2):
        scores = np.concatenate([c[side] for c in cands], axis=1)
        picks = np.concatenate([c[side + 1] for c in cands], axis=1)
        best = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        tops.append(np.take_along_axis(picks, best, 1))
    A, B = tops
    inter = (A[:, :, None] == B[:, None, :]).any(2).sum(1)
    return float(np.mean(inter / (A.shape[1] + B.shape[1] - inter)))
