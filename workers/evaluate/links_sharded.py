"""Link prediction on a sharded graph (issue 17): the hold-out, the non-edges and the pairs' rows,
with no task holding the whole graph or table.

Graph shards are contiguous node ranges (workers/graph/shards.py); shard s holds the out-arcs of
its nodes, so an undirected edge {u, v} is two arcs in (up to) two shards. Every ``shard_*``
function below is the work of one Ray task on ONE shard, ``fn(csr, lo, *args)`` with the shard's
CSR tuple (local indptr, global neighbour ids) and its first node. ``sharded_holdout`` and
``sharded_non_edges`` coordinate them through two callbacks, so the same code runs on Ray
(tasks/evaluate.py) and in a test without it:

    call(shard, fn, *args, returns=k) -> k futures of fn(csr_s, lo_s, *args)
    call(None, fn, *args, returns=k)  -> k futures of fn(*args) (a task on no shard)
    get(futures) -> values

Why not ``split_edges`` (links.py) per shard: it takes the edges greedily in one seeded order of
ALL edges, decrementing a global degree array, so whether an edge is held out depends on earlier
edges of other shards. Here every decision is a function of the graph and the seed alone:

- **Candidates**: edge (u, v) (undirected: u < v) is a candidate when a counter-based hash of
  (seed, u, v) falls below eval.test_edge_share. Both arcs of an undirected edge draw the same.
- **Degree rule**: a candidate is held out unless one of its endpoints is *blocked*: a node whose
  every edge is a candidate (degree counted over in- and out-arcs for directed graphs, self-loops
  left out, as ``split_edges`` counts it). So every node keeps an edge if it had one. A blocked
  node's owner sends it to the owners of its candidate edges' other endpoints (one round of small
  messages; a directed graph first sends each owner its nodes' in-degree counts, one more round).
- **Non-edges**: every node u draws pairs (u, v) as a Poisson process of rate 1 in a time t (the
  gaps and v are hashes of (seed, u, draw number)); u's owner drops pairs that are arcs of u's row
  of the FULL graph, v == u, v already drawn by u and, undirected, v < u (each unordered pair has
  one way to be drawn: no duplicates across shards). The non-edges are the ``count`` surviving
  pairs of smallest t: the draw is uniform over the non-edges, a shard's share of them is its
  share of the pairs, and the set does not depend on S (nor on the horizon the shards drew to).

So for any S >= 1 the held-out edges, the train graph (gathered) and the non-edges are the same
(tests/test_links_sharded.py). They are NOT ``split_edges``' (a different algorithm): the hold-out
takes every candidate it can, so its size is the share drawn minus the blocked ones, close to
but not exactly round(test_share * edges); the pipeline keeps ``split_edges`` for one shard.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from embedlake.workers.evaluate.geometry import mix64
from embedlake.workers.graph.shards import owner_of, shard_starts

EDGE_SALT = 0x51ED
GAP_SALT = 0x9A9
PARTNER_SALT = 0x7A27
TWO_POW_53 = 2.0 ** -53
ROUTE_DTYPE = np.int32          # node ids in messages and pair lists (CSR indices are int32)


# ---------------------------------------------------------------------------------------------
# counter-based draws
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def unit_draw(seed, a, b, salt):
    """A uniform float in [0, 1) that is a function of (seed, a, b, salt) alone."""
    key = mix64(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt))
    z = mix64(key ^ ((np.uint64(a) << np.uint64(32)) | np.uint64(b)))
    return np.float64(z >> np.uint64(11)) * TWO_POW_53


ORDINARY, CANDIDATE, LOOP = 0, 1, 2       # an arc's kind (uint8 per arc: the only per-arc temporary)


@numba.njit(cache=True, nogil=True)
def _arc_kinds(indptr, indices, lo, share, seed, directed):
    """Per arc its kind (self-loop, candidate or not); per row its non-loop arcs and candidates."""
    kind = np.zeros(indices.size, dtype=np.uint8)
    deg = np.zeros(indptr.size - 1, dtype=np.int64)
    ncand = np.zeros(indptr.size - 1, dtype=np.int64)
    for r in range(indptr.size - 1):
        u = lo + r
        for k in range(indptr[r], indptr[r + 1]):
            v = np.int64(indices[k])
            if v == u:
                kind[k] = LOOP
                continue
            deg[r] += 1
            a, b = (u, v) if directed or u < v else (v, u)
            if unit_draw(seed, a, b, EDGE_SALT) < share:
                kind[k] = CANDIDATE
                ncand[r] += 1
    return kind, deg, ncand


@numba.njit(cache=True, nogil=True)
def _is_in(sorted_nodes, v):
    pos = np.searchsorted(sorted_nodes, v)
    return pos < sorted_nodes.size and sorted_nodes[pos] == v


@numba.njit(cache=True, nogil=True)
def _blocked_arcs(indptr, indices, kind, blocked_rows):
    """(row, neighbour) of every candidate arc of the blocked rows (ascending rows)."""
    count = 0
    for r in blocked_rows:
        for k in range(indptr[r], indptr[r + 1]):
            count += kind[k] == CANDIDATE
    rows = np.empty(count, np.int64)
    nbrs = np.empty(count, np.int64)
    i = 0
    for r in blocked_rows:
        for k in range(indptr[r], indptr[r + 1]):
            if kind[k] == CANDIDATE:
                rows[i], nbrs[i] = r, indices[k]
                i += 1
    return rows, nbrs


@numba.njit(cache=True, nogil=True)
def _hold_out(indptr, indices, lo, kind, stop, directed):
    """Marks the held-out arcs (candidates with no endpoint in ``stop``) and the self-loops as
    dropped (kind > CANDIDATE, in place); returns the train rows' arc counts, the held-out edges,
    the train edges and the candidates (an undirected edge counted once: u < v)."""
    counts = np.zeros(indptr.size - 1, np.int64)
    held = 0
    kept = 0
    drawn = 0
    for r in range(indptr.size - 1):
        u = lo + r
        u_stop = _is_in(stop, u)
        for k in range(indptr[r], indptr[r + 1]):
            v = np.int64(indices[k])
            drawn += kind[k] == CANDIDATE and (directed or u < v)
            if kind[k] == CANDIDATE and not u_stop and not _is_in(stop, v):
                kind[k] = LOOP + 1
                held += directed or u < v
            elif kind[k] != LOOP:
                counts[r] += 1
                kept += directed or u < v
    test = np.empty((held, 2), np.int32)
    i = 0
    for r in range(indptr.size - 1):
        for k in range(indptr[r], indptr[r + 1]):
            if kind[k] == LOOP + 1 and (directed or lo + r < indices[k]):
                test[i, 0], test[i, 1] = lo + r, indices[k]
                i += 1
    return counts, test, kept, drawn


def as_returns(pieces: list):
    """One piece per shard as a task's return values: the list, or its one item when S = 1 (a
    Ray task with num_returns=1 returns its value as one object)."""
    return pieces[0] if len(pieces) == 1 else pieces


def _by_shard(bounds, nodes: np.ndarray, *columns: np.ndarray) -> list[tuple]:
    """(nodes, *columns) split into one piece per shard owning the nodes (nodes ascending)."""
    cuts = np.searchsorted(nodes, shard_starts(bounds))
    return [tuple(c[cuts[t]:cuts[t + 1]] for c in (nodes, *columns)) for t in range(len(bounds))]


# ---------------------------------------------------------------------------------------------
# the hold-out: one shard's work (a Ray task each)
# ---------------------------------------------------------------------------------------------

def shard_in_counts(csr, lo: int, bounds, share: float, seed: int):
    """Directed graphs, round 1: for each shard t, (its nodes that this shard's arcs point to,
    their in-arc counts from here, their candidate in-arc counts from here), ascending."""
    indptr, indices = np.asarray(csr[0]), np.asarray(csr[1])
    kind, _, _ = _arc_kinds(indptr, indices, lo, share, seed, True)
    nodes, arcs = _run_lengths(indices[kind != LOOP])
    cand_nodes, cand_arcs = _run_lengths(indices[kind == CANDIDATE])
    cands = np.zeros(nodes.size, ROUTE_DTYPE)
    cands[np.searchsorted(nodes, cand_nodes)] = cand_arcs
    return as_returns(_by_shard(bounds, nodes, arcs, cands))


def _run_lengths(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct nodes ascending, how often each occurs), sorting ``nodes`` (a copy) in place."""
    nodes = np.sort(nodes.astype(ROUTE_DTYPE))
    starts = np.flatnonzero(np.concatenate(([True], nodes[1:] != nodes[:-1]))) if nodes.size else np.zeros(0, int)
    return nodes[starts], np.diff(np.append(starts, nodes.size)).astype(ROUTE_DTYPE)


