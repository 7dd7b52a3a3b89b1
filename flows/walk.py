"""The `walk` flow: ingest -> shard -> walks -> Parquet in the lake, for users who train elsewhere.

Committed as method `<deepwalk|node2vec>-walks`; rows are (start, k, walk) with original node ids.
"""
from __future__ import annotations

import time

from prefect import flow

from embedlake.config import PipelineConfig
from embedlake.flows.run_start import start_run
from embedlake.flows.embed_graph import _remove_run_files, dataset_name
from embedlake.lake import Lake
from embedlake.tasks import graph as gt
from embedlake.tasks.claims import claim_run
from embedlake.tasks.resume import RunCheckpoints
from embedlake.tasks.runtime import resolve_partitions
from embedlake.tasks.train import drop_checkpoints
from embedlake.workers.graph.stages import partition_bounds


@flow(name="walk", validate_parameters=True)
def walk_graph(config: PipelineConfig | None = None) -> dict:
    cfg = config or PipelineConfig()
    if cfg.method == "fastrp":
        raise ValueError("the walk flow needs method deepwalk or node2vec")
    t0 = time.perf_counter()
    dataset = dataset_name(cfg)
    method = f"{cfg.method}-walks"
    run_id, lake, sw = start_run(cfg)
    r = cfg.ray.max_retries
    # a second writer of this run id stops here; a killed run's re-run takes over its claim and
    # reuses the walk partitions it had finished (train.resume / train.checkpoint)
    claim = claim_run(lake, dataset, method, run_id, cfg.train.resume, gt.stage_logger())
    ck = RunCheckpoints.of(lake, dataset, method, run_id, cfg.train.model_dump())
    try:
        graph = sw.run("ingest", gt.ingest, lake, dataset, cfg.input.model_dump(), cfg.synthetic.model_dump(), r)
        bounds = partition_bounds(graph.num_nodes, resolve_partitions(cfg.shard.partitions))
        walked = sw.run("walk", gt.walk, graph, cfg.walk.model_dump(), cfg.method, bounds, r, ck)
        files = sw.run("write_walks", gt.write_walks, lake, dataset, method, run_id, graph, walked.ref,
                       cfg.walk.walks_per_node, bounds, r)
        steps = sum(f["rows"] for f in files)
        url = sw.run("commit", gt.commit, lake, dict(
            dataset=dataset, method=method, run_id=run_id, files={"walks": files}, config=cfg.model_dump(mode="json"),
            stages=sw.stages, extra={"graph": graph.meta, "walks": steps, "resumed": walked.info}))
        drop_checkpoints(lake, dataset, method, run_id)
    except BaseException:
        _remove_run_files(lake, dataset, method, run_id)
        lake.release_claim(dataset, method, run_id, claim)
        raise
    return {"dataset": dataset, "method": method, "run_id": run_id, "lake": lake.uri, "manifest": url,
            "walks_uri": lake.url(Lake.run_dir("walks", dataset, method, run_id)), "stages": sw.stages,
            "walks": steps, "wall_s": round(time.perf_counter() - t0, 3)}
