"""Sharded random walks: each graph shard advances the walkers standing on its nodes, in
bulk-synchronous rounds (KnightKing style), and no one holds the whole graph.

Why it looks like this
- A walker is a small record (`WALKER`: walk id, current and previous node, last arc weight,
  generator state, step). In a round, a shard advances every walker it holds AS MANY STEPS AS IT
  CAN while the walker stays on the shard's nodes; a walker that steps onto another shard's node is
  put in that shard's outbox, and the outboxes are the next round's inboxes.
- Same numbers as the replicated engine (workers/graph/walks.py): walk k from v starts from the
  generator state `walk_key(seed, v, k)` and every step makes the same draws as `first_order_step` /
  `_second_order` there, so DeepWalk (uniform and weighted: a shard's alias rows are built from
  its own rows, and a row's alias table depends only on that row) and node2vec are bit-identical to
  `random_walks` at the same seed, whatever the number of shards.
- node2vec's "is x adjacent to t" needs t's neighbour list, owned by t's shard. When t is remote,
  the walker parks on its shard with its rejection-loop state (candidate x, its slot, the coin u,
  the generator state after those draws) and a query (t, x) goes to t's owner; the answer comes
  back in the next round and the loop resumes exactly where `_second_order` would have gone on.
  The lazy test (only when the coin falls between the two acceptance levels) keeps queries rare.
- Where the visited nodes go: walkers do NOT carry their path. A shard writes the nodes it visits
  for walkers that start on it straight into its output matrix, and keeps a segment (walk id, first
  step, count, nodes) for walkers of other shards; one final exchange sends each shard's segments
  home. Bytes moved: a walker record is 24 (DeepWalk) or 48 (node2vec) bytes per move and a
  visited node is sent at most once (4 bytes + an 8-byte header per segment). Carrying the path would move the whole prefix on every
  move: O(length) bytes per move instead of O(1), i.e. ~length/2 x 4 bytes per move (160 bytes at
  length 80, on top of the record) and about (S-1)/S of steps are moves on a node-range sharding.
  A walker of another shard gets a bounded room per round (SEGMENT_ROOM nodes; one that fills it
  goes on next round), so a round's scratch memory is O(walkers), not O(walkers x length).
- A round is `advance` on every shard (one numba kernel, prange over walkers: a plain loop for
  first-order walks, lockstep groups for node2vec; then an O(walkers) counting sort by destination)
  and, for node2vec, the answers to the adjacency queries of that round. The owners play the
  rounds among themselves (`begin` / `deliver`): each sends every other one message per round
  through a `mail` function, a queue in-process (`sharded_random_walks`, tests) and a direct
  connection between owner processes through Ray (tasks/peer_mail.py, tasks/graph.py
  `walk_sharded`); the driver only waits for the end. No message is bigger than the walkers of one shard (24 or 48
  bytes each) or one shard's segments; a shard's walk matrix is the one big result.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
from numba import njit, prange

from embedlake.lake import Lake
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import CSRShard, owner_of, shard_bounds, shard_starts, split_csr
from embedlake.workers.graph.walks import (GOLDEN, LO32, MODES, build_alias, find_sorted, first_order_step, mix,
                                           node2vec_proposal, randint, uniform, walk_key)
from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.prefetch import prefetch
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point

__all__ = ["WALKER", "FIRST_ORDER_WALKER", "walker_dtype", "WalkParams", "ShardWalker", "collect_walks", "round_info",
           "sharded_random_walks", "WAIT_GROUP", "WALKERS", "ANSWERS", "pack_message", "unpack_message", "CPU_PARTS"]

# One walker in flight: g = its global output row (the rows of all shards' matrices back to back:
# walk k from node v of shard [lo, hi) is row walks_per_node * lo + k * (hi - lo) + v - lo, so its home
# shard and row there follow without a division), cur / prev nodes (prev -1 before the first step), wlast = weight of the last arc taken
# (seeds node2vec's return box), state = generator state, step = position of `cur` in the walk.
WALKER = np.dtype([("g", "<i8"), ("cur", "<i8"), ("prev", "<i8"), ("wlast", "<f8"), ("state", "<u8"),
                   ("step", "<i8")])
# A first-order walker (DeepWalk) needs no previous node nor arc weight: 24 bytes instead of 48, so
# every copy, gather and message of a round moves half the bytes (nodes fit int32: CSR indices do).
FIRST_ORDER_WALKER = np.dtype([("g", "<i8"), ("state", "<u8"), ("cur", "<i4"), ("step", "<i4")])
# A DeepWalk walker between shards travels as 8 or 12 bytes, not 24: its generator state is not
# sent. A first-order step makes exactly one draw (state += GOLDEN), so after `step` steps the state
# is walk_key(seed, v, k) + step * GOLDEN, and (v, k) follow from g; the receiver recomputes it
# (`_unpack_walkers`). On the wire a walker is a row of uint32 words: g << step_bits | step in one
# word when every walk's rows fit (walks_per_node x nodes << step_bits < 2 ** 32), else in two, then
# the node. Sending bytes is most of a round's cost beyond the step kernel (Ray's actor calls
# between owners, about 4 ms per MB: docs/scaling.md section 9), and walkers are most of the bytes.


def walker_dtype(second: bool) -> np.dtype:
    """The record of a walker in flight: node2vec's full one, or DeepWalk's compact one."""
    return WALKER if second else FIRST_ORDER_WALKER
# What a parked node2vec walker keeps beside its record: candidate x, its slot j (-1: an alias
# draw), coin u; its record's state is the generator state after those draws.
PARKED_WALKER = np.dtype([("x", "<i8"), ("j", "<i8"), ("u", "<f8")])
# Segments of visited nodes kept for another shard travel as headers int64 [m] and the nodes back to
# back (int32). A header is where the segment's first node goes in its home shard's walk matrix, as a
# flat index (row within that matrix * length + position), and the count: index << COUNT_BITS | count
# (a count is at most SEGMENT_ROOM). 8 bytes per segment, not 16 for (walk id, position | count):
# a segment holds ~S / (S - 1) nodes, so its header was most of the bytes a shard sends home.
# A node2vec adjacency query (t, x) to t's owner; the answer is one uint8 per query (1 = adjacent).
QUERY = np.dtype([("t", "<i8"), ("x", "<i8")])
# How a walker left the kernel: finished (walk complete or dead end), parked (waits for an
# adjacency answer); a value >= 0 is the shard it moved to.
FINISHED = -1
PARKED = -2
# walkers advanced in lockstep per thread (as random_walks' `group`): overlaps their cache misses
LOCKSTEP_GROUP = 32
GROUPS_PER_CHUNK = 64       # groups per parallel task of the kernel (scratch arrays allocated once per chunk)
# The most nodes a walker of another shard writes here in one round (the room kept for it): bounds
# a round's scratch memory to SEGMENT_ROOM int32 per such walker; one that fills it goes on in the
# next round (rare: a walker leaves a shard after about S / (S - 1) steps on a node-range sharding).
SEGMENT_ROOM = 16
COUNT_BITS = 8              # 2 ** COUNT_BITS > SEGMENT_ROOM
COUNT_MASK = (1 << COUNT_BITS) - 1
# The first-order kernel prefetches, PREFETCH_ROWS walkers ahead, the CSR row start of the walker's
# node and the output cell it will write, and PREFETCH_ARCS walkers ahead (when that row start has
# arrived) the arc its first step draws. Measured on one round of a 20M-edge R-MAT shard (S = 4, one
# thread): 16 / 8 cut the kernel from 38 ms to 24-30 ms; 8 / 4 and 64 / 32 did less.
PREFETCH_ROWS = 16
PREFETCH_ARCS = 8
FIRST_ORDER_CHUNK = 4096    # walkers per parallel task of the first-order kernel (prefetching runs within one)


@dataclass(frozen=True)
class WalkParams:
    """What determines the walks (as in `random_walks`) plus the numba threads of one shard. (Whether
    the graph is symmetric comes with each shard: its `directed` flag.)"""
    walks_per_node: int
    length: int
    seed: int
    p: float = 1.0
    q: float = 1.0
    mode: str = "deepwalk"
    threads: int = 1
    walk_offset: int = 0        # walk numbers walk_offset .. + walks_per_node - 1 (streamed rounds)
    @property
    def second(self) -> bool:
        return self.mode == "node2vec" and not (self.p == 1.0 and self.q == 1.0)

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (self.p > 0 and self.q > 0 and np.isfinite(self.p) and np.isfinite(self.q)):
            raise ValueError("p and q must be finite and > 0")
        if self.walks_per_node < 0 or self.length < 1:
            raise ValueError("walks_per_node must be >= 0 and length >= 1")


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _second_order_resumable(indptr, indices, weights, table, rowsum, weighted, symmetric, need_w, t, vl, w_tv, s,
                            inv_p, env, inv_env, far_acc, tlo, thi, t_local, resume, rx, rj, ru):
    """`_second_order` of walks.py from local row vl with previous node t, able to stop before an
    adjacency test of a remote t and to resume from its answer with the same draws.
    Returns (asks, x or -1 at a dead end, arc weight, state, slot j, coin u); asks = True means
    "ask t's owner whether x ~ t" and (x, j, u, state) is what the resumed call needs back."""
    lo = indptr[vl]
    hi = indptr[vl + 1]
    d = hi - lo
    if d == 0:
        return False, np.int64(-1), 0.0, s, np.int64(0), 0.0
    extra = 0.0
    w_vt = 0.0
    if inv_p > env:
        if symmetric:
            w_vt = w_tv
        else:
            pos = find_sorted(indices, lo, hi, t)
            if pos >= 0:
                w_vt = np.float64(weights[pos]) if weighted else 1.0
        extra = w_vt * (inv_p - env)
    total_w = rowsum[vl] if weighted else np.float64(d)
    box = env * total_w + extra
    ret_acc = min(inv_p, env) * inv_env
    adj_acc = inv_env
    lo_acc = min(adj_acc, far_acc)
    pending = resume
    x = np.int64(rx)
    j = np.int64(rj)
    u = ru
    while True:
        if pending >= 0:            # the answer to the query this loop stopped at
            adjacent = pending == 1
            pending = -1
            if adjacent:
                if not (u < adj_acc):
                    continue
            elif not (u < far_acc):
                continue
        else:
            if extra > 0.0:
                s += GOLDEN
                if uniform(mix(s)) * box < extra:
                    return False, np.int64(t), w_tv, s, np.int64(0), 0.0
            x, j, u, s = node2vec_proposal(indices, table, weighted, lo, d, s)
            if x == t:
                if u < ret_acc:
                    return False, x, w_tv, s, j, u
                continue
            if not (u < lo_acc):
                if adj_acc == far_acc:
                    continue
                if not t_local:
                    return True, x, 0.0, s, j, u
                if find_sorted(indices, tlo, thi, x) >= 0:
                    if not (u < adj_acc):
                        continue
                elif not (u < far_acc):
                    continue
        if not need_w:
            return False, x, 1.0, s, j, u
        if j < 0:
            j = find_sorted(indices, lo, hi, x) - lo
        return False, x, np.float64(weights[lo + j]), s, j, u


@njit(cache=True, inline="always")
def _owner(starts, v):
    """The shard owning node v: the last s < S with starts[s] <= v (an empty shard's bound equals
    the next one's, so it owns nothing). Branch-free halving (a select per level, no unpredictable
    branch): measured 35 ns less per walker move than a branchy binary search."""
    base = 0
    size = starts.shape[0] - 1
    while size > 1:
        half = size >> 1
        base = base + half if starts[base + half] <= v else base
        size -= half
    return np.int64(base)


@njit(cache=True, parallel=True)
def _advance_kernel(indptr, indices, weights, table, rowsum, weighted, second, symmetric, lo, hi, me, starts,
                    walkers, resume, park, orow, res_off, seg_nodes, out, length, inv_p, inv_q, group, chunk):
    """Advance every walker as far as it stays on nodes [lo, hi). A walker of this shard (orow >= 0)
    writes its nodes into out[orow]; others into seg_nodes[res_off[i]:...]. Updates `walkers` (and
    `park` for parked walkers) in place; returns (where each went, nodes it wrote, position of the
    first of them). A walker of another shard that filled its room goes to `me`: on next round.
    Walkers advance in lockstep groups of `group` (one step of each in turn, as
    random_walks does), so the cache misses of independent walkers overlap; each thread takes
    `chunk` groups and reuses its scratch arrays. Output-neutral: each walker has its own state."""
    nw = walkers.shape[0]
    where = np.full(nw, np.int64(FINISHED))
    used = np.zeros(nw, np.int64)
    seg0 = np.empty(nw, np.int64)
    env = max(1.0, inv_q)
    inv_env = 1.0 / env
    far_acc = inv_q * inv_env
    need_w = second and symmetric and weighted
    span = group * chunk
    for ci in prange((nw + span - 1) // span):
        cur = np.empty(group, np.int64)
        prev = np.empty(group, np.int64)
        wl = np.empty(group, np.float64)
        st = np.empty(group, np.uint64)
        step = np.empty(group, np.int64)
        rs = np.full(group, np.int8(-1))
        active = np.empty(group, np.bool_)
        for r0 in range(ci * span, min(nw, (ci + 1) * span), group):
            gsz = min(nw, r0 + group) - r0
            alive = 0
            for a in range(gsz):
                w = walkers[r0 + a]
                cur[a], prev[a], wl[a], st[a], step[a] = w.cur, w.prev, w.wlast, w.state, w.step
                seg0[r0 + a] = w.step + 1
                if second:
                    rs[a] = resume[r0 + a]
                active[a] = w.step + 1 < length
                alive += active[a]
            while alive > 0:
                for a in range(gsz):
                    if not active[a]:
                        continue
                    i = r0 + a
                    s = st[a]
                    if second and prev[a] >= 0:
                        t = prev[a]
                        t_local = lo <= t < hi
                        tlo = indptr[t - lo] if t_local else np.int64(0)
                        thi = indptr[t - lo + 1] if t_local else np.int64(0)
                        pk = park[i]
                        asks, nxt, wa, s, j, u = _second_order_resumable(
                            indptr, indices, weights, table, rowsum, weighted, symmetric, need_w, t, cur[a] - lo,
                            wl[a], s, inv_p, env, inv_env, far_acc, tlo, thi, t_local, rs[a], pk.x, pk.j, pk.u)
                        rs[a] = -1
                        if asks:
                            pk.x, pk.j, pk.u = nxt, j, u
                            st[a] = s
                            where[i] = PARKED
                            active[a] = False
                            alive -= 1
                            continue
                    else:
                        nxt, wa, s = first_order_step(indptr, indices, weights, table, weighted, need_w, cur[a] - lo, s)
                    st[a] = s
                    step[a] += 1
                    if nxt < 0:
                        active[a] = False
                        alive -= 1
                        continue
                    if orow[i] >= 0:
                        out[orow[i], step[a]] = nxt
                    else:
                        seg_nodes[res_off[i] + used[i]] = nxt
                    used[i] += 1
                    prev[a] = cur[a]
                    cur[a] = nxt
                    wl[a] = wa
                    if step[a] + 1 >= length:
                        active[a] = False
                        alive -= 1
                    elif nxt < lo or nxt >= hi:
                        where[i] = _owner(starts, nxt)
                        active[a] = False
                        alive -= 1
                    elif orow[i] < 0 and used[i] == res_off[i + 1] - res_off[i]:
                        where[i] = me              # its room here is full: it goes on next round
                        active[a] = False
                        alive -= 1
            for a in range(gsz):
                w = walkers[r0 + a]
                w.cur, w.prev, w.wlast, w.state, w.step = cur[a], prev[a], wl[a], st[a], step[a]
    return where, used, seg0


@njit(cache=True, inline="always")
def _prefetch_walker(indptr, indices, table, weighted, lo, walkers, orow, out_flat, length, i, end):
    """Prefetch for walker i + PREFETCH_ROWS its CSR row start and (a walker of this shard) the output
    cell of its next step, and for walker i + PREFETCH_ARCS the arc its next step draws (the same
    draw `first_order_step` makes: the row start fetched PREFETCH_ROWS - PREFETCH_ARCS walkers ago
    tells where the row is)."""
    k = i + PREFETCH_ROWS
    if k < end:
        wk = walkers[k]
        prefetch(indptr, wk.cur - lo)
        if orow[k] >= 0:
            prefetch(out_flat, orow[k] * length + wk.step + 1)
    k = i + PREFETCH_ARCS
    if k < end:
        wk = walkers[k]
        v = wk.cur - lo
        b = indptr[v]
        d = indptr[v + 1] - b
        if d > 0:
            arc = b + randint(mix(wk.state + GOLDEN), d)
            prefetch(indices, arc)
            if weighted:
                prefetch(table, arc)


@njit(cache=True, parallel=True)
def _advance_first_order(indptr, indices, weights, table, weighted, lo, hi, me, starts, walkers, orow, res_off,
                         seg_nodes, out, length):
    """`_advance_kernel` for first-order walks (DeepWalk), one walker after another: a walker stays
    about S / (S - 1) steps on a shard, too few for lockstep groups to pay for their bookkeeping
    (measured: this loop takes about half the time per visit). A visit is short and its loads
    (CSR row start, then the arc drawn, and the output cell) miss the cache, so they are prefetched
    a few walkers ahead (`_prefetch_walker`): the walkers of a round are all known in advance."""
    nw = walkers.shape[0]
    where = np.full(nw, np.int64(FINISHED))
    used = np.zeros(nw, np.int64)
    seg0 = np.empty(nw, np.int64)
    out_flat = out.reshape(-1)
    for c in prange((nw + FIRST_ORDER_CHUNK - 1) // FIRST_ORDER_CHUNK):
        end = min(nw, (c + 1) * FIRST_ORDER_CHUNK)
        for i in range(c * FIRST_ORDER_CHUNK, end):
            _prefetch_walker(indptr, indices, table, weighted, lo, walkers, orow, out_flat, length, i, end)
            w = walkers[i]
            cur = w.cur
            s = w.state
            step = w.step
            seg0[i] = step + 1
            r = orow[i]
            base = res_off[i]
            room = res_off[i + 1] - base
            cnt = 0
            d = np.int64(FINISHED)
            while step + 1 < length:
                nxt, wa, s = first_order_step(indptr, indices, weights, table, weighted, False, cur - lo, s)
                step += 1
                if nxt < 0:
                    break
                if r >= 0:
                    out[r, step] = nxt
                else:
                    seg_nodes[base + cnt] = nxt
                cnt += 1
                cur = nxt
                if step + 1 >= length:
                    break
                if nxt < lo or nxt >= hi:
                    d = _owner(starts, nxt)
                    break
                if r < 0 and cnt == room:
                    d = me
                    break
            w.cur = cur
            w.state = s
            w.step = step
            where[i] = d
            used[i] = cnt
    return where, used, seg0


@njit(cache=True)
def _bucket(where, shards):
    """Counting sort of walkers by where they went: (order, offsets) with the walkers that moved
    to shard d at order[offsets[d]:offsets[d + 1]], parked ones at order[offsets[S]:offsets[S + 1]]."""
    counts = np.zeros(shards + 2, np.int64)
    for d in where:
        counts[d if d >= 0 else (shards if d == PARKED else shards + 1)] += 1
    offsets = np.zeros(shards + 3, np.int64)
    for d in range(shards + 2):
        offsets[d + 1] = offsets[d] + counts[d]
    fill = offsets[:-1].copy()
    order = np.empty(where.shape[0], np.int64)
    for i in range(where.shape[0]):
        d = where[i]
        b = d if d >= 0 else (shards if d == PARKED else shards + 1)
        order[fill[b]] = i
        fill[b] += 1
    return order, offsets


@njit(cache=True)
def _reserve(walkers, row_starts, me, length, room):
    """Where each walker's nodes go: (orow: its row of this shard's output, -1 for a walker of
    another shard; home: that other shard, -1 for ours; res_off: offsets of the room kept for a
    walker of another shard, min(room, length - 1 - step) slots). A walker's g is its global output
    row, so this needs no division: shard s's rows are [row_starts[s], row_starts[s + 1])."""
    nw = walkers.shape[0]
    orow = np.full(nw, -1, np.int64)
    home = np.full(nw, -1, np.int64)
    res_off = np.zeros(nw + 1, np.int64)
    r0 = row_starts[me]
    r1 = row_starts[me + 1]
    for i in range(nw):
        g = walkers[i].g
        if r0 <= g < r1:
            orow[i] = g - r0
            res_off[i + 1] = res_off[i]
        else:
            home[i] = _owner(row_starts, g)
            res_off[i + 1] = res_off[i] + min(room, length - 1 - walkers[i].step)
    return orow, home, res_off


