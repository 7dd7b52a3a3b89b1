"""The `embed_graph` flow: ingest -> shard -> walk -> train (or FastRP) -> publish -> evaluate -> commit.

With train.table = hash | compose | qr | unified: ingest -> train a learned K-row table on walks ->
write its codes + codebook -> measure -> commit one `<method>.<codec>` table (no full table).

The flow only wires tasks; each task fans out to Ray and passes references. A run is visible to
readers only after its manifest is committed (last step); if any stage fails, the run's data files
are removed and nothing is committed.
"""
from __future__ import annotations

import time

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.flows.compress import abandon_table_run
from embedlake.flows.run_start import start_run
from embedlake.lake import Lake, check_name, dataset_from_input
from embedlake.tasks import evaluate as et
from embedlake.tasks import graph as gt
from embedlake.tasks import learned as lt
from embedlake.tasks.fastrp import fastrp as fastrp_task
from embedlake.tasks.claims import claim_run
from embedlake.tasks.resume import RunCheckpoints, finished_table, graph_key, save_table, train_spec
from embedlake.tasks.stream import walk_and_train
from embedlake.workers.graph.walks import should_stream
from embedlake.tasks.runtime import resolve_partitions
from embedlake.tasks.train import drop_checkpoints
from embedlake.workers.run.faults import fault_point
from embedlake.workers.graph.stages import partition_bounds


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
    t_start = time.perf_counter()
    dataset = dataset_name(cfg)
    method = cfg.method
    run_id, lake, sw = start_run(cfg)
    retries = cfg.ray.max_retries
    if cfg.train.table != "full":
        return _learned_table(cfg, lake, dataset, method, run_id, sw, t_start)
    if cfg.compress.codecs and cfg.train.resume and lake.is_committed(dataset, method, run_id):
        return _resume_compress(cfg, lake, dataset, method, run_id, sw, t_start)
    # a second writer of this run id stops here; a killed run's re-run takes over its claim (resume)
    claim = claim_run(lake, dataset, method, run_id, cfg.train.resume, gt.stage_logger())
    ck = RunCheckpoints.of(lake, dataset, method, run_id, cfg.train.model_dump())
    try:
        graph = sw.run("ingest", gt.ingest, lake, dataset, cfg.input.model_dump(), cfg.synthetic.model_dump(),
                       retries)
        split = None
        if cfg.eval.link_prediction:      # held-out edges leave the graph before walks / FastRP see it
            graph, split = sw.run("holdout", et.holdout, graph, cfg.eval.model_dump(), retries)
        bounds = partition_bounds(graph.num_nodes, resolve_partitions(cfg.shard.partitions))
        info: dict = {}
        files: dict[str, list[dict]] = {}
        walk_cfg, train_cfg = cfg.walk.model_dump(), cfg.train.model_dump()
        one_table = train_cfg["workers"] == 1 and train_cfg["partitions"] == 0
        if method in ("deepwalk", "node2vec") and not cfg.walk.write_walks and cfg.train.workers == 1 \
                and should_stream(graph.num_nodes, walk_cfg):
            trained = sw.run("walk_train", walk_and_train, graph, walk_cfg, train_cfg, method, bounds, retries, ck)
            emb_ref, info = trained.ref, trained.info
        elif method in ("deepwalk", "node2vec"):
            # a killed run that had finished training needs neither walks nor training
            trained = finished_table(ck, "train", train_spec(graph, walk_cfg, train_cfg, method, "one-table"),
                                     gt.stage_logger()) if one_table and not cfg.walk.write_walks else None
            if trained is None:
                walked = sw.run("walk", gt.walk, graph, walk_cfg, method, bounds, retries, ck)
                if cfg.walk.write_walks:
                    files["walks"] = sw.run("write_walks", gt.write_walks, lake, dataset, method, run_id, graph,
                                            walked.ref, cfg.walk.walks_per_node, bounds, retries)
                trained = sw.run("train", gt.train, graph, walked.ref, walk_cfg, train_cfg, retries, ck, method)
                trained.info.setdefault("resumed", {}).update(walked.info)
            emb_ref, info = trained.ref, trained.info
        else:         # FastRP: the finished table is checkpointed (a kill after it does not recompute)
            spec = {"graph": graph_key(graph), "fastrp": cfg.fastrp.model_dump()}
            done = finished_table(ck, "table", spec, gt.stage_logger())
            if done is not None:
                emb_ref, info = done.ref, done.info
            else:
                emb_ref, info = sw.run("fastrp", fastrp_task, graph, cfg.fastrp.model_dump(), bounds, retries)
                save_table(ck, "table", spec, emb_ref, info)
        fault_point("after:train")
        files["embeddings"] = sw.run("publish", gt.publish, lake, dataset, method, run_id, graph, emb_ref, bounds,
                                     retries)
        fault_point("after:publish")
        evaluated = sw.run("evaluate", et.evaluate, lake, dataset, method, run_id, graph, emb_ref,
                           cfg.eval.model_dump(), split, bounds, retries)
        metrics = evaluated["metrics"]
        files.update(evaluated["files"])
        dim = cfg.train.dim if method != "fastrp" else cfg.fastrp.dim
        manifest = dict(dataset=dataset, method=method, run_id=run_id, files=files,
                        config=cfg.model_dump(mode="json"), metrics=metrics, stages=sw.stages,
                        extra={"dim": dim, "rows": graph.num_nodes, "graph": graph.meta, "train": info})
        manifest_url = sw.run("commit", gt.commit, lake, manifest)
        drop_checkpoints(lake, dataset, method, run_id)
    except BaseException:
        _remove_run_files(lake, dataset, method, run_id)
        lake.release_claim(dataset, method, run_id, claim)
        raise      # checkpoints stay: a re-run with this run id resumes from them
    tables = None
    if cfg.compress.codecs:     # each codec is its own committed run (<method>.<codec>) of this run's table
        from embedlake.flows.compress import compress_run
        tables = compress_run(cfg, dataset, method, run_id, run_id=run_id, sw=sw, skip_committed=True)
    return {
        "dataset": dataset, "method": method, "run_id": run_id, "lake": lake.uri,
        "embeddings": lake.url(Lake.run_dir("embeddings", dataset, method, run_id)),
        "manifest": manifest_url, "graph": graph.meta, "stages": sw.stages, "metrics": metrics,
        "rows": graph.num_nodes, "dim": dim, "wall_s": round(time.perf_counter() - t_start, 3),
        "tables": tables,
    }


