"""Ray-side bodies of partitioned knowledge-graph training (tasks/kg.py `train_partitioned` runs
them): plan the partitions, initialise each partition's rows, lend rows as negatives, train one
bucket, checkpoint an epoch, assemble the table. Entity partitions are separate objects, so only
the two partitions a bucket trains (and the small samples the others lend) travel to its worker,
as in PyTorch-BigGraph.

Checkpoints (the run's stage `kg_train`, workers/run/checkpoints.py layout):

    kg_train/epoch=<k>/ent-<p>.npy, acc-<p>.npy   partition p's rows and Adagrad state after epoch k
    kg_train/epoch=<k>/rel.npy, rel_acc.npy       the merged relation table and its state
    kg_train/state.json                           {"fingerprint", "spec", "epoch": k, "final", "folder", "info"}

Each partition's files are written by a task of their own; the epoch's commit task runs once they
all exist, writes state.json and then removes only OLDER epoch folders: the partitions of a later
epoch may already be written (the commits are chained, the saves are not), as in
workers/train/blocks.py `commit_checkpoint`."""
from __future__ import annotations

import numpy as np

from embedlake.lake import Lake
from embedlake.workers.kg.kernels import new_state
from embedlake.workers.kg.models import init_tables
from embedlake.workers.kg.partitioned import (Partitioning, absorb_all, bucket_parts, chunk_triples, foreign_parts,
                                              lend_rows, partition, train_bucket)
from embedlake.workers.kg.stages import blas_threads, model_of, settings_of
from embedlake.workers.kg.triples import TripleSet
from embedlake.workers.run import checkpoints as cp
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point


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


def lend_stage(kg, epoch: int, rnd: int, p: int, rows: np.ndarray, accs: np.ndarray) -> tuple:
    """(positions, rows, Adagrad state) partition p lends round `rnd` of the epoch as negatives."""
    return lend_rows(rows, accs, kg.lent_rows, kg.seed, epoch, rnd, p)


def bucket_stage(ts: TripleSet, kg, plan: Partitioning, bucket: tuple[int, int], epoch: int, chunk: int,
                 rel: np.ndarray, rel_acc: np.ndarray, *arrays) -> tuple:
    """Train edge chunk `chunk` of one bucket. `arrays`: (rows, acc) of each of its partitions, then
    the samples the other partitions lend (foreign_parts order). Returns (rows, acc) of each of its
    partitions, then (rel, rel_acc, loss), then the changes of the lent rows."""
    ps = bucket_parts(bucket)
    own = 2 * len(ps)
    rows, accs, lent = list(arrays[0:own:2]), list(arrays[1:own:2]), list(arrays[own:])
    triples = ts.train[chunk_triples(plan, bucket, kg.seed, epoch, chunk, kg.edge_chunks)]
    with blas_threads(kg.threads):
        new_rows, new_accs, new_rel, new_rel_acc, loss, changes = train_bucket(
            model_of(kg), settings_of(kg), bucket, [plan.members[p] for p in ps], rows, accs, rel, rel_acc,
            triples, epoch, kg.partitions, lent, ts.num_entities, chunk)
    out: list = []
    for r, a in zip(new_rows, new_accs):
        out += [r, a]
    return (*out, (new_rel, new_rel_acc, float(loss)), changes)


def absorb_stage(p: int, parts: int, buckets: list, rows: np.ndarray, accs: np.ndarray, lent: tuple,
                 *bucket_changes) -> tuple:
    """Partition p after a round: its rows plus the changes that each of `buckets` (the round's
    buckets that borrowed rows of it; `bucket_changes` in the same order) made to them."""
    picked = [changes[foreign_parts(b, parts).index(p)] for b, changes in zip(buckets, bucket_changes)]
    return absorb_all(rows, accs, lent[0], picked)


def epoch_folder(handle: StageHandle, epoch: int) -> str:
    return f"{cp.stage_dir(handle.run_dir, handle.stage)}/epoch={int(epoch):06d}"


def save_partition_stage(handle: StageHandle, epoch: int, p: int, rows: np.ndarray, acc: np.ndarray) -> int:
    """Write partition p's rows and Adagrad state after `epoch` (before the epoch's commit names them)."""
    lake, folder = Lake(handle.lake), epoch_folder(handle, epoch)
    lake.write_npy(f"{folder}/ent-{p:05d}.npy", rows)
    lake.write_npy(f"{folder}/acc-{p:05d}.npy", acc)
    return p


def commit_epoch_stage(handle: StageHandle, epoch: int, final: bool, info: dict, previous, rel: np.ndarray,
                       rel_acc: np.ndarray, *saved) -> int:
    """Runs once every partition of `epoch` is saved (`saved`) and the previous epoch's commit is
    done (`previous`): write the relations, then state.json naming the epoch, then remove older
    epoch folders only (a later epoch's partitions may already be there). Returns the epoch."""
    lake, folder = Lake(handle.lake), epoch_folder(handle, epoch)
    lake.write_npy(f"{folder}/rel.npy", rel)
    lake.write_npy(f"{folder}/rel_acc.npy", rel_acc)
    cp.write_state(lake, handle.run_dir, handle.stage, {**handle.base, "epoch": int(epoch), "final": bool(final),
                                                        "folder": folder, "info": info})
    d = cp.stage_dir(handle.run_dir, handle.stage)
    for seg in sorted({rel_path[len(d) + 1:].split("/", 1)[0] for rel_path in lake.list_files(d)}):
        if seg.startswith("epoch=") and int(seg[6:]) < int(epoch):
            lake.delete(f"{d}/{seg}", recursive=True)
    fault_point(f"after:train_epoch:{int(epoch)}")
    return int(epoch)


def load_partition_stage(handle: StageHandle, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, acc) of partition p from the checkpoint a killed attempt left."""
    lake, folder = Lake(handle.lake), handle.resume_state["folder"]
    return lake.read_npy(f"{folder}/ent-{p:05d}.npy"), lake.read_npy(f"{folder}/acc-{p:05d}.npy")


def load_relations_stage(handle: StageHandle) -> tuple[np.ndarray, np.ndarray]:
    """(relation table, its Adagrad state) from the checkpoint a killed attempt left."""
    return handle.load("rel"), handle.load("rel_acc")


def assemble_stage(ts: TripleSet, plan: Partitioning, rel: np.ndarray, *rows) -> tuple[np.ndarray, np.ndarray]:
    """(entity table, relation table) from the partitions' rows."""
    ent = np.empty((ts.num_entities, rows[0].shape[1]), np.float32)
    for ids, r in zip(plan.members, rows):
        ent[ids] = r
    return ent, rel