@njit(cache=True)
def _gather_rows(raw, idx):
    """raw[idx] for an int64 [n, f] matrix (numpy's fancy indexing of rows is several times slower)."""
    out = np.empty((idx.shape[0], raw.shape[1]), np.int64)
    for r in range(idx.shape[0]):
        for c in range(raw.shape[1]):
            out[r, c] = raw[idx[r], c]
    return out


@njit(cache=True)
def _segments_by_home(g, home, used, seg0, res_off, seg_nodes, shards, row_starts, length):
    """The segments of walkers of other shards, grouped by home shard: (headers int64 [m] of (flat
    index in the home shard's walk matrix << COUNT_BITS | count), offsets [S + 1] into them, nodes
    back to back, offsets [S + 1])."""
    nseg = np.zeros(shards + 1, np.int64)
    nnod = np.zeros(shards + 1, np.int64)
    for i in range(g.shape[0]):
        if home[i] >= 0 and used[i] > 0:
            nseg[home[i] + 1] += 1
            nnod[home[i] + 1] += used[i]
    hoff = np.cumsum(nseg)
    noff = np.cumsum(nnod)
    hdr = np.empty(hoff[-1], np.int64)
    nodes = np.empty(noff[-1], np.int32)
    hfill = hoff[:-1].copy()
    nfill = noff[:-1].copy()
    for i in range(g.shape[0]):
        h = home[i]
        if h < 0 or used[i] == 0:
            continue
        hdr[hfill[h]] = (((g[i] - row_starts[h]) * length + seg0[i]) << COUNT_BITS) | used[i]
        hfill[h] += 1
        a = res_off[i]
        b = nfill[h]
        for c in range(used[i]):
            nodes[b + c] = seg_nodes[a + c]
        nfill[h] += used[i]
    return hdr, hoff, nodes, noff


