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
from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.train.sgns_parts import (GOLDEN, M1, M2, S31, S32, build_alias, draw_negatives, hogbatch,
                                                linear_lr, keep_thresholds, numba_threads, sigmoid_tables,
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


@nb.njit(cache=True)
def _bucket_positions(tokens, part, P):
    """Stream positions grouped by the partition of their token, ascending inside each group."""
    cnt = np.zeros(P + 1, np.int64)
    for t in range(tokens.shape[0]):
        cnt[part[tokens[t]] + 1] += 1
    for p in range(P):
        cnt[p + 1] += cnt[p]
    out = np.empty(tokens.shape[0], np.int64)
    fill = cnt[:P].copy()
    for t in range(tokens.shape[0]):
        p = part[tokens[t]]
        out[fill[p]] = t
        fill[p] += 1
    return out, cnt


def bucket_by_partition(tpart: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, cbounds): stream positions grouped by their partition `tpart`, ascending inside each."""
    return _bucket_positions(tpart, np.arange(int(partitions), dtype=np.int32), int(partitions))


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
    """Everything the blocks of an epoch share (read-only): stream, positions by centre partition,
    the partition map and the per-partition noise tables. One object, put once in the object store.
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
    centres, cbounds = _bucket_positions(tokens, part, int(partitions))
    thr, idx, aoff = partition_noise(counts, part, local, sizes, ns_exponent)
    tloc = local[tokens]
    tpart = part[tokens].astype(np.uint8)
    del tokens
    return {"tloc": tloc, "tpart": tpart, "offsets": offsets, "centres": centres, "cbounds": cbounds, "part": part,
            "local": local, "sizes": sizes, "alias_thr": thr, "alias_idx": idx, "alias_off": aoff,
            "per_epoch": np.int64(per_epoch), "fingerprint": fingerprint}


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
def stream_seed(seed, epoch, pos, salt):
    """The random stream of (seed, epoch, stream position, salt): salt 0 draws a position's window,
    salt partition + 1 its negatives in that partition's block, so every engine that replays the
    stream (the benches' reference orders) draws the same windows and negatives."""
    s = np.uint64(seed) * M1 + np.uint64(epoch) * M2 + np.uint64(pos) * GOLDEN + np.uint64(salt) * S31
    s, z = splitmix64(s)
    return z


@nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _block_chunk(tloc, tpart, offsets, centres, c_lo, c_hi, pi, W_in, W_out, alias_thr, alias_idx,
                 sig_tab, logsig_tab, window, negatives, lr0, min_lr, pos_base, pos_scale, work_total, seed,
                 epoch, nblocks, out_loss, out_pairs, gstart, gdelta):
    """Train the centres centres[c_lo:c_hi] (stream positions, ascending, all in this block's centre
    partition) against their contexts that lie in context partition `pi`. The stream comes as
    per-position shard rows `tloc` and partitions `tpart` (sequential reads instead of two random
    lookups per context). W_in / W_out are the two shards (local rows). Loss sums and pair counts per thread block go to out_loss / out_pairs.

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
            z = stream_seed(seed, epoch, gp, 0)
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
            center = tloc[p]
            lr = linear_lr(lr0, min_lr, pos_base + gp * pos_scale, work_total)
            state = stream_seed(seed, epoch, gp, pi + 1)
            state, nout = draw_negatives(state, outs, center, negatives, alias_thr, alias_idx)
            loss += hogbatch(W_in, W_out, ctx, B, outs, nout, Cb, Ob, g, dIn, lr, sig_tab, logsig_tab)
            pairs += B
        out_loss[blk] = loss
        out_pairs[blk] = pairs


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
    return train_bucket(prep, whole_stream(prep), noise, i, j, W_in_i, W_out_j, epoch=epoch, epochs=epochs,
                        episode=episode, rounds=rounds, lr_schedule=lr_schedule, window=window,
                        negatives=negatives, lr=lr, min_lr=min_lr, seed=seed, threads=threads, progress=progress,
                        chunk_centres=chunk_centres)


def train_bucket(stream: dict, place: StreamPlace, noise: tuple, i: int, j: int, W_in_i: np.ndarray,
                 W_out_j: np.ndarray, *, epoch: int, epochs: int, episode: int = 0, rounds: int = 1,
                 lr_schedule: str = "position", window: int = 10, negatives: int = 5, lr: float = 0.025,
                 min_lr: float = 1e-4, seed: int = 0, threads: int = 0,
                 progress: Callable[[int, int, float], None] | None = None,
                 chunk_centres: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Block (i, j) over one stream's bucket j (its centres of partition j, this episode's round):
    the flat arrays of one stream (tloc, tpart, offsets, centres, cbounds), where it sits in the
    whole stream (`place`) and partition j's noise alias tables (thr, idx). Same return as train_block."""
    W_in_i = writable_f32(W_in_i)
    W_out_j = writable_f32(W_out_j)
    sig_tab, logsig_tab = sigmoid_tables()
    P = len(stream["cbounds"]) - 1
    c0, c1 = bucket_slice(stream, place, j, episode // P, rounds)
    pos_base, pos_scale, work_total = lr_positions(place, P, lr_schedule, epoch, epochs, episode, rounds)
    nthreads = numba_threads(threads)
    nblocks = 1 if nthreads == 1 else 4 * nthreads
    if chunk_centres is None:
        chunk_centres = max(32768, (c1 - c0) // 50)
    loss_sum, pairs, done = 0.0, 0, 0
    lb = np.zeros(nblocks, np.float64)
    pb = np.zeros(nblocks, np.int64)
    # the kernel's inputs read-only whether they came from Ray's object store or not (kernel_inputs)
    ro_stream = read_only(stream["tloc"], stream["tpart"], stream["offsets"], stream["centres"])
    ro_noise = read_only(*noise)
    ro_place = read_only(place.gstart, place.gdelta)
    t0 = time.perf_counter()
    with using_numba_threads(nthreads):
        for lo in range(c0, c1, chunk_centres):
            hi = min(c1, lo + chunk_centres)
            _block_chunk(*ro_stream, lo, hi, int(i), W_in_i, W_out_j, *ro_noise, sig_tab, logsig_tab, int(window),
                         int(negatives), float(lr), float(min_lr), pos_base, float(pos_scale), work_total,
                         int(seed), int(epoch), nblocks, lb, pb, *ro_place)
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


def bucket_slice(stream: dict, place: StreamPlace, j: int, r: int, rounds: int) -> tuple[int, int]:
    """The slice [c0, c1) of stream["centres"] that block (., j) trains in round r: the stream's
    centres of partition j and, with rounds > 1, only those at global positions
    [r N / R, (r + 1) N / R) of the whole stream (short episodes couple the shards more often)."""
    c0, c1 = int(stream["cbounds"][j]), int(stream["cbounds"][j + 1])
    if rounds > 1:
        cj = stream["centres"][c0:c1]
        grp = np.searchsorted(place.gstart, cj, side="right") - 1
        gj = cj + place.gdelta[grp] if len(place.gdelta) > 1 or place.gdelta[0] else cj
        lo_pos, hi_pos = place.total * r // rounds, place.total * (r + 1) // rounds
        c0, c1 = c0 + int(np.searchsorted(gj, lo_pos)), c0 + int(np.searchsorted(gj, hi_pos))
    return c0, c1


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
    pairs, first, last = 0, None, None
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
        first = first if first is not None else (ls / ps if ps else float("nan"))
        last = ls / ps if ps else float("nan")
        if on_episode is not None:
            on_episode(ep, e, Win, Wout)
    seconds = time.perf_counter() - t0
    W_in = assemble(prep["part"], prep["local"], Win, release=True)
    W_out = assemble(prep["part"], prep["local"], Wout, release=True)
    tok = int(prep["per_epoch"]) * (epochs - step0 / steps)
    stats = {"tokens": int(tok), "pairs": pairs, "seconds": seconds,
             "tokens_per_s": tok / seconds if seconds > 0 else float("nan"),
             "pairs_per_s": pairs / seconds if seconds > 0 else float("nan"),
             "loss_first": first, "loss_last": last, "partitions": P, "rounds": int(rounds), "episodes": epochs * steps - step0,
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
    per_block = []                   # centre positions of partition j in round r: the progress totals
    for j in range(partitions):
        cj = prep["centres"][prep["cbounds"][j]:prep["cbounds"][j + 1]]
        cuts = np.searchsorted(cj, [n * r // rounds for r in range(rounds + 1)])
        per_block.append(np.diff(cuts).tolist())
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
