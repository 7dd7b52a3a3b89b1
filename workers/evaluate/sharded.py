"""Evaluation of a sharded graph (issue 22): reconstruction mAP and node classification's labelled
rows without any task holding the whole graph or table.

Graph shards are contiguous node ranges (workers/graph/shards.py); the table of a sharded engine is
one [hi - lo, d] piece per shard. Every ``shard_*`` function below is the work of one Ray task on
ONE shard: ``fn(csr, X, lo, *args)`` with the shard's CSR tuple (local indptr, global neighbour
ids), its table rows and its first node. ``sharded_reconstruction`` coordinates them in rounds
over blocks of queries through two callbacks, so the same code runs on Ray (tasks/evaluate.py)
and in a test without it:

    call(shard, fn, *args) -> a future of fn(csr_s, X_s, lo_s, *args);  get(futures) -> values

Why it equals the one-CSR ``reconstruction_map`` at the same seed (tests/test_eval_sharded.py):
the queries are the same draw from the same pool (``sample_nodes`` over the eligible nodes in
order); the hop rings are the same sets, found by breadth-first rounds across the shard owners
(each owner lists its frontier nodes' neighbours, the coordinator keeps the new ones), and both
engines sort a ring before sampling it; the last ring's sample replays the one-CSR kernel's draws
(``draw_nodes`` is a hash of (seed, query, hop, draw number), asked of the owners a chunk at a
time); the scores are the same float32 numbers (float64 sums of the block's query rows' products with
chunks of nodes at fixed offsets and of a fixed shape, `ChunkScores`, whichever shard holds the
rows); and a relevant node's denominator, the count of nodes scoring at least as high, is a sum
over shards of each shard's own count.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedlake.workers.evaluate.geometry import (LAST_RING_CHUNK, CandidateBlock, compared_rows, count_at_least,
                                                 draw_nodes, finish_block, max_candidates, pair_scores, query_block,
                                                 reconstruction_summary, sample_nodes, sort_segments,
                                                 stratified_candidates)
from embedlake.workers.graph.shards import owner_of, shard_starts


# ---------------------------------------------------------------------------------------------
# one shard's work (a Ray task each)
# ---------------------------------------------------------------------------------------------

def shard_eligible(csr, X, lo: int, ranks: np.ndarray | None = None) -> np.ndarray | int:
    """The shard's nodes with an arc to another node (ascending): their count, or those at
    ``ranks`` (positions in that list)."""
    indptr, indices = np.asarray(csr[0]), np.asarray(csr[1])
    rows = np.repeat(np.arange(lo, lo + indptr.size - 1, dtype=np.int64), np.diff(indptr))
    nodes = np.unique(rows[indices.astype(np.int64) != rows])
    return int(nodes.size) if ranks is None else nodes[np.asarray(ranks, dtype=np.int64)]


def shard_rows(csr, X, lo: int, nodes: np.ndarray, similarity: str | None = None) -> np.ndarray:
    """Table rows of the shard's ``nodes`` (global ids), as stored, or as the scorer compares them
    (``compared_rows``: unit rows for cosine, float32 for dot; row by row, as the one-CSR scorer)."""
    rows = np.asarray(X)[np.asarray(nodes, dtype=np.int64) - lo]
    return rows if similarity is None else compared_rows(rows, similarity)


def table_dim(csr, X, lo: int) -> int:
    """The table's dimension (a shard's rows tell)."""
    return int(np.shape(X)[1])


def shard_adjacency(csr, X, lo: int, nodes: np.ndarray, degrees_only: bool = False):
    """(degree of each of the shard's ``nodes``, their neighbour lists concatenated in that order);
    with ``degrees_only`` just the degrees."""
    indptr, indices = np.asarray(csr[0]), np.asarray(csr[1])
    loc = np.asarray(nodes, dtype=np.int64) - lo
    starts, deg = indptr[loc], indptr[loc + 1] - indptr[loc]
    if degrees_only:
        return deg
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(deg)[:-1])), deg)
    return deg, indices[offsets + np.arange(int(deg.sum()))]           # the shard's own dtype (int32)


def shard_scores(csr, X, lo: int, Uq: np.ndarray, qrow: np.ndarray, nodes: np.ndarray, similarity: str):
    """Scores of the shard's ``nodes`` against the query rows ``Uq[qrow]`` (pairwise, `pair_scores`)."""
    return pair_scores(X, lo, Uq, np.asarray(qrow, np.int64), np.asarray(nodes, np.int64), similarity)


def shard_counts(csr, X, lo: int, Uq: np.ndarray, srcs: np.ndarray, thresholds: np.ndarray,
                 offsets: np.ndarray, similarity: str, threads: int = 1) -> np.ndarray:
    """``count_at_least`` over the shard's rows: per query, the shard's nodes scoring at least each
    threshold (the coordinator adds up the shards' counts)."""
    ge = count_at_least(X, lo, Uq, np.asarray(srcs, np.int64), thresholds, np.asarray(offsets, np.int64), threads,
                        similarity)
    return ge.astype(np.int32) if lo + len(X) < 2**31 else ge          # a shard's counts: half the bytes


# ---------------------------------------------------------------------------------------------
# the coordinator
# ---------------------------------------------------------------------------------------------

@dataclass
class ShardedGraph:
    """What the coordinator knows of a sharded graph: its shards' node ranges and arc count.
    ``symmetric``: every arc has its reverse (an undirected graph; allows sampling the last ring)."""
    bounds: list[tuple[int, int]]
    num_arcs: int
    symmetric: bool
    starts: np.ndarray = field(init=False)

    def __post_init__(self):
        self.starts = shard_starts(self.bounds)

    @property
    def num_nodes(self) -> int:
        return int(self.bounds[-1][1])

    def by_owner(self, nodes: np.ndarray) -> list[np.ndarray]:
        """Positions in ``nodes`` of each shard's nodes (a list over shards)."""
        owner = owner_of(self.starts, nodes)
        order = np.argsort(owner, kind="stable")
        cuts = np.searchsorted(owner[order], np.arange(len(self.bounds) + 1))
        return [order[cuts[s]:cuts[s + 1]] for s in range(len(self.bounds))]


@dataclass
class Protocol:
    """reconstruction_map's settings (see there)."""
    hops: tuple[int, ...]
    seed: int
    similarity: str
    ring: bool
    ball_cap: int
    relevant_cap: int

    @property
    def max_hop(self) -> int:
        return self.hops[-1]


def sharded_reconstruction(call: Callable, get: Callable, graph: ShardedGraph, *, hops=(1, 2, 3), sample=2000,
                           seed=0, similarity="cosine", mode="ball", ball_cap=1_000_000, relevant_cap=0) -> dict:
    """``reconstruction_map`` of the table on a sharded graph, the same figures at the same seed,
    computed by per-shard tasks (``call`` / ``get``, see the module docstring) in rounds over
    blocks of queries: no task holds more than one shard's rows plus one block of query rows."""
    if mode not in ("ball", "ring"):
        raise ValueError(f"mode must be 'ball' or 'ring', not {mode!r}")
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"a sharded graph's reconstruction compares cosine or dot, not {similarity!r}")
    proto = Protocol(tuple(sorted(int(h) for h in hops)), int(seed), similarity, mode == "ring", int(ball_cap),
                     int(relevant_cap))
    S = len(graph.bounds)
    counts = get([call(s, shard_eligible) for s in range(S)])
    eligible = int(sum(counts))
    positions = sample_nodes(eligible, sample, seed)            # positions in the eligible nodes, in order
    q_all = _nodes_at(call, get, graph, counts, positions)
    ap = np.full((q_all.size, len(proto.hops)), np.nan)
    base = np.full_like(ap, np.nan)
    flags = np.zeros(ap.shape, dtype=np.int8)
    step = query_block(max_candidates(graph.num_nodes, proto.hops, proto.ball_cap, proto.relevant_cap))
    for i in range(0, q_all.size, step):
        sl = slice(i, i + step)
        _score_block(call, get, graph, proto, q_all[sl], ap[sl], base[sl], flags[sl])
    return reconstruction_summary(list(proto.hops), ap, base, flags, q_all.size, eligible)


