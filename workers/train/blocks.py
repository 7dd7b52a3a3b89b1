"""Block-partitioned skip-gram (PyTorch-BigGraph buckets / GraphVite episodes): the compute pieces.

Why: with several workers, Hogwild on one shared table needs every worker to hold (and average) the
whole W_in and W_out. Here node ids are split into P partitions; W_in and W_out are each cut into P
shards. A *block* (i, j) trains only the (context, centre) pairs whose context lies in partition i
and whose centre lies in partition j: it reads and writes shard W_in[i] and shard W_out[j] and
nothing else, and draws its negatives from partition j's noise distribution (the negatives replace
the centre, so they must live in the W_out shard the block holds). One *episode* is P blocks
(i, (i + e) mod P), i = 0..P-1: every W_in shard and every W_out shard appears in exactly one block,
so the blocks of an episode run on different workers with no shared memory and no averaging; the
P episodes of an epoch cover all P*P blocks exactly once (a Latin square, GraphVite's orthogonal
blocks). Shards move between workers through the object store (tasks/train.py).

Maths per pair is the one of ``workers.skipgram`` (word2vec skip-gram, dynamic window, unigram **
ns_exponent noise, HogBatch shared negatives per centre, linear lr decay by stream position).
Differences, all deliberate:
* the dynamic window and the negatives of a centre come from splitmix64 streams seeded by its
  *position* (and the block's context partition for negatives), so every block sees the same
  windows whatever the partitioning or thread count;
* negatives are shared by the contexts of one centre *inside one block* and drawn from the
  centre's partition (PyTorch-BigGraph does the same);
* each pair keeps the learning rate its stream position gives it, so every episode sweeps lr from
  high to low over the positions it trains (a warm restart per episode, see docs/training.md).

Everything here is plain numpy / numba (no Ray, no Prefect); `train_blocks` runs the whole schedule
in-process (tests, memory benchmark), `train_block` is what one Ray task runs.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable

import numba as nb
import numpy as np

from embedlake.config import TrainConfig
from embedlake.lake import Lake

from embedlake.workers.graph.shards import owner_of, shard_bounds, shard_starts
from embedlake.workers.train.sgns_parts import (GOLDEN, LOW32, M1, M2, S31, S32, build_alias, draw_negatives,
                                                hogbatch, keep_thresholds, numba_threads, pair_grad, sigmoid_tables,
                                                splitmix64, using_numba_threads)


# ----------------------------------------------------------------------------- schedule, partitions

def block_schedule(partitions: int) -> list[list[tuple[int, int]]]:
    """Episodes of one epoch: episode e = [(i, (i + e) % P) for i in 0..P-1] (context shard i, centre shard j).

    Inside an episode no W_in shard and no W_out shard appears twice, so its blocks run in parallel
    without sharing a row; over the P episodes every (i, j) block appears exactly once.
    """
    P = int(partitions)
    if P < 1:
        raise ValueError("partitions must be >= 1")
    return [[(i, (i + e) % P) for i in range(P)] for e in range(P)]


def step_blocks(step: int, partitions: int, rounds: int = 1) -> tuple[int, int, list[tuple[int, int]]]:
    """Global episode counter -> (epoch, episode inside the epoch, its blocks). An epoch has
    P * rounds episodes: `rounds` passes of the P-episode schedule, pass r over the r-th slice of
    the stream positions (short episodes couple the shards often, see docs/training.md)."""
    per = int(partitions) * int(rounds)
    ep, e = divmod(int(step), per)
    return ep, e, block_schedule(partitions)[e % int(partitions)]


def assign_partitions(counts: np.ndarray, partitions: int, ns_exponent: float = 0.75):
    """Spread node ids over P partitions with balanced work: (part int32[V], local int32[V], sizes int64[P]).

    Nodes are sorted by noise weight count**ns_exponent and dealt out in snake order (0..P-1,
    P-1..0, ...), so every partition gets about the same number of nodes, the same share of the
    token stream (block work) and the same noise mass (negatives). local[v] is v's row in its shard;
    rows of a shard keep increasing node-id order.
    """
    c = np.asarray(counts, dtype=np.float64)
    V = len(c)
    P = int(partitions)
    w = np.power(np.maximum(c, 0.0), ns_exponent)
    order = np.lexsort((np.arange(V), -w))                      # heaviest first, ties by id
    k = np.arange(V, dtype=np.int64)
    rnd, pos = k // P, k % P
    slot = np.where(rnd % 2 == 0, pos, P - 1 - pos)
    part = np.empty(V, np.int32)
    part[order] = slot.astype(np.int32)
    sizes = np.bincount(part, minlength=P).astype(np.int64)
    local = np.empty(V, np.int32)
    for p in range(P):                                          # P passes over V: fine for P << V
        m = np.flatnonzero(part == p)
        local[m] = np.arange(len(m), dtype=np.int32)
    return part, local, sizes


def range_partitions(vocab: int, partitions: int):
    """P contiguous id ranges (graph shards' node ranges, workers/graph/shards.py), as
    assign_partitions' (part, local, sizes): the sharded engine's partitions (workers/train/sharded.py)."""
    starts = shard_starts(shard_bounds(int(vocab), int(partitions)))
    ids = np.arange(int(vocab), dtype=np.int64)
    part = owner_of(starts, ids)
    return part.astype(np.int32), (ids - starts[part]).astype(np.int32), np.diff(starts).astype(np.int64)


def partition_noise(counts: np.ndarray, part: np.ndarray, local: np.ndarray, sizes: np.ndarray,
                    ns_exponent: float = 0.75):
    """Alias tables of each partition's noise distribution over its local rows, concatenated:
    (thr uint64[V], idx int32[V], off int64[P+1]); partition p uses thr[off[p]:off[p+1]]."""
    P = len(sizes)
    off = np.zeros(P + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    thr = np.empty(int(off[-1]), np.uint64)
    idx = np.empty(int(off[-1]), np.int32)
    c = np.asarray(counts, dtype=np.float64)
    for p in range(P):
        m = np.flatnonzero(part == p)
        cp = np.zeros(len(m), np.float64)
        cp[local[m]] = c[m]
        w = np.where(cp > 0, np.power(np.maximum(cp, 1e-300), ns_exponent), 0.0)
        if w.sum() <= 0:
            w = np.ones_like(w)
        if len(m):
            t, a = build_alias(w / w.sum())
            thr[off[p]:off[p + 1]], idx[off[p]:off[p + 1]] = t, a
    return thr, idx, off


def partition_alias(masses) -> tuple[np.ndarray, np.ndarray]:
    """Alias tables (thr uint64[P], idx int32[P]) of the partitions' shares of the noise: masses[p]
    is the sum of count ** ns_exponent over partition p's rows. A centre's negatives come from the
    partition drawn from these (the kernel's _negative_partition). No mass anywhere: uniform."""
    m = np.asarray(masses, dtype=np.float64)
    if m.sum() <= 0:
        m = np.ones_like(m)
    return build_alias(m / m.sum())


def noise_masses(counts: np.ndarray, part: np.ndarray, partitions: int, ns_exponent: float = 0.75) -> np.ndarray:
    """float64 [P]: each partition's share of the unigram ** ns_exponent noise mass (unnormalised)."""
    c = np.asarray(counts, dtype=np.float64)
    w = np.where(c > 0, np.power(np.maximum(c, 1e-300), ns_exponent), 0.0)
    return np.bincount(part, weights=w, minlength=int(partitions))


def compact_stream(tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop padding (-1) so that windows are taken over real tokens only (as the single kernel does)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    base = int(offsets[0]) if len(offsets) else 0
    tokens = tokens[base:int(offsets[-1])] if len(offsets) > 1 else tokens[:0]
    offsets = offsets - base
    if len(tokens) and tokens.min() < 0:
        keep = tokens >= 0
        csum = np.zeros(len(tokens) + 1, np.int64)
        np.cumsum(keep, out=csum[1:])
        offsets = csum[offsets]
        tokens = tokens[keep]
    return tokens, offsets


def subsample(tokens: np.ndarray, offsets: np.ndarray, counts: np.ndarray, sample: float, seed: int,
              epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """word2vec subsampling for one epoch, decided once for all blocks (same kept set everywhere)."""
    thr = keep_thresholds(counts, sample)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7_654_321, int(epoch)])
    u = rng.integers(0, 1 << 32, size=len(tokens), dtype=np.uint64)
    keep = u < thr[tokens]
    csum = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(keep, out=csum[1:])
    return np.ascontiguousarray(tokens[keep]), csum[offsets]


def stream_fingerprint(tokens: np.ndarray, offsets: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the exact token stream."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(tokens).view(np.uint8))
    h.update(np.ascontiguousarray(offsets).view(np.uint8))
    return h.hexdigest()[:24]


def prepare_blocks(tokens, offsets, vocab_size: int, partitions: int, *, counts=None, ns_exponent: float = 0.75,
                   sample: float = 0.0, seed: int = 0, epoch: int = 0, scheme: str = "balanced") -> dict:
    """Everything the blocks of an epoch share (read-only): the stream (rows and partitions per
    position), the partition map, the per-partition noise tables and the partitions' noise shares. One object, put once in the object store.
    scheme: `balanced` (assign_partitions) or `range` (range_partitions, the sharded engine's)."""
    tokens, offsets = compact_stream(tokens, offsets)
    if len(tokens) and (tokens.max() >= vocab_size):
        raise ValueError("tokens must lie in [0, vocab_size) or be -1 (padding)")
    if counts is None:
        counts = np.bincount(tokens, minlength=vocab_size).astype(np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    fingerprint = stream_fingerprint(tokens, offsets)
    per_epoch = len(tokens)
    if sample > 0:
        tokens, offsets = subsample(tokens, offsets, counts, sample, seed, epoch)
    if scheme == "range":
        part, local, sizes = range_partitions(vocab_size, partitions)
    elif scheme == "balanced":
        part, local, sizes = assign_partitions(counts, partitions, ns_exponent)
    else:
        raise ValueError(f"partition scheme must be 'balanced' or 'range', not {scheme!r}")
    thr, idx, aoff = partition_noise(counts, part, local, sizes, ns_exponent)
    part_thr, part_idx = partition_alias(noise_masses(counts, part, partitions, ns_exponent))
    tloc = local[tokens]
    tpart = part[tokens].astype(np.uint8)
    del tokens
    return {"tloc": tloc, "tpart": tpart, "offsets": offsets, "part": part,
            "local": local, "sizes": sizes, "alias_thr": thr, "alias_idx": idx, "alias_off": aoff,
            "part_thr": part_thr, "part_idx": part_idx, "per_epoch": np.int64(per_epoch), "fingerprint": fingerprint}


def init_shards(vocab_sizes: np.ndarray, dim: int, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial W_in[i] ~ U(-0.5/dim, 0.5/dim) from (seed, i) and W_out[i] = 0 (word2vec's init)."""
    n = int(vocab_sizes[i])
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1_000_003, int(i)])
    W_in = (rng.random((n, dim), dtype=np.float32) - np.float32(0.5)) / np.float32(dim)
    return W_in, np.zeros((n, dim), np.float32)


def assemble(part: np.ndarray, local: np.ndarray, shards: list[np.ndarray], release: bool = False) -> np.ndarray:
    """Shards -> the full [V, dim] table in node-id order. release=True drops each shard from the
    list once copied, so the peak is one table + one shard instead of two tables."""
    V = len(part)
    dim = shards[0].shape[1]
    W = np.empty((V, dim), np.float32)
    for p in range(len(shards)):
        m = np.flatnonzero(part == p)
        W[m] = shards[p][local[m]]
        if release:
            shards[p] = None
    return W


# ----------------------------------------------------------------------------- kernel

@nb.njit(inline="always")
def _mix(seed, epoch, pos, salt):
    s = np.uint64(seed) * M1 + np.uint64(epoch) * M2 + np.uint64(pos) * GOLDEN + np.uint64(salt) * S31
    s, z = splitmix64(s)
    return z


NEGATIVE_PARTITION_SALT = 0x6E656773        # "negs": the stream of the partition a centre's negatives come from


@nb.njit(inline="always")
def _negative_partition(seed, epoch, gp, part_thr, part_idx):
    """The partition whose noise gives the negatives of the centre at global position gp: one alias
    draw from the partitions' noise shares, the same in every block (it depends on the position only)."""
    z = _mix(seed, epoch, gp, NEGATIVE_PARTITION_SALT)
    jj = np.int64(((z >> S32) * np.uint64(part_thr.shape[0])) >> S32)
    return jj if (z & LOW32) < part_thr[jj] else part_idx[jj]


INDEPENDENT = os.environ.get("NEGS_INDEPENDENT", "0") == "1"     # experiment: each negative draws its partition


@nb.njit(inline="always")
def _touches_partition(seed, epoch, gp, pj, negatives, part_thr, part_idx):
    """Whether the centre at gp has a negative in partition pj (one partition for all k, or, with
    INDEPENDENT, one per negative)."""
    if not INDEPENDENT:
        return _negative_partition(seed, epoch, gp, part_thr, part_idx) == pj
    P = np.uint64(part_thr.shape[0])
    ps = _mix(seed, epoch, gp, NEGATIVE_PARTITION_SALT)
    for k in range(negatives):
        ps, z = splitmix64(ps)
        jj = np.int64(((z >> S32) * P) >> S32)
        m = jj if (z & LOW32) < part_thr[jj] else part_idx[jj]
        if m == pj:
            return True
    return False


@nb.njit(inline="always")
def _block_negatives(seed, epoch, gp, pj, center, negatives, part_thr, part_idx, alias_thr, alias_idx, outs):
    """INDEPENDENT: outs[0] = center, then those of the centre's k negatives (each with its own
    partition) that lie in pj. Returns the number of outputs."""
    P = np.uint64(part_thr.shape[0])
    ps = _mix(seed, epoch, gp, NEGATIVE_PARTITION_SALT)
    rs = _mix(seed, epoch, gp, 1)
    nal = np.uint64(alias_thr.shape[0])
    outs[0] = center
    nout = 1
    for k in range(negatives):
        ps, z = splitmix64(ps)
        jj = np.int64(((z >> S32) * P) >> S32)
        m = jj if (z & LOW32) < part_thr[jj] else part_idx[jj]
        rs, r = splitmix64(rs)
        if m != pj:
            continue
        j2 = np.int64(((r >> S32) * nal) >> S32)
        neg = j2 if (r & LOW32) < alias_thr[j2] else alias_idx[j2]
        if neg == center:
            continue
        outs[nout] = neg
        nout += 1
    return nout


@nb.njit(inline="always")
def _negatives_window(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab):
    """hogbatch for a window whose centre lies in another partition: its B contexts against the
    negatives outs[1:nout] alone (no positive output); gather, step, add back as hogbatch does.
    Returns the window's loss."""
    dim = W_in.shape[1]
    m = nout - 1
    for c in range(B):
        for d in range(dim):
            Cb[c, d] = W_in[ctx[c], d]
    for o in range(m):
        for d in range(dim):
            Ob[o, d] = W_out[outs[o + 1], d]
    loss = 0.0
    for c in range(B):
        for o in range(m):
            f = np.float32(0.0)
            for d in range(dim):
                f += Cb[c, d] * Ob[o, d]
            dl, gg = pair_grad(f, False, lr, sig_tab, logsig_tab)
            loss += dl
            g[c, o] = gg
    for c in range(B):
        for d in range(dim):
            dIn[c, d] = 0.0
        for o in range(m):
            gg = g[c, o]
            for d in range(dim):
                dIn[c, d] += gg * Ob[o, d]
    for o in range(m):
        for d in range(dim):
            acc = np.float32(0.0)
            for c in range(B):
                acc += g[c, o] * Cb[c, d]
            W_out[outs[o + 1], d] += acc
    for c in range(B):
        for d in range(dim):
            W_in[ctx[c], d] += dIn[c, d]
    return loss


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _block_chunk(tloc, tpart, offsets, centres, c_lo, c_hi, pi, pj, W_in, W_out, alias_thr, alias_idx, part_thr,
                 part_idx, sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base, pos_scale, work_total, seed,
                 epoch, nblocks, out_loss, out_pairs, gstart, gdelta):
    """Train block (pi, pj) over the candidate centres centres[c_lo:c_hi] (stream positions,
    ascending): the contexts of partition `pi` in a centre's window against the outputs that lie in
    partition pj, i.e. the centre itself when it lies in pj (positive) and the centre's negatives
    when its negative partition (_negative_partition) is pj. Candidates with neither are skipped.
    The stream comes as per-position shard rows `tloc` and partitions `tpart` (sequential reads
    instead of two random lookups per context). W_in / W_out are the two shards (local rows). Loss
    sums and positive pair counts per thread block go to out_loss / out_pairs.

    Why the negatives' partition is drawn per centre from the partitions' noise shares: a context
    node then gets its negatives from the global noise (each centre's k negatives lie in partition
    m with probability q_m, the noise share of m), whatever the partitions of its own contexts;
    drawn from the centre's partition instead, a node was repelled from each partition in
    proportion to how many of its pairs fall there (docs/training.md, "Negatives from the global
    noise"). All k negatives of a centre come from one partition, so a window touches at most two
    blocks per context partition.

    The stream may be one walk shard's piece of a longer virtual stream: local position p of group
    g (positions [gstart[g], gstart[g+1])) stands at global position p + gdelta[g], and the window
    draw, the negatives and the learning rate follow the global position, so a pair trains the same
    way whichever shard holds it (one group [0, N) with delta 0: the stream is the whole stream)."""
    n = c_hi - c_lo
    dim = W_in.shape[1]
    K1 = negatives + 1
    cmax = 2 * window
    win_u = np.uint64(window)
    for blk in nb.prange(nblocks):
        a = c_lo + (n * blk) // nblocks
        b = c_lo + (n * (blk + 1)) // nblocks
        ctx = np.empty(cmax, np.int32)
        outs = np.empty(K1, np.int32)
        g = np.empty((cmax, K1), np.float32)
        dIn = np.empty((cmax, dim), np.float32)
        Cb = np.empty((cmax, dim), np.float32)
        Ob = np.empty((K1, dim), np.float32)
        loss = 0.0
        pairs = 0
        s = 0
        grp = 0
        if b > a:
            s = np.searchsorted(offsets, centres[a], side="right") - 1
            grp = np.searchsorted(gstart, centres[a], side="right") - 1
        for k in range(a, b):
            p = centres[k]
            while offsets[s + 1] <= p:
                s += 1
            while gstart[grp + 1] <= p:
                grp += 1
            gp = p + gdelta[grp]
            positive = tpart[p] == pj
            negs_here = negatives > 0 and _touches_partition(seed, epoch, gp, pj, negatives, part_thr, part_idx)
            if not positive and not negs_here:
                continue
            z = _mix(seed, epoch, gp, 0)
            bw = 1 + np.int64(((z >> S32) * win_u) >> S32)
            lo = max(offsets[s], p - bw)
            hi = min(offsets[s + 1], p + bw + 1)
            B = 0
            for q in range(lo, hi):
                if q != p and tpart[q] == pi:
                    ctx[B] = tloc[q]
                    B += 1
            if B == 0:
                continue
            center = tloc[p] if positive else -1
            lr = lr0 - (lr0 - min_lr) * (pos_base + gp * pos_scale) / work_total
            if lr < min_lr:
                lr = min_lr
            outs[0] = center
            nout = 1
            if negs_here and INDEPENDENT:
                nout = _block_negatives(seed, epoch, gp, pj, center, negatives, part_thr, part_idx, alias_thr,
                                        alias_idx, outs)
            elif negs_here:
                state = _mix(seed, epoch, gp, 1)
                state, nout = draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
            if positive:
                loss += hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab)
                pairs += B
            elif nout > 1:
                loss += _negatives_window(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab)
        out_loss[blk] = loss
        out_pairs[blk] = pairs


@nb.njit(cache=True)
def _negative_partitions(gpos, seed, epoch, part_thr, part_idx, out):
    for k in range(gpos.shape[0]):
        out[k] = _negative_partition(seed, epoch, gpos[k], part_thr, part_idx)


def negative_partitions(gpos: np.ndarray, part_noise: tuple, *, seed: int, epoch: int) -> np.ndarray:
    """int64: the partition each centre at global positions `gpos` takes its negatives from (what
    the kernel draws; tests and measurements)."""
    gpos = np.ascontiguousarray(gpos, dtype=np.int64)
    out = np.empty(len(gpos), np.int64)
    _negative_partitions(gpos, int(seed), int(epoch), part_noise[0], part_noise[1], out)
    return out


@nb.njit(cache=True)
def _touches(tpart, lo, hi, pj, negatives, seed, epoch, gstart, gdelta, part_thr, part_idx, out):
    """out[p - lo] = whether position p in [lo, hi) has an output in partition pj (its token, or
    its negatives' partition)."""
    grp = np.searchsorted(gstart, lo, side="right") - 1 if hi > lo else 0
    for p in range(lo, hi):
        while gstart[grp + 1] <= p:
            grp += 1
        hit = tpart[p] == pj
        if not hit and negatives > 0:
            hit = _touches_partition(seed, epoch, p + gdelta[grp], pj, negatives, part_thr, part_idx)
        out[p - lo] = hit


# ----------------------------------------------------------------------------- one block

@dataclass(frozen=True)
class StreamPlace:
    """Where one prepared stream sits in the virtual whole stream that positions (windows,
    negatives, learning rate, rounds) refer to. Local positions [gstart[g], gstart[g+1]) of group g
    stand at global positions + gdelta[g]. The in-process engine's stream is the whole stream (one
    group, delta 0); a walk shard of the sharded engine (workers/train/sharded.py) has one group per
    walk number, placed as in the one-CSR k-major stream."""
    gstart: np.ndarray          # int64 [G + 1]
    gdelta: np.ndarray          # int64 [G]
    total: int                  # positions of the whole (subsampled) stream
    per_epoch: int              # tokens of one epoch of the whole stream before subsampling


def whole_stream(prep: dict) -> StreamPlace:
    """The place of a stream that is the whole stream (prepare_blocks)."""
    n = len(prep["tloc"])
    return StreamPlace(np.array([0, n], np.int64), np.zeros(1, np.int64), n, int(prep["per_epoch"]))


def train_block(prep: dict, i: int, j: int, W_in_i: np.ndarray, W_out_j: np.ndarray, *, epoch: int, epochs: int,
                episode: int = 0, rounds: int = 1, lr_schedule: str = "position", window: int = 10, negatives: int = 5, lr: float = 0.025, min_lr: float = 1e-4, seed: int = 0,
                threads: int = 0, progress: Callable[[int, int, float], None] | None = None,
                chunk_centres: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train block (i, j) of `epoch` in place on the shards W_in_i (context partition i) and W_out_j
    (centre partition j); returns them with stats {centres, pairs, loss_sum, seconds}.
    progress(done_centres, total_centres, chunk_loss) is called between kernel calls."""
    a0, a1 = int(prep["alias_off"][j]), int(prep["alias_off"][j + 1])
    noise = (prep["alias_thr"][a0:a1], prep["alias_idx"][a0:a1])
    part_noise = (prep["part_thr"], prep["part_idx"])
    P = len(prep["part_thr"])
    place = whole_stream(prep)
    centres = touching_centres(prep, place, j, episode // P, rounds, part_noise, negatives=negatives, seed=seed,
                               epoch=epoch)
    return train_bucket(prep, place, centres, noise, part_noise, i, j, W_in_i, W_out_j, epoch=epoch, epochs=epochs,
                        episode=episode, rounds=rounds, lr_schedule=lr_schedule, window=window,
                        negatives=negatives, lr=lr, min_lr=min_lr, seed=seed, threads=threads, progress=progress,
                        chunk_centres=chunk_centres)


def train_bucket(stream: dict, place: StreamPlace, centres: np.ndarray, noise: tuple, part_noise: tuple, i: int,
                 j: int, W_in_i: np.ndarray, W_out_j: np.ndarray, *, epoch: int, epochs: int, episode: int = 0,
                 rounds: int = 1, lr_schedule: str = "position", window: int = 10, negatives: int = 5,
                 lr: float = 0.025, min_lr: float = 1e-4, seed: int = 0, threads: int = 0,
                 progress: Callable[[int, int, float], None] | None = None,
                 chunk_centres: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Block (i, j) over the candidate `centres` (positions of one stream, ascending: those of
    this episode's round with an output in partition j, touching_centres) of one stream's flat
    arrays (tloc, tpart, offsets), where it sits in the whole stream (`place`), partition j's noise
    alias tables `noise` (thr, idx) and the partitions' share tables `part_noise` (partition_alias).
    Same return as train_block."""
    W_in_i = writable_f32(W_in_i)
    W_out_j = writable_f32(W_out_j)
    sig_tab, logsig_tab = sigmoid_tables()
    P = len(part_noise[0])
    c0, c1 = 0, len(centres)
    pos_base, pos_scale, work_total = lr_positions(place, P, lr_schedule, epoch, epochs, episode, rounds)
    nthreads = numba_threads(threads)
    nblocks = 1 if nthreads == 1 else 4 * nthreads
    if chunk_centres is None:
        chunk_centres = max(32768, (c1 - c0) // 50)
    loss_sum, pairs, done = 0.0, 0, 0
    lb = np.zeros(nblocks, np.float64)
    pb = np.zeros(nblocks, np.int64)
    t0 = time.perf_counter()
    with using_numba_threads(nthreads):
        for lo in range(c0, c1, chunk_centres):
            hi = min(c1, lo + chunk_centres)
            _block_chunk(stream["tloc"], stream["tpart"], stream["offsets"], centres, lo, hi, int(i), int(j),
                         W_in_i, W_out_j, noise[0], noise[1], part_noise[0], part_noise[1], sig_tab, logsig_tab,
                         int(window), int(negatives), float(lr), float(min_lr), pos_base, float(pos_scale),
                         work_total, int(seed), int(epoch), nblocks, lb, pb, place.gstart, place.gdelta)
            cl, cp = float(lb.sum()), int(pb.sum())
            loss_sum += cl
            pairs += cp
            done += hi - lo
            if progress is not None:
                progress(done, c1 - c0, cl / cp if cp else float("nan"))
    stats = {"block": [int(i), int(j)], "epoch": int(epoch), "centres": c1 - c0, "pairs": pairs,
             "loss_sum": loss_sum, "seconds": time.perf_counter() - t0, "threads": nthreads}
    return W_in_i, W_out_j, stats


def writable_f32(W: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 table the kernel may update in place (object-store arrays are read-only)."""
    W = np.ascontiguousarray(W, dtype=np.float32)
    return W if W.flags.writeable else W.copy()


def local_position(place: StreamPlace, x: int) -> int:
    """The first local position of a stream whose global position is >= x (global positions grow
    with local ones: groups are placed in order)."""
    gs = place.gstart[:-1] + place.gdelta
    ge = place.gstart[1:] + place.gdelta
    g = int(np.searchsorted(ge, x, side="right"))
    if g >= len(gs):
        return int(place.gstart[-1])
    return int(place.gstart[g] + max(0, x - int(gs[g])))


def round_range(place: StreamPlace, r: int, rounds: int) -> tuple[int, int]:
    """[lo, hi): the local positions of round r, those at global positions [r N / R, (r + 1) N / R)
    of the whole stream (short episodes couple the shards more often)."""
    if rounds <= 1:
        return int(place.gstart[0]), int(place.gstart[-1])
    return (local_position(place, place.total * r // rounds), local_position(place, place.total * (r + 1) // rounds))


def touching_centres(stream: dict, place: StreamPlace, j: int, r: int, rounds: int, part_noise: tuple, *,
                     negatives: int, seed: int, epoch: int) -> np.ndarray:
    """int64 positions (ascending) of round r of one stream whose outputs touch partition j: the
    token lies in j (its positive pairs train in the blocks (., j)) or its negatives are drawn from
    j (_negative_partition). The blocks (., j) of the round visit these and no other."""
    lo, hi = round_range(place, r, rounds)
    hit = np.empty(hi - lo, np.bool_)
    _touches(stream["tpart"], lo, hi, int(j), int(negatives), int(seed), int(epoch), place.gstart, place.gdelta,
             part_noise[0], part_noise[1], hit)
    return np.flatnonzero(hit) + lo


def lr_positions(place: StreamPlace, P: int, lr_schedule: str, epoch: int, epochs: int, episode: int,
                 rounds: int) -> tuple[float, float, float]:
    """(pos_base, pos_scale, work_total) of the kernel's linear lr decay, lr at global position p =
    lr0 - (lr0 - min_lr) * (pos_base + p * pos_scale) / work_total. pos_scale maps a subsampled
    stream back to original positions. 'position': each pair keeps its single-worker lr, so every
    episode restarts high; 'global': lr decays over the whole run, episode after episode."""
    n_stream, per_epoch = int(place.total), int(place.per_epoch)
    pos_scale = per_epoch / n_stream if n_stream else 1.0
    if lr_schedule == "global":
        steps = P * rounds
        pos_base = float((epoch * steps + episode) * per_epoch)
        work_total = float(max(1, per_epoch * epochs * steps))
    elif lr_schedule == "position":
        pos_base, work_total = float(epoch * per_epoch), float(max(1, per_epoch * epochs))
    else:
        raise ValueError(f"lr_schedule must be 'global' or 'position', not {lr_schedule!r}")
    return pos_base, pos_scale, work_total


# ----------------------------------------------------------------------------- in-process driver

def pass_loss(episodes: list[tuple[float, int]]) -> float:
    """Loss per positive pair over whole passes of the schedule ((loss sum, pairs) per episode, P
    of them: every block once). One episode alone is no fair figure: its blocks (i, i + e) hold the
    positive pairs of context partition i but the negatives of the centres whose negative
    partition is i + e, which need not be the same contexts (a walk revisits its centre, so the
    diagonal episode has more positives)."""
    ls, ps = sum(e[0] for e in episodes), sum(e[1] for e in episodes)
    return ls / ps if ps else float("nan")


def train_blocks(tokens, offsets, vocab_size: int, *, partitions: int = 2, counts=None, dim: int = 128,
                 window: int = 10, negatives: int = 5, ns_exponent: float = 0.75, epochs: int = 1,
                 lr: float = 0.025, min_lr: float = 1e-4, sample: float = 0.0, seed: int = 0, threads: int = 0,
                 rounds: int = 1, lr_schedule: str = "position", scheme: str = "balanced", on_episode: Callable[[int, int, list, list], None] | None = None,
                 start: tuple[int, list, list] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The whole block schedule in this process, block after block (what the Ray driver in
    tasks/train.py does across workers). Same arguments and return value as ``train_sgns``.

    on_episode(epoch, episode, W_in_shards, W_out_shards) is called after every episode (checkpoint
    hook); start=(steps_done, W_in_shards, W_out_shards) resumes after `steps_done` episodes.
    """
    if window < 1 or negatives < 0 or epochs < 1 or dim < 1 or partitions < 1:
        raise ValueError("window >= 1, negatives >= 0, epochs >= 1, dim >= 1, partitions >= 1 required")
    P = int(partitions)
    prep = prepare_blocks(tokens, offsets, vocab_size, P, counts=counts, ns_exponent=ns_exponent,
                          sample=sample, seed=seed, epoch=0, scheme=scheme)
    if start is not None:
        step0, Win, Wout = start[0], list(start[1]), list(start[2])
    else:
        step0 = 0
        Win, Wout = map(list, zip(*(init_shards(prep["sizes"], dim, seed, p) for p in range(P))))
    t0 = time.perf_counter()
    pairs, per_episode = 0, []
    steps = P * int(rounds)
    for step in range(step0, epochs * steps):
        ep, e, blocks = step_blocks(step, P, rounds)
        if sample > 0 and e == 0 and ep > 0:
            prep = prepare_blocks(tokens, offsets, vocab_size, P, counts=counts, ns_exponent=ns_exponent,
                                  sample=sample, seed=seed, epoch=ep, scheme=scheme)
        ls, ps = 0.0, 0
        for i, j in blocks:
            Win[i], Wout[j], st = train_block(prep, i, j, Win[i], Wout[j], epoch=ep, epochs=epochs, episode=e,
                                              rounds=rounds, lr_schedule=lr_schedule, window=window,
                                              negatives=negatives, lr=lr, min_lr=min_lr, seed=seed, threads=threads)
            ls += st["loss_sum"]
            ps += st["pairs"]
        pairs += ps
        per_episode.append((ls, ps))
        if on_episode is not None:
            on_episode(ep, e, Win, Wout)
    seconds = time.perf_counter() - t0
    W_in = assemble(prep["part"], prep["local"], Win, release=True)
    W_out = assemble(prep["part"], prep["local"], Wout, release=True)
    tok = int(prep["per_epoch"]) * (epochs - step0 / steps)
    stats = {"tokens": int(tok), "pairs": pairs, "seconds": seconds,
             "tokens_per_s": tok / seconds if seconds > 0 else float("nan"),
             "pairs_per_s": pairs / seconds if seconds > 0 else float("nan"),
             "loss_first": pass_loss(per_episode[:P]), "loss_last": pass_loss(per_episode[-P:]), "partitions": P, "rounds": int(rounds), "episodes": epochs * steps - step0,
             "engine": "numba-blocks", "fingerprint": prep["fingerprint"]}
    return W_in, W_out, stats


# ----------------------------------------------------------------------------- Ray stage bodies
# (plain functions; tasks/train.py wraps them with `remote`)

def prep_stage(num_nodes: int, walks_per_node: int, partitions: int, rounds: int, train: TrainConfig, epoch: int,
               *parts: np.ndarray) -> tuple[dict, dict]:
    """Walk partitions -> the shared block inputs (one object) + a small info dict for the driver."""
    from embedlake.workers.train.stages import interleave_walks
    from embedlake.workers.graph.walks import walks_to_sentences
    walks = interleave_walks(list(parts), walks_per_node)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    counts = np.bincount(tokens[tokens >= 0], minlength=num_nodes).astype(np.int64)
    prep = prepare_blocks(tokens, offsets, num_nodes, partitions, counts=counts,
                          ns_exponent=train.ns_exponent, sample=train.sample, seed=train.seed, epoch=epoch)
    n = len(prep["tloc"])
    cuts = [n * r // rounds for r in range(rounds + 1)]      # positions of partition j in round r: progress totals
    per_round = [np.bincount(prep["tpart"][a:b], minlength=partitions) for a, b in zip(cuts[:-1], cuts[1:])]
    per_block = [[int(c[j]) for c in per_round] for j in range(partitions)]
    info = {"fingerprint": prep["fingerprint"], "tokens": int(prep["per_epoch"]), "stream": n,
            "sizes": prep["sizes"].tolist(), "block_centres": per_block}
    return prep, info


def checkpoint_file(run_dir: str, step: int, table: str, p: int) -> str:
    return f"{run_dir}/step={int(step):06d}/{table}-{int(p):04d}.npy"


@dataclass(frozen=True)
class BlockCheckpoint:
    """Where the blocks of one episode keep their checkpoints (the run's checkpoint folder, handed
    out by tasks/run.py): the lake also serves resumed shards given as paths; with `write` the
    block writes its trained shards as step=<step>/w_in-<i>.npy and w_out-<j>.npy."""
    lake: Lake
    run_dir: str
    step: int
    write: bool


def block_stage(prep: dict, i: int, j: int, w_in, w_out, train: TrainConfig, epoch: int, episode: int, *,
                threads: int = 0, checkpoint: BlockCheckpoint | None = None, reporter=None
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One block on one worker. w_in / w_out: the shard arrays, None (first episode: initialise from
    the seed) or a lake path (resume: read the checkpointed shard). With `checkpoint` the lake holds
    the checkpoints; with checkpoint.write the trained shards are written there (.npy without pickle)."""
    t_start = time.time()
    lake = Lake(checkpoint.lake) if checkpoint is not None else None
    if w_in is None or w_out is None:
        a, b = init_shards(prep["sizes"], train.dim, train.seed, i), init_shards(prep["sizes"], train.dim,
                                                                               train.seed, j)
        w_in = a[0] if w_in is None else w_in
        w_out = b[1] if w_out is None else w_out
    if isinstance(w_in, str):
        w_in = lake.read_npy(w_in)
    if isinstance(w_out, str):
        w_out = lake.read_npy(w_out)
    P = len(prep["sizes"])
    cb = (lambda done, total, loss: reporter(done / P, total / P, loss=loss)) if reporter is not None else None
    W_in_i, W_out_j, stats = train_block(
        prep, i, j, w_in, w_out, epoch=epoch, epochs=train.epochs, episode=episode, rounds=train.rounds,
        window=train.window, negatives=train.negatives, lr=train.lr, min_lr=train.min_lr,
        seed=train.seed, threads=threads or 0, progress=cb)
    if checkpoint is not None and checkpoint.write:
        t0 = time.perf_counter()
        lake.write_npy(checkpoint_file(checkpoint.run_dir, checkpoint.step, "w_in", i), W_in_i)
        lake.write_npy(checkpoint_file(checkpoint.run_dir, checkpoint.step, "w_out", j), W_out_j)
        stats["checkpoint_s"] = time.perf_counter() - t0
    stats["t_start"], stats["t_end"], stats["pid"] = t_start, time.time(), os.getpid()
    return W_in_i, W_out_j, stats


def assemble_stage(prep: dict, lake, *w_in_shards) -> np.ndarray:
    """The trained W_in shards -> the embedding table in node-id order (what publish reads). A shard
    given as a lake path (a resumed run whose training had already finished) is read from the lake."""
    if any(isinstance(w, str) for w in w_in_shards):
        lk = Lake(lake)
        w_in_shards = tuple(lk.read_npy(w) if isinstance(w, str) else w for w in w_in_shards)
    return assemble(prep["part"], prep["local"], list(w_in_shards))


def commit_checkpoint(lake, run_dir: str, step: int, total_steps: int, match: dict, previous, *block_stats) -> int:
    """Runs once every block of checkpoint `step` has returned (its shards are in the lake): write
    state.json, then drop older steps. `previous` (the prior commit's result) chains the commits so
    states are written in order. Newer steps are kept: blocks of a later checkpoint may already
    have written their shards (the chain only orders the commits), and deleting them made the next
    commit name files that were gone. Returns step."""
    lake = Lake(lake)
    lake.write_json(f"{run_dir}/state.json", {"step": int(step), "total_steps": int(total_steps), "match": match,
                                              "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    old = {rel[len(run_dir) + 1:].split("/", 1)[0] for rel in lake.list_files(run_dir)}
    for seg in sorted(old):
        if seg.startswith("step=") and int(seg[5:]) < int(step):
            lake.delete(f"{run_dir}/{seg}", recursive=True)
    return int(step)