def shard_blocked(csr, lo: int, bounds, share: float, seed: int, *in_counts: tuple):
    """Round 2 (the only one for undirected graphs): this shard's blocked nodes (every edge a
    candidate), sent to shard t when t holds the other arc of one of their candidate edges
    (undirected: a candidate arc of theirs points into t; directed: t sent a candidate in-arc
    count for them), and all of them to this shard itself. ``in_counts``: the pieces for this shard
    of every shard's ``shard_in_counts`` (directed only)."""
    indptr, indices = np.asarray(csr[0]), np.asarray(csr[1])
    directed = bool(csr[3])
    kind, deg, ncand = _arc_kinds(indptr, indices, lo, share, seed, directed)
    for nodes, arcs, cands in in_counts:               # a piece lists each node once
        deg[nodes.astype(np.int64) - lo] += arcs
        ncand[nodes.astype(np.int64) - lo] += cands
    blocked = np.flatnonzero((ncand > 0) & (deg - ncand < 1))
    mine = blocked + lo
    if directed:
        out = [np.intersect1d(nodes[cands > 0].astype(np.int64), mine) for nodes, _, cands in in_counts]
    else:
        rows, nbrs = _blocked_arcs(indptr, indices, kind, blocked)
        out = _routed(bounds, owner_of(shard_starts(bounds), nbrs), rows + lo)
    for t, (tlo, thi) in enumerate(bounds):
        if thi > tlo == lo:
            out[t] = mine
    return as_returns([o.astype(ROUTE_DTYPE) for o in out])