def _nodes_at(call, get, graph: ShardedGraph, counts: list[int], positions: np.ndarray) -> np.ndarray:
    """The eligible nodes at ``positions`` of the eligible list (every shard's, in shard order)."""
    cum = np.concatenate(([0], np.cumsum(counts)))
    owner = np.searchsorted(cum, positions, side="right") - 1
    futures = {s: call(s, shard_eligible, positions[owner == s] - cum[s]) for s in range(len(counts))
               if np.any(owner == s)}
    got = dict(zip(futures, get(list(futures.values()))))
    return np.concatenate([got[s] for s in sorted(got)] or [np.empty(0, np.int64)]).astype(np.int64)


def _gather(call, get, graph: ShardedGraph, nodes: np.ndarray, fn, *args) -> list:
    """fn's result for each shard's part of ``nodes`` (None where a shard has none), and the
    positions of each part in ``nodes``."""
    parts = graph.by_owner(nodes)
    futures = {s: call(s, fn, nodes[p], *args) for s, p in enumerate(parts) if p.size}
    got = dict(zip(futures, get(list(futures.values()))))
    return [(parts[s], got.get(s)) for s in range(len(parts))]


@dataclass
class QueryBall:
    """One query's hop rings as the breadth-first rounds find them (each ring sorted)."""
    src: int
    rings: list = field(default_factory=list)          # ring h at rings[h - 1]
    estimates: list = field(default_factory=list)      # the ring sizes (an estimate for a sampled last ring)
    visited: np.ndarray = None                         # sorted: src and every node of the rings
    done: bool = False

    def __post_init__(self):
        self.visited = np.array([self.src], dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.visited.size - 1)

    def add(self, ring: np.ndarray, estimate: float | None = None) -> None:
        self.rings.append(ring)
        self.estimates.append(float(ring.size) if estimate is None else estimate)
        self.visited = np.union1d(self.visited, ring)