@njit(cache=True, parallel=True)
def _scatter_segments(out_flat, hdr, offsets, nodes):
    """Write segments of this shard's walks (from other shards) into its output matrix (flattened:
    a header holds the flat index of the segment's first node)."""
    for i in prange(hdr.shape[0]):
        a = offsets[i]
        first = hdr[i] >> COUNT_BITS
        for c in range(hdr[i] & COUNT_MASK):
            out_flat[first + c] = nodes[a + c]


@njit(cache=True, parallel=True)
def _adjacency(indptr, indices, lo, queries):
    """1 where x is an out-neighbour of t (t owned by this shard), per query."""
    ans = np.empty(queries.shape[0], np.uint8)
    for i in prange(queries.shape[0]):
        t = queries[i].t - lo
        ans[i] = 1 if find_sorted(indices, indptr[t], indptr[t + 1], queries[i].x) >= 0 else 0
    return ans


@njit(cache=True, parallel=True)
def _initial_walkers(lo, hi, seed, walk_offset, walkers, out):
    """Walk k from every node of [lo, hi) into walkers[r] (either record; the fields both have):
    row r = k * (hi - lo) + v - lo, global output row walks_per_node * lo + r, generator
    walk_key(seed, v, k + walk_offset)."""
    rows = hi - lo
    row0 = walkers.shape[0] // rows * lo if rows > 0 else 0
    for r in prange(walkers.shape[0]):
        k = r // rows
        v = lo + r - k * rows
        w = walkers[r]
        w.g = row0 + r
        w.cur = v
        w.state = walk_key(seed, v, k + walk_offset)
        w.step = 0
        out[r, 0] = v