def _learned_table(cfg: PipelineConfig, lake: Lake, dataset: str, method: str, run_id: str, sw, t_start) -> dict:
    """train.table != full: ingest (+ holdout) -> train the K-row table on walks of the graph ->
    write its codes + codebook -> measure on rows materialised from them -> commit ONE manifest,
    method `<method>.<codec>`, laid out like the compress flow's tables (read_compressed reads it).
    No full table is trained, published or committed; a failure leaves nothing behind."""
    from embedlake.workers.compress import codecs as cz
    from embedlake.workers.compress import store as cs
    codec, retries = cfg.train.table, cfg.ray.max_retries
    tm = cs.table_method(method, codec)
    log = gt.stage_logger()
    claim = claim_run(lake, dataset, tm, run_id, cfg.train.resume, log)
    try:
        graph = sw.run("ingest", gt.ingest, lake, dataset, cfg.input.model_dump(), cfg.synthetic.model_dump(),
                       retries)
        split = None
        if cfg.eval.link_prediction:      # held-out edges leave the graph before the walks see it
            graph, split = sw.run("holdout", et.holdout, graph, cfg.eval.model_dump(), retries)
        n, dim = graph.num_nodes, cfg.train.dim
        params = lt.table_params(codec, cfg.compress, n, dim)
        bounds = partition_bounds(n, resolve_partitions(cfg.shard.partitions))
        trained = sw.run(f"train_{codec}", lt.train_table, graph, codec, params, cfg.walk,
                         cfg.train, method, retries)
        fault_point("after:train")
        built = sw.run(f"write_{codec}", lt.write_table, lake, dataset=dataset, method=method, run_id=run_id,
                       graph=graph, codec=codec, params=params, state_ref=trained.ref, bounds=bounds,
                       max_retries=retries)
        bpv = cz.bytes_per_vector(codec, params, dim)
        fields = dict(dataset=dataset, method=tm, run_id=run_id,
                      files={cs.CODE_KIND: built["files"], cs.CODEBOOK_KIND: built["codebooks"]},
                      config=cfg.model_dump(mode="json"), metrics={}, stages={},
                      extra={"kind": "tables", "codec": codec, "params": params, "dim": dim, "rows": n,
                             "bytes_per_vector": bpv, "ratio": round(4.0 * dim / bpv, 4),
                             "stored_bytes": built["stored_bytes"],
                             "path": lake.url(cs.codec_dir(dataset, method, run_id, codec)),
                             "source": {"dataset": dataset, "method": method, "run_id": None, "full_table": False},
                             "graph": graph.meta, "train": trained.info,
                             "build": {"fit_s": trained.info["fit_s"], "encode_s": built["encode_s"],
                                       "build_wall_s": round(sw.stages[f"train_{codec}"]["wall_s"]
                                                             + sw.stages[f"write_{codec}"]["wall_s"], 3)}})
        metrics = sw.run(f"measure_{codec}", lt.measure_table, lake, fields, graph, split, cfg.eval,
                         retries)
        fields["metrics"] = {"bytes_per_vector": bpv, "ratio": fields["extra"]["ratio"], **metrics}
        fields["stages"] = dict(sw.stages)
        manifest_url = sw.run("commit", gt.commit, lake, fields)
    except BaseException:
        abandon_table_run(lake, dataset, method, tm, run_id, codec, claim)
        raise
    path = fields["extra"]["path"]
    return {
        "dataset": dataset, "method": tm, "run_id": run_id, "lake": lake.uri, "embeddings": None,
        "manifest": manifest_url, "graph": graph.meta, "stages": sw.stages, "metrics": fields["metrics"],
        "rows": n, "dim": dim, "wall_s": round(time.perf_counter() - t_start, 3), "tables": None,
        "table": {"codec": codec, "source_method": method, "path": path, "bytes_per_vector": bpv,
                  "ratio": fields["extra"]["ratio"], "table_rows": params.get("table_rows", params.get("buckets")),
                  "stored_bytes": built["stored_bytes"]},
    }