def _score_block(call, get, graph: ShardedGraph, proto: Protocol, q: np.ndarray, ap, base, flags) -> None:
    """Every figure of one block of queries: balls by rounds, candidates, their scores, counts."""
    balls = [QueryBall(int(src)) for src in q]
    for h in range(1, proto.max_hop + 1):
        _grow_rings(call, get, graph, proto, balls, h)
    cb = _candidates(balls, proto)
    offsets = np.concatenate(([0], np.cumsum(cb.count))).astype(np.int64)
    qrow = np.repeat(np.arange(q.size, dtype=np.int64), cb.count)
    nodes = np.concatenate(cb.nodes or [np.empty(0, np.int64)])
    level = np.concatenate(cb.level or [np.empty(0, np.int64)])
    Uq = _query_rows(call, get, graph, q, proto.similarity)
    scores = np.empty(nodes.size, dtype=np.float32)
    parts = graph.by_owner(nodes)
    futures = {s: call(s, shard_scores, Uq, qrow[p], nodes[p], proto.similarity) for s, p in enumerate(parts)
               if p.size}
    for s, got in zip(futures, get(list(futures.values()))):
        scores[parts[s]] = got
    t, lv = sort_segments(scores, level, offsets)
    ge = np.sum(get([call(s, shard_counts, Uq, q, t, offsets, proto.similarity) for s in range(len(graph.bounds))]),
                axis=0, dtype=np.int64)
    finish_block(cb, t, lv, ge, offsets, np.asarray(proto.hops, dtype=np.int64), proto.ring, graph.num_nodes,
                 ap, base, flags)


def _candidates(balls: list[QueryBall], proto: Protocol) -> CandidateBlock:
    """Each query's candidates (``stratified_candidates`` of its rings, as the one-CSR kernel)."""
    nq, H = len(balls), proto.max_hop
    ring_size, kept = np.zeros((nq, H)), np.zeros((nq, H), dtype=np.int64)
    top = np.array([len(b.rings) for b in balls], dtype=np.int64)
    nodes, level, count = [], [], np.zeros(nq, dtype=np.int64)
    for i, b in enumerate(balls):
        if not b.rings:
            continue
        hop_end = np.zeros(H + 1, dtype=np.int64)
        hop_end[1:top[i] + 1] = np.cumsum([r.size for r in b.rings])
        c, lv, k = stratified_candidates(np.concatenate(b.rings).astype(np.int64), hop_end, int(top[i]),
                                         proto.relevant_cap, proto.seed, b.src)
        nodes.append(c)
        level.append(lv)
        count[i] = c.size
        ring_size[i, :top[i]] = b.estimates
        kept[i, :top[i]] = k
    return CandidateBlock(nodes, level, count, ring_size, kept, top)


def _query_rows(call, get, graph: ShardedGraph, q: np.ndarray, similarity: str) -> np.ndarray:
    """The block's query rows as the scorer compares them, in query order (from their owners)."""
    parts = _gather(call, get, graph, q, shard_rows, similarity)
    d = next(r.shape[1] for _, r in parts if r is not None)
    Uq = np.empty((q.size, d), dtype=np.float32)
    for pos, rows in parts:
        if rows is not None:
            Uq[pos] = rows
    return Uq


def _grow_rings(call, get, graph: ShardedGraph, proto: Protocol, balls: list[QueryBall], h: int) -> None:
    """Ring h of every live query: the last hop of a symmetric graph is sampled by draws when
    the one-CSR kernel would (``_hop_ball``'s rule), every other ring is expanded from ring h - 1."""
    live = [b for b in balls if not b.done and len(b.rings) == h - 1]
    sampled = []
    if graph.symmetric and h > 1 and h == proto.max_hop and proto.relevant_cap > 0:
        maybe = [b for b in live if graph.num_nodes - 1 - b.size > 4 * proto.relevant_cap]
        arcs = _frontier_arcs(call, get, graph, [b.rings[-1] for b in maybe])
        sampled = [b for b, a in zip(maybe, arcs) if a * 14 > graph.num_arcs]
    ids = {id(b) for b in sampled}
    _expand(call, get, graph, proto, [b for b in live if id(b) not in ids], h)
    if sampled:
        _sample_rings(call, get, graph, proto, sampled, h)


def _frontier_arcs(call, get, graph: ShardedGraph, rings: list[np.ndarray]) -> list[int]:
    """The summed degree of each ring's nodes."""
    if not rings:
        return []
    flat, cut = _flatten(rings)
    deg = np.zeros(flat.size, dtype=np.int64)
    for pos, d in _gather(call, get, graph, flat, shard_adjacency, True):
        if d is not None:
            deg[pos] = d
    return [int(deg[cut[i]:cut[i + 1]].sum()) for i in range(len(rings))]


