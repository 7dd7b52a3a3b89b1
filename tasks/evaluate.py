"""Prefect tasks of the evaluation stage (issue 7). Each fans its work out to Ray.

- ``holdout``: before embedding (when eval.link_prediction), a Ray task splits the full graph's
  edges, builds the train CSR and samples as many non-edges on the FULL graph; the returned
  GraphHandle carries the train CSR, so walks / FastRP never see a held-out edge. On a sharded
  graph (S > 1) per-shard tasks do it (workers/evaluate/links_sharded.py): each shard's train CSR,
  held-out edges and non-edge draws stay apart, and link prediction gathers only the pairs'
  endpoint rows from the shards' tables.
- ``evaluate``: after publish, node classification, link prediction, reconstruction and the
  alignment to the previous committed run run as separate Ray tasks side by side; then the task
  itself (no Ray task: the report is a few small writes and a hand-written SVG, cheaper than a
  round trip) writes the metrics table, report.md and quality.svg to the lake and publishes the
  markdown (plot embedded as a data: URI) as a Prefect artifact. Returns {"metrics", "files"}:
  the flow puts both into the run's manifest.
"""
from __future__ import annotations

import dataclasses
import re
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import EvalConfig
from embedlake.lake import Lake
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.placement import ref_placements, shard_placements
from embedlake.tasks.remote import remote
from embedlake.workers.evaluate import align_sharded
from embedlake.workers.evaluate import links_sharded as ls
from embedlake.workers.evaluate import stages as es
from embedlake.workers.evaluate.sharded import ShardedGraph, shard_rows, table_dim


@dataclasses.dataclass
class LinkSplit:
    """Held-out edges and sampled non-edges (in the object store) + their counts."""
    ref: object          # ray.ObjectRef -> {"test_src", "test_dst", "neg_src", "neg_dst", "info"}
    info: dict


@dataclasses.dataclass
class ShardedLinkSplit:
    """A sharded graph's held-out edges and non-edge draws, one object per shard each
    (links_sharded.ShardedSplit less the train CSRs, which go into the GraphHandle)."""
    tests: list          # per shard: ray.ObjectRef -> held-out edges int32 [k, 2]
    times: list          # per shard: ray.ObjectRef -> its non-edge draws' times, ascending
    pairs: list          # per shard: ray.ObjectRef -> those draws' pairs int32 [k, 2]
    count: int           # the non-edges are the `count` draws of smallest time (all at most `cut`)
    cut: float
    info: dict

    @property
    def pieces(self) -> list:
        return [*self.tests, *self.times, *self.pairs]


@task(name="holdout", cache_policy=NO_CACHE)
def holdout(graph, eval_cfg: EvalConfig, max_retries: int = 3, placements: list[dict] | None = None):
    """(GraphHandle of the train graph, LinkSplit, or ShardedLinkSplit on a sharded graph). The full
    graph stays in the lake untouched. placements: per shard, the Ray options that run its tasks
    where its CSR rows are (tasks/placement.py `shard_placements`; sharded graphs only)."""
    import ray
    log = stage_logger()
    if graph.num_shards > 1:
        return sharded_holdout(graph, eval_cfg, max_retries, placements)
    csr_ref, split_ref, info_ref = remote(es.holdout_stage, "holdout", num_cpus=1, num_returns=3,
                                           max_retries=max_retries).remote(graph.csr_ref, eval_cfg.test_edge_share,
                                                                           eval_cfg.seed)
    info = dict(ray.get(info_ref), split="greedy")          # links.split_edges; "sharded" on S > 1
    meta = dict(graph.meta, holdout=info)
    log.info(f"holdout: {info['test_edges']:,} of {info['test_edges'] + info['train_edges']:,} edges held out "
             f"for link prediction, {info['non_edges']:,} non-edges sampled; the embedding sees "
             f"{info['train_arcs']:,} arcs")
    return dataclasses.replace(graph, meta=meta, csr_ref=csr_ref), LinkSplit(split_ref, info)