def _resume_compress(cfg: PipelineConfig, lake: Lake, dataset: str, method: str, run_id: str, sw, t_start) -> dict:
    """A run killed while building its compressed tables was committed already: its re-run builds
    the missing tables only (tables committed before the kill are kept)."""
    from embedlake.flows.compress import compress_run
    man = lake.manifest(dataset, method, run_id)
    gt.stage_logger().info(f"resume: run {run_id} of {dataset}/{method} is committed; building its missing "
                           f"compressed tables")
    tables = compress_run(cfg, dataset, method, run_id, run_id=run_id, sw=sw, skip_committed=True)
    return {
        "dataset": dataset, "method": method, "run_id": run_id, "lake": lake.uri,
        "embeddings": lake.url(Lake.run_dir("embeddings", dataset, method, run_id)),
        "manifest": lake.url(Lake.manifest_path(dataset, method, run_id)), "graph": man.extra.get("graph"),
        "stages": sw.stages, "metrics": man.metrics, "rows": man.extra.get("rows"), "dim": man.extra.get("dim"),
        "wall_s": round(time.perf_counter() - t_start, 3), "tables": tables, "resumed": {"committed": True},
    }


def _remove_run_files(lake: Lake, dataset: str, method: str, run_id: str) -> None:
    """A failed run leaves nothing behind (unless it was already committed)."""
    try:
        if not lake.is_committed(dataset, method, run_id):
            for kind in ("embeddings", "walks"):
                lake.delete(Lake.run_dir(kind, dataset, method, run_id), recursive=True)
            for rel in et.run_dirs(dataset, method, run_id):
                lake.delete(rel, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass
