"""FastRP as Ray work. One shard: CSR rows partitioned across tasks; each iteration's matrix is
shared through the object store as its partitions. Several graph shards (`fastrp_sharded`): blocked
sparse products, in which no task holds more than one shard's CSR rows, one block of the previous
matrix and one shard's row sums (workers/fastrp/sharded.py). The output is identical either way."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import FastRPConfig
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.graph import GraphHandle, ShardRef, StageResult
from embedlake.tasks.placement import shard_placements
from embedlake.tasks.remote import remote
from embedlake.tasks.run import Run
from embedlake.lake import Manifest
from embedlake.workers.fastrp import incremental as finc
from embedlake.workers.fastrp import kernels as frp
from embedlake.workers.fastrp import sharded as fsh
from embedlake.workers.fastrp import stages as fs
from embedlake.workers.graph.shards import shard_starts


def fastrp_table(run: Run, graph: GraphHandle, fastrp_cfg: FastRPConfig, bounds: list[tuple[int, int]]) -> StageResult:
    """The run's FastRP table (stage `fastrp`). The finished table is checkpointed (stage `table`):
    a run killed after it (in publish, evaluate or commit) does not recompute it.

    With graph shards (graph.num_shards > 1) the table is a list of per-shard row blocks (refs of
    [hi - lo, dim] float32), checkpointed one file per shard by the task that holds it."""
    if graph.num_shards > 1:
        return sharded_fastrp_table(run, graph, fastrp_cfg)
    stage = run.stage("table", {"graph": graph.key, "fastrp": fastrp_spec(fastrp_cfg)})
    done = stage.finished_table()
    if done is not None:
        return done
    if fastrp_cfg.projection == "node_id":
        return keyed_fastrp_table(run, graph, fastrp_cfg, stage)
    emb_ref, info = run.time("fastrp", fastrp, graph, fastrp_cfg, bounds, max_retries=run.retries)
    stage.save_table(emb_ref, info)
    return StageResult(emb_ref, info)


def keyed_fastrp_table(run: Run, graph: GraphHandle, fastrp_cfg: FastRPConfig, stage) -> StageResult:
    """fastrp.projection=node_id: one task computes the table and saves the state an incremental
    run of the next graph version starts from (run files of kind `fastrp_state`). A resumed run
    whose table was checkpointed has no state files: the next run is then a full one."""
    run.owns(finc.state_dir(run.dataset, run.method, run.run_id))
    task = remote(finc.keyed_table_stage, "fastrp", num_cpus=1, num_returns=2, max_retries=run.retries)
    emb_ref, state_files = run.time("fastrp", lambda: table_and_info(task.remote(
        graph.csr_ref, graph.node_ids_ref, fastrp_cfg, run.lake, run.dataset, run.method, run.run_id)))
    info = {"iterations": len(fastrp_cfg.weights), "partitions": 1, "dim": fastrp_cfg.dim, "projection": "node_id"}
    stage.save_table(emb_ref, info)
    return StageResult(emb_ref, info, {finc.STATE_FILES: state_files})


def incremental_refusal(previous: Manifest | None, fastrp_cfg: FastRPConfig) -> str | None:
    """Why the run cannot update the previous run's FastRP table (None: it can). The previous run
    must have used the same FastRP settings, the node-id keyed projection, and saved its state."""
    if previous is None:
        return "no previous committed run"
    if fastrp_cfg.projection != "node_id":
        return "fastrp.projection is 'row' (a node's random projection moves with its dense row id): set node_id"
    before = (previous.config or {}).get("fastrp") or {}
    now = fastrp_spec(fastrp_cfg)
    differ = sorted(k for k in now if before.get(k) != now[k])
    if differ:
        return f"the previous run {previous.run_id} used other FastRP settings ({', '.join('fastrp.' + k for k in differ)})"
    if not previous.files.get(finc.STATE_FILES):
        return f"the previous run {previous.run_id} saved no FastRP state (a resumed or pre-incremental run)"
    return None


def fastrp_incremental(run: Run, graph: GraphHandle, fastrp_cfg: FastRPConfig, previous: Manifest, old_csr_ref,
                       old_index) -> StageResult:
    """The new graph version's FastRP table from the previous run's state (`incremental_refusal`
    must have said None): only the rows whose k-hop neighbourhood changed are recomputed, and the
    table equals a full run's bit for bit (workers/fastrp/incremental.py). old_csr_ref: the previous
    version's CSR tuple; old_index: GraphDiff.old_index (each new row's previous row or -1).
    Returns the table ref, info (rows recomputed per level) and the new state's files."""
    if graph.num_shards > 1:
        raise ValueError("incremental FastRP runs on one graph shard (graph.shards=1)")
    run.owns(finc.state_dir(run.dataset, run.method, run.run_id))
    task = remote(finc.incremental_stage, "fastrp", num_cpus=1, num_returns=2, max_retries=run.retries)
    emb_ref, info = run.time("fastrp", lambda: table_and_info(task.remote(
        graph.csr_ref, graph.node_ids_ref, old_csr_ref, old_index, fastrp_cfg, run.lake,
        previous.files[finc.STATE_FILES], run.dataset, run.method, run.run_id)))
    state_files = info.pop("state_files")
    stage_logger().info(f"fastrp: incremental: {info['rows_recomputed']} of {info['rows']} rows recomputed "
                        f"(per level {info['rows_per_level']}), the others carried from run {previous.run_id}")
    return StageResult(emb_ref, {**info, "iterations": len(fastrp_cfg.weights), "dim": fastrp_cfg.dim},
                       {finc.STATE_FILES: state_files})