def sharded_holdout(graph, eval_cfg: EvalConfig, max_retries: int = 3, placements: list[dict] | None = None):
    """``holdout`` on a sharded graph: rounds of per-shard tasks, each holding one shard's CSR rows
    and the small messages of the round (links_sharded.sharded_holdout). The same held-out edges,
    train graph and non-edges for any S; not those of ``holdout_stage`` (another algorithm)."""
    import time

    import ray
    t0 = time.perf_counter()
    call = holdout_caller(graph, max_retries, placements)
    directed = bool(graph.meta.get("stats", {}).get("directed", False))
    split = ls.sharded_holdout(call, ray.get, graph.shard_bounds, directed, eval_cfg.test_edge_share, eval_cfg.seed)
    info = dict(split.info, seconds=round(time.perf_counter() - t0, 3))
    stage_logger().info(f"holdout (per shard, {graph.num_shards} shards): {info['test_edges']:,} of "
                        f"{info['test_edges'] + info['train_edges']:,} edges held out for link prediction "
                        f"({info['candidates']:,} drawn), {info['non_edges']:,} non-edges sampled; the embedding "
                        f"sees {info['train_arcs']:,} arcs")
    shards = [dataclasses.replace(sh, arcs=arcs, csr_ref=ref)
              for sh, arcs, ref in zip(graph.shards, split.train_arcs, split.train)]
    return (dataclasses.replace(graph, meta=dict(graph.meta, holdout=info), shards=shards),
            ShardedLinkSplit(split.tests, split.times, split.pairs, split.count, split.cut, info))


def holdout_caller(graph, max_retries: int, placements: list[dict] | None = None):
    """links_sharded's ``call(shard, fn, *args, returns=k)``: fn(shard's CSR, shard's first node,
    *args) as a Ray task with k returns, placed by ``placements[shard]`` (shard None: fn(*args),
    placed by Ray); always a list of k refs."""
    fns: dict = {}

    def call(s, fn, *args, returns=1):
        where = placements[s] if placements and s is not None else {}
        key = (fn, returns, s if where else None)
        if key not in fns:
            fns[key] = remote(fn, "holdout", num_cpus=1, num_returns=returns, max_retries=max_retries, **where)
        shard_args = () if s is None else (graph.shards[s].csr_ref, graph.shards[s].lo)
        refs = fns[key].remote(*shard_args, *args)
        return refs if returns > 1 else [refs]
    return call


def _artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower())).strip("-")[:100]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(lake, dataset: str, method: str, run_id: str, graph, emb_ref, eval_cfg: EvalConfig,
             split: LinkSplit | ShardedLinkSplit | None = None, bounds: list[tuple[int, int]] | None = None,
             max_retries: int = 3) -> dict:
    """Every evaluation of one published table; returns {"metrics": {...}, "files": {kind: [...]}}."""
    log = stage_logger()
    lake = Lake(lake)
    started = time.time()
    results = _figures(lake, dataset, method, run_id, graph, emb_ref, eval_cfg, split, bounds, max_retries)
    timeline = {"figures": time.time() - started, "worker": results.pop("timeline", None)}
    files: dict[str, list[dict]] = {}
    if "stability" in results:
        files.update(results["stability"]["files"])
        results["stability"] = results["stability"]["metrics"]
    metrics = {k: v for k, v in results.items() if v}
    if split is not None:
        metrics.setdefault("link_prediction", {})["holdout"] = split.info
    _log_figures(log, metrics)
    context, compressed = _report_context(lake, dataset, method, run_id)
    # in this process: the SVG plot imports no plotting library (matplotlib cost a fresh worker
    # 0.33 CPU-s and kept 26 MB of heap, hence its max_calls=1 task before; docs/evaluation.md, fifth round)
    written = es.write_report_stage(lake, dataset, method, run_id, metrics, context, compressed)
    files.update(written["files"])
    timeline["report"] = time.time() - started
    if eval_cfg.artifacts:
        publish_artifacts(written["markdown"], written["svg"], dataset, method, run_id)
    log.info(timeline_line(timeline, started))
    return {"metrics": metrics, "files": files}


def timeline_line(timeline: dict, started: float) -> str:
    """One log line: where the evaluate task's wall time went, in seconds from its start (the
    figures task's start and end in its worker, the figures back in the driver, the report
    written, the end). Why: the stage costs a few seconds whatever its compute (docs/evaluation.md,
    issue 22), so the log says which fixed cost a run paid."""
    w = timeline.get("worker")
    numba = f", numba {w['numba']} before" if w and "numba" in w else ""
    parts = "".join(f"; {name.replace('_', ' ')} {cpu:.3f} CPU-s, {faults:,} page faults, {switches} preempted"
                    for name, (cpu, faults, switches) in (w.get("parts") or {}).items()) if w else ""
    worker = (f"figures task started in worker {w['pid']} at {w['started'] - started:.2f}, ended at "
              f"{w['ended'] - started:.2f} ({w['cpu_s']:.2f} CPU-s{numba}{parts}), " if w else "")
    return (f"evaluate: timeline (s from the task's start): {worker}figures in the driver at "
            f"{timeline['figures']:.2f}, report written at {timeline['report']:.2f}, "
            f"end at {time.time() - started:.2f}")


