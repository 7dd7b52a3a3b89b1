"""Partitioned knowledge-graph training, as PyTorch-BigGraph: entities split into P partitions,
triples into P x P buckets by (partition of head, partition of tail).

An epoch is a sequence of rounds; the buckets of one round touch disjoint entity partitions, so
workers train them at the same time without sharing an entity row (the entity partitions travel
to the workers and back; on Ray through the object store, tasks/kg.py). Relation parameters are
shared by every bucket: each bucket trains its own copy and the round merges them (the mean of the
buckets' changes added to the round's start).

Negatives. PBG draws a bucket's negatives from its own partitions only (a worker holds only those
rows). That biases training: the entities of an anchor's own partition are negatives of all its
queries, those of other partitions only of the queries whose answer lies there, so at P = 4 a
40-entity graph ranked at MRR .83 against 1.0 in one table. Here every other partition also lends
each round a read-only sample of `lent_rows` rows (a round-start snapshot, `lend_rows`), and a
bucket draws each negative from its own rows with probability (own rows / all entities), else from
the lent ones: every entity is then a negative equally often, as in the one-table engine. Lent rows
take no update (their gradients are dropped); the queries, the positives and the relations learn
against the whole entity set. lent_rows = 0 is PBG's rule.

With P = 1 there is one bucket per round, its random stream is the one-table engine's, and the
result is bit-identical to train.train (tests/test_kg.py checks it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from embedlake.workers.kg.kernels import TrainSettings, TrainState
from embedlake.workers.kg.models import KGModel
from embedlake.workers.kg.train import epoch_rng, negative_sampler, train_pass


@dataclass(frozen=True)
class Partitioning:
    """Entity partitions (sorted global ids of each) and the triple indices of every bucket."""
    members: list[np.ndarray]
    buckets: dict[tuple[int, int], np.ndarray]

    @property
    def parts(self) -> int:
        return len(self.members)


def partition(num_entities: int, triples: np.ndarray, parts: int, seed: int) -> Partitioning:
    """P partitions of about equal size by a seeded permutation, and the P x P buckets (non-empty only)."""
    perm = np.random.default_rng([seed, 7919]).permutation(num_entities) if parts > 1 else np.arange(num_entities)
    part = np.empty(num_entities, np.int64)
    members = []
    for p, ids in enumerate(np.array_split(perm, parts)):
        part[ids] = p
        members.append(np.sort(ids).astype(np.int64))
    key = part[triples[:, 0]] * parts + part[triples[:, 2]]
    order = np.argsort(key, kind="stable")
    keys, first = np.unique(key[order], return_index=True)
    bounds = np.append(first, order.shape[0])
    buckets = {(int(k) // parts, int(k) % parts): order[bounds[i]:bounds[i + 1]] for i, k in enumerate(keys)}
    return Partitioning(members, buckets)


def rounds(buckets, seed: int, epoch: int, workers: int, chunk: int = 0) -> list[list[tuple[int, int]]]:
    """One pass over the buckets (of edge chunk `chunk`): the (non-empty) buckets in a seeded order,
    packed greedily into rounds of at most `workers` buckets whose partitions are disjoint."""
    todo = sorted(buckets)
    key = [seed, epoch, 104729] + ([chunk] if chunk else [])
    order = np.random.default_rng(key).permutation(len(todo)) if len(todo) > 1 else [0]
    todo = [todo[i] for i in order]
    out = []
    while todo:
        used: set[int] = set()
        this, rest = [], []
        for b in todo:
            if len(this) < workers and not ({b[0], b[1]} & used):
                this.append(b)
                used |= {b[0], b[1]}
            else:
                rest.append(b)
        out.append(this)
        todo = rest
    return out


def bucket_rng(seed: int, epoch: int, bucket: tuple[int, int], parts: int, chunk: int = 0) -> np.random.Generator:
    """A bucket's random stream (of its edge chunk `chunk`); with one partition, the one-table
    engine's epoch stream."""
    if parts == 1:
        return epoch_rng(seed, epoch)
    return np.random.default_rng([seed, epoch, bucket[0], bucket[1]] + ([chunk] if chunk else []))


def schedule(buckets, seed: int, epoch: int, workers: int, edge_chunks: int) -> list[tuple]:
    """The epoch's steps (edge chunk, rounds): PyTorch-BigGraph's `num_edge_chunks`: every bucket's
    triples are cut into edge_chunks parts and the epoch trains the first part of every bucket,
    then the second, ..., each pass in rounds of disjoint buckets, so a relation never trains on one
    bucket's triples for long (one pass over a whole bucket drifts toward its entities)."""
    return [(c, rounds(buckets, seed, epoch, workers, c)) for c in range(edge_chunks)]


