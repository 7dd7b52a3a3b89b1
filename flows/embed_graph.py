"""The `embed_graph` flow: ingest -> shard -> walk -> train (or FastRP) -> publish -> evaluate -> commit.

With train.incremental=auto and a compatible previous run on a graph that changed little: ingest ->
diff -> update (walks from the changed nodes, other rows kept) -> publish -> evaluate (no alignment)
-> commit (tasks/incremental.py, docs/incremental.md).

With train.table = hash | compose | qr | unified: ingest -> train a learned K-row table on walks ->
write its codes + codebook -> measure -> commit one `<method>.<codec>` table (no full table); on
S > 1 graph shards (hash, qr, unified) the walks are the sharded engine's and the table is passed
from shard to shard, each training it on its walks, each writing its own rows' codes (tasks/learned.py).

The flow only wires tasks; each task fans out to Ray and passes references. The run
(tasks/run.py) owns the claim, the stage checkpoints, the clean-up and the manifest: a run is
visible to readers only after its manifest is committed (last step); if any stage fails, the run's
data files are removed and nothing is committed.
"""
from __future__ import annotations

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.flows.compress import compress_run
from embedlake.lake import Lake, check_name, dataset_from_input, file_bounds
from embedlake.tasks import evaluate as et
from embedlake.tasks import graph as gt
from embedlake.tasks import learned as lt
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.graph import GraphHandle, graph_for_run, row_bounds
from embedlake.tasks.incremental import Update, decide, fastrp_update, update_table
from embedlake.tasks.fastrp import publish_partial
from embedlake.tasks.orbits import orbits_table
from embedlake.tasks.run import Run
from embedlake.tasks.train import embed_table
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs
from embedlake.workers.run.faults import fault_point


def dataset_name(cfg: PipelineConfig) -> str:
    """Lake dataset name: configured, else the input's folder (…/blogcatalog/edges.tsv -> blogcatalog)."""
    if cfg.lake.dataset:
        return check_name(cfg.lake.dataset, "dataset")
    if cfg.input.edges is None:
        return "planted"
    return dataset_from_input(cfg.input.edges, ("edges", "edge", "graph", ""), "graph")


@flow(name="embed_graph", validate_parameters=True)
def embed_graph(config: PipelineConfig | None = None) -> dict:
    """Embed one graph and publish it to the lake. Returns the run summary."""
    cfg = config or PipelineConfig()
    dataset = dataset_name(cfg)
    if cfg.train.table != "full":      # its rules are checked with the config (embedlake/config.py)
        return learned_table(cfg, dataset)
    run = Run.open(cfg, dataset, cfg.method)
    if cfg.compress.codecs and run.resume and run.is_committed():
        return resume_compress(cfg, run)
    # a second writer of this run id stops here; a killed run's re-run takes over its claim (resume)
    # with graph.shards = S > 1, the walk stage's shard owners start now, while ingest runs (tasks/graph.py)
    with run, gt.early_shard_owners(cfg.graph, cfg.method) as owners:
        graph, split = graph_for_run(run, cfg.input, cfg.synthetic, cfg.eval, cfg.graph)
        graph = owners.attach(graph)
        bounds = row_bounds(graph.num_nodes, cfg.shard)
        update = decide(run, graph, cfg)
        table = graph_table(run, graph, cfg, bounds, update)
        run.kind = update.record(table.info)
        fault_point("after:train")
        files = dict(table.files)
        dim = {"fastrp": cfg.fastrp.dim, "orbits": table.info.get("dim")}.get(cfg.method, cfg.train.dim)
        files["embeddings"] = publish_table(run, graph, table.ref, bounds, row_bytes=4 * int(dim or 0) + 16,
                                            update=update)
        fault_point("after:publish")
        # an incremental run keeps the previous run's coordinates: nothing to align
        eval_cfg = cfg.eval.model_copy(update={"align_to_previous": False}) if update.incremental else cfg.eval
        # on a sharded graph, evaluation runs as per-shard tasks (tasks/evaluate.py): no whole graph or table
        evaluated = run.time("evaluate", et.evaluate, run.lake, dataset, run.method, run.run_id, graph, table.ref,
                             eval_cfg, split, bounds, run.retries)
        files.update(evaluated["files"])
        url = run.commit(run.manifest(files, evaluated["metrics"], extra={
            "dim": dim, "rows": graph.num_nodes, "graph": graph.meta, "train": table.info}))
    # each codec is its own committed run (<method>.<codec>) of this run's table
    tables = compress_run(cfg, run, run.run_id, skip_committed=True) if cfg.compress.codecs else None
    return summary(run, graph, url, evaluated["metrics"], dim, tables)