def _flatten(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    cut = np.concatenate(([0], np.cumsum([a.size for a in arrays]))).astype(np.int64)
    return (np.concatenate(arrays).astype(np.int64) if arrays else np.empty(0, np.int64)), cut


def _neighbour_lists(call, get, graph: ShardedGraph, nodes: np.ndarray) -> list[np.ndarray]:
    """Each node's neighbour list, asked of its owner (one task per shard)."""
    out = [None] * nodes.size
    for pos, got in _gather(call, get, graph, nodes, shard_adjacency):
        if got is None:
            continue
        deg, nbrs = got
        for p, part in zip(pos, np.split(nbrs, np.cumsum(deg)[:-1])):
            out[p] = part
    return out


def _expand(call, get, graph: ShardedGraph, proto: Protocol, balls: list[QueryBall], h: int) -> None:
    """Ring h = the neighbours of ring h - 1 (the query itself for h = 1) not yet visited; a ring
    that would take the ball past ball_cap ends the query's search (its hop h is incomplete)."""
    if not balls:
        return
    frontiers = [b.rings[-1] if h > 1 else np.array([b.src], dtype=np.int64) for b in balls]
    flat, cut = _flatten(frontiers)
    uniq, inv = np.unique(flat, return_inverse=True)
    lists = _neighbour_lists(call, get, graph, uniq)
    for i, b in enumerate(balls):
        nb = [lists[k] for k in inv[cut[i]:cut[i + 1]]]
        found = np.unique(np.concatenate(nb)) if nb else np.empty(0, np.int64)
        ring = np.setdiff1d(found, b.visited, assume_unique=True)
        if b.size + ring.size > proto.ball_cap:
            b.done = True
        else:
            b.add(ring)


@dataclass
class RingDraws:
    """The state of one query's last-ring sample (``_sample_last_ring`` of the one-CSR kernel)."""
    ball: QueryBall
    previous: np.ndarray                 # ring h - 1, sorted
    outside: int
    draws: int = 0
    tested: int = 0
    members: list = field(default_factory=list)
    tried: set = field(default_factory=set)
    over_cap: bool = False

    def running(self, cap: int, n: int) -> bool:
        m = len(self.members)
        return (not self.over_cap and m < cap and self.tested < 64 * cap and self.tested < self.outside
                and self.draws < 4 * n)


def _sample_rings(call, get, graph: ShardedGraph, proto: Protocol, balls: list[QueryBall], h: int) -> None:
    """The last ring of each query as a uniform sample: the one-CSR kernel's draws, replayed a
    chunk at a time; the owners of the drawn nodes list their neighbours, the coordinator keeps a
    node with one in ring h - 1."""
    n, cap = graph.num_nodes, proto.relevant_cap
    states = [RingDraws(b, b.rings[-1], n - 1 - b.size) for b in balls]
    while True:
        live = [st for st in states if st.running(cap, n)]
        if not live:
            break
        chunks = [draw_nodes(proto.seed, st.ball.src, h, st.draws, LAST_RING_CHUNK, n) for st in live]
        asks = [np.setdiff1d(np.unique(c), st.ball.visited, assume_unique=True) for c, st in zip(chunks, live)]
        flat, cut = _flatten(asks)
        uniq, inv = np.unique(flat, return_inverse=True)
        lists = _neighbour_lists(call, get, graph, uniq)
        for st, chunk, ask, lo, hi in zip(live, chunks, asks, cut[:-1], cut[1:]):
            _replay(st, chunk, set(ask[_touches(lists, inv[lo:hi], st.previous)].tolist()), cap, n, proto.ball_cap)
    for st in states:
        if st.over_cap:
            st.ball.done = True
            continue
        est = len(st.members) * st.outside / st.tested if st.tested > 0 else 0.0
        st.ball.add(np.sort(np.asarray(st.members, dtype=np.int64)), est)


def _touches(lists: list[np.ndarray], picks: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Whether each of the neighbour lists ``lists[picks]`` holds a node of ``ring`` (sorted)."""
    if picks.size == 0:
        return np.zeros(0, dtype=bool)
    chosen = [lists[k] for k in picks]
    hit = np.isin(np.concatenate(chosen), ring)
    ends = np.cumsum([c.size for c in chosen])
    upto = np.concatenate(([0], np.cumsum(hit)))
    return upto[ends] - upto[ends - np.array([c.size for c in chosen])] > 0


def _replay(st: RingDraws, chunk: np.ndarray, near: set, cap: int, n: int, ball_cap: int) -> None:
    """The one-CSR kernel's loop over these draws: skip a node in the ball or drawn before, test
    the others, keep those near ring h - 1; stop where the kernel stops."""
    visited = st.ball.visited
    for v in chunk.tolist():
        if not st.running(cap, n):
            return
        st.draws += 1
        if v in st.tried:
            continue
        k = np.searchsorted(visited, v)
        if k < visited.size and visited[k] == v:
            continue
        st.tested += 1
        st.tried.add(v)
        if v in near:
            if st.ball.size + len(st.members) >= ball_cap:
                st.over_cap = True
                return
            st.members.append(v)
