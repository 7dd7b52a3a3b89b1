"""Sharded block skip-gram (PyTorch-BigGraph buckets over walk shards): the compute pieces.

Why: the block engine of blocks.py starts from ONE prepared object holding the whole token stream,
which every block task reads, and ends by assembling the full [n, dim] table in one task. Here the
stream stays in shards (one per graph shard's walks, or one per corpus token shard) and the table
stays in partitions:

* **Partitions from the id alone** (`VocabSplit`): node / word id mod P (`stride`, `graph_split`),
  a partition's rows are its ids in increasing order. Graphs: not the graph shards' contiguous
  ranges (`range`, kept for tests and comparisons), because node ids are local and a block draws
  its negatives from its centre partition only: range partitions cost 2-hop reconstruction mAP
  (`graph_split`). A graph shard's embedding rows are gathered at the end from one piece of
  every partition (`shard_cut_stage`, `shard_rows_stage`). Corpora: ids are sorted by frequency,
  and ranges would put every frequent word into partition 0; their table is assembled by id.
* **Prep per stream shard** (`prep_stream_stage`): one task per shard compacts its sentences and
  groups its positions by centre partition (the buckets). Unigram counts are per-shard bincounts
  per partition (`count_stage`), summed per partition into that partition's noise tables
  (`noise_stage`): no task counts or holds all n nodes' noise.
* **Buckets**: block (i, j) of an episode is a chain of `link_stage` tasks, one per stream shard,
  each holding (that shard's prepared stream, W_in[i], W_out[j], partition j's noise); the chain
  passes the two tables on. The kernel is blocks.py's `_block_chunk` through `train_bucket`.
* **Global positions**: a stream shard is placed in the virtual stream of the one-CSR engine,
  k-major over all nodes (walk k of every node of shard 0, of shard 1, ..., then walk k + 1), by
  `place_streams`: windows, negatives, learning rates and rounds follow that global position. So
  every pair trains with the same window, negatives and learning rate as in blocks.py on the
  interleaved stream with the same partitions; with one stream shard the output is bit-identical
  (one thread); with S shards only the order of updates inside a block differs (the chain visits
  shard 0's centres of the round, then shard 1's, ... instead of ascending global position).

Plain numpy / numba; tasks/train.py wraps the stage functions with `remote`.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numba as nb
import numpy as np

from embedlake.config import TrainConfig
from embedlake.lake import Lake
from embedlake.workers.graph.shards import shard_bounds, shard_starts
from embedlake.workers.kernel_inputs import read_only
from embedlake.workers.train import blocks as sb
from embedlake.workers.train.sgns_parts import build_alias, keep_thresholds


@dataclass(frozen=True)
class VocabSplit:
    """How ids 0..vocab-1 fall into `parts` partitions, computed from the id alone: `range` (P
    contiguous ranges, shard_bounds(vocab, P)) or `stride` (id mod P)."""
    kind: str
    vocab: int
    parts: int

    def __post_init__(self):
        if self.kind not in ("range", "stride") or self.parts < 1:
            raise ValueError(f"VocabSplit: kind range|stride and parts >= 1, not {self.kind!r}, {self.parts}")

    @property
    def starts(self) -> np.ndarray:
        return shard_starts(shard_bounds(self.vocab, self.parts))

    def sizes(self) -> np.ndarray:
        """int64 [P]: rows of each partition."""
        if self.kind == "range":
            return np.diff(self.starts)
        p = np.arange(self.parts, dtype=np.int64)
        return np.maximum(0, (self.vocab - p + self.parts - 1) // self.parts)

    def locate(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(partition, row inside it) of every token (ids in [0, vocab)), in one pass that writes
        only the two results (a stream shard's tokens: no int64 copies of them)."""
        tokens = np.ascontiguousarray(tokens)
        part = np.empty(len(tokens), np.uint8 if self.parts <= 255 else np.uint16)
        local = np.empty(len(tokens), np.int32)
        bad = _locate(tokens, self.starts, self.parts, self.vocab, self.kind == "range", part, local)
        if bad >= 0:
            raise ValueError(f"token id {int(tokens[bad])} lies outside the vocabulary [0, {self.vocab})")
        return part, local

    def rows_of(self, p: int) -> np.ndarray:
        """The ids of partition p's rows, in row order."""
        if self.kind == "range":
            s = self.starts
            return np.arange(s[p], s[p + 1], dtype=np.int64)
        return np.arange(p, self.vocab, self.parts, dtype=np.int64)

    def rows_within(self, p: int, lo: int, hi: int) -> tuple[int, int]:
        """[a, b): the rows of partition p whose ids lie in [lo, hi) (rows keep id order, so they
        are consecutive), without listing the partition's ids."""
        size = int(self.sizes()[p])
        if self.kind == "range":
            s = int(self.starts[p])
            return min(size, max(0, lo - s)), min(size, max(0, hi - s))
        first = lambda v: -(-(int(v) - p) // self.parts)         # noqa: E731  first row with id >= v
        return min(size, max(0, first(lo))), min(size, max(0, first(hi)))

    def ids_of(self, p: int, a: int, b: int) -> np.ndarray:
        """The ids of rows [a, b) of partition p."""
        if self.kind == "range":
            return np.arange(a, b, dtype=np.int64) + int(self.starts[p])
        return np.arange(a, b, dtype=np.int64) * self.parts + p


def graph_split(num_nodes: int, parts: int) -> VocabSplit:
    """The sharded engine's partitions of a graph's nodes: node id mod P (`stride`), not the graph
    shards' id ranges. Why: node ids of real graphs are local (BlogCatalog: 36 % of edges join two
    nodes of one quarter of the id range, 25.5 % by chance) and block (i, j) draws its negatives
    from partition j only, so with range partitions a node is pushed away from each partition in
    proportion to how often it meets that partition, not to the noise mass there: far partitions
    are barely repelled, the table drifts into one common direction and 2-hop reconstruction mAP
    fell below the random ranking (docs/training.md, "Partitions of a sharded graph"). Node ids
    mod P spread every neighbourhood evenly over the partitions."""
    return VocabSplit("stride", int(num_nodes), int(parts))


# ----------------------------------------------------------------------------- stream shards

def source_sentences(parts: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A stream shard's sentences: one walk matrix (padded with -1) or a (tokens, offsets) pair."""
    if len(parts) == 1:
        from embedlake.workers.graph.walks import walks_to_sentences
        return walks_to_sentences(parts[0])
    tokens, offsets = parts
    return np.asarray(tokens, dtype=np.int32), np.asarray(offsets, dtype=np.int64)


def partition_counts(split: VocabSplit, tokens: np.ndarray) -> list[np.ndarray]:
    """Per partition, the count of each of its rows among `tokens` (padding ignored)."""
    return counts_by_partition(split, *split.locate(tokens[tokens >= 0]))


def counts_by_partition(split: VocabSplit, part: np.ndarray, local: np.ndarray) -> list[np.ndarray]:
    """Counts of located tokens per partition: one count over (partition offset + row), cut per
    partition (copies: each travels as its own object)."""
    off = np.zeros(split.parts + 1, np.int64)
    np.cumsum(split.sizes(), out=off[1:])
    flat = np.zeros(int(off[-1]), np.int64)
    _count_located(part, local, off, flat)
    return [flat[off[p]:off[p + 1]].copy() for p in range(split.parts)]


@nb.njit(cache=True)
def _locate(tokens, starts, parts, vocab, by_range, part, local):
    """VocabSplit.locate's pass: part[k], local[k] of tokens[k] (range: the last start <= token,
    so empty partitions own nothing; stride: token mod / div parts). Returns the index of the first
    token outside [0, vocab), -1 when there is none."""
    for k in range(tokens.shape[0]):
        t = np.int64(tokens[k])
        if t < 0 or t >= vocab:
            return k
        if by_range:
            lo, hi = 0, parts                # starts[lo] <= t < starts[hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if starts[mid] <= t:
                    lo = mid
                else:
                    hi = mid
            part[k], local[k] = lo, t - starts[lo]
        else:
            part[k], local[k] = t % parts, t // parts
    return -1


@nb.njit(cache=True)
def _count_located(part, local, off, flat):
    for k in range(part.shape[0]):
        flat[off[part[k]] + local[k]] += 1


def count_stage(split: VocabSplit, *parts):
    """One stream shard's token counts, one array per partition (a tuple of P, or the array when P = 1)."""
    tokens, _ = source_sentences(parts)
    counts = partition_counts(split, tokens)
    return tuple(counts) if split.parts > 1 else counts[0]


def split_counts_stage(split: VocabSplit, counts: np.ndarray):
    """A vocabulary's counts (corpora: one array, held by the vocabulary already) per partition."""
    out = [np.asarray(counts, dtype=np.int64)[split.rows_of(p)] for p in range(split.parts)]
    return tuple(out) if split.parts > 1 else out[0]


def noise_stage(ns_exponent: float, *shard_counts: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Partition p's counts summed over the stream shards, and its noise alias tables (thr, idx)
    over its rows (count ** ns_exponent; uniform when the partition was never visited)."""
    c = np.sum(np.stack(shard_counts), axis=0) if len(shard_counts) > 1 else np.asarray(shard_counts[0])
    c = c.astype(np.int64, copy=False)
    cf = c.astype(np.float64)
    w = np.where(cf > 0, np.power(np.maximum(cf, 1e-300), ns_exponent), 0.0)
    if w.sum() <= 0:
        w = np.ones_like(w)
    if len(w) == 0:
        return c, (np.zeros(0, np.uint64), np.zeros(0, np.int32))
    thr, idx = build_alias(w / w.sum())
    return c, (thr, idx)


def group_starts(offsets: np.ndarray, groups: int) -> np.ndarray:
    """int64 [G + 1]: stream positions where each group of sentences begins (the sentences of a
    walk shard are k-major: group k = walk k of each of its nodes); G = 1 for a corpus shard."""
    rows = len(offsets) - 1
    if groups < 1 or rows % groups:
        raise ValueError(f"a stream shard of {rows} sentences cannot be cut into {groups} equal groups")
    return np.ascontiguousarray(offsets[np.arange(groups + 1) * (rows // groups)], dtype=np.int64)


def shard_subsample(tokens, offsets, counts, sample: float, seed: int, epoch: int, shard: int):
    """word2vec subsampling of one stream shard, decided once per epoch for all blocks; its draws
    come from (seed, epoch, shard), so they differ from blocks.subsample's one-stream draws."""
    thr = keep_thresholds(counts, sample)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7_654_321, int(epoch), 1 + int(shard)])
    keep = rng.integers(0, 1 << 32, size=len(tokens), dtype=np.uint64) < thr[tokens]
    csum = np.zeros(len(tokens) + 1, np.int64)
    np.cumsum(keep, out=csum[1:])
    return np.ascontiguousarray(tokens[keep]), csum[offsets]


def prep_stream_stage(split: VocabSplit, groups: int, nsource: int, train: TrainConfig, epoch: int, shard: int,
                      *args) -> tuple[dict, dict]:
    """One stream shard -> its bucketed stream (positions grouped by centre partition, rows and
    partitions per position) and a small info dict for the driver. args: the shard's source
    (`nsource` objects: walks, or tokens and offsets), then with train.sample > 0 the P partition
    counts (the only vocabulary-sized input: 8 bytes per id, split in P objects)."""
    tokens, offsets = sb.compact_stream(*source_sentences(args[:nsource]))
    if len(tokens) and tokens.max() >= split.vocab:
        raise ValueError(f"stream shard {shard}: token ids must lie in [0, {split.vocab})")
    fingerprint = sb.stream_fingerprint(tokens, offsets)
    group_tokens = np.diff(group_starts(offsets, groups))
    if train.sample > 0:
        counts = np.empty(split.vocab, np.int64)
        for p, c in enumerate(args[nsource:]):
            counts[split.rows_of(p)] = c
        tokens, offsets = shard_subsample(tokens, offsets, counts, train.sample, train.seed, epoch, shard)
    gstart = group_starts(offsets, groups)
    tpart, tloc = split.locate(tokens)
    del tokens
    centres, cbounds = sb.bucket_by_partition(tpart, split.parts)
    stream = {"tloc": tloc, "tpart": tpart, "offsets": offsets, "centres": centres, "cbounds": cbounds}
    info = {"fingerprint": fingerprint, "gstart": gstart.tolist(), "group_tokens": group_tokens.tolist(),
            "bucket_centres": np.diff(cbounds).tolist()}
    return stream, info


def prep_count_stage(split: VocabSplit, groups: int, nsource: int, train: TrainConfig, epoch: int, shard: int,
                     *args) -> tuple:
    """prep_stream_stage and count_stage from one read of the shard (train.sample == 0, where the
    bucketed stream holds every token): (stream, info, *P partition counts)."""
    if train.sample > 0:
        raise ValueError("prep_count_stage: with subsampling the counts come before the prep (count_stage)")
    stream, info = prep_stream_stage(split, groups, nsource, train, epoch, shard, *args)
    return (stream, info, *counts_by_partition(split, stream["tpart"], stream["tloc"]))


def place_streams(infos: list[dict]) -> list[sb.StreamPlace]:
    """Each stream shard's place in the virtual whole stream: group g of shard s starts at the
    lengths of all groups < g of every shard plus group g of shards < s (k-major, shard-minor: the
    one-CSR engine's interleaved walk order)."""
    lens = np.array([np.diff(i["gstart"]) for i in infos], dtype=np.int64)          # [S, G]
    by_group = lens.T.reshape(-1)                                                    # g-major, s-minor
    starts = np.concatenate([[0], np.cumsum(by_group)[:-1]]).reshape(lens.shape[1], lens.shape[0]).T
    total = int(lens.sum())
    per_epoch = int(sum(sum(i["group_tokens"]) for i in infos))
    places = []
    for s, info in enumerate(infos):
        gstart = np.asarray(info["gstart"], dtype=np.int64)
        places.append(sb.StreamPlace(gstart, (starts[s] - gstart[:-1]).astype(np.int64), total, per_epoch))
    return places


def streams_fingerprint(infos: list[dict]) -> str:
    """What a checkpoint must match: every stream shard's exact tokens, in shard order."""
    return hashlib.sha256("/".join(i["fingerprint"] for i in infos).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- buckets of a stream

@nb.njit(cache=True)
def _cut_piece(offsets, tloc, tpart, centres, pi, window, fill, out_loc, out_part, out_off, out_start, out_centre):
    """One pass over `centres` (ascending positions of one bucket): keep the centres that have a
    token of partition pi within +-window in their sentence (q != p; any other trains nothing in
    block (pi, .)), and merge their windows [max(sentence start, p - window), min(sentence end,
    p + window + 1)) into runs where they touch inside one sentence (a window the kernel draws,
    radius <= window, never leaves its run). Returns (centres kept, runs, tokens of the runs). With
    fill it also writes the runs' tokens back to back (out_loc, out_part), where each run begins
    there (out_off, runs + 1) and in the stream (out_start), and each kept centre's position in
    the runs (out_centre); without, it only counts, so the caller allocates exactly once."""
    kept, m, tok, s = 0, 0, 0, 0
    ra, rb, rs = 0, 0, -1                   # the open run: stream range and sentence
    for k in range(centres.shape[0]):
        p = centres[k]
        while offsets[s + 1] <= p:
            s += 1
        a, b = max(offsets[s], p - window), min(offsets[s + 1], p + window + 1)
        hit = False
        for q in range(a, b):
            if q != p and tpart[q] == pi:
                hit = True
                break
        if not hit:
            continue
        if m > 0 and rs == s and a <= rb:
            rb = max(rb, b)
        else:
            if m > 0:                       # the open run is final: copy it
                if fill:
                    out_loc[tok:tok + rb - ra] = tloc[ra:rb]
                    out_part[tok:tok + rb - ra] = tpart[ra:rb]
                tok += rb - ra
            if fill:
                out_off[m], out_start[m] = tok, a
            ra, rb, rs = a, b, s
            m += 1
        if fill:
            out_centre[kept] = p - ra + tok
        kept += 1
    if m > 0:
        if fill:
            out_loc[tok:tok + rb - ra] = tloc[ra:rb]
            out_part[tok:tok + rb - ra] = tpart[ra:rb]
        tok += rb - ra
    if fill:
        out_off[m] = tok
    return kept, m, tok


def global_positions(place: sb.StreamPlace, local: np.ndarray) -> np.ndarray:
    """Positions of a stream shard -> positions in the whole stream."""
    grp = np.searchsorted(place.gstart, local, side="right") - 1
    return local + place.gdelta[np.maximum(grp, 0)]


def bucket_piece(stream: dict, place: sb.StreamPlace, i: int, j: int, centres: np.ndarray, window: int) -> dict:
    """Block (i, j)'s piece of one stream shard: of `centres` (this round's of partition j), those
    with a context of partition i in reach, and the runs of tokens their windows cover, as a
    stream of its own whose runs are its sentences; `gdelta` places each run in the whole stream.
    Counted first, then written into arrays of their final size: no temporaries of the bucket's size."""
    # read-only whether they came from Ray's object store or not: one compile of the kernel (kernel_inputs)
    args = (*read_only(stream["offsets"], stream["tloc"], stream["tpart"], centres), int(i), int(window))
    tloc, tpart = stream["tloc"], stream["tpart"]
    kept, runs, tokens = _cut_piece(*args, False, np.zeros(0, tloc.dtype), np.zeros(0, tpart.dtype),
                                    np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
    out_loc, out_part = np.empty(tokens, tloc.dtype), np.empty(tokens, tpart.dtype)
    off = np.zeros(max(runs, 1) + 1, np.int64)     # no run: one empty run (the kernel and bucket_slice want a group)
    starts = np.zeros(max(runs, 1), np.int64)
    out_centre = np.empty(kept, np.int32 if tokens < 2**31 else np.int64)   # positions inside a piece: half the bytes
    _cut_piece(*args, True, out_loc, out_part, off, starts, out_centre)
    cbounds = np.zeros(len(stream["cbounds"]), np.int64)
    cbounds[j + 1:] = kept
    return {"tloc": out_loc, "tpart": out_part, "offsets": off, "centres": out_centre,
            "cbounds": cbounds, "gdelta": global_positions(place, starts) - off[:-1],
            "total": int(place.total), "per_epoch": int(place.per_epoch), "block": (int(i), int(j))}


def piece_place(piece: dict) -> sb.StreamPlace:
    """Where a bucket piece sits in the whole stream: each run is a group of its own."""
    return sb.StreamPlace(piece["offsets"], piece["gdelta"], piece["total"], piece["per_epoch"])


def bucket_stage(stream: dict, place: sb.StreamPlace, window: int, rounds: int, r: int, j: int, *after):
    """Bucket j of one stream shard's training round r cut into its P pieces (i, j), i = 0 .. P - 1,
    yielded in that order: piece i is what block (i, j) reads (bucket_piece), so a link receives its
    block's part of its shard's round instead of the whole stream (docs/scaling.md section 5). A
    generator (Ray: num_returns = P), so that Ray stores each piece before the next is cut and the
    task holds one or two pieces, not a bucket's or a round's (section 9). `after`: results this task
    waits for and ignores (the driver passes the previous round's first link, so that the pieces of
    at most two rounds exist at once)."""
    P = len(stream["cbounds"]) - 1
    c0, c1 = sb.bucket_slice(stream, place, j, r, rounds)
    centres = stream["centres"][c0:c1]
    for i in range(P):
        yield bucket_piece(stream, place, i, j, centres, window)


def cut_round(stream: dict, place: sb.StreamPlace, window: int, rounds: int, r: int) -> list[dict]:
    """One stream shard's round r as its P x P pieces, piece i * P + j for block (i, j): the P
    bucket_stage calls of the Ray driver, in this process (the in-process schedules)."""
    P = len(stream["cbounds"]) - 1
    pieces: list = [None] * (P * P)
    for j in range(P):
        for i, piece in enumerate(bucket_stage(stream, place, window, rounds, r, j)):
            pieces[i * P + j] = piece
    return pieces


# ----------------------------------------------------------------------------- one link of a block

def link_stage(piece: dict, noise: tuple, i: int, j: int, w_in, w_out, train: TrainConfig, epoch: int,
               episode: int, *, split: VocabSplit, threads: int = 0, checkpoint: sb.BlockCheckpoint | None = None,
               reporter=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Block (i, j) over one stream shard's piece of this round (bucket_stage): the W_in[i] /
    W_out[j] it gets (arrays; None on the first episode: initialised from the seed; a lake path
    when resumed) come back trained. With checkpoint.write (the chain's last link at a checkpoint
    step) it writes them to the lake."""
    t_start = time.time()
    if tuple(piece["block"]) != (i, j):
        raise ValueError(f"link ({i}, {j}) was given the piece of block {tuple(piece['block'])}")
    lake = Lake(checkpoint.lake) if checkpoint is not None else None
    sizes = split.sizes()
    w_in = sb.init_shards(sizes, train.dim, train.seed, i)[0] if w_in is None else w_in
    w_out = sb.init_shards(sizes, train.dim, train.seed, j)[1] if w_out is None else w_out
    w_in = lake.read_npy(w_in) if isinstance(w_in, str) else w_in
    w_out = lake.read_npy(w_out) if isinstance(w_out, str) else w_out
    P = split.parts
    cb = (lambda done, total, loss: reporter(done / P, total / P, loss=loss)) if reporter is not None else None
    W_in_i, W_out_j, stats = sb.train_bucket(        # the piece is this round's already: rounds=1 takes it whole
        piece, piece_place(piece), noise, i, j, w_in, w_out, epoch=epoch, epochs=train.epochs, episode=episode % P,
        rounds=1, window=train.window, negatives=train.negatives, lr=train.lr, min_lr=train.min_lr,
        seed=train.seed, threads=threads or 0, progress=cb)
    if checkpoint is not None and checkpoint.write:
        t0 = time.perf_counter()
        lake.write_npy(sb.checkpoint_file(checkpoint.run_dir, checkpoint.step, "w_in", i), W_in_i)
        lake.write_npy(sb.checkpoint_file(checkpoint.run_dir, checkpoint.step, "w_out", j), W_out_j)
        stats["checkpoint_s"] = time.perf_counter() - t0
    stats["t_start"], stats["t_end"], stats["pid"] = t_start, time.time(), os.getpid()
    return W_in_i, W_out_j, stats


# ----------------------------------------------------------------------------- outputs

def read_parts(lake, parts: tuple) -> list[np.ndarray]:
    """Trained partitions; one given as a lake path (a resumed run whose training had finished) is read."""
    lk = Lake(lake) if any(isinstance(w, str) for w in parts) else None
    return [lk.read_npy(w) if isinstance(w, str) else w for w in parts]


def concat_stage(lake, *w_in_parts) -> np.ndarray:
    """A graph shard's embedding rows [hi - lo, dim]: its m consecutive range partitions, in order."""
    parts = read_parts(lake, w_in_parts)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def shard_cut_stage(split: VocabSplit, bounds: list[tuple[int, int]], lake, w_part, p: int):
    """Partition p's trained rows cut by graph shard: one piece per shard [lo, hi) (its rows with
    ids there, in id order; a tuple of S, or the array when S = 1), so that each graph shard's
    table is gathered from P pieces of about n / (P S) rows instead of from whole partitions."""
    W = read_parts(lake, (w_part,))[0]
    cuts = [split.rows_within(p, lo, hi) for lo, hi in bounds]
    pieces = [np.ascontiguousarray(W[a:b]) for a, b in cuts]
    return tuple(pieces) if len(pieces) > 1 else pieces[0]


def shard_rows_stage(split: VocabSplit, lo: int, hi: int, *pieces: np.ndarray) -> np.ndarray:
    """A graph shard's embedding rows [hi - lo, dim] from every partition's piece of it (shard_cut_stage)."""
    out = np.empty((hi - lo, pieces[0].shape[1]), np.float32)
    for p, piece in enumerate(pieces):
        a, b = split.rows_within(p, lo, hi)
        out[split.ids_of(p, a, b) - lo] = piece
    return out


def assemble_split_stage(split: VocabSplit, lake, *w_in_parts) -> np.ndarray:
    """Every partition -> the [vocab, dim] table in id order (corpora: their table is one object anyway)."""
    parts = read_parts(lake, w_in_parts)
    W = np.empty((split.vocab, parts[0].shape[1]), np.float32)
    for p in range(split.parts):
        W[split.rows_of(p)] = parts[p]
    return W


def train_streams_local(sources: list[tuple], groups: int, split: VocabSplit, train: TrainConfig, threads: int = 1,
                        start: tuple[int, list, list] | None = None, stop: int | None = None
                        ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """The whole sharded schedule in this process (tests, benchmarks): exactly the tasks the Ray
    driver runs, in its order. start=(steps done, W_in partitions, W_out partitions) continues a
    schedule, stop=k ends it after k episodes. Returns (W_in partitions, W_out partitions, {pairs,
    loss_sum})."""
    noise, preps = local_noise_and_streams(sources, groups, split, train)
    step0, Win, Wout = start if start is not None else (0, [None] * split.parts, [None] * split.parts)
    Win, Wout = list(Win), list(Wout)
    pairs, loss = 0, 0.0
    steps = split.parts * train.rounds
    pieces: dict = {}
    for step in range(step0, train.epochs * steps if stop is None else stop):
        ep, e, blocks = sb.step_blocks(step, split.parts, train.rounds)
        if preps is None or (e == 0 and train.sample > 0):
            extra = [n[0] for n in noise] if train.sample > 0 else []
            preps = [prep_stream_stage(split, groups, len(src), train, ep, s, *src, *extra)
                     for s, src in enumerate(sources)]
            pieces = {}
        places = place_streams([p[1] for p in preps])
        r = e // split.parts
        if r not in pieces:
            pieces[r] = [cut_round(stream, places[s], train.window, train.rounds, r)
                         for s, (stream, _) in enumerate(preps)]
        for i, j in blocks:
            for s in range(len(preps)):
                got = pieces[r][s][i * split.parts + j]
                Win[i], Wout[j], st = link_stage(got, noise[j][1], i, j, Win[i], Wout[j], train, ep, e,
                                                 split=split, threads=threads)
                pairs, loss = pairs + st["pairs"], loss + st["loss_sum"]
    return Win, Wout, {"pairs": pairs, "loss_sum": loss}


def local_noise_and_streams(sources: list[tuple], groups: int, split: VocabSplit, train: TrainConfig):
    """(per-partition (counts, noise), the epoch-0 preps or None) as the Ray driver gets them:
    prep and counts in one pass without subsampling, else the counts alone (preps come per epoch)."""
    preps = None
    if train.sample == 0:
        outs = [prep_count_stage(split, groups, len(src), train, 0, s, *src) for s, src in enumerate(sources)]
        per_shard, preps = [o[2:] for o in outs], [o[:2] for o in outs]
    else:
        per_shard = [count_stage(split, *src) for src in sources]
        per_shard = [c if split.parts > 1 else (c,) for c in per_shard]
    return [noise_stage(train.ns_exponent, *[c[p] for c in per_shard]) for p in range(split.parts)], preps


# ----------------------------------------------------------------------------- walks streamed in rounds

def walks_per_round(num_nodes: int, walk_cfg) -> int:
    """Walk numbers per streamed round: as many as fit walk.stream_threshold_mb of walks (at least
    one, at most walks_per_node), so the walks alive at once are bounded by that setting."""
    from embedlake.workers.graph.walks import walks_mb
    per_walk = walks_mb(num_nodes, walk_cfg) / walk_cfg.walks_per_node
    fit = int(walk_cfg.stream_threshold_mb // per_walk) if per_walk > 0 else walk_cfg.walks_per_node
    return max(1, min(walk_cfg.walks_per_node, fit))


def walk_rounds(walks_per_node: int, per_round: int) -> list[tuple[int, int]]:
    """The walk numbers [k0, k1) of each streamed round of an epoch."""
    return [(k, min(walks_per_node, k + per_round)) for k in range(0, walks_per_node, per_round)]


def round_places(infos: list[dict], k0: int, walks_per_node: int, nodes: int, length: int) -> list[sb.StreamPlace]:
    """Where the stream shards of the round starting at walk number k0 sit in an epoch: the
    round's k-major placement (place_streams) shifted to walk k0's first position, k0 x nodes x
    length, in an epoch of walks_per_node x nodes x length positions (its padded size, known
    before any walk exists). Without padding (no dead end) and without subsampling these are the
    positions of the unstreamed stream, so each pair gets the same window, negatives and learning
    rate; padding leaves gaps between rounds, subsampling shortens each round inside its slot."""
    base, total = k0 * nodes * length, walks_per_node * nodes * length
    return [sb.StreamPlace(p.gstart, p.gdelta + base, total, total) for p in place_streams(infos)]


def train_rounds_local(walks_of, rounds: list[tuple[int, int]], length: int, split: VocabSplit, train: TrainConfig,
                       threads: int = 1, stop: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """The streamed schedule in this process (tests, benchmarks), exactly the tasks the Ray driver
    (tasks/train.py train_sharded_streamed) runs: walks_of(w) gives round w's walk shards (one
    tuple per shard); noise from round 0's counts; per round P episodes over its bucket pieces.
    stop=k ends it after k episodes."""
    W, P, K = len(rounds), split.parts, rounds[-1][1]
    first = walks_of(0)
    noise, preps = local_noise_and_streams(first, rounds[0][1] - rounds[0][0], split, train)
    Win, Wout = [None] * P, [None] * P
    pairs, loss = 0, 0.0
    stop = train.epochs * W * P if stop is None else stop
    for t in range(-(-stop // P)):
        ep, w = divmod(t, W)
        k0, k1 = rounds[w]
        if t > 0 or preps is None:
            extra = [n[0] for n in noise] if train.sample > 0 else []
            preps = [prep_stream_stage(split, k1 - k0, len(src), train, t, s, *src, *extra)
                     for s, src in enumerate(first if t == 0 else walks_of(w))]
        places = round_places([p[1] for p in preps], k0, K, split.vocab, length)
        pieces = [cut_round(stream, places[s], train.window, 1, 0) for s, (stream, _) in enumerate(preps)]
        for step in range(t * P, min(stop, (t + 1) * P)):
            _, e, blocks = sb.step_blocks(step, P, W)
            for i, j in blocks:
                for got in pieces:
                    Win[i], Wout[j], st = link_stage(got[i * P + j], noise[j][1], i, j, Win[i],
                                                     Wout[j], train, ep, e, split=split, threads=threads)
                    pairs, loss = pairs + st["pairs"], loss + st["loss_sum"]
    return Win, Wout, {"pairs": pairs, "loss_sum": loss}