def _report_context(lake: Lake, dataset: str, method: str, run_id: str) -> tuple[list, list]:
    """Other runs of the dataset shown beside this one in its report (never fails the run)."""
    from embedlake.workers.evaluate import report as rp
    try:
        context, compressed = rp.collect(lake, dataset, exclude=(method, run_id))
    except Exception as e:  # noqa: BLE001 - the report's context must not fail the run
        stage_logger().warning(f"evaluate: could not read other runs of {dataset} for the report: {e}")
        context, compressed = [], []
    return [r for r in context if r["method"] != method], compressed


def _figures(lake: Lake, dataset: str, method: str, run_id: str, graph, emb_ref, eval_cfg: EvalConfig,
             split: LinkSplit | ShardedLinkSplit | None, bounds, max_retries: int) -> dict:
    """Node classification, link prediction, reconstruction and alignment as Ray tasks side by side.

    On a sharded graph (graph.num_shards > 1, ``emb_ref`` one table ref per shard) no task gets
    the whole graph or table: node classification gathers only the selected labelled rows from
    their shards, and reconstruction runs in rounds of per-shard tasks (``_sharded_reconstruction``)
    while the other tasks run; so does the alignment to a previous run (``sharded_alignment``)."""
    import ray
    log = stage_logger()
    lake = Lake(lake)
    opts = dict(num_cpus=1, max_retries=max_retries)
    sharded = graph.num_shards > 1 and isinstance(emb_ref, list)
    if graph.num_shards > 1 and not sharded:        # a whole table of a sharded graph: evaluate the gathered graph
        graph = dataclasses.replace(graph, csr_ref=graph.gathered_csr_ref(max_retries),
                                    node_ids_ref=graph.gathered_node_ids_ref(max_retries), shards=[])
    jobs: dict[str, object] = {}
    nc_refs, prepared, one_task = [], None, False
    if graph.meta.get("labelled"):             # ratio x repeat splits over the cluster's CPUs
        groups = es.classification_splits(eval_cfg, int(ray.cluster_resources().get("CPU", 1)))
        one_task = len(groups) == 1 and not sharded       # eval.mode=sampled: in figures_stage's task, below
        if not one_task:
            prepared = (_sharded_labelled_set(graph, emb_ref, eval_cfg, opts) if sharded else
                        remote(es.labelled_set_stage, "evaluate", **opts).remote(emb_ref, graph.labels_ref, eval_cfg))
            nc_refs = [remote(es.classify_split_stage, "evaluate", **opts).remote(prepared, eval_cfg, group)
                       for group in groups]
    else:
        log.info("evaluate: no labels given, node classification skipped")
    lp_refs = [] if split is None else link_refs(graph, emb_ref, split, eval_cfg, opts, sharded)
    if not sharded and (eval_cfg.reconstruction or one_task):      # one worker pays a task's fixed cost once
        jobs["figures"] = remote(es.figures_stage, "evaluate", **opts).remote(
            emb_ref, graph.labels_ref if one_task else None, graph.csr_ref if eval_cfg.reconstruction else None,
            eval_cfg)
    ref = es.reference_run(lake, dataset, method, run_id) if eval_cfg.align_to_previous else None
    if ref is not None and not sharded:
        jobs["stability"] = remote(es.align_stage, "evaluate", **opts).remote(
            lake, dataset, method, run_id, emb_ref, graph.gathered_node_ids_ref(max_retries), ref, eval_cfg,
            bounds or [(0, graph.num_nodes)])
    results = {}
    if eval_cfg.reconstruction and sharded:
        results["reconstruction"] = _sharded_reconstruction(graph, emb_ref, eval_cfg, max_retries)
    if ref is not None and sharded:             # per-shard tasks, the aligned table one part per shard
        results["stability"] = sharded_alignment(lake, dataset, method, run_id, graph, emb_ref, ref, eval_cfg,
                                                 max_retries)
    results.update(zip(jobs, ray.get(list(jobs.values()))))
    results.update(results.pop("figures", {}))
    if nc_refs:
        results["node_classification"] = es.merge_classify_results(ray.get(nc_refs), eval_cfg,
                                                                   ray.get(prepared)[1])
    if lp_refs:
        results["link_prediction"] = es.merge_link_results(ray.get(lp_refs))
    return results