@njit(cache=True)
def _pack_walkers(walkers, idx, step_bits, words):
    """DeepWalk walkers (FIRST_ORDER_WALKER) walkers[idx] as they travel: uint32 [len(idx), words]
    rows of g << step_bits | step (words - 1 words, low first) and the node; no generator state.
    Packed straight from the round's walkers in destination order (no gathered copy of the records)."""
    wire = np.empty((idx.shape[0], words), np.uint32)
    for i in range(idx.shape[0]):
        w = walkers[idx[i]]
        gs = (np.uint64(w.g) << np.uint64(step_bits)) | np.uint64(w.step)
        wire[i, 0] = np.uint32(gs & LO32)
        if words == 3:
            wire[i, 1] = np.uint32(gs >> np.uint64(32))
        wire[i, words - 1] = np.uint32(w.cur)
    return wire


@njit(cache=True, parallel=True)
def _unpack_walkers(wire, walkers, at, step_bits, seed, walk_offset, starts, row_starts):
    """walkers[at + i] = wire[i] (`_pack_walkers`) with its generator state recomputed: walk k from
    node v (row g of shard h: g - row_starts[h] = k * (hi - lo) + v - lo) after `step` draws."""
    words = wire.shape[1]
    for i in prange(wire.shape[0]):
        gs = np.uint64(wire[i, 0])
        if words == 3:
            gs |= np.uint64(wire[i, 1]) << np.uint64(32)
        g = np.int64(gs >> np.uint64(step_bits))
        step = np.int64(gs & ((np.uint64(1) << np.uint64(step_bits)) - np.uint64(1)))
        h = _owner(row_starts, g)
        r = g - row_starts[h]
        rows = starts[h + 1] - starts[h]
        k = r // rows
        w = walkers[at + i]
        w.g = g
        w.cur = np.int32(wire[i, words - 1])
        w.step = step
        w.state = walk_key(seed, starts[h] + r - k * rows, k + walk_offset) + np.uint64(step) * GOLDEN


# ---------------------------------------------------------------------------------------------
# one shard's side of the rounds
# ---------------------------------------------------------------------------------------------
def wire_format(params: WalkParams, starts: np.ndarray) -> tuple[int, int, np.dtype]:
    """How a walk's messages pack what they carry, the same on every shard: (step bits and uint32
    words of a DeepWalk walker on the wire (`_pack_walkers`), dtype of segment headers: uint32 when
    every shard's walk matrix has under 2 ** (32 - COUNT_BITS) cells, else int64)."""
    step_bits = max(1, (params.length - 1).bit_length())
    rows = params.walks_per_node * int(starts[-1])
    if rows << step_bits >= 1 << 64:
        raise ValueError(f"sharded walks: walks_per_node x nodes x 2 ** {step_bits} (walk.length) must be under 2 ** 64")
    cells = params.walks_per_node * int(np.diff(starts).max(initial=0)) * params.length
    return (step_bits, 2 if rows << step_bits < 1 << 32 else 3,
            np.dtype(np.uint32) if cells << COUNT_BITS < 1 << 32 else np.dtype(np.int64))


def _threads(threads: int) -> int:
    return numba.config.NUMBA_NUM_THREADS if not threads else min(int(threads), numba.config.NUMBA_NUM_THREADS)


def _new_walkers(lo: int, hi: int, params: WalkParams, out: np.ndarray) -> np.ndarray:
    """The walkers starting on nodes [lo, hi), in the record `params` needs (node2vec's with no
    previous node yet: prev -1, weight 0)."""
    walkers = np.empty(params.walks_per_node * (hi - lo), walker_dtype(params.second))
    _initial_walkers(lo, hi, np.uint64(int(params.seed) & 0xFFFFFFFFFFFFFFFF), np.int64(params.walk_offset), walkers,
                     out)
    if params.second:
        walkers["prev"] = -1
        walkers["wlast"] = 0.0
    return walkers


def _empty_parked() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, WALKER), np.empty(0, PARKED_WALKER)


def _raw(records: np.ndarray) -> np.ndarray:
    """Records of 8-byte fields (WALKER, PARKED_WALKER) as int64 [n, fields]: numpy copies and
    gathers plain int64 rows many times faster than structured records."""
    return np.ascontiguousarray(records).view(np.int64).reshape(len(records), records.dtype.itemsize // 8)


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """One writable record array from several (read-only inboxes included)."""
    if len(parts) == 1:
        return parts[0].copy()
    return np.concatenate([_raw(p) for p in parts]).view(dtype).reshape(-1)


def _take(records: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return _gather_rows(_raw(records), idx).view(records.dtype).reshape(-1)


class ShardWalker:
    """The walkers standing on one shard's nodes, its CSR rows (and alias rows), its output matrix
    and the segments it keeps for other shards. Plain Python: tasks/graph.py makes it a Ray actor.

    Messages (all numpy): `advance(*walkers_from_each_shard, *answers_from_each_shard)` returns
    S walker outboxes, S query outboxes (node2vec) and a stats row; `answer(*queries_from_each_shard)`
    returns S answer arrays; at the end `segments_for(home)` and `collect(*segments)`.
    checkpoint (the run's `walk` stage): the finished walks are also written as part `shard`."""

    def __init__(self, csr: tuple | None = None, shard: int = 0, bounds: list[tuple[int, int]] | None = None,
                 params: WalkParams | None = None, checkpoint: StageHandle | None = None):
        """With a shard: `load` it. Without (csr None): an owner started before its graph exists (the
        flow starts owners while ingest runs: tasks/graph.py ShardOwners), which loads the kernels of
        params.mode now (`load_walk_kernels`) and gets its shard by `load` when the walk stage begins."""
        if csr is None:
            load_walk_kernels(params.mode if params is not None else "deepwalk")
            return
        self.load(csr, shard, bounds, params, checkpoint)

    def load(self, csr: tuple, shard: int, bounds: list[tuple[int, int]], params: WalkParams,
             checkpoint: StageHandle | None = None) -> None:
        """Take shard `shard` of `bounds` (its CSR rows `csr` = CSRShard.as_tuple()), build its alias
        rows (weighted) and begin a walk (`start`)."""
        indptr, indices, weights, directed = csr
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.lo, self.hi = (int(b) for b in bounds[shard])
        if self.indptr.shape[0] != self.hi - self.lo + 1 or self.indptr[-1] != self.indices.shape[0]:
            raise ValueError(f"shard {shard}: indptr must be int64[{self.hi - self.lo + 1}] ending at len(indices)")
        self.shard, self.shards = int(shard), len(bounds)
        self.num_nodes = int(bounds[-1][1])
        self.starts = shard_starts(bounds)
        self.symmetric = not bool(directed)
        self.weighted = weights is not None
        self.numba_threads = _threads(params.threads)
        with self._threaded():
            if self.weighted:
                self.weights = np.ascontiguousarray(weights, dtype=np.float32)
                self.table, self.rowsum = build_alias(self.indptr, self.indices, self.weights)
            else:
                self.weights, self.table, self.rowsum = np.zeros(0, np.float32), np.zeros(0, np.uint64), np.zeros(0)
        # read-only whether they came from Ray's object store or not: one compile of each kernel (kernel_inputs)
        self.indptr, self.indices, self.weights, self.table, self.rowsum, self.starts = read_only(
            self.indptr, self.indices, self.weights, self.table, self.rowsum, self.starts)
        self.start(params, checkpoint)

    def start(self, params: WalkParams, checkpoint: StageHandle | None = None) -> None:
        """Begin a walk (the constructor begins the first; an owner kept alive can walk again with
        its CSR rows and alias tables already in place): output matrix and walkers from its nodes."""
        params.check()
        self.params, self.checkpoint = params, checkpoint
        self.step_bits, self.wire_words, self.header_dtype = wire_format(params, self.starts)
        self.numba_threads = _threads(params.threads)
        with self._threaded():
            self.out = np.full((params.walks_per_node * (self.hi - self.lo), params.length), -1, dtype=np.int32)
            self.pending = _new_walkers(self.lo, self.hi, params, self.out)
        self.row_starts = self.starts * params.walks_per_node      # global output rows of each shard
        self.parked = [_empty_parked() for _ in range(self.shards)]   # aligned with the queries sent to each
        self.unreported = int(self.pending.shape[0])                  # start nodes are tokens too
        self.rounds = 0
        # the rounds (`begin`, `deliver`): messages by (kind, round) and sender, queries that came
        # before `begin`, each round's stats, walkers in flight after this shard's last round
        self.mail: Mail | None = None
        self.mailbox: dict[tuple[int, int], dict[int, tuple[int, list]]] = {}
        self.early_queries: list[tuple] = []
        self.round_stats: list[np.ndarray] = []
        self.in_flight = 0
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()            # `begin` and `deliver` may be called from different threads
        self.cpu_s = np.zeros(len(CPU_PARTS))                          # thread CPU s by part (`cpu_split`)
        self.cpu_at_begin = self.cpu_at_end = 0.0

    def _threaded(self):
        return _NumbaThreads(self.numba_threads)

    def _inbox(self, walkers: tuple, answers: tuple):
        """Arriving walkers, then the parked ones with their answers: (walkers, resume, park)."""
        if not self.params.second:       # nothing parks: no answers; arriving walkers come as WIRE_WALKER
            return self._unpacked(walkers), np.zeros(0, np.int8), np.zeros(0, PARKED_WALKER)
        parts = [self.pending] + [w.view(WALKER) for w in walkers if len(w)]
        arrived = sum(len(w) for w in parts)
        parts += [self.parked[a][0] for a in range(self.shards)]
        allw = _concat(parts, WALKER)
        for a in range(self.shards):
            if len(answers[a]) != len(self.parked[a][0]):
                raise ValueError(f"shard {self.shard}: {len(answers[a])} answers from shard {a} "
                                 f"for {len(self.parked[a][0])} queries")
        resume = np.concatenate([np.full(arrived, -1, np.int8)] + [np.asarray(a, np.int8) for a in answers])
        park = _concat([np.zeros(arrived, PARKED_WALKER)] + [p[1] for p in self.parked], PARKED_WALKER)
        return allw, resume, park

    def _unpacked(self, arrived: list[np.ndarray]) -> np.ndarray:
        """The walkers kept here, then the DeepWalk walkers that arrived (`_pack_walkers` rows, as
        message bytes) with their generator states recomputed: one writable FIRST_ORDER_WALKER array."""
        arrived = [w for w in arrived if len(w)]
        wire = (arrived[0] if len(arrived) == 1 else np.concatenate(arrived or [np.empty(0, np.uint8)])) \
            .view(np.uint32).reshape(-1, self.wire_words)
        walkers = np.empty(len(self.pending) + len(wire), FIRST_ORDER_WALKER)
        _raw(walkers)[:len(self.pending)] = _raw(self.pending)
        with self._threaded():
            _unpack_walkers(*read_only(wire), walkers, len(self.pending), self.step_bits,
                            np.uint64(int(self.params.seed) & 0xFFFFFFFFFFFFFFFF), np.int64(self.params.walk_offset),
                            self.starts, self.row_starts)
        return walkers

    def begin(self, mail: Mail) -> None:
        """Run this shard's side of the rounds with no driver in between: advance the walkers that
        start here (round 1), send each other shard its walkers with `mail`, and go on by itself
        each time every other shard's messages of the round it is at have come in (`deliver`).
        mail(shard, message) hands a message (`pack_message`) to `shard`'s `deliver(message)`
        (tasks/peer_mail.py PeerMail: an actor call on that shard's owner; in-process a queue).
        Messages may come in before this call (other senders are not ordered with the caller): they
        wait in the mailbox."""
        with self.lock:
            self.mail = mail
            self.cpu_at_begin = time.process_time()
            self._guarded(self._begin_rounds)

    def _begin_rounds(self) -> None:
        early, self.early_queries = self.early_queries, []
        for sender, rnd, queries in early:
            self._answer(sender, rnd, queries)
        self._play_round([], [np.zeros(0, np.uint8)] * self.shards)
        self._play_ready_rounds()

    def deliver(self, message) -> None:
        """A message (`pack_message`, or its bytes) from another shard about its round: its walkers for
        this shard (WALKERS, with the walkers it has in flight in all; the segments of this shard's
        walks it wrote, written into the walk matrix at once; node2vec: its adjacency queries,
        answered at once) or the answers to this shard's queries (ANSWERS). Plays every round whose
        messages are all in. (Calls may come from several threads: one at a time.)"""
        with self.lock:
            self._deliver(message)

    def _deliver(self, message) -> None:
        t0 = time.thread_time()
        kind, rnd, sender, in_flight, arrays = unpack_message(message)
        if kind == WALKERS:
            self._guarded(self._write_segments, arrays[1].view(self.header_dtype), arrays[2].view(np.int32))
        if kind == WALKERS and len(arrays) == 4 and self.mail is None:
            self.early_queries.append((sender, rnd, arrays[3].view(QUERY)))
        elif kind == WALKERS and len(arrays) == 4:
            self._guarded(self._answer, sender, rnd, arrays[3].view(QUERY))
        self.mailbox.setdefault((kind, rnd), {})[sender] = (in_flight, arrays[0])
        self.cpu_s[RECEIVE] += time.thread_time() - t0
        if self.mail is not None:
            self._guarded(self._play_ready_rounds)

    def _write_segments(self, hdr: np.ndarray, nodes: np.ndarray) -> None:
        """Write nodes other shards visited for this shard's walks into its walk matrix (headers:
        flat index << COUNT_BITS | count, nodes back to back)."""
        if not len(hdr):
            return
        hdr = hdr.astype(np.int64, copy=False)
        offsets = np.zeros(len(hdr), np.int64)
        np.cumsum(hdr[:-1] & COUNT_MASK, out=offsets[1:])
        with self._threaded():
            _scatter_segments(self.out.reshape(-1), hdr, offsets, nodes)

    def _answer(self, sender: int, rnd: int, queries: np.ndarray) -> None:
        """Adjacency answers (uint8, 1 = x ~ t) to `sender`'s queries (t, x) of round `rnd` about this shard's nodes."""
        with self._threaded():
            answers = _adjacency(self.indptr, self.indices, self.lo, *read_only(queries)) if len(queries) else \
                np.zeros(0, np.uint8)
        self._send(sender, ANSWERS, rnd, 0, answers)

    def _send(self, shard: int, kind: int, rnd: int, in_flight: int, *arrays: np.ndarray) -> None:
        t0 = time.thread_time()
        self.mail(shard, pack_message(kind, rnd, self.shard, in_flight, *arrays))
        self.cpu_s[SEND] += time.thread_time() - t0

    def finished(self) -> np.ndarray:
        """Wait until the rounds are over (no walker in flight on any shard); the stats of each of
        this shard's rounds, int64 [rounds, 5] (`_advance`). Through Ray this runs in its own thread
        (concurrency group WAIT_GROUP) while `deliver` calls play the rounds; it raises what a round
        raised."""
        self.done.wait()
        if self.failure is not None:
            raise self.failure
        return np.array(self.round_stats, dtype=np.int64).reshape(-1, 5)

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds of this walk's rounds (after `finished`): the thread that played them, by part
        (ROUND: `_advance`; RECEIVE: unpacking messages, writing segments, answering queries; SEND:
        packing and handing messages to `mail`), and `process`, every thread of this process from
        `begin` to the end of the rounds (through Ray: also Ray's own work for the calls)."""
        return {**{name: round(float(v), 3) for name, v in zip(CPU_PARTS, self.cpu_s)},
                "process": round(self.cpu_at_end - self.cpu_at_begin, 3)}

    def _guarded(self, fn, *args) -> None:
        """fn(*args); an exception also ends `finished` (it raises it), so the driver is not left waiting."""
        try:
            fn(*args)
        except BaseException as err:
            self.failure = err
            self.done.set()
            raise

    def _play_ready_rounds(self) -> None:
        """Play the next round while every other shard's messages of the current one are in (walkers,
        and node2vec's answers); end the walk when no shard has a walker in flight after it."""
        S, rnd = self.shards, self.rounds
        kinds = (WALKERS, ANSWERS) if self.params.second else (WALKERS,)
        while not self.done.is_set() and all(len(self.mailbox.get((k, rnd), ())) == S - 1 for k in kinds):
            walkers = self.mailbox.pop((WALKERS, rnd), {})
            answers = self.mailbox.pop((ANSWERS, rnd), {})
            if self.in_flight + sum(n for n, _ in walkers.values()) == 0:
                self.cpu_at_end = time.process_time()
                self.done.set()
                return
            arrived = [walkers[a][1] for a in sorted(walkers)]
            self._play_round(arrived, [answers[a][1] if a in answers else np.zeros(0, np.uint8) for a in range(S)])
            rnd = self.rounds

    def _play_round(self, arrived: list[np.ndarray], answers: list[np.ndarray]) -> None:
        """One round (`_advance`) and its messages to every other shard: the walkers that moved there
        and the nodes this round wrote for walks of that shard (segments: they go home at once, so
        no shard keeps them and the walk matrices are complete when the rounds end)."""
        t0 = time.thread_time()
        outboxes, segments, queries, stats = self._advance(arrived, answers)
        self.cpu_s[ROUND] += time.thread_time() - t0
        self.round_stats.append(stats)
        self.in_flight = int(stats[0] + stats[1])
        for d in range(self.shards):
            if d != self.shard:
                self._send(d, WALKERS, self.rounds, self.in_flight, outboxes[d], *segments[d], *queries[d:d + 1])

    def _advance(self, arrived: list[np.ndarray], answers: list[np.ndarray]) -> tuple[list, list, list, np.ndarray]:
        """One round: advance every walker here (the ones kept here and those that `arrived`; node2vec:
        the parked ones with the `answers` from each shard). Returns (S walker outboxes, S segments
        (headers, nodes) of the walks of each other shard, S query outboxes (node2vec, else empty), stats int64 [moved, parked, tokens written (the start nodes
        count in the first round), finished, microseconds this call took])."""
        S, P = self.shards, self.params
        t0 = time.perf_counter()
        self.rounds += 1
        fault_point(f"walk_sharded_round:{self.rounds}")
        walkers, resume, park = self._inbox(arrived, answers)
        orow, home, res_off = _reserve(walkers, self.row_starts, self.shard, P.length, SEGMENT_ROOM)
        seg_nodes = np.empty(int(res_off[-1]), np.int32)
        with self._threaded():
            if not P.second:
                where, used, seg0 = _advance_first_order(
                    self.indptr, self.indices, self.weights, self.table, self.weighted, self.lo, self.hi, self.shard,
                    self.starts, walkers, orow, res_off, seg_nodes, self.out, P.length)
            else:
                where, used, seg0 = _advance_kernel(
                self.indptr, self.indices, self.weights, self.table, self.rowsum, self.weighted, P.second,
                self.symmetric, self.lo, self.hi, self.shard, self.starts, walkers, resume, park, orow, res_off, seg_nodes,
                self.out, P.length, 1.0 / float(P.p), 1.0 / float(P.q), LOCKSTEP_GROUP, GROUPS_PER_CHUNK)
        order, offsets = _bucket(where, S)
        self.pending = _take(walkers, order[offsets[self.shard]:offsets[self.shard + 1]])   # room full: go on here
        sent = _take(walkers, order[:offsets[S]]) if P.second else \
            _pack_walkers(walkers, order[:offsets[S]], self.step_bits, self.wire_words)
        outboxes = [sent[offsets[d]:offsets[d + 1]] if d != self.shard else sent[:0] for d in range(S)]
        queries = self._park(walkers, park, order[offsets[S]:offsets[S + 1]]) if P.second else []
        hdr, hoff, nodes, noff = _segments_by_home(walkers["g"], home, used, seg0, res_off, seg_nodes, S,
                                                   self.row_starts, P.length)
        hdr = hdr.astype(self.header_dtype, copy=False)
        segments = [(hdr[hoff[h]:hoff[h + 1]], nodes[noff[h]:noff[h + 1]]) for h in range(S)]
        written, self.unreported = int(used.sum()) + self.unreported, 0
        stats = np.array([offsets[S] - offsets[0], offsets[S + 1] - offsets[S], written,
                          offsets[S + 2] - offsets[S + 1], int((time.perf_counter() - t0) * 1e6)], dtype=np.int64)
        return outboxes, segments, queries, stats

    def _park(self, walkers: np.ndarray, park: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
        """Keep the walkers that wait for an adjacency answer, grouped by the owner of their previous
        node; return one query array per shard (aligned with what is kept)."""
        queries = [np.empty(0, QUERY) for _ in range(self.shards)]
        self.parked = [_empty_parked() for _ in range(self.shards)]
        if not len(idx):
            return queries
        owners = owner_of(self.starts, walkers["prev"][idx])
        idx = idx[np.argsort(owners, kind="stable")]
        bounds = np.searchsorted(np.sort(owners), np.arange(self.shards + 1))
        pw, pp = _take(walkers, idx), _take(park, idx)
        for a in range(self.shards):
            lo, hi = bounds[a], bounds[a + 1]
            if hi > lo:
                self.parked[a] = (pw[lo:hi], pp[lo:hi])
                q = np.empty(hi - lo, QUERY)
                q["t"], q["x"] = pw["prev"][lo:hi], pp["x"][lo:hi]
                queries[a] = q
        return queries

    def collect(self) -> list:
        """[this shard's walks (its own writes plus the segments other shards sent with their
        walkers), its token count] after the rounds (the count is small: the driver checks it
        against the rounds' stats)."""
        if self.checkpoint is not None:
            Lake(self.checkpoint.lake).write_npy(self.checkpoint.part_path(self.shard), self.out)
        out, self.out = self.out, None          # the caller owns it now (Ray copies it into the object store)
        return [out, np.int64(np.count_nonzero(out >= 0))]


def load_walk_kernels(mode: str = "deepwalk") -> None:
    """Load (or compile once: numba's cache=True) the kernels a shard owner runs for `mode`, by
    walking a 4-node ring in two shards, unweighted and weighted. An owner passes its rows to the
    kernels as read-only views whether they came from the object store or not (`ShardWalker.load`,
    workers/kernel_inputs.py), so the ring's writable rows load the versions a real round runs (before
    that, writable rows here left the owner's first real round compiling anew: 260 s for node2vec
    under load). node2vec also loads the second-order kernels (p, q != 1) and the adjacency answers.
    A new owner process pays this (0.3-1.5 s, more on a loaded machine) before its first round unless
    it was started early (tasks/graph.py ShardOwners)."""
    ring = np.arange(4, dtype=np.int64)
    p, q = (0.5, 2.0) if mode == "node2vec" else (1.0, 1.0)
    for weights in (None, np.ones(4)):
        parts = split_csr(build_csr(ring, (ring + 1) % 4, 4, weights=weights), shard_bounds(4, 2))
        sharded_random_walks(parts, 1, 4, 0, p=p, q=q, mode=mode)


class _NumbaThreads:
    """`with`: numba's thread count for one shard's kernels, the previous one restored after."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        self.old = numba.get_num_threads()
        numba.set_num_threads(self.threads)

    def __exit__(self, *exc):
        numba.set_num_threads(self.old)
        return False


# ---------------------------------------------------------------------------------------------
# the rounds
# ---------------------------------------------------------------------------------------------
Call = Callable[..., list]
# mail(shard, message): hand a message (`pack_message`) to shard's ShardWalker.deliver(message)
Mail = Callable[[int, list], None]
# What a message between shard owners holds (ShardWalker.deliver)
WALKERS, ANSWERS = 0, 1
# The parts of a shard owner's CPU in the rounds (ShardWalker.cpu_split)
CPU_PARTS = ("round", "receive", "send")
ROUND, RECEIVE, SEND = range(len(CPU_PARTS))
# The concurrency group (a thread of its own) in which a Ray shard owner runs `finished`, which
# waits while `deliver` calls play the rounds in the actor's default group (tasks/graph.py)
WAIT_GROUP = "wait"


# A message between shard owners is one buffer: an int64 head and the arrays' bytes (`pack_message`).
# It travels over a direct connection between the owner processes (tasks/peer_mail.py), sent and
# received as it is: no pickling, no Ray call per message (docs/scaling.md section 9, "Owner
# messages over direct connections").
MESSAGE_HEAD = 5            # int64 kind, round, sender, walkers in flight, number of arrays; then their sizes


def pack_message(kind: int, rnd: int, sender: int, in_flight: int, *arrays: np.ndarray) -> np.ndarray:
    """One message (`ShardWalker.deliver`) as one uint8 buffer: an int64 head (MESSAGE_HEAD fields,
    then the byte size of each array) and each array's bytes from an 8-byte boundary (the receiver
    views them in place: numba wants aligned arrays)."""
    sizes = [int(a.nbytes) for a in arrays]
    head = np.array([kind, rnd, sender, in_flight, len(arrays), *sizes], np.int64)
    buf = np.empty(head.nbytes + sum((n + 7) & ~7 for n in sizes), np.uint8)
    buf[:head.nbytes] = head.view(np.uint8)
    at = head.nbytes
    for a, n in zip(arrays, sizes):
        buf[at:at + n] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        at += (n + 7) & ~7
    return buf


def unpack_message(message) -> tuple[int, int, int, int, list[np.ndarray]]:
    """(kind, round, sender, in_flight, arrays as uint8 views) of a `pack_message` buffer (or its bytes)."""
    raw = np.frombuffer(message, np.uint8)
    n = int(raw[8 * (MESSAGE_HEAD - 1):8 * MESSAGE_HEAD].view(np.int64)[0])
    head = raw[:8 * (MESSAGE_HEAD + n)].view(np.int64)
    arrays, at = [], 8 * (MESSAGE_HEAD + n)
    for size in head[MESSAGE_HEAD:]:
        arrays.append(raw[at:at + size])
        at += (int(size) + 7) & ~7
    return int(head[0]), int(head[1]), int(head[2]), int(head[3]), arrays


def round_info(stats: list[np.ndarray]) -> dict:
    """The walk's figures from every shard's round stats (`ShardWalker.finished`): rounds, walker
    moves, adjacency queries, tokens written, and advance_critical_s, the sum over rounds of the
    slowest shard's round (the rounds' compute on the critical path)."""
    rounds = max(len(s) for s in stats)
    padded = np.zeros((len(stats), rounds, 5), np.int64)
    for i, s in enumerate(stats):
        padded[i, :len(s)] = s
    return {"walk_rounds": rounds, "walker_moves": int(padded[:, :, 0].sum()),
            "adjacency_queries": int(padded[:, :, 1].sum()), "written": int(padded[:, :, 2].sum()),
            "advance_critical_s": round(int(padded[:, :, 4].max(axis=0).sum()) / 1e6, 3)}


def collect_walks(call: Call, fetch: Callable[[list], list], shards: int, info: dict) -> tuple[list, dict]:
    """After the rounds (`info` from `round_info`; every segment went home with the rounds'
    messages): each shard's walk matrix. `call(shard, method, *args, returns=n)` runs a method on a
    shard and gives its n results (values in-process, object refs on Ray); `fetch(items)` turns the
    small token counts into values. Returns (per shard its walks, info)."""
    homes = [call(h, "collect", returns=2) for h in range(shards)]
    tokens = [int(t) for t in fetch([c[1] for c in homes])]
    written = info.pop("written")
    if sum(tokens) != written:
        raise RuntimeError(f"sharded walks: {sum(tokens)} tokens collected, {written} walked")
    return [c[0] for c in homes], {**info, "walk_steps": sum(tokens)}


def sharded_random_walks(shards: list[CSRShard], walks_per_node: int, length: int, seed: int, p: float = 1.0,
                         q: float = 1.0, mode: str = "deepwalk", threads: int = 1, walk_offset: int = 0,
                         shuffle: np.random.Generator | None = None) -> tuple[list[np.ndarray], dict]:
    """The walks of every shard, computed shard by shard in this process (no Ray): the matrix of
    shard s equals `random_walks(full CSR, arange(lo, hi), ...)` at the same settings. Messages
    between shards go through one queue, delivered in the order sent, or in a random order with
    `shuffle` (as Ray may deliver messages of different senders: same walks). Returns (walk
    matrices, info: rounds, walker moves, adjacency queries, tokens)."""
    bounds = [(s.lo, s.hi) for s in shards]
    params = WalkParams(int(walks_per_node), int(length), int(seed), float(p), float(q), mode, threads=threads,
                        walk_offset=int(walk_offset))
    owners = [ShardWalker(s.as_tuple(), i, bounds, params) for i, s in enumerate(shards)]
    queue: list[tuple] = []

    def mail(shard, message):
        queue.append((shard, message.tobytes()))      # as a connection delivers it

    for o in owners:
        o.begin(mail)
    while queue:
        shard, message = queue.pop(int(shuffle.integers(len(queue))) if shuffle is not None else 0)
        owners[shard].deliver(message)
    info = round_info([o.finished() for o in owners])

    def call(shard, method, *args, returns):
        res = getattr(owners[shard], method)(*args)
        return res if isinstance(res, list) else [res]

    return collect_walks(call, list, len(shards), info)