def sharded_fastrp_table(run: Run, graph: GraphHandle, fastrp_cfg: FastRPConfig) -> StageResult:
    """`fastrp_table` over graph shards: each shard's rows are saved as part-<shard>.npy of stage
    `table` (finished when every part exists); a re-run loads the parts, one task per shard."""
    import ray
    bounds = graph.shard_bounds
    stage = run.stage("table", {"graph": graph.key, "fastrp": fastrp_spec(fastrp_cfg),
                                "shards": [list(b) for b in bounds]})
    handle = stage.handle()
    if handle is not None and stage.final and stage.finished_parts(len(bounds)) == set(range(len(bounds))):
        load = remote(fsh.load_shard_table, "train", num_cpus=1, max_retries=run.retries)
        refs = [load.remote(handle, s, hi - lo, fastrp_cfg.dim) for s, (lo, hi) in enumerate(bounds)]
        stage_logger().info(f"resume: the FastRP shard tables of run {run.run_id} are reused: not computed again")
        info = dict(stage.state.get("info") or {})
        info["resumed"] = {"stage": stage.name, "table_reused": True}
        return StageResult(refs, info)
    refs, info = run.time("fastrp", fastrp_sharded, graph, fastrp_cfg, max_retries=run.retries)
    if handle is not None:
        stage.restart()
        places = shard_placements(graph.shards)           # each shard's rows saved on the node that made them
        ray.get([remote(fsh.save_shard_table, "publish", num_cpus=1, max_retries=run.retries, **places[s]).remote(
            stage.handle(), s, ref) for s, ref in enumerate(refs)])
        stage.finish(info=info)
    return StageResult(refs, info)


def table_and_info(refs: list) -> tuple:
    """(table ref, the small second return fetched): the stage's clock stops when the task is done."""
    import ray
    return refs[0], ray.get(refs[1])


def fastrp_spec(fastrp_cfg: FastRPConfig) -> dict:
    """What determines a FastRP table: every field of the section."""
    return {k: getattr(fastrp_cfg, k) for k in type(fastrp_cfg).model_fields}


