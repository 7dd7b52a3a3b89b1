"""Knowledge-graph stages on Ray (the bodies are workers/kg/stages.py): read the triples, train,
evaluate, publish. Tasks pass ObjectRefs of the triples and the trained tables, never the arrays."""
from __future__ import annotations

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
    return {k: getattr(kg, k) for k in ("model", "dim", "norm", "gamma", "init_scale", "engine", *ks.TRAIN_FIELDS)}


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
def train_partitioned(ts_ref, kg, max_retries: int = 3) -> tuple:
    """PyTorch-BigGraph's schedule on Ray: kg.partitions entity partitions (each its own object),
    rounds of up to kg.workers buckets with disjoint partitions trained as parallel tasks, the
    relation tables merged by the driver after each round (they are small). No checkpoints: a
    re-run trains again. Returns (ref of (entity table, relation table), info)."""
    import time

    import ray
    t0 = time.perf_counter()
    plan_ref, keys_ref = remote(kps.plan_stage, "train", num_cpus=1, max_retries=max_retries,
                                num_returns=2).remote(ts_ref, kg)
    keys = ray.get(keys_ref)
    parts = kg.partitions
    init = remote(kps.init_stage, "train", num_cpus=1, max_retries=max_retries,
                  num_returns=2 + 2 * parts).remote(ts_ref, kg, plan_ref)
    rel, rel_acc = ray.get(init[:2])
    rows, accs = list(init[2::2]), list(init[3::2])
    history = []
    for epoch in range(kg.epochs):
        total = 0.0
        for this in kp.rounds(keys, kg.seed, epoch, kg.workers):
            small = []
            for b in this:
                ps = kp.bucket_parts(b)
                ins = [x for p in ps for x in (rows[p], accs[p])]
                outs = remote(kps.bucket_stage, "train", num_cpus=kg.threads, max_retries=max_retries,
                              num_returns=2 * len(ps) + 1).remote(ts_ref, kg, plan_ref, b, epoch, rel, rel_acc, *ins)
                for k, p in enumerate(ps):
                    rows[p], accs[p] = outs[2 * k], outs[2 * k + 1]
                small.append(outs[-1])
            got = ray.get(small)
            rel = kp.merge_relations(rel, [g[0] for g in got])
            rel_acc = kp.merge_relations(rel_acc, [g[1] for g in got])
            total += sum(g[2] for g in got)
        history.append({"epoch": epoch + 1, "loss": round(total / 2.0, 3)})
    tables_ref = remote(kps.assemble_stage, "train", num_cpus=1, max_retries=max_retries).remote(
        ts_ref, plan_ref, rel, *rows)
    ray.wait([tables_ref])
    seconds = time.perf_counter() - t0
    info = {"model": kg.model, "dim": kg.dim, "engine": "numba", "epochs": kg.epochs, "partitions": parts,
            "workers": kg.workers, "buckets": len(keys), "train_s": round(seconds, 3), "resumed_at_epoch": 0,
            "history": history}
    stage_logger().info(f"kg train (partitioned): P={parts}, {len(keys)} buckets, {kg.workers} workers, "
                        f"{kg.epochs} epochs in {seconds:.1f} s")
    return tables_ref, info
