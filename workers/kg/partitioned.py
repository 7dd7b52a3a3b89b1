"""Partitioned knowledge-graph training, as PyTorch-BigGraph: entities split into P partitions,
triples into P x P buckets by (partition of head, partition of tail).

An epoch is a sequence of rounds; the buckets of one round touch disjoint entity partitions, so
workers train them at the same time without sharing an entity row (the entity partitions travel
to the workers and back; on Ray through the object store, tasks/kg.py). Relation parameters are
shared by every bucket: each bucket trains its own copy and the round merges them (the mean of the
buckets' changes added to the round's start). Negatives of a bucket are drawn from the entities of
its own partitions (PBG's rule: a worker holds only those rows).

With P = 1 there is one bucket per round, its random stream is the one-table engine's, and the
result is bit-identical to train.train (tests/test_kg.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

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


def rounds(buckets, seed: int, epoch: int, workers: int) -> list[list[tuple[int, int]]]:
    """The epoch's schedule: the (non-empty) buckets in a seeded order, packed greedily into rounds
    of at most `workers` buckets whose partitions are disjoint."""
    todo = sorted(buckets)
    order = np.random.default_rng([seed, epoch, 104729]).permutation(len(todo)) if len(todo) > 1 else [0]
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


def bucket_rng(seed: int, epoch: int, bucket: tuple[int, int], parts: int) -> np.random.Generator:
    """A bucket's random stream; with one partition, the one-table engine's epoch stream."""
    return epoch_rng(seed, epoch) if parts == 1 else np.random.default_rng([seed, epoch, bucket[0], bucket[1]])


def train_bucket(model: KGModel, s: TrainSettings, bucket: tuple[int, int], members: list[np.ndarray],
                 rows: list[np.ndarray], accs: list[np.ndarray], rel: np.ndarray, rel_acc: np.ndarray,
                 triples: np.ndarray, epoch: int, parts: int) -> tuple:
    """Train one bucket over its partitions' rows (`rows[k]`, `accs[k]`: of partition members[k],
    one entry for a diagonal bucket, two otherwise). Returns (new rows per partition, new accs,
    relation table, relation accumulators, summed loss)."""
    ids = np.concatenate(members)
    local_of = np.argsort(ids, kind="stable")
    sorted_ids = ids[local_of]
    local = triples.copy()
    for c in (0, 2):
        local[:, c] = local_of[np.searchsorted(sorted_ids, triples[:, c])]
    st = TrainState(np.concatenate(rows), rel.copy(), np.concatenate(accs), rel_acc.copy())
    draw = negative_sampler(ids.shape[0], s, None)
    loss = train_pass(model, st, local, s, draw, bucket_rng(s.seed, epoch, bucket, parts))
    cuts = np.cumsum([m.shape[0] for m in members])[:-1]
    return np.split(st.ent, cuts), np.split(st.ent_acc, cuts), st.rel, st.rel_acc, loss


def merge_relations(start: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    """The round's relation table: a single bucket's as it is, else start + the mean change."""
    if len(tables) == 1:
        return tables[0]
    return (start + np.mean([t - start for t in tables], axis=0)).astype(np.float32)


def train_partitioned(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, parts: int,
                      workers: int, seed: int = 0) -> TrainState:
    """In-process partitioned training (the Ray version in tasks/kg.py runs each round's buckets as
    tasks): epochs st.epoch .. s.epochs-1 of rounds of disjoint buckets."""
    plan = partition(st.ent.shape[0], triples, parts, seed)
    while st.epoch < s.epochs:
        total = 0.0
        for this in rounds(plan.buckets, s.seed, st.epoch, workers):
            outs = [run_bucket(model, s, plan, b, st, triples, parts) for b in this]
            for b, out in zip(this, outs):
                total += store_bucket(plan, b, out, st)
            st.rel = merge_relations(st.rel, [o[2] for o in outs])
            st.rel_acc = merge_relations(st.rel_acc, [o[3] for o in outs])
        st.epoch += 1
        st.history.append({"epoch": st.epoch, "loss": round(total / max(2 * triples.shape[0], 1), 6)})
    return st


def bucket_parts(b: tuple[int, int]) -> list[int]:
    return [b[0]] if b[0] == b[1] else [b[0], b[1]]


def run_bucket(model, s, plan: Partitioning, b, st: TrainState, triples, parts) -> tuple:
    ps = bucket_parts(b)
    return train_bucket(model, s, b, [plan.members[p] for p in ps], [st.ent[plan.members[p]] for p in ps],
                        [st.ent_acc[plan.members[p]] for p in ps], st.rel, st.rel_acc, triples[plan.buckets[b]],
                        st.epoch, parts)


def store_bucket(plan: Partitioning, b, out: tuple, st: TrainState) -> float:
    for p, new_rows, new_acc in zip(bucket_parts(b), out[0], out[1]):
        st.ent[plan.members[p]] = new_rows
        st.ent_acc[plan.members[p]] = new_acc
    return out[4]