@task(name="fastrp", cache_policy=NO_CACHE)
def fastrp(graph: GraphHandle, fastrp_cfg: FastRPConfig, bounds: list[tuple[int, int]], max_retries: int = 3):
    """Returns (ObjectRef of the [n, dim] float32 embeddings, info dict)."""
    import ray
    log = stage_logger()
    cfg = fastrp_cfg
    if not cfg.weights:
        raise ValueError("fastrp.weights must name at least one iteration")
    opts = dict(num_cpus=1, max_retries=max_retries)
    deg_ref = remote(fs.degrees, "fastrp", **opts).remote(graph.csr_ref)
    R_ref = remote(fs.projection, "fastrp", **opts).remote(graph.csr_ref, deg_ref, cfg)
    first = remote(fs.first_step, "fastrp", num_returns=2, **opts)
    step = remote(fs.next_step, "fastrp", num_returns=2, **opts)
    pairs = [first.remote(graph.csr_ref, deg_ref, R_ref, lo, hi, cfg) for lo, hi in bounds]
    U_refs, out_refs = [p[0] for p in pairs], [p[1] for p in pairs]
    join = remote(fs.join_rows, "fastrp", **opts)
    for k, w in enumerate(cfg.weights[1:], start=2):
        U_prev = U_refs[0] if len(U_refs) == 1 else join.remote(*U_refs)
        pairs = [step.remote(graph.csr_ref, deg_ref, lo, hi, w, cfg, out_refs[i], U_prev)
                 for i, (lo, hi) in enumerate(bounds)]
        U_refs, out_refs = [p[0] for p in pairs], [p[1] for p in pairs]
        log.info(f"fastrp: iteration {k}/{len(cfg.weights)} scheduled on {len(bounds)} partitions")
    del U_refs
    mean = std = None
    if cfg.standardize:
        parts = gather([remote(fs.moments, "fastrp", **opts).remote(o) for o in out_refs], "fastrp moments")
        mean, std = frp.finalize_moments(frp.merge_moments(parts))
    emb_ref = remote(fs.standardize_and_join, "fastrp", **opts).remote(mean, std, cfg.standardize, *out_refs)
    ray.wait([emb_ref], num_returns=1, fetch_local=False)
    return emb_ref, {"iterations": len(cfg.weights), "partitions": len(bounds), "dim": cfg.dim}


@task(name="fastrp_sharded", cache_policy=NO_CACHE)
def fastrp_sharded(graph: GraphHandle, fastrp_cfg: FastRPConfig, max_retries: int = 3) -> tuple[list, dict]:
    """FastRP over the graph's shards as blocked sparse products (workers/fastrp/sharded.py).

    Returns (one ObjectRef per shard of its [hi - lo, dim] float32 rows, info), bit-identical to
    `fastrp` on the gathered CSR. No task takes or returns more than one shard's CSR rows, one
    block of U_{k-1}, one shard's row sums and output rows, or one shard's column scales."""
    import ray
    log = stage_logger()
    cfg = fastrp_cfg
    if not cfg.weights:
        raise ValueError("fastrp.weights must name at least one iteration")
    if graph.num_nodes < 1:
        raise ValueError("fastrp: the graph has no nodes")
    opts = dict(num_cpus=1, max_retries=max_retries)
    starts = shard_starts(graph.shard_bounds)
    shards = graph_shards(graph)
    placed = [{**opts, **where} for where in shard_placements(shards)]     # each shard's tasks on its rows' node
    keyed = cfg.projection == "node_id"       # R keyed by original id: each shard draws from its own node ids
    setups = [remote(fsh.shard_setup, "fastrp", num_returns=4, **placed[i]).remote(
        s.csr_ref, s.lo, s.hi, graph.num_nodes, starts, cfg, node_ids=s.ids_ref if keyed else None)
        for i, s in enumerate(shards)]
    row_scales, col_scales, blocks, arc_refs = (list(x) for x in zip(*setups))
    plans = [fsh.block_plan(a) for a in gather(arc_refs, "fastrp shard setup")]
    outs: list = [None] * graph.num_shards
    for k, weight in enumerate(cfg.weights, start=1):
        blocks, outs = propagate_shards(graph, blocks, col_scales, row_scales, plans, outs, weight, cfg.dim, placed)
        log.info(f"fastrp: iteration {k}/{len(cfg.weights)} scheduled on {graph.num_shards} shards "
                 f"({sum(max(1, len(p)) for p in plans)} block steps)")
    del blocks
    if cfg.standardize:
        parts = gather([remote(fs.moments, "fastrp", **placed[i]).remote(o) for i, o in enumerate(outs)],
                       "fastrp moments")
        mean, std = frp.finalize_moments(frp.merge_moments(parts))
        outs = [remote(fsh.standardized_rows, "fastrp", **placed[i]).remote(mean, std, o) for i, o in enumerate(outs)]
    ray.wait(outs, num_returns=len(outs), fetch_local=False)
    return outs, {"iterations": len(cfg.weights), "shards": graph.num_shards, "dim": cfg.dim,
                  "block_steps_per_iteration": sum(max(1, len(p)) for p in plans)}


