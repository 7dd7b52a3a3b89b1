"""Incremental runs (issue 18): decide whether a run updates the previous run's table, and do it.

`decide` looks at the previous committed run of the same (dataset, method): with train.incremental=
auto, settings that train the same kind of table (`compatibility`), a context table left by that run
and a graph change of at most train.incremental_max_change, the run updates; otherwise it retrains
in full and the `Update` says why. `update_table` runs the update (workers/train/incremental.py) as
one Ray task and writes the new context table. The run record, the summary and `embedlake ls` carry
`Update.record`: which kind of run it was, affected nodes of total, walks, tokens, the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import PipelineConfig, TrainConfig, WalkConfig
from embedlake.lake import Manifest
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.fastrp import fastrp_incremental, incremental_refusal
from embedlake.tasks.graph import GraphHandle, StageResult, walk_mode
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.runtime import max_node_cpus
from embedlake.workers.train import incremental as wi

WALK_METHODS = ("deepwalk", "node2vec")
UPDATABLE = WALK_METHODS + ("fastrp",)      # FastRP: tasks/fastrp.fastrp_incremental (exact, docs/incremental_fastrp.md)
# settings the previous run must share for its table to be updated rather than retrained
SAME_WALK = ("walks_per_node", "length", "p", "q")
SAME_TRAIN = ("dim", "window", "negatives", "ns_exponent", "sample", "engine", "negatives_per", "table")
SAME_INPUT = ("directed", "weighted")


@dataclass
class Update:
    """The kind of a run: "incremental" (with the previous run and the diff in the object store) or
    "full" (with the reason)."""
    kind: str
    reason: str = ""
    previous: Manifest | None = None
    diff_ref: object = None
    counts: dict = field(default_factory=dict)
    prev_ids_ref: object = None     # the previous version's node ids by dense row (its W_out's order)

    @property
    def incremental(self) -> bool:
        return self.kind == "incremental"

    def record(self, info: dict | None = None) -> dict:
        """What the run record, the summary and `ls` say about the run's kind."""
        out = {"kind": self.kind, "reason": self.reason,
               "previous_run": self.previous.run_id if self.previous is not None else None, **self.counts}
        keys = ("affected_nodes", "nodes", "walk_starts", "walks", "tokens", "radius", "lr_scale", "read_s", "plan_s",
                "walk_s", "seconds", "task_cpu_s")
        out.update({k: (info or {})[k] for k in keys if k in (info or {})})
        if "rows_recomputed" in (info or {}):          # FastRP: the rows recomputed are the affected rows
            out.update(affected_nodes=info["rows_recomputed"], nodes=info["rows"], changed_rows=info.get("changed_rows"))
        return out


def full(reason: str, previous: Manifest | None = None, counts: dict | None = None) -> Update:
    return Update("full", reason, previous, None, counts or {})


def previous_run(lake, dataset: str, method: str, run_id: str) -> Manifest | None:
    """The newest committed run of (dataset, method) other than this run id, if any."""
    runs = [m for m in lake.manifests(dataset, method) if m.run_id != run_id]
    return runs[-1] if runs else None


def compatibility(prev: Manifest, cfg: PipelineConfig) -> str | None:
    """Why the previous run's table cannot be updated under `cfg` (None: it can)."""
    pc = prev.config or {}
    for section, keys, now in (("walk", SAME_WALK, cfg.walk), ("train", SAME_TRAIN, cfg.train),
                               ("input", SAME_INPUT, cfg.input)):
        before = pc.get(section) or {}
        for k in keys:
            if before.get(k) != getattr(now, k):
                return (f"{section}.{k} changed ({before.get(k)!r} in run {prev.run_id} -> {getattr(now, k)!r}): "
                        f"the previous table is not this run's kind of table")
    if (pc.get("eval") or {}).get("link_prediction"):
        return f"run {prev.run_id} was trained with edges held out for link prediction"
    if context_file(prev) is None:
        return f"run {prev.run_id} kept no context table (W_out; one-table runs of this version keep it)"
    if not prev.files.get("embeddings"):
        return f"run {prev.run_id} has no embeddings table"
    return None


def context_file(prev: Manifest) -> str | None:
    """The previous run's context table (W_out) among its `state` files, if it kept one."""
    paths = [e["path"] for e in prev.files.get("state", []) if e["path"].endswith("/w_out.npy")]
    return paths[0] if paths else None