def _routed(bounds, owners: np.ndarray, nodes: np.ndarray) -> list[np.ndarray]:
    """For each shard t, the distinct ``nodes`` whose entry in ``owners`` is t (ascending)."""
    span = np.int64(bounds[-1][1] + 1)
    key = np.unique(owners.astype(np.int64) * span + nodes.astype(np.int64))
    cuts = np.searchsorted(key, np.arange(len(bounds) + 1, dtype=np.int64) * span)
    return [key[cuts[t]:cuts[t + 1]] - t * span for t in range(len(bounds))]


def shard_apply_holdout(csr, lo: int, share: float, seed: int, *blocked: np.ndarray):
    """Round 3: the shard's train CSR tuple (its arcs less self-loops and held-out edges: a
    candidate neither of whose endpoints is blocked), its held-out edges as int32 [k, 2] (an
    undirected edge once, by the owner of its smaller end) and counts for the summary.
    ``blocked``: every shard's blocked nodes sent to this one. Memory: one byte per arc besides
    the train rows it returns."""
    indptr, indices, weights, directed = csr
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    kind, _, _ = _arc_kinds(indptr, indices, lo, share, seed, bool(directed))
    stop = np.unique(np.concatenate([np.asarray(b, np.int64) for b in blocked] or [np.empty(0, np.int64)]))
    counts, test, kept, drawn = _hold_out(indptr, indices, lo, kind, stop, bool(directed))
    keep = kind <= CANDIDATE
    train_indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    train = (train_indptr, indices[keep], None if weights is None else np.asarray(weights)[keep], bool(directed))
    stats = {"test_edges": int(test.shape[0]), "train_edges": int(kept), "train_arcs": int(train_indptr[-1]),
             "candidates": int(drawn)}
    return train, test, stats