def graph_shards(graph: GraphHandle) -> list[ShardRef]:
    """The graph's shards; a handle without any is one shard, its whole CSR."""
    return graph.shards or [ShardRef(0, graph.num_nodes, int(graph.meta.get("arcs", 0)), graph.csr_ref,
                                     graph.node_ids_ref)]


def propagate_shards(graph: GraphHandle, blocks: list, col_scales: list, row_scales: list, plans: list[list[int]],
                     outs: list, weight: float, dim: int, placed: list[dict]) -> tuple[list, list]:
    """One power of S over every shard: per shard a chain of block steps over the blocks its arcs
    reach, in ascending order (the order that keeps the one-CSR sums), each step run with that
    shard's task options `placed[i]` (on the node of its CSR rows: `shard_placements`). Returns
    (U_k refs, output refs)."""
    bounds = graph.shard_bounds
    new_blocks, new_outs = [], []
    for i, shard in enumerate(graph_shards(graph)):
        step = remote(fsh.block_step, "fastrp", **placed[i])
        last = remote(fsh.last_block_step, "fastrp", num_returns=2, **placed[i])
        partial = None
        for j in plans[i][:-1]:
            partial = step.remote(shard.csr_ref, blocks[j], bounds[j][0], col_scales[j], partial, dim)
        j = plans[i][-1] if plans[i] else None
        U, out = last.remote(shard.csr_ref, None if j is None else blocks[j], 0 if j is None else bounds[j][0],
                             None if j is None else col_scales[j], partial, row_scales[i], outs[i], weight, dim)
        new_blocks.append(U)
        new_outs.append(out)
    return new_blocks, new_outs


def publish_partial(run: Run, graph: GraphHandle, table_ref, previous: Manifest | None, row_bytes: int,
                    max_retries: int = 3) -> tuple[list[dict], dict]:
    """Publish the run's table in the hashed layout (embedlake/lake.py, "partial publish"): one task
    per partition, each writing its file only when its rows differ from the previous run's file.

    P comes from the previous run's layout when it had one (so unchanged rows find their file),
    else from lake.HASH_FILE_BYTES. Returns (the run's embeddings file entries, kept ones included,
    and {files,bytes,rows}_{written,kept}). One graph shard only (one node-id map, one table ref)."""
    from embedlake import lake as lk
    if graph.num_shards > 1 or isinstance(table_ref, list):
        raise ValueError("the hashed (partial) publish needs one graph shard (graph.shards=1)")
    before = previous.files.get("embeddings", []) if previous is not None else []
    partitions = lk.layout_partitions(before) or lk.hash_partition_count(graph.num_nodes, row_bytes)
    old = lk.previous_layout(before)
    opts = dict(num_cpus=1, max_retries=max_retries)
    assign = remote(lk.hash_partitions, "publish", **opts).remote(graph.node_ids_ref, partitions)
    write = remote(lk.publish_hashed_partition, "publish", **opts)
    refs = [write.remote(run.lake, run.dataset, run.method, run.run_id, p, partitions, assign, graph.node_ids_ref,
                         table_ref, old.get(p)) for p in range(partitions)]
    entries, stats = lk.publish_summary(gather(refs, "publish"))
    stage_logger().info(f"publish: {stats['files_written']} of {partitions} partitions written "
                        f"({stats['bytes_written']:,} bytes), {stats['files_kept']} kept from the previous run")
    return entries, stats
