"""Knowledge-graph stages on Ray (the bodies are workers/kg/stages.py): read the triples, train,
evaluate, publish. Tasks pass ObjectRefs of the triples and the trained tables, never the arrays."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.remote import remote
from embedlake.tasks.run import Stage
from embedlake.workers.kg import partitioned as kp
from embedlake.workers.kg import partitioned_stages as kps
from embedlake.workers.kg import stages as ks


def train_spec(kg) -> dict:
    """Everything besides the input that decides the trained tables (a checkpoint is of these)."""
    spec = {k: getattr(kg, k) for k in ("model", "dim", "norm", "gamma", "init_scale", "engine", *ks.TRAIN_FIELDS)}
    if kg.partitions > 1:
        spec.update(partitions=kg.partitions, workers=kg.workers, lent_rows=kg.lent_rows, edge_chunks=kg.edge_chunks)
    return spec


@task(name="kg_read", cache_policy=NO_CACHE)
def read(lake, kg, max_retries: int = 3) -> tuple:
    """(ref of the encoded triples, their figures)."""
    import ray
    ts_ref, info_ref = remote(ks.load_stage, "ingest", num_cpus=1, max_retries=max_retries,
                              num_returns=2).remote(lake, kg)
    info = ray.get(info_ref)
    stage_logger().info(f"kg read: {info['entities']:,} entities, {info['relations']:,} relations, "
                        f"{info['train']:,} / {info['valid']:,} / {info['test']:,} train / valid / test triples")
    return ts_ref, info


@task(name="kg_train", cache_policy=NO_CACHE)
def train(ts_ref, kg, stage: Stage, max_retries: int = 3) -> tuple:
    """(ref of (entity table, relation table), info): one worker with kg.threads CPUs; every epoch is
    checkpointed through the run's stage, so a killed run's re-run continues after its last epoch."""
    import ray
    start = stage.resume_point("epoch", kg.epochs, "kg training") if not stage.final else kg.epochs
    if stage.final:
        stage_logger().info("resume: the trained tables are reused from the run's checkpoint: not trained again")
    tables_ref, info_ref = remote(ks.train_stage, "train", num_cpus=kg.threads, max_retries=max_retries,
                                  num_returns=2).remote(ts_ref, kg, stage.handle())
    info = ray.get(info_ref)
    stage_logger().info(f"kg train: {kg.model} dim {kg.dim}, epochs {start + 1}..{kg.epochs} in {info['train_s']} s "
                        f"({info['triples_per_s']:,} triples/s)")
    return tables_ref, info


@task(name="kg_evaluate", cache_policy=NO_CACHE)
def evaluate(ts_ref, kg, tables_ref, compress=None, max_retries: int = 3) -> dict:
    """Filtered MRR and Hits@1/3/10 of the test triples, and of each compress.codecs round trip of
    the entity table (one task, kg.threads CPUs)."""
    import ray
    metrics = ray.get(remote(ks.evaluate_stage, "evaluate", num_cpus=kg.threads, max_retries=max_retries)
                      .remote(ts_ref, kg, tables_ref, compress))
    stage_logger().info(f"kg evaluate: filtered MRR {metrics['mrr']:.4f}, Hits@10 {metrics['hits@10']:.4f} "
                        f"({metrics['triples']:,} test triples, {metrics['eval_s']} s)")
    return metrics


@task(name="kg_publish", cache_policy=NO_CACHE)
def publish(lake, dataset: str, method: str, run_id: str, ts_ref, tables_ref, max_retries: int = 3) -> dict:
    """The entity and relation tables as Parquet (data files only; the manifest is committed last)."""
    fn = remote(ks.write_table_stage, "publish", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, ts_ref, tables_ref, which) for which in ks.TABLE_SUBS]
    return {which: [entry] for which, entry in zip(ks.TABLE_SUBS, gather(refs, "kg publish"))}


@task(name="kg_train_partitioned", cache_policy=NO_CACHE)
def train_partitioned(ts_ref, kg, stage: Stage, max_retries: int = 3) -> tuple:
    """PyTorch-BigGraph's schedule on Ray: kg.partitions entity partitions (each its own object),
    rounds of up to kg.workers buckets with disjoint partitions trained as parallel tasks, every
    other partition lending kg.lent_rows rows as negatives, the relation tables merged by the
    driver after each round (they are small). Every epoch is checkpointed through the run's stage
    (workers/kg/partitioned_stages.py), so a killed run's re-run continues after its last epoch.
    Returns (ref of (entity table, relation table), info)."""
    import time

    import ray
    t0 = time.perf_counter()
    opts = {"max_retries": max_retries}
    plan_ref, keys_ref = remote(kps.plan_stage, "train", num_cpus=1, num_returns=2, **opts).remote(ts_ref, kg)
    keys = ray.get(keys_ref)
    state = PartitionedState.start(ts_ref, kg, plan_ref, stage, opts)
    for epoch in range(state.epoch, kg.epochs):
        total, rnd = 0.0, 0
        for chunk, passes in kp.schedule(keys, kg.seed, epoch, kg.workers, kg.edge_chunks):
            for this in passes:
                total += train_round(ts_ref, kg, plan_ref, epoch, chunk, rnd, this, state, opts)
                rnd += 1
        state.history.append({"epoch": epoch + 1, "loss": round(total / 2.0, 3)})
        state.checkpoint(stage, epoch + 1, epoch + 1 == kg.epochs, opts)
    tables_ref = remote(kps.assemble_stage, "train", num_cpus=1, **opts).remote(ts_ref, plan_ref, state.rel,
                                                                                  *state.rows)
    ray.wait([tables_ref])
    if state.committed is not None:
        ray.get(state.committed)         # the last epoch's checkpoint is written before the run goes on
    seconds = time.perf_counter() - t0
    info = {"model": kg.model, "dim": kg.dim, "engine": "numba", "epochs": kg.epochs, "partitions": kg.partitions,
            "workers": kg.workers, "lent_rows": kg.lent_rows, "edge_chunks": kg.edge_chunks, "buckets": len(keys), "train_s": round(seconds, 3),
            "resumed_at_epoch": state.resumed_at, "history": state.history}
    stage_logger().info(f"kg train (partitioned): P={kg.partitions}, {len(keys)} buckets, {kg.workers} workers, "
                        f"epochs {state.resumed_at + 1}..{kg.epochs} in {seconds:.1f} s")
    return tables_ref, info


def train_round(ts_ref, kg, plan_ref, epoch: int, chunk: int, rnd: int, this: list, state: "PartitionedState",
                opts: dict) -> float:
    """One round: the lent samples, then its buckets as parallel tasks, then each lending partition
    takes back the changes made to its lent rows; the driver merges the relation tables. Returns
    the round's summed loss."""
    import ray
    parts = kg.partitions
    lent = {p: remote(kps.lend_stage, "train", num_cpus=1, **opts).remote(kg, epoch, rnd, p, state.rows[p],
                                                                          state.accs[p])
            for p in (kp.lent_parts(this, parts) if kg.lent_rows else [])}
    small, changes = [], []
    for b in this:
        ps = kp.bucket_parts(b)
        ins = [x for p in ps for x in (state.rows[p], state.accs[p])] + (
            [lent[p] for p in kp.foreign_parts(b, parts)] if lent else [])
        outs = remote(kps.bucket_stage, "train", num_cpus=kg.threads, num_returns=2 * len(ps) + 2, **opts).remote(
            ts_ref, kg, plan_ref, b, epoch, chunk, state.rel, state.rel_acc, *ins)
        for k, p in enumerate(ps):
            state.rows[p], state.accs[p] = outs[2 * k], outs[2 * k + 1]
        small.append(outs[-2])
        changes.append(outs[-1])
    for p in lent:
        borrowers = [(b, c) for b, c in zip(this, changes) if p in kp.foreign_parts(b, parts)]
        state.rows[p], state.accs[p] = remote(kps.absorb_stage, "train", num_cpus=1, num_returns=2, **opts).remote(
            p, parts, [b for b, _ in borrowers], state.rows[p], state.accs[p], lent[p], *(c for _, c in borrowers))
    got = ray.get(small)
    state.rel = kp.merge_relations(state.rel, [g[0] for g in got])
    state.rel_acc = kp.merge_relations(state.rel_acc, [g[1] for g in got])
    return sum(g[2] for g in got)