# ---------------------------------------------------------------------------------------------
# non-edges: one shard's work
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _arrivals(indptr, indices, lo, n, horizon, seed, directed, out_t, out_u, out_v):
    """Each row's pairs drawn before `horizon` that survive (see the module docstring), written
    to out_*; returns how many, or -1 when they do not fit (the caller retries with more room)."""
    got = 0
    for r in range(indptr.size - 1):
        u = lo + r
        a, b = indptr[r], indptr[r + 1]
        first = got
        t = 0.0
        j = 0
        while True:
            t -= math.log1p(-unit_draw(seed, u, j, GAP_SALT))
            if t >= horizon:
                break
            v = np.int64(unit_draw(seed, u, j, PARTNER_SALT) * n)
            j += 1
            if v == u or (not directed and v < u):
                continue
            pos = a + np.searchsorted(indices[a:b], v)
            if pos < b and indices[pos] == v:
                continue
            seen = False
            for k in range(first, got):
                seen |= out_v[k] == v
            if seen:
                continue
            if got == out_t.size:
                return -1
            out_t[got], out_u[got], out_v[got] = t, u, v
            got += 1
    return got


def shard_non_edge_draws(csr, lo: int, num_nodes: int, horizon: float, seed: int):
    """(times float64 [k] ascending, pairs int32 [k, 2]) of the shard's surviving draws before
    ``horizon``, tested against the shard's rows of the FULL graph."""
    indptr, indices = np.asarray(csr[0], np.int64), np.asarray(csr[1])
    rows = indptr.size - 1
    cap = int(rows * horizon * 1.25 + 6 * math.sqrt(rows * horizon + 1) + 16)
    while True:
        t, u, v = np.empty(cap, np.float64), np.empty(cap, np.int64), np.empty(cap, np.int64)
        got = _arrivals(indptr, indices, lo, num_nodes, horizon, seed, bool(csr[3]), t, u, v)
        if got >= 0:
            break
        cap *= 2
    order = np.argsort(t[:got], kind="stable")
    return t[:got][order], np.stack([u[:got][order], v[:got][order]], axis=1).astype(ROUTE_DTYPE).reshape(-1, 2)


def non_edge_cut(count: int, *times: np.ndarray) -> float | None:
    """The time of the ``count``-th surviving draw over all shards (None: fewer survived)."""
    allt = np.concatenate([np.asarray(t, np.float64) for t in times] or [np.empty(0)])
    if allt.size < count:
        return None
    return float(np.partition(allt, count - 1)[count - 1]) if count else 0.0


# ---------------------------------------------------------------------------------------------
# the coordinators
# ---------------------------------------------------------------------------------------------

@dataclass
class ShardedSplit:
    """A sharded graph's link-prediction split; the per-shard entries are the callback's futures
    (ObjectRefs on Ray). The non-edges are the ``count`` draws of smallest time among the shards'
    draws (``times`` / ``pairs``), all of whose times are at most ``cut``."""
    train: list              # per shard: the train CSR tuple (local indptr, global ids)
    train_arcs: list[int]    # per shard: its train CSR's arcs
    tests: list              # per shard: held-out edges int32 [k, 2]
    times: list              # per shard: times of the surviving non-edge draws, ascending
    pairs: list              # per shard: those draws' pairs int32 [k, 2]
    count: int               # non-edges taken (= held-out edges)
    cut: float
    info: dict


def in_process_caller(csr, S: int) -> tuple[Callable, Callable, list[tuple[int, int]]]:
    """(call, get, bounds) that run the coordinators below in this process on the S shards of
    `csr`: what tasks/evaluate.py does through Ray, for tests and benches without it."""
    from embedlake.workers.graph.shards import shard_bounds, split_csr
    bounds = shard_bounds(csr.num_nodes, S)
    shards = [s.as_tuple() for s in split_csr(csr, bounds)]

    def call(s, fn, *args, returns=1):
        out = fn(*args) if s is None else fn(shards[s], bounds[s][0], *args)
        return list(out) if returns > 1 else [out]
    return call, list, bounds


def sharded_holdout(call: Callable, get: Callable, bounds: list[tuple[int, int]], directed: bool,
                    share: float, seed: int) -> ShardedSplit:
    """The hold-out and the non-edges of a sharded graph (module docstring): 2 rounds of per-shard
    tasks (3 for a directed graph), then the non-edge draws. Split seed ``seed``, non-edges
    ``seed + 1`` (as ``holdout_stage``)."""
    if not 0 < share < 1:
        raise ValueError(f"test_share {share} is not in (0, 1)")
    S = len(bounds)
    if directed:
        counts = [call(s, shard_in_counts, bounds, share, seed, returns=S) for s in range(S)]
        blocked = [call(t, shard_blocked, bounds, share, seed, *[counts[s][t] for s in range(S)], returns=S)
                   for t in range(S)]
    else:
        blocked = [call(s, shard_blocked, bounds, share, seed, returns=S) for s in range(S)]
    applied = [call(s, shard_apply_holdout, share, seed, *[blocked[t][s] for t in range(S)], returns=3)
               for s in range(S)]
    stats = get([a[2] for a in applied])
    total = {k: sum(st[k] for st in stats) for k in stats[0]}
    count = total["test_edges"]
    num_edges = count + total["train_edges"]
    times, pairs, cut, horizon = sharded_non_edges(call, get, bounds, directed, num_edges, count, seed + 1)
    info = {"split": "sharded", "shards": S, "test_share": float(share), "test_edges": count, "non_edges": count,
            "train_edges": total["train_edges"], "train_arcs": total["train_arcs"],
            "candidates": total["candidates"], "directed": bool(directed), "non_edge_horizon": horizon}
    return ShardedSplit([a[0] for a in applied], [st["train_arcs"] for st in stats], [a[1] for a in applied], times,
                        pairs, count, cut, info)


def sharded_non_edges(call: Callable, get: Callable, bounds: list[tuple[int, int]], directed: bool, num_edges: int,
                      count: int, seed: int, attempts: int = 40) -> tuple[list, list, float, float]:
    """Every shard's surviving non-edge draws up to a horizon that gives at least ``count`` of them
    (doubled until it does), and the cut: (times, pairs, cut, horizon)."""
    n = int(bounds[-1][1])
    pairs_all = n * (n - 1) // (1 if directed else 2)
    possible = pairs_all - int(num_edges)
    if count > possible:
        raise ValueError(f"asked for {count} non-edges but only {possible} exist")
    accept = (n - 1) / n * (1.0 if directed else 0.5) * possible / max(pairs_all, 1)
    horizon = (1.15 * count + 3 * math.sqrt(count) + 8) / (n * accept) if count else 0.0
    for _ in range(attempts):
        draws = [call(s, shard_non_edge_draws, n, horizon, seed, returns=2) for s in range(len(bounds))]
        cut = get(call(None, non_edge_cut, count, *[d[0] for d in draws]))[0]
        if cut is not None:
            return [d[0] for d in draws], [d[1] for d in draws], cut, horizon
        horizon *= 2
    raise ValueError(f"found fewer than {count} non-edges in {attempts} rounds of draws")


# ---------------------------------------------------------------------------------------------
# the pairs and their rows
# ---------------------------------------------------------------------------------------------

def link_pairs(tests: list, times: list, pairs: list, count: int) -> tuple[np.ndarray, ...]:
    """(pos_src, pos_dst, neg_src, neg_dst) int64 from the shards' pieces: held-out edges ordered by
    (src, dst), the ``count`` non-edges of smallest draw time in that order. The same for any S."""
    pos = np.concatenate([np.asarray(t, np.int64).reshape(-1, 2) for t in tests])
    pos = pos[np.lexsort((pos[:, 1], pos[:, 0]))]
    t = np.concatenate([np.asarray(x, np.float64) for x in times])
    neg = np.concatenate([np.asarray(p, np.int64).reshape(-1, 2) for p in pairs])
    neg = neg[np.lexsort((neg[:, 1], neg[:, 0], t))[:count]]
    return pos[:, 0], pos[:, 1], neg[:, 0], neg[:, 1]


def pair_endpoints(bounds: list[tuple[int, int]], cut: float, test: np.ndarray, times: np.ndarray,
                   pairs: np.ndarray):
    """The endpoints of one shard's held-out edges and non-edge draws up to ``cut`` (ascending,
    unique), one piece per shard that owns them (a Ray task per shard, returning S objects)."""
    t = np.asarray(times)
    ends = np.concatenate([np.asarray(test).reshape(-1), np.asarray(pairs)[t <= cut].reshape(-1)])
    nodes = np.unique(ends.astype(np.int64))
    return as_returns([piece[0].astype(ROUTE_DTYPE) for piece in _by_shard(bounds, nodes)])


def shard_pair_rows(csr, X, lo: int, *endpoints: np.ndarray) -> np.ndarray:
    """The shard's table rows of the pairs' endpoints it owns (every shard's ``pair_endpoints``
    piece for it), in ascending node order."""
    nodes = np.unique(np.concatenate([np.asarray(e, np.int64) for e in endpoints] or [np.empty(0, np.int64)]))
    return np.asarray(X)[nodes - lo]


def pairs_on_rows(tests: list, times: list, pairs: list, count: int, cut: float) -> tuple[np.ndarray, ...]:
    """``link_pairs`` with node ids replaced by positions among every endpoint (ascending): the
    positions of the rows that the shards' ``shard_pair_rows`` return, concatenated in shard order."""
    ends = [np.asarray(x, np.int64).reshape(-1) for x in tests]
    ends += [np.asarray(p, np.int64)[np.asarray(t) <= cut].reshape(-1) for t, p in zip(times, pairs)]
    nodes = np.unique(np.concatenate(ends))
    return tuple(np.searchsorted(nodes, a) for a in link_pairs(tests, times, pairs, count))


def sharded_link_stage(eval_cfg, operators: list[str], share: float, count: int, cut: float, shards: int,
                       *parts) -> dict:
    """``link_stage`` (workers/evaluate/stages.py) on a sharded table: ``parts`` are the S held-out
    edge pieces, the S non-edge time pieces, the S non-edge pair pieces and the S row pieces of
    ``shard_pair_rows``; the figures equal ``link_stage`` on the whole table with ``split_dict``."""
    from embedlake.workers.evaluate.stages import link_stage
    tests, times, pairs, rows = (parts[k * shards:(k + 1) * shards] for k in range(4))
    X = np.concatenate([np.asarray(r) for r in rows])
    ps, pd, ns, nd = pairs_on_rows(tests, times, pairs, count, cut)
    split = {"test_src": ps, "test_dst": pd, "neg_src": ns, "neg_dst": nd, "info": {"test_share": share}}
    return link_stage(X, split, eval_cfg, operators)


def split_dict(share: float, count: int, shards: int, *parts) -> dict:
    """The one-task split dict (``holdout_stage``'s) of a sharded split: ``parts`` are the S
    held-out edge pieces, the S time pieces and the S pair pieces (for a whole table)."""
    tests, times, pairs = (parts[k * shards:(k + 1) * shards] for k in range(3))
    ps, pd, ns, nd = link_pairs(tests, times, pairs, count)
    return {"test_src": ps, "test_dst": pd, "neg_src": ns, "neg_dst": nd, "info": {"test_share": share}}