def link_refs(graph, emb_ref, split, eval_cfg: EvalConfig, opts: dict, sharded: bool) -> list:
    """One link-prediction task per operator (the logistic-regression fits dominate, ~10-40 CPU-s
    each at 512-d on BlogCatalog, so they are spread out). A sharded split with a sharded table:
    each gets the shards' pair pieces and only the pairs' endpoint rows (``sharded_link_refs``);
    with a whole table, one task first joins the pieces into ``holdout_stage``'s split dict."""
    if isinstance(split, ShardedLinkSplit) and sharded:
        return sharded_link_refs(graph, emb_ref, split, eval_cfg, opts)
    ref = split.ref if isinstance(split, LinkSplit) else remote(ls.split_dict, "evaluate", **opts).remote(
        split.info["test_share"], split.count, len(split.tests), *split.pieces)
    return [remote(es.link_stage, "evaluate", **opts).remote(emb_ref, ref, eval_cfg, [op])
            for op in eval_cfg.lp_operators]


def sharded_link_refs(graph, table_refs: list, split: ShardedLinkSplit, eval_cfg: EvalConfig, opts: dict) -> list:
    """Link prediction on a sharded table: each shard's pairs name the endpoints every shard owns
    (``pair_endpoints``, S returns), each shard's table gives those rows (``shard_pair_rows``), and
    the operators' tasks get the pieces, no object larger than one shard's."""
    S = graph.num_shards
    ends_fn = remote(ls.pair_endpoints, "evaluate", num_returns=S, **opts)
    ends = [ends_fn.remote(graph.shard_bounds, split.cut, t, tm, p)
            for t, tm, p in zip(split.tests, split.times, split.pairs)]
    ends = [e if S > 1 else [e] for e in ends]
    call = shard_caller(graph, table_refs, opts["max_retries"])
    rows = [call(t, ls.shard_pair_rows, *[e[t] for e in ends]) for t in range(S)]
    fn = remote(ls.sharded_link_stage, "evaluate", **opts)
    return [fn.remote(eval_cfg, [op], split.info["test_share"], split.count, split.cut, S, *split.pieces, *rows)
            for op in eval_cfg.lp_operators]


def shard_caller(graph, table_refs: list, max_retries: int):
    """``call(shard, fn, *args)``: fn(shard's CSR, shard's table rows, shard's first node, *args)
    as a Ray task (workers/evaluate/sharded.py's protocol) on the node that holds the shard's CSR
    rows (`shard_placements`); each task resolves one shard only."""
    fns: dict = {}
    places = shard_placements(graph.shards)

    def call(s: int, fn, *args):
        if (fn, s) not in fns:
            fns[fn, s] = remote(fn, "evaluate", num_cpus=1, max_retries=max_retries, **places[s])
        shard = graph.shards[s]
        return fns[fn, s].remote(shard.csr_ref, table_refs[s], shard.lo, *args)
    return call


def _sharded_reconstruction(graph, table_refs: list, eval_cfg: EvalConfig, max_retries: int) -> dict:
    import ray
    stats = graph.meta.get("stats", {})
    call = shard_caller(graph, table_refs, max_retries)
    dim = int(ray.get(call(0, table_dim)))
    return es.sharded_reconstruction(call, ray.get, graph.shard_bounds, int(graph.meta["arcs"]),
                                     bool(stats.get("directed", False)), dim, eval_cfg)