def graph_table(run: Run, graph: GraphHandle, cfg: PipelineConfig, bounds: list[tuple[int, int]], update: Update):
    """The run's table: an update of the previous run's (incremental), orbits, FastRP or walks + skip-gram."""
    if update.incremental and cfg.method == "fastrp":
        return fastrp_update(run, graph, cfg, update)
    if update.incremental:
        return run.time("update", update_table, run.lake, run.dataset, run.method, run.run_id, graph, update,
                        cfg.walk, cfg.train, run.retries)
    if cfg.method == "orbits":
        return orbits_table(run, graph, cfg.orbits, bounds)
    return embed_table(run, graph, cfg.method, cfg.walk, cfg.train, cfg.fastrp, bounds)


def publish_table(run: Run, graph: GraphHandle, table_ref, bounds: list[tuple[int, int]], row_bytes: int = 0,
                  update: Update | None = None) -> list[dict]:
    """Write the run's table: row partitions of one table (merged into files of about
    lake.TARGET_FILE_BYTES: `row_bytes` per row), or each graph shard's rows by its own task. An
    incremental run (FastRP or a walk method, one graph shard) publishes hashed partitions, writing
    only those whose rows changed (tasks/fastrp.publish_partial; its written / kept counts go to the
    run's kind): a walk update leaves the rows outside its affected set byte-identical, so their
    partitions keep their files."""
    if update is not None and update.incremental and not isinstance(table_ref, list):
        entries, stats = run.time("publish", publish_partial, run, graph, table_ref, update.previous, row_bytes,
                                  run.retries)
        run.kind = {**(run.kind or {}), "publish": stats}
        return entries
    if isinstance(table_ref, list):
        return run.time("publish", gt.publish_shards, run.lake, run.dataset, run.method, run.run_id, graph,
                        table_ref, run.retries)
    return run.time("publish", gt.publish, run.lake, run.dataset, run.method, run.run_id, graph, table_ref,
                    file_bounds(bounds, row_bytes) if row_bytes else bounds, run.retries)


def summary(run: Run, graph: GraphHandle, manifest_url: str, metrics: dict, dim: int, tables: dict | None) -> dict:
    """What embed_graph returns (the CLI prints it)."""
    return {
        "dataset": run.dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
        "embeddings": run.lake.url(Lake.table_dir("embeddings", run.dataset, run.method)),
        "manifest": manifest_url, "graph": graph.meta, "stages": run.stages, "metrics": metrics,
        "rows": graph.num_nodes, "dim": dim, "wall_s": run.wall_s(), "tables": tables, "run_kind": run.kind,
    }


