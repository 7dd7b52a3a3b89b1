"""Ray-side bodies of partitioned knowledge-graph training (tasks/kg.py `train_partitioned` runs
them): plan the partitions, initialise each partition's rows, train one bucket, assemble the table.
Entity partitions are separate objects, so only the two partitions a bucket needs travel to its
worker, as in PyTorch-BigGraph."""
from __future__ import annotations

import numpy as np

from embedlake.workers.kg.kernels import new_state
from embedlake.workers.kg.models import init_tables
from embedlake.workers.kg.partitioned import Partitioning, bucket_parts, partition, train_bucket
from embedlake.workers.kg.stages import blas_threads, model_of, settings_of
from embedlake.workers.kg.triples import TripleSet


def plan_stage(ts: TripleSet, kg) -> tuple[Partitioning, list]:
    """(the partitioning, its non-empty bucket keys) of the training triples."""
    plan = partition(ts.num_entities, ts.train, kg.partitions, kg.seed)
    return plan, sorted(plan.buckets)


def init_stage(ts: TripleSet, kg, plan: Partitioning) -> tuple:
    """The one-table engine's initial tables, cut into the partitions: (rel, rel_acc, rows_0, acc_0,
    rows_1, acc_1, ...) so each partition is its own object."""
    model = model_of(kg)
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, kg.seed, kg.init_scale)
    st = new_state(ent, rel, kg.optimizer)
    out: list = [st.rel, st.rel_acc]
    for ids in plan.members:
        out += [st.ent[ids], st.ent_acc[ids]]
    return tuple(out)


def bucket_stage(ts: TripleSet, kg, plan: Partitioning, bucket: tuple[int, int], epoch: int, rel: np.ndarray,
                 rel_acc: np.ndarray, *rows_accs) -> tuple:
    """Train one bucket: returns (rows, acc) of each of its partitions, then (rel, rel_acc, loss)."""
    ps = bucket_parts(bucket)
    rows, accs = list(rows_accs[0::2]), list(rows_accs[1::2])
    with blas_threads(kg.threads):
        new_rows, new_accs, new_rel, new_rel_acc, loss = train_bucket(
            model_of(kg), settings_of(kg), bucket, [plan.members[p] for p in ps], rows, accs, rel, rel_acc,
            ts.train[plan.buckets[bucket]], epoch, kg.partitions)
    out: list = []
    for r, a in zip(new_rows, new_accs):
        out += [r, a]
    return (*out, (new_rel, new_rel_acc, float(loss)))


def assemble_stage(ts: TripleSet, plan: Partitioning, rel: np.ndarray, *rows) -> tuple[np.ndarray, np.ndarray]:
    """(entity table, relation table) from the partitions' rows."""
    ent = np.empty((ts.num_entities, rows[0].shape[1]), np.float32)
    for ids, r in zip(plan.members, rows):
        ent[ids] = r
    return ent, rel