def sharded_alignment(lake: Lake, dataset: str, method: str, run_id: str, graph, table_refs: list, reference: dict,
                      eval_cfg: EvalConfig, max_retries: int) -> dict:
    """The alignment to ``reference`` on a sharded table (workers/evaluate/align_sharded.py): each
    shard's tasks get its table rows and node ids (``fn(X_s, ids_s, *args)``) on the node that
    holds those rows (`ref_placements`), the rotation task only the shards' d x d sums;
    {"metrics", "files"} as ``align_stage`` returns."""
    import ray
    fns: dict = {}
    places = ref_placements(table_refs)

    def call(s, fn, *args):
        if (fn, s) not in fns:
            fns[fn, s] = remote(fn, "evaluate", num_cpus=1, max_retries=max_retries, **({} if s is None else places[s]))
        shard_args = () if s is None else (table_refs[s], graph.shards[s].ids_ref)
        return fns[fn, s].remote(*shard_args, *args)
    return align_sharded.sharded_stability(call, ray.get, graph.num_shards, lake, dataset, method, run_id,
                                           reference, eval_cfg)


def _sharded_labelled_set(graph, table_refs: list, eval_cfg: EvalConfig, opts: dict):
    """A ref to (labelled set, CPU seconds) built from the selected labelled rows only, each
    shard's by a task holding that shard's table rows."""
    import ray
    selection = ray.get(remote(es.label_selection_stage, "evaluate", **opts).remote(
        graph.labels_ref, eval_cfg, graph.num_nodes))
    shards = ShardedGraph(graph.shard_bounds, int(graph.meta["arcs"]), True)
    call = shard_caller(graph, table_refs, opts["max_retries"])
    parts = [(pos, call(s, shard_rows, selection.nodes[pos])) for s, pos in enumerate(shards.by_owner(selection.nodes))
             if pos.size]
    return remote(es.labelled_rows_stage, "evaluate", **opts).remote(selection, eval_cfg, [p for p, _ in parts],
                                                                   *[r for _, r in parts])


def publish_artifacts(markdown: str, svg: str, dataset: str, method: str, run_id: str) -> None:
    """Markdown artifact with the tables and the plot embedded as a data: URI.

    Prefect 3.9's image artifact only stores a URL that the browser loads; a local lake path or
    a private s3:// object is not reachable from the UI, so the SVG travels inside the markdown
    (a few kB). The same SVG is in the lake next to the metrics table."""
    from prefect.artifacts import create_markdown_artifact
    from embedlake.workers.evaluate.report import with_svg
    try:
        create_markdown_artifact(markdown=with_svg(markdown, svg), key=_artifact_key("eval", dataset, method),
                                 description=f"Evaluation of {dataset}/{method} run {run_id}")
    except Exception as e:  # noqa: BLE001 - the UI is a convenience, never a reason to fail a run
        stage_logger().warning(f"evaluate: Prefect artifact not created: {e}")


def _log_figures(log, metrics: dict) -> None:
    nc = metrics.get("node_classification")
    if nc:
        sampled = (f" (a sample of {nc['num_nodes']:,} of {nc['labelled_nodes']:,} labelled nodes)"
                   if nc.get("sampled") else "")
        ci = nc.get("micro_f1_ci95") or {}
        log.info("evaluate: Micro-F1 " + ", ".join(f"{k}: {v:.3f}" + (f" ± {ci[k]:.3f}" if k in ci else "")
                                                   for k, v in nc["micro_f1"].items())
                 + " | Macro-F1 " + ", ".join(f"{k}: {v:.3f}" for k, v in nc["macro_f1"].items()) + sampled
                 + (f" (eval.mode=sampled: {nc['repeats']} split(s), 95 % bootstrap interval)" if ci else ""))
    lp = metrics.get("link_prediction")
    if lp and lp.get("roc_auc"):
        log.info("evaluate: link prediction ROC-AUC " + ", ".join(f"{k}: {v:.3f}" for k, v in lp["roc_auc"].items()))
    rc = metrics.get("reconstruction")
    if rc:
        ci = rc.get("ci95") or {}
        log.info("evaluate: reconstruction mAP " + ", ".join(f"{h}-hop {v:.3f}" + (f" ± {ci[h]:.3f}" if ci.get(h) else "")
                                                             for h, v in rc["map"].items())
                 + f" ({rc.get('queries')} of {rc.get('eligible')} query nodes, eval.mode={rc.get('mode', 'sampled')})")
    st = metrics.get("stability")
    if st:
        if st.get("skipped"):
            log.info(f"evaluate: not aligned to run {st.get('reference_run')}: {st['skipped']}")
        else:
            log.info(f"evaluate: aligned to run {st['reference_run']}: distance {st['distance_before']:.3f} -> "
                     f"{st['distance_after']:.3f}, top-10 overlap {st['neighbourhood_overlap@10']:.3f}")