def chunk_triples(plan: "Partitioning", b: tuple[int, int], seed: int, epoch: int, chunk: int,
                  edge_chunks: int) -> np.ndarray:
    """Indices of the training triples of edge chunk `chunk` of bucket b (a seeded split per epoch)."""
    idx = plan.buckets[b]
    if edge_chunks == 1:
        return idx
    perm = np.random.default_rng([seed, epoch, b[0], b[1], 7]).permutation(idx.shape[0])
    return idx[np.sort(perm[chunk::edge_chunks])]


def bucket_parts(b: tuple[int, int]) -> list[int]:
    """The partitions a bucket trains: one for a diagonal bucket, else (head's, tail's)."""
    return [b[0]] if b[0] == b[1] else [b[0], b[1]]


def foreign_parts(b: tuple[int, int], parts: int) -> list[int]:
    """The partitions that lend a bucket negatives: all but its own."""
    return [p for p in range(parts) if p not in (b[0], b[1])]


def lent_parts(this: list[tuple[int, int]], parts: int) -> list[int]:
    """The partitions a round needs samples of: those some bucket of the round does not train."""
    return sorted({p for b in this for p in foreign_parts(b, parts)})


def lend_rows(rows: np.ndarray, accs: np.ndarray, size: int, seed: int, epoch: int, rnd: int,
              p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, rows, Adagrad state) that partition p lends round `rnd` of an epoch as
    negatives: a seeded sample of `size` of its rows (all when the partition is smaller)."""
    n = rows.shape[0]
    idx = np.arange(n) if size >= n else np.sort(
        np.random.default_rng([seed, epoch, rnd, p, 15485863]).choice(n, size, replace=False))
    return idx, rows[idx], accs[idx]


def bucket_sampler(own: int, lent: int, num_entities: int, s: TrainSettings) -> Callable:
    """draw(rng) -> local negative ids of one chunk side: rows 0..own-1 are the bucket's, own.. the
    lent ones. A negative is one of the bucket's own rows with probability own / num_entities, else
    a lent row, so each entity is drawn about equally often whichever partition holds it."""
    if lent == 0:
        return negative_sampler(own, s, None)
    if s.negatives == 0 or s.negatives >= num_entities:
        every = np.arange(own + lent, dtype=np.int64)
        return lambda rng: every
    share = own / num_entities

    def draw(rng: np.random.Generator) -> np.ndarray:
        k = int(rng.binomial(s.negatives, share))
        return np.concatenate([rng.integers(0, own, k, dtype=np.int64),
                               own + rng.integers(0, lent, s.negatives - k, dtype=np.int64)])
    return draw


def train_bucket(model: KGModel, s: TrainSettings, bucket: tuple[int, int], members: list[np.ndarray],
                 rows: list[np.ndarray], accs: list[np.ndarray], rel: np.ndarray, rel_acc: np.ndarray,
                 triples: np.ndarray, epoch: int, parts: int, lent: list[tuple] = (),
                 num_entities: int = 0, chunk: int = 0) -> tuple:
    """Train one bucket (its edge chunk `chunk`) over its partitions' rows (`rows[k]`, `accs[k]`: of
    partition members[k], one entry for a diagonal bucket, two otherwise), with the `lent` samples
    (lend_rows) of the other partitions as extra negatives (of num_entities in all). Returns (new
    rows per partition, new accs, relation table, relation accumulators, summed loss, [(row change,
    acc change)] of each lent sample)."""
    ids = np.concatenate(members)
    local_of = np.argsort(ids, kind="stable")
    sorted_ids = ids[local_of]
    local = triples.copy()
    for c in (0, 2):
        local[:, c] = local_of[np.searchsorted(sorted_ids, triples[:, c])]
    own = ids.shape[0]
    st = TrainState(np.concatenate([*rows, *(x[1] for x in lent)]), rel.copy(),
                    np.concatenate([*accs, *(x[2] for x in lent)]), rel_acc.copy())
    draw = bucket_sampler(own, st.ent.shape[0] - own, max(num_entities, own), s)
    loss = train_pass(model, st, local, s, draw, bucket_rng(s.seed, epoch, bucket, parts, chunk))
    cuts = np.cumsum([m.shape[0] for m in members])[:-1]
    changes, lo = [], own
    for _, lent_rows, lent_accs in lent:
        hi = lo + lent_rows.shape[0]
        changes.append((st.ent[lo:hi] - lent_rows, st.ent_acc[lo:hi] - lent_accs))
        lo = hi
    return np.split(st.ent[:own], cuts), np.split(st.ent_acc[:own], cuts), st.rel, st.rel_acc, loss, changes


def merge_relations(start: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    """The round's relation table: a single bucket's as it is, else start + the mean change."""
    if len(tables) == 1:
        return tables[0]
    return (start + np.mean([t - start for t in tables], axis=0)).astype(np.float32)


def train_partitioned(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, parts: int,
                      workers: int, seed: int = 0, on_epoch: Callable | None = None, lent_rows: int = 0,
                      edge_chunks: int = 1) -> TrainState:
    """In-process partitioned training (the Ray version in tasks/kg.py runs each round's buckets as
    tasks, with the same tables): epochs st.epoch .. s.epochs-1, each `edge_chunks` passes of
    rounds of disjoint buckets, every other partition lending `lent_rows` rows per round.
    on_epoch(state, info) as in train.train."""
    plan = partition(st.ent.shape[0], triples, parts, seed)
    while st.epoch < s.epochs:
        t0, total, rnd = time.perf_counter(), 0.0, 0
        for chunk, passes in schedule(plan.buckets, s.seed, st.epoch, workers, edge_chunks):
            for this in passes:
                total += train_round(model, s, plan, this, st, triples, parts, lent_rows, chunk, edge_chunks, rnd)
                rnd += 1
        st.epoch += 1
        seconds = time.perf_counter() - t0
        info = {"epoch": st.epoch, "loss": round(total / max(2 * triples.shape[0], 1), 6),
                "seconds": round(seconds, 3), "triples_per_s": round(triples.shape[0] / max(seconds, 1e-9), 1)}
        st.history.append(info)
        if on_epoch is not None:
            on_epoch(st, info)
    return st


def train_round(model, s, plan: Partitioning, this: list, st: TrainState, triples, parts: int, lent_rows: int,
                chunk: int, edge_chunks: int, rnd: int) -> float:
    """One round in process: lend, train each bucket from the round's start, store, add the lent
    rows' changes back, merge the relations."""
    lent = {p: lend_rows(st.ent[plan.members[p]], st.ent_acc[plan.members[p]], lent_rows, s.seed, st.epoch, rnd, p)
            for p in (lent_parts(this, parts) if lent_rows else [])}
    outs = []
    for b in this:
        ps = bucket_parts(b)
        outs.append(train_bucket(
            model, s, b, [plan.members[p] for p in ps], [st.ent[plan.members[p]] for p in ps],
            [st.ent_acc[plan.members[p]] for p in ps], st.rel, st.rel_acc,
            triples[chunk_triples(plan, b, s.seed, st.epoch, chunk, edge_chunks)], st.epoch, parts,
            [lent[p] for p in foreign_parts(b, parts)] if lent else [], st.ent.shape[0], chunk))
    total = sum(store_bucket(plan, b, out, st) for b, out in zip(this, outs))
    for b, out in zip(this, outs):
        for p, change in zip(foreign_parts(b, parts) if lent else [], out[5]):
            absorb(st.ent, st.ent_acc, plan.members[p][lent[p][0]], change)
    st.rel = merge_relations(st.rel, [o[2] for o in outs])
    st.rel_acc = merge_relations(st.rel_acc, [o[3] for o in outs])
    return total


def store_bucket(plan: Partitioning, b, out: tuple, st: TrainState) -> float:
    for p, new_rows, new_acc in zip(bucket_parts(b), out[0], out[1]):
        st.ent[plan.members[p]] = new_rows
        st.ent_acc[plan.members[p]] = new_acc
    return out[4]


def absorb(ent: np.ndarray, acc: np.ndarray, rows: np.ndarray, change: tuple) -> None:
    """Add a bucket's change of lent rows (and of their Adagrad state) to the rows they came from."""
    ent[rows] += change[0]
    acc[rows] += change[1]


def absorb_all(rows: np.ndarray, accs: np.ndarray, idx: np.ndarray, changes: list) -> tuple[np.ndarray, np.ndarray]:
    """A partition's rows and Adagrad state plus the changes the round's buckets made to the rows it
    lent (positions idx), added in bucket order (on copies: the inputs may be read-only)."""
    rows, accs = rows.copy(), accs.copy()
    for change in changes:
        absorb(rows, accs, idx, change)
    return rows, accs