def engine_reason(cfg: PipelineConfig, graph: GraphHandle) -> str | None:
    """Why this run's settings rule an update out (None: they allow one)."""
    if cfg.train.incremental == "off":
        return "train.incremental=off"
    if cfg.method not in UPDATABLE:
        return f"method {cfg.method} has no incremental update in this version"
    if cfg.method == "fastrp":
        return ("incremental FastRP runs on one graph shard (graph.shards=1)" if graph.num_shards > 1 else
                "eval.link_prediction holds edges out of each run's graph" if cfg.eval.link_prediction else None)
    if graph.num_shards > 1 or cfg.train.workers > 1 or cfg.train.partitions > 0 or cfg.train.engine != "numba":
        return "incremental updates use the one-table numba engine (graph.shards=1, train.workers=1, partitions=0)"
    if cfg.eval.link_prediction:
        return "eval.link_prediction holds edges out of each run's graph"
    if cfg.walk.write_walks:
        return "walk.write_walks publishes every walk, and an update walks from the changed nodes only"
    return None


def decide(run, graph: GraphHandle, cfg: PipelineConfig) -> Update:
    """Incremental or full for this run (logged with the reason); the diff is computed only when the
    settings and the previous run allow an update (stage `diff`)."""
    import ray
    log = stage_logger()
    reason = engine_reason(cfg, graph)
    prev = previous_run(run.lake, run.dataset, run.method, run.run_id) if reason is None else None
    if reason is None and prev is None:
        reason = f"no committed run of {run.dataset}/{run.method} to update"
    reason = reason or (incremental_refusal(prev, cfg.fastrp) if cfg.method == "fastrp" else compatibility(prev, cfg))
    if reason is not None:
        log.info(f"incremental: full run ({reason})")
        return full(reason, prev)
    fn = remote(wi.diff_stage, "train", num_cpus=1, num_returns=3, max_retries=run.retries)

    def diff():
        refs = fn.remote(run.lake, run.dataset, prev.extra["graph"]["version"], graph.csr_ref, graph.node_ids_ref)
        return refs[0], ray.get(refs[1]), refs[2]
    diff_ref, counts, prev_ids_ref = run.time("diff", diff)
    changed, limit = counts["change_fraction"], cfg.train.incremental_max_change
    if changed > limit:
        reason = (f"{changed:.2%} of the edges of run {prev.run_id}'s graph changed, above "
                  f"train.incremental_max_change={limit:g}")
        log.info(f"incremental: full run ({reason})")
        return full(reason, prev, counts)
    log.info(f"incremental: updating run {prev.run_id} ({counts['edges_added']:,} edges added, "
             f"{counts['edges_removed']:,} removed, {counts['nodes_added']:,} nodes added, "
             f"{counts['nodes_removed']:,} removed: {changed:.2%} of its edges)")
    return Update("incremental", "", prev, diff_ref, counts, prev_ids_ref)


@task(name="update", cache_policy=NO_CACHE)
def update_table(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, update: Update,
                 walk_cfg: WalkConfig, train_cfg: TrainConfig, max_retries: int = 3) -> StageResult:
    """The incremental table: one Ray task (plan, walks from the changed nodes, frozen-row training),
    then the new context table written. Returns StageResult(W_in ref, info, files {state})."""
    import ray
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    prev = update.previous
    fn = remote(wi.incremental_stage, "train", num_cpus=cpus, num_returns=3, max_retries=max_retries)
    w_in, w_out, info_ref = fn.remote(lake, prev.files["embeddings"], context_file(prev),
                                      update.diff_ref, update.prev_ids_ref, graph.csr_ref, walk_cfg, train_cfg,
                                      walk_mode(method),
                                      train_cfg.incremental_radius, threads=train_cfg.threads or cpus)
    info = ray.get(info_ref)
    stage_logger().info(f"incremental: {info['affected_nodes']:,} of {info['nodes']:,} rows affected, "
                        f"{info['walks']:,} walks from {info['walk_starts']:,} nodes, {info['tokens']:,} tokens "
                        f"in {info['seconds']:.2f}s")
    ctx = write_context(lake, dataset, method, run_id, w_out, max_retries)
    return StageResult(w_in, info, {"state": ctx})


def fastrp_update(run, graph: GraphHandle, cfg: PipelineConfig, update: Update) -> StageResult:
    """The FastRP table of an incremental run (tasks/fastrp.fastrp_incremental: identical to a full
    recompute, only rows whose k-hop neighbourhood changed recomputed) from the diff in hand."""
    opts = dict(num_cpus=1, max_retries=run.retries)
    prev = update.previous
    old_csr = remote(wi.previous_csr, "fastrp", **opts).remote(run.lake, run.dataset, prev.extra["graph"]["version"])
    old_index = remote(wi.old_index_of, "fastrp", **opts).remote(update.diff_ref)
    return fastrp_incremental(run, graph, cfg.fastrp, prev, old_csr, old_index)


def write_context(lake, dataset: str, method: str, run_id: str, w_out_ref, max_retries: int = 3) -> list[dict]:
    """A run's context table (W_out) to the lake, by a Ray task fed its ref."""
    import ray
    fn = remote(wi.write_context, "publish", num_cpus=1, max_retries=max_retries)
    return [ray.get(fn.remote(lake, dataset, method, run_id, w_out_ref))]