@dataclass
class PartitionedState:
    """The driver's view of partitioned training: refs of each partition's rows and Adagrad state,
    the merged relation table (small, held here), the epoch reached, and the last checkpoint commit."""
    rows: list
    accs: list
    rel: np.ndarray
    rel_acc: np.ndarray
    epoch: int = 0
    resumed_at: int = 0
    history: list = field(default_factory=list)
    committed: object = None

    @classmethod
    def start(cls, ts_ref, kg, plan_ref, stage: Stage, opts: dict) -> "PartitionedState":
        """Fresh tables, or those of the last epoch a killed attempt checkpointed."""
        import ray
        parts = kg.partitions
        start = stage.resume_point("epoch", kg.epochs, "kg training") if not stage.final else kg.epochs
        if stage.final:
            stage_logger().info("resume: the trained tables are reused from the run's checkpoint: not trained again")
        if start:
            handle = stage.handle()
            loads = [remote(kps.load_partition_stage, "train", num_cpus=1, num_returns=2, **opts).remote(handle, p)
                     for p in range(parts)]
            rel, rel_acc = ray.get(remote(kps.load_relations_stage, "train", num_cpus=1, **opts).remote(handle))
            history = list((stage.state.get("info") or {}).get("history", []))
            return cls([x[0] for x in loads], [x[1] for x in loads], rel, rel_acc, start, start, history)
        init = remote(kps.init_stage, "train", num_cpus=1, num_returns=2 + 2 * parts, **opts).remote(
            ts_ref, kg, plan_ref)
        rel, rel_acc = ray.get(init[:2])
        return cls(list(init[2::2]), list(init[3::2]), rel, rel_acc)

    def checkpoint(self, stage: Stage, epoch: int, final: bool, opts: dict) -> None:
        """Save every partition after `epoch` (one task each) and chain the epoch's commit after
        them and after the previous commit; the driver does not wait."""
        self.epoch = epoch
        handle = stage.handle()
        if handle is None:
            return
        saved = [remote(kps.save_partition_stage, "train", num_cpus=1, **opts).remote(handle, epoch, p, r, a)
                 for p, (r, a) in enumerate(zip(self.rows, self.accs))]
        self.committed = remote(kps.commit_epoch_stage, "train", num_cpus=1, **opts).remote(
            handle, epoch, final, {"history": list(self.history)}, self.committed, self.rel, self.rel_acc, *saved)