def learned_table(cfg: PipelineConfig, dataset: str) -> dict:
    """train.table != full: ingest (+ holdout) -> train the K-row table on walks of the graph ->
    write its codes + codebook -> measure on rows materialised from them -> commit ONE manifest,
    method `<method>.<codec>`, laid out like the compress flow's tables (read_compressed reads it).
    No full table is trained, published or committed; a failure leaves nothing behind."""
    codec, method = cfg.train.table, cfg.method
    run = Run.open(cfg, dataset, cs.table_method(method, codec))
    run.owns(cs.codec_dir(dataset, method, run.run_id, codec))
    with run:
        graph, split = graph_for_run(run, cfg.input, cfg.synthetic, cfg.eval, cfg.graph)
        params = lt.table_params(codec, cfg.compress, graph.num_nodes, cfg.train.dim)
        if graph.num_shards > 1:        # the K-row table goes from shard to shard (tasks/learned.py)
            lt.check_sharded(codec, graph, cfg.graph.shards)
            walks = gt.run_walks(run, graph, cfg.walk, method, graph.shard_bounds)
            trained = run.time(f"train_{codec}", lt.train_table_sharded, graph, walks.ref, codec, params, cfg.walk,
                               cfg.train, run.retries)
        else:
            trained = run.time(f"train_{codec}", lt.train_table, graph, codec, params, cfg.walk, cfg.train, method,
                               run.retries)
        fault_point("after:train")
        if graph.num_shards > 1:
            built = run.time(f"write_{codec}", lt.write_table_sharded, run.lake, dataset=dataset, method=method,
                             run_id=run.run_id, graph=graph, codec=codec, params=params, state_ref=trained.ref,
                             max_retries=run.retries)
        else:
            built = run.time(f"write_{codec}", lt.write_table, run.lake, dataset=dataset, method=method,
                             run_id=run.run_id, graph=graph, codec=codec, params=params, state_ref=trained.ref,
                             bounds=row_bounds(graph.num_nodes, cfg.shard), max_retries=run.retries)
        fields = run.manifest({cs.CODE_KIND: built["files"], cs.CODEBOOK_KIND: built["codebooks"]}, stages={},
                              extra=learned_extra(run, method, codec, params, cfg.train.dim, graph, trained, built))
        metrics = run.time(f"measure_{codec}", lt.measure_table, run.lake, fields, graph,
                           lt.whole_split(split, cfg.eval, run.retries), cfg.eval, run.retries)
        fields["metrics"] = {"bytes_per_vector": fields["extra"]["bytes_per_vector"],
                             "ratio": fields["extra"]["ratio"], **metrics}
        fields["stages"] = dict(run.stages)
        url = run.commit(fields)
    extra = fields["extra"]
    out = summary(run, graph, url, fields["metrics"], cfg.train.dim, None)
    out["embeddings"] = None
    out["table"] = {"codec": codec, "source_method": method, "path": extra["path"],
                    "bytes_per_vector": extra["bytes_per_vector"], "ratio": extra["ratio"],
                    "table_rows": params.get("table_rows", params.get("buckets")),
                    "stored_bytes": built["stored_bytes"]}
    return out


def learned_extra(run: Run, method: str, codec: str, params: dict, dim: int, graph: GraphHandle, trained,
                  built: dict) -> dict:
    """The manifest's extra of a learned graph table (what the compress flow's tables carry)."""
    bpv = cz.bytes_per_vector(codec, params, dim)
    return {"kind": "tables", "codec": codec, "params": params, "dim": dim, "rows": graph.num_nodes,
            "bytes_per_vector": bpv, "ratio": round(4.0 * dim / bpv, 4), "stored_bytes": built["stored_bytes"],
            "path": run.lake.url(cs.codec_dir(run.dataset, method, run.run_id, codec)),
            "source": {"dataset": run.dataset, "method": method, "run_id": None, "full_table": False},
            "graph": graph.meta, "train": trained.info,
            "build": {"fit_s": trained.info["fit_s"], "encode_s": built["encode_s"],
                      "build_wall_s": round(run.stages[f"train_{codec}"]["wall_s"]
                                            + run.stages[f"write_{codec}"]["wall_s"], 3)}}


def resume_compress(cfg: PipelineConfig, run: Run) -> dict:
    """A run killed while building its compressed tables was committed already: its re-run builds
    the missing tables only (tables committed before the kill are kept)."""
    man = run.lake.manifest(run.dataset, run.method, run.run_id)
    stage_logger().info(f"resume: run {run.run_id} of {run.dataset}/{run.method} is committed; building its "
                        f"missing compressed tables")
    tables = compress_run(cfg, run, run.run_id, skip_committed=True)
    return {
        "dataset": run.dataset, "method": run.method, "run_id": run.run_id, "lake": run.lake.uri,
        "embeddings": run.lake.url(Lake.table_dir("embeddings", run.dataset, run.method)),
        "manifest": run.lake.url(man.table),
        "graph": man.extra.get("graph"), "stages": run.stages, "metrics": man.metrics, "rows": man.extra.get("rows"),
        "dim": man.extra.get("dim"), "wall_s": run.wall_s(), "tables": tables, "resumed": {"committed": True},
    }
