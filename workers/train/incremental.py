"""Incremental skip-gram (issue 18): update the previous run's table on a changed graph.

The previous committed run left its embeddings (W_in, the published table) and its context table
(W_out, `state/<dataset>/<method>/run_id=<id>/w_out.npy`). An incremental run

1. diffs the previous graph version with the new one (workers/graph/diff.py) and marks the
   affected rows: new nodes and every node within `train.incremental_radius` hops of a changed edge;
2. starts every surviving node from its previous rows (W_in and W_out), a new node's W_in from the
   mean of its neighbours' previous vectors (a seeded small random vector when none has one) and
   its W_out from zero (word2vec's own start);
3. walks only where the graph changed: `train.incremental_edge_walks` walks centred on each added
   (or reweighted) edge, window // 2 steps out from either end (the pairs the edge brings into the
   window, most of them at the short distances the dynamic window favours); by default a quarter of
   the times a retrain's walks cross one edge, at most 8 but never under a fifteenth of those times
   (`edge_walks_per_edge`); a node that lost r_v of its d_v edges ceil(walks_per_node * r_v / d_v)
   whole walks; a new node walks_per_node whole walks. So the walk (and training) volume follows the
   change, not the graph;
4. trains skip-gram on those walks with the new graph's noise distribution (degree, what a full
   run's visit counts converge to) with the input rows outside the affected set FROZEN: the
   kernel never writes them, so they keep their previous bytes and the table stays in the previous
   run's coordinates (no alignment step). W_out is updated everywhere (it is not published).

The kernel is the unfused HogBatch window step (workers/train/skipgram.py `_ablation_blocks`,
formerly `_sgns_chunk`) with one test added before each input-row write; the default kernel is
untouched, so full runs stay bit-identical.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numba as nb
import numpy as np

from embedlake.config import TrainConfig, WalkConfig
from embedlake.lake import Lake
from embedlake.workers.graph.csr import CSRGraph
from embedlake.workers.graph.diff import GraphDiff, affected_nodes, graph_diff, match_ids, neighbours_of
from embedlake.workers.kernel_threads import run_on_threads
from embedlake.workers.train.sgns_parts import (blocks_per_chunk, draw_negatives, keep_thresholds, linear_lr,
                                                kept_tokens, noise_alias, numba_threads, seed_state,
                                                sentence_chunks, sigmoid_tables,
                                                window_contexts, window_step)


# Edge walks per added edge: a quarter of the times c a retrain's walks cross one edge (BlogCatalog
# 24 -> 6), at most 8 (PPI 81 -> 8), and never under a fifteenth of c (deezer_europe 241 -> 16). The
# quarter keeps an update's tokens within 3 x the change share of a retrain's (2 x side + 2 = 12 tokens
# a walk); 8 walks at 0.4 x lr met the retrain's added-edge AUC on PPI, where more overshoot it; a third
# (8 on BlogCatalog) moved BlogCatalog's rows enough to drop a v1 classifier by 0.009-0.011, 6 by 0.007.
# On a sparse graph c is large and 8 walks are a few per cent of it: deezer_europe missed the retrain's
# AUC by 0.012-0.018 at 8 and met it at 16; the fifteenth binds only past c = 120 and costs at most
# 0.8 x the change share of a retrain's tokens (docs/incremental.md, "Why these defaults").
EDGE_WALK_SHARE = 1 / 4
EDGE_WALKS_MAX = 8
EDGE_WALK_SPARSE_SHARE = 1 / 15


@nb.njit(inline="always")
def hogbatch_frozen(W_in, W_out, trainable, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab):
    """sgns_parts.hogbatch that adds the input-side step only to rows where trainable[row]."""
    dim = W_in.shape[1]
    for c in range(B):
        crow = ctx[c]
        for d in range(dim):
            Cb[c, d] = W_in[crow, d]
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            Ob[o, d] = W_out[orow, d]
    loss = window_step(Cb, Ob, B, nout, g, dIn, lr, sig_tab, logsig_tab)
    for o in range(nout):
        orow = outs[o]
        for d in range(dim):
            W_out[orow, d] += Ob[o, d]
    for c in range(B):
        crow = ctx[c]
        if trainable[crow]:
            for d in range(dim):
                W_in[crow, d] += dIn[c, d]
    return loss


@nb.njit(fastmath=True, cache=True, nogil=True)
def _frozen_chunk(tokens, offsets, s_lo, s_hi, W_in, W_out, trainable, keep_thr, use_sample, alias_thr, alias_idx,
                  sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base, work_total, seed, epoch, nblocks,
                  maxlen, sent_loss, sent_pairs, thread, nthreads):
    """HogBatch SGNS on sentences [s_lo, s_hi) (the default kernel's shared-negatives path,
    skipgram._ablation_blocks at mode 0) that writes an input row only where trainable[row]: frozen rows are
    read, never written."""
    nsent = s_hi - s_lo
    dim = W_in.shape[1]
    nout_max = negatives + 1
    cmax = 2 * window
    for blk in range(thread, nblocks, nthreads):     # this thread's blocks (run_on_threads)
        a = s_lo + (nsent * blk) // nblocks
        b = s_lo + (nsent * (blk + 1)) // nblocks
        buf = np.empty(maxlen, np.int32)
        pos = np.empty(maxlen, np.int64)
        ctx = np.empty(cmax, np.int32)
        outs = np.empty(nout_max, np.int32)
        g = np.empty((cmax, nout_max), np.float32)
        dIn = np.empty((cmax, dim), np.float32)
        Cb = np.empty((cmax, dim), np.float32)
        Ob = np.empty((nout_max, dim), np.float32)
        for s in range(a, b):
            state, n = kept_tokens(tokens, offsets[s], offsets[s + 1], keep_thr, use_sample,
                                    seed_state(seed, epoch, s), buf, pos)
            loss = 0.0
            pairs = 0
            for i in range(n):
                state, B = window_contexts(state, buf, n, i, window, ctx)
                if B == 0:
                    continue
                lr = linear_lr(lr0, min_lr, pos_base + pos[i], work_total)
                state, nout = draw_negatives(state, outs, buf[i], negatives, alias_thr, alias_idx)
                loss += hogbatch_frozen(W_in, W_out, trainable, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab,
                                        logsig_tab)
                pairs += B
            sent_loss[s - s_lo] = loss
            sent_pairs[s - s_lo] = pairs


def train_frozen(tokens: np.ndarray, offsets: np.ndarray, W_in: np.ndarray, W_out: np.ndarray,
                 trainable: np.ndarray, counts: np.ndarray, train: TrainConfig, threads: int = 0) -> dict:
    """Skip-gram on sentences tokens[offsets[s]:offsets[s+1]] that updates W_in (rows where
    `trainable`) and W_out IN PLACE, noise from `counts` ** ns_exponent, the learning rate decaying
    linearly from train.lr to train.min_lr over train.epochs passes. Returns the training figures."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    alias_thr, alias_idx = noise_alias(np.asarray(counts, dtype=np.int64), train.ns_exponent)
    keep = keep_thresholds(np.asarray(counts, dtype=np.int64), train.sample)
    sig_tab, logsig_tab = sigmoid_tables()
    S = len(offsets) - 1
    per_epoch = int(offsets[-1] - offsets[0]) if S else 0
    maxlen = int(np.diff(offsets).max()) if S else 0
    chunks = sentence_chunks(offsets, max(65536, per_epoch // 20))
    nthreads = numba_threads(threads)
    loss = np.zeros(S, np.float64)
    pairs = np.zeros(S, np.int64)
    mask = np.ascontiguousarray(trainable, dtype=np.bool_)
    t0 = time.perf_counter()
    total_pairs = 0
    for ep in range(train.epochs):
        pos_base = ep * per_epoch - int(offsets[0]) if S else 0
        for lo, hi in chunks:
            args = (tokens, offsets, lo, hi, W_in, W_out, mask, keep, train.sample > 0, alias_thr, alias_idx,
                    sig_tab, logsig_tab, int(train.window), int(train.negatives), float(train.lr),
                    float(train.min_lr), pos_base, float(max(1, per_epoch * train.epochs)), int(train.seed),
                    ep, blocks_per_chunk(nthreads, hi - lo), maxlen, loss[lo:hi], pairs[lo:hi])
            run_on_threads(lambda t: _frozen_chunk(*args, t, nthreads), nthreads)
        total_pairs += int(pairs.sum())
    seconds = time.perf_counter() - t0
    tok = int(np.count_nonzero(tokens[offsets[0]:offsets[-1]] >= 0)) * train.epochs if S else 0
    return {"tokens": tok, "pairs": total_pairs, "seconds": round(seconds, 4),
            "tokens_per_s": tok / seconds if seconds > 0 else 0.0,
            "loss_last": float(loss.sum() / max(1, pairs.sum())), "threads": nthreads, "engine": "numba-frozen"}


# ---------------------------------------------------------------------------- the update plan

@dataclass
class UpdatePlan:
    """What an incremental run trains: start tables, the rows it may change, its walk starts."""
    W_in: np.ndarray           # float32 [n_new, dim], previous rows (new nodes: neighbour means)
    W_out: np.ndarray          # float32 [n_new, dim], previous context rows (new nodes: zero)
    trainable: np.ndarray      # bool [n_new]: the affected rows
    walks: np.ndarray          # int64 [n_new]: walks started from each node
    info: dict                 # counts for the run record


def start_tables(prev_in: np.ndarray, prev_out: np.ndarray, diff: GraphDiff, csr: CSRGraph, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(W_in, W_out) of the new graph's rows from the previous tables (see the module doc, 2.)."""
    n, dim = diff.num_new_nodes, prev_in.shape[1]
    old = diff.old_index
    W_in = np.zeros((n, dim), dtype=np.float32)
    W_out = np.zeros((n, dim), dtype=np.float32)
    kept = old >= 0
    W_in[kept] = prev_in[old[kept]]
    W_out[kept] = prev_out[old[kept]]
    rng = np.random.default_rng(seed)
    for v in np.flatnonzero(~kept):          # new nodes: few, one neighbour list each
        nb_ = neighbours_of(csr.indptr, csr.indices, np.array([v]))
        nb_ = nb_[kept[nb_]]
        if nb_.size:
            W_in[v] = W_in[nb_].mean(axis=0, dtype=np.float64).astype(np.float32)
        else:
            W_in[v] = (rng.random(dim, dtype=np.float32) - np.float32(0.5)) / np.float32(dim)
    return W_in, W_out


def walk_counts(diff: GraphDiff, csr: CSRGraph, walks_per_node: int) -> np.ndarray:
    """Whole walks per start node: walks_per_node from a new node, ceil(walks_per_node * removed
    incident edges / degree) from a node that lost edges (its neighbourhood shrank), none elsewhere
    (added edges get edge walks: `edge_walks`)."""
    n = diff.num_new_nodes
    ends = diff.edges_removed.ravel()
    touched = np.bincount(ends[ends >= 0], minlength=n).astype(np.float64)
    deg = np.maximum(np.diff(csr.indptr), 1).astype(np.float64)
    walks = np.ceil(walks_per_node * np.minimum(touched / deg, 1.0)).astype(np.int64)
    walks[diff.old_index < 0] = walks_per_node
    walks[np.diff(csr.indptr) == 0] = 0         # a node without arcs walks nowhere
    return walks


def crossing_edges(diff: GraphDiff) -> np.ndarray:
    """int64 [k, 2]: the added and reweighted edges between nodes of the previous graph (a new
    node's edges are walked by its own walks)."""
    e = np.concatenate([diff.edges_added, diff.edges_reweighted])
    old = diff.old_index
    return e[(old[e[:, 0]] >= 0) & (old[e[:, 1]] >= 0)] if len(e) else e


def edge_walks_per_edge(csr: CSRGraph, walks_per_node: int, length: int, setting: int | None) -> int:
    """Walks to centre on each added edge: `setting` when given, else EDGE_WALK_SHARE of the times a
    retrain's walks cross one edge (walks_per_node x (length - 1) steps from each node, spread over
    the graph's edges), between 1 and EDGE_WALKS_MAX, raised to EDGE_WALK_SPARSE_SHARE of those
    crossings where that is more. A retrain trains an edge's pairs that many times; the update's
    walks start from trained rows and need a share of it, a smaller share where the crossings are
    many (a sparse graph), but one that grows with them."""
    if setting is not None:
        return int(setting)
    edges = csr.indices.size if csr.directed else csr.indices.size // 2
    crossings = walks_per_node * max(length - 1, 0) * csr.num_nodes / max(edges, 1)
    dense = min(EDGE_WALKS_MAX, max(1, int(round(EDGE_WALK_SHARE * crossings))))
    return max(dense, int(round(EDGE_WALK_SPARSE_SHARE * crossings)))


def edge_walks(csr: tuple, edges: np.ndarray, per_edge: int, walk_cfg: WalkConfig, side: int, mode: str,
               threads: int = 0) -> np.ndarray:
    """`per_edge` walks centred on each edge (u, v): a walk of `side` steps from u, reversed, then
    one of `side` steps from v, so the pairs the new edge brings within 2 x side are trained
    (walk numbers walks_per_node + j from u and from v: other draws than the node's own walks).
    Returns int32 [per_edge * k, 2 * side + 2], left-justified, -1 padded."""
    from embedlake.workers.graph.walks import random_walks
    indptr, indices, weights, directed = csr
    if per_edge <= 0 or len(edges) == 0:
        return np.zeros((0, 2 * side + 2), dtype=np.int32)
    # one call per side: row j * k + i is walk walks_per_node + j from edges[i] (random_walks' order)
    left, right = (random_walks(indptr, indices, weights, edges[:, end], per_edge, side + 1, walk_cfg.seed,
                                p=walk_cfg.p, q=walk_cfg.q, mode=mode, threads=threads, symmetric=not directed,
                                walk_offset=walk_cfg.walks_per_node) for end in (0, 1))
    return join_reversed(left, right)


def update_lr_scale(train: TrainConfig, diff: GraphDiff) -> float:
    """The update's learning rate as a share of train.lr: train.incremental_lr_scale where the
    change gives every node at least one changed edge end on average (2 x changed edges / nodes >= 1),
    and x (1 / that density) ** incremental_lr_rise below it, at most 1. A row near a new edge is
    trained by that edge's walks and by those of the other new edges around it: where the change is
    sparse there are few of the latter, and at one rate its new edges stay under-trained (PPI at 1 %
    new edges, 0.19 changed ends per node: Hadamard AUC -0.049 against the retrains at 0.4 x lr,
    -0.016 at 0.5, +0.011 at 0.6; BlogCatalog at 1 %, 0.65 per node: -0.007 at 0.4, +0.010 at 0.55;
    both at 5 %, >= 1 per node: met at 0.4; docs/incremental.md)."""
    changed = len(diff.edges_added) + len(diff.edges_removed) + len(diff.edges_reweighted)
    per_node = 2.0 * changed / max(diff.num_new_nodes, 1)
    rise = (1.0 / max(per_node, 1e-9)) ** train.incremental_lr_rise
    return float(min(1.0, train.incremental_lr_scale * max(1.0, rise)))


def edge_walk_side(window: int) -> int:
    """Steps an edge walk takes out from each end: half the window. The dynamic window trains a
    pair d apart with probability (window - d + 1) / window, so most of the pairs a new edge brings
    lie within window // 2 of it. PPI, 5 % new edges, 0.3 x lr: 16 walks of 2 x 5 steps (377k
    tokens) gave an added-edge AUC of 0.908 and Micro-F1@50 % of 0.223, 8 walks of 2 x 10 steps
    (345k tokens) 0.852 and 0.219 (retrain: 0.884 and 0.228, means of three seeds)."""
    return max(1, int(window) // 2)


def join_reversed(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row r: left[r]'s valid prefix reversed, then right[r] (both -1 padded at the tail)."""
    r, L = left.shape
    lens = (left >= 0).sum(axis=1)
    out = np.full((r, L + right.shape[1]), -1, dtype=np.int32)
    j = np.arange(L)
    src = np.clip(lens[:, None] - 1 - j[None, :], 0, L - 1)
    keep = j[None, :] < lens[:, None]
    out[:, :L] = np.where(keep, np.take_along_axis(left, src, axis=1), -1)
    cols = lens[:, None] + np.arange(right.shape[1])[None, :]
    np.put_along_axis(out, cols, right, axis=1)
    return out


def noise_counts(csr: CSRGraph) -> np.ndarray:
    """The new graph's noise distribution: what a full run's visit counts converge to, the degree
    (in-degree on a directed graph: arrivals), at least 1 so every node can be a negative."""
    if csr.directed:
        return np.bincount(csr.indices, minlength=csr.num_nodes).astype(np.int64) + 1
    return np.diff(csr.indptr).astype(np.int64) + 1


def update_plan(prev_in: np.ndarray, prev_out: np.ndarray, diff: GraphDiff, csr: CSRGraph, radius: int,
                walks_per_node: int, seed: int) -> UpdatePlan:
    """The whole plan of an incremental run from the previous tables and the diff."""
    trainable = affected_nodes(csr, diff.changed, radius)
    W_in, W_out = start_tables(prev_in, prev_out, diff, csr, seed)
    walks = walk_counts(diff, csr, walks_per_node)
    info = {**diff.counts(), "affected_nodes": int(trainable.sum()), "nodes": diff.num_new_nodes,
            "walk_starts": int(np.count_nonzero(walks)), "radius": int(radius)}
    return UpdatePlan(W_in, W_out, trainable, walks, info)


def planned_walks(csr: tuple, walks: np.ndarray, walk_cfg: WalkConfig, mode: str, threads: int = 0) -> np.ndarray:
    """The plan's walks: walk numbers 0 .. walks[v]-1 from every node v (walk k from v is the walk a
    full run draws as its k-th from v on this graph), one random_walks call per walk number."""
    from embedlake.workers.graph.walks import random_walks
    indptr, indices, weights, directed = csr
    out = []
    for k in range(int(walks.max(initial=0))):
        starts = np.flatnonzero(walks > k)
        out.append(random_walks(indptr, indices, weights, starts, 1, walk_cfg.length, walk_cfg.seed, p=walk_cfg.p,
                                q=walk_cfg.q, mode=mode, threads=threads, symmetric=not directed, walk_offset=k))
    return np.concatenate(out) if out else np.zeros((0, walk_cfg.length), dtype=np.int32)


def joined_sentences(blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of several padded walk matrices, one after the other."""
    from embedlake.workers.graph.walks import walks_to_sentences
    toks, offs, base = [], [np.zeros(1, np.int64)], 0
    for b in blocks:
        t, o = walks_to_sentences(b)
        toks.append(t)
        offs.append(o[1:] + base)
        base += len(t)
    return np.concatenate(toks), np.concatenate(offs)


# ---------------------------------------------------------------------------- lake I/O

def partition_of(path: str) -> int:
    m = re.search(r"partition=(\d+)", path)
    return int(m.group(1)) if m else 0


def read_table(lake: Lake, entries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(node ids, float32 [rows, dim]) of a committed table from its files, in partition order
    (= the dense row order of the run's graph)."""
    import pyarrow as pa
    ids, vecs = [], []
    for e in sorted(entries, key=lambda e: partition_of(e["path"])):
        t = lake.read_parquet(e["path"], columns=["node", "vector"])
        col = t.column("vector").combine_chunks()
        d = len(col[0].values) if len(col) else 0
        vecs.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d))
        node = t.column("node")
        ids.append(node.to_numpy() if not pa.types.is_string(node.type) else
                   np.asarray(node.to_pylist(), dtype=object))
    return np.concatenate(ids), np.concatenate(vecs)


def context_path(dataset: str, method: str, run_id: str) -> str:
    """Where a walk run's context table (W_out) lives: internal, named in the run record."""
    return f"{Lake.run_dir('state', dataset, method, run_id)}/w_out.npy"


def write_context(lake: Lake | str, dataset: str, method: str, run_id: str, W_out: np.ndarray) -> dict:
    """Write a run's context table (what the next incremental run starts its W_out from)."""
    return Lake(lake).write_npy(context_path(dataset, method, run_id), np.asarray(W_out, dtype=np.float32)).to_dict()


def diff_stage(lake: Lake | str, dataset: str, prev_version: str, csr: tuple, node_ids: np.ndarray
               ) -> tuple[GraphDiff, dict, np.ndarray]:
    """(diff, its counts, the previous version's node ids in its dense order) of the previous run's
    graph version (read from the lake) and the graph in hand: the diff and the ids stay in the
    object store, only the counts go to the driver."""
    from embedlake.workers.graph.store import read_graph
    t0 = time.perf_counter()
    old_csr, old_ids, _, _ = read_graph(Lake(lake), dataset, prev_version)
    indptr, indices, weights, directed = csr
    diff = graph_diff(old_ids, old_csr, node_ids, CSRGraph(indptr, indices, weights, bool(directed)))
    return diff, {**diff.counts(), "diff_s": round(time.perf_counter() - t0, 4)}, old_ids


def previous_csr(lake: Lake | str, dataset: str, version: str) -> tuple:
    """The CSR tuple (indptr, indices, weights, directed) of a graph version in the lake."""
    from embedlake.workers.graph.store import read_graph
    g, _, _, _ = read_graph(Lake(lake), dataset, version)
    return g.indptr, g.indices, g.weights, g.directed


def old_index_of(diff: GraphDiff) -> np.ndarray:
    """The diff's old_index (each new row's row in the previous version, -1 for new nodes)."""
    return diff.old_index


def incremental_stage(lake: Lake | str, prev_table: list[dict], prev_context: str, diff: GraphDiff,
                      prev_ids: np.ndarray, csr: tuple, walk_cfg: WalkConfig, train: TrainConfig, mode: str,
                      radius: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One Ray task: the previous tables from the lake (W_in put in the previous graph's dense order,
    W_out's order), then `update_tables`. Returns (W_in, W_out, info)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    lake = Lake(lake)
    ids, table = read_table(lake, prev_table)
    prev_in = rows_in_dense_order(ids, table, prev_ids)
    prev_out = lake.read_npy(prev_context)
    read_s = round(time.perf_counter() - t0, 4)
    W_in, W_out, info = update_tables(prev_in, prev_out, diff, csr, walk_cfg, train, mode, radius, threads)
    return W_in, W_out, {**info, "read_s": read_s, "task_cpu_s": round(time.process_time() - cpu0, 3)}


def rows_in_dense_order(ids: np.ndarray, table: np.ndarray, dense_ids: np.ndarray) -> np.ndarray:
    """The table's rows reordered to `dense_ids` (a graph version's node ids by dense row). A full
    run's files are row ranges, already in that order; an update's are hashed partitions (rows
    grouped by a hash of the id), which are not, and the context table W_out is always in dense
    order. Raises when the table lacks a node of the version."""
    at = match_ids(ids, dense_ids)
    if (at < 0).any():
        raise ValueError(f"the previous table lacks {int((at < 0).sum())} of its graph's {len(dense_ids)} nodes "
                         f"(e.g. {dense_ids[np.flatnonzero(at < 0)[0]]!r})")
    return table[at]


def update_tables(prev_in: np.ndarray, prev_out: np.ndarray, diff: GraphDiff, csr: tuple, walk_cfg: WalkConfig,
                  train: TrainConfig, mode: str, radius: int, threads: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """The update from the previous tables in hand: plan -> walks -> frozen training (no lake I/O, so
    bench/bench_incremental.py's sweep runs exactly what a run does). Returns (W_in, W_out, info)."""
    t0 = time.perf_counter()
    graph = CSRGraph(csr[0], csr[1], csr[2], bool(csr[3]))
    plan = update_plan(prev_in, prev_out, diff, graph, radius, walk_cfg.walks_per_node, train.seed)
    t1 = time.perf_counter()
    node_walks = planned_walks(csr, plan.walks, walk_cfg, mode, threads)
    crossing = crossing_edges(diff)
    per_edge = edge_walks_per_edge(graph, walk_cfg.walks_per_node, walk_cfg.length, train.incremental_edge_walks)
    centred = edge_walks(csr, crossing, per_edge, walk_cfg, edge_walk_side(train.window), mode, threads)
    tokens, offsets = joined_sentences([node_walks, centred])
    t2 = time.perf_counter()
    lr_scale = update_lr_scale(train, diff)
    update_train = train.model_copy(update={"lr": train.lr * lr_scale})
    stats = train_frozen(tokens, offsets, plan.W_in, plan.W_out, plan.trainable, noise_counts(graph), update_train,
                         threads)
    info = {**plan.info, **stats, "walks": len(node_walks) + len(centred), "node_walks": len(node_walks),
            "edge_walks": len(centred), "edge_walks_per_edge": per_edge, "lr_scale": round(lr_scale, 4),
            "plan_s": round(t1 - t0, 4),
            "walk_s": round(t2 - t1, 4)}
    return plan.W_in, plan.W_out, info
