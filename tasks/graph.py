"""Prefect tasks of the graph pipeline. Each fans its work out to Ray and returns references
(ObjectRefs, lake URIs, small dicts), never big arrays, so Prefect never hashes or copies them."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import EvalConfig, GraphConfig, InputConfig, ShardConfig, SyntheticConfig, WalkConfig
from embedlake.tasks.evaluate import LinkSplit, ShardedLinkSplit, holdout
from embedlake.tasks.fanout import gather, stage_logger
from embedlake.tasks.ingest import IngestedShards, parallel_ingest
from embedlake.tasks.peer_mail import close_mail, open_inboxes
from embedlake.tasks.placement import shard_placements
from embedlake.tasks.remote import remote
from embedlake.tasks.runtime import resolve_partitions
from embedlake.workers.graph import stages as graph_stages
from embedlake.workers.graph.ingest_parallel import RANGE_BYTES
from embedlake.workers.graph.shards import resolve_shards, shard_bounds
from embedlake.workers.graph.stages import partition_bounds
from embedlake.workers.run.faults import fault_point


@dataclass
class ShardRef:
    """One graph shard (workers/graph/shards.py) in the object store: rows [lo, hi)."""
    lo: int
    hi: int
    arcs: int
    csr_ref: object          # ray.ObjectRef -> CSRShard.as_tuple(): (local indptr, global indices, weights, directed)
    ids_ref: object          # ray.ObjectRef -> node ids of rows [lo, hi)


@dataclass
class GraphHandle:
    """What later stages need about the ingested graph: small metadata + ObjectRefs.

    With one shard, csr_ref / node_ids_ref are the whole graph and `shards` is that one shard. With
    graph.shards > 1 they are None: each shard is its own object and no stage of the sharded
    engines reads the whole graph (evaluation still gathers it: `gathered_csr_ref`)."""
    meta: dict
    csr_ref: object          # ray.ObjectRef -> (indptr, indices, weights, directed), or None (S > 1)
    node_ids_ref: object     # ray.ObjectRef -> node_ids, or None (S > 1)
    labels_ref: object       # ray.ObjectRef -> labels or None
    shards: list[ShardRef] = field(default_factory=list)
    owners: ShardOwners | None = None   # shard owners the flow started while ingest ran (walk_sharded uses them)

    @property
    def num_shards(self) -> int:
        return max(1, len(self.shards))

    @property
    def shard_bounds(self) -> list[tuple[int, int]]:
        return [(s.lo, s.hi) for s in self.shards] or [(0, self.num_nodes)]

    @property
    def num_nodes(self) -> int:
        return int(self.meta["nodes"])

    @property
    def key(self) -> dict:
        """The walked graph in a stage's fingerprint: its content-addressed version plus the
        link-prediction hold-out, if any."""
        return {"version": self.meta["version"], "holdout": self.meta.get("holdout")}

    def gathered_csr_ref(self, max_retries: int = 3):
        """The whole CSR tuple: csr_ref with one shard, else one Ray task that gathers every shard
        (for evaluation only, which still needs the whole graph; no sharded engine calls this)."""
        if self.csr_ref is not None:
            return self.csr_ref
        return remote(graph_stages.gather_graph_stage, "evaluate", num_cpus=1, max_retries=max_retries).remote(
            self.shard_bounds, *[s.csr_ref for s in self.shards])

    def gathered_node_ids_ref(self, max_retries: int = 3):
        """The whole node-id map (node_ids_ref, or the shards' pieces gathered by one task; evaluation only)."""
        if self.node_ids_ref is not None:
            return self.node_ids_ref
        return remote(graph_stages.concat_rows_stage, "evaluate", num_cpus=1, max_retries=max_retries).remote(
            *[s.ids_ref for s in self.shards])


@dataclass
class StageResult:
    ref: object
    info: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)     # run files a stage wrote on the way (walks), by kind


def graph_for_run(run, input_cfg: InputConfig, synthetic: SyntheticConfig, eval_cfg: EvalConfig,
                  graph_cfg: GraphConfig) -> tuple[GraphHandle, LinkSplit | ShardedLinkSplit | None]:
    """The graph a run (tasks/run.Run) embeds: ingest (stage `ingest`), then with
    eval.link_prediction hold the test edges out (stage `holdout`; per shard on a sharded graph)
    before walks / FastRP see the graph. Returns (graph to embed, split or None)."""
    graph = run.time("ingest", ingest, run.lake, run.dataset, input_cfg, synthetic, graph_cfg,
                     max_retries=run.retries)
    if not eval_cfg.link_prediction:
        return graph, None
    placements = shard_placements(graph.shards) if graph.num_shards > 1 else None     # tasks where the rows are
    return run.time("holdout", holdout, graph, eval_cfg, max_retries=run.retries, placements=placements)


def row_bounds(rows: int, shard: ShardConfig) -> list[tuple[int, int]]:
    """Row / start-node partitions of a stage (shard.partitions; 0 = one per CPU of the cluster)."""
    return partition_bounds(rows, resolve_partitions(shard.partitions))


@task(name="ingest", cache_policy=NO_CACHE, retries=0)
def ingest(lake, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig, graph_cfg: GraphConfig,
           max_retries: int = 3) -> GraphHandle:
    """Edge list -> S graph shards in the object store and the lake (lake files skipped when the
    same input was ingested before)."""
    log = stage_logger()
    graph = ingest_sharded(lake, dataset, input_cfg, synthetic, graph_cfg, max_retries)
    meta = graph.meta
    log.info(f"ingest: {meta['nodes']:,} nodes, {meta['arcs']:,} arcs, {graph.num_shards} shard(s), "
             f"graph {meta['version']}{' (reused: input unchanged)' if meta['reused'] else ''}")
    return graph


def ingest_sharded(lake, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig, graph_cfg: GraphConfig,
                   max_retries: int = 3, range_bytes: int = RANGE_BYTES) -> GraphHandle:
    """The ingest stage without Prefect: the planted graph (input.edges unset), else the parallel
    ingest (tasks/ingest.py)."""
    if input_cfg.edges is None:
        return synthetic_graph(lake, dataset, input_cfg, synthetic, graph_cfg, max_retries)
    return handle_of(parallel_ingest(lake, dataset, input_cfg, graph_cfg, max_retries, range_bytes))


def handle_of(got: IngestedShards) -> GraphHandle:
    """The GraphHandle of ingested shards (with one shard, csr_ref / node_ids_ref are that shard's)."""
    shards = [ShardRef(lo, hi, arcs, c, i) for (lo, hi), arcs, c, i in zip(got.bounds, got.arcs, got.csr_refs,
                                                                         got.ids_refs)]
    one = len(shards) == 1
    return GraphHandle(got.meta, shards[0].csr_ref if one else None, shards[0].ids_ref if one else None,
                       got.labels_ref, shards)


def synthetic_graph(lake, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig, graph_cfg: GraphConfig,
                    max_retries: int) -> GraphHandle:
    """The planted-community graph, generated and split into shards by one task (it is small)."""
    import ray
    arcs = 2 * synthetic.nodes * max(1, int(round(synthetic.avg_degree / 2)))     # upper bound
    S = resolve_shards(graph_cfg.shards, synthetic.nodes, arcs, False, graph_cfg.shard_budget_mb)
    refs = remote(graph_stages.synthetic_stage, "ingest", num_returns=2 + 2 * S, num_cpus=1,
                  max_retries=max_retries).remote(lake, dataset, input_cfg, synthetic, S)
    meta = ray.get(refs[0])
    arcs = meta.pop("shard_arcs")
    bounds = shard_bounds(meta["nodes"], S)
    shards = [ShardRef(lo, hi, arcs[i], refs[2 + 2 * i], refs[3 + 2 * i]) for i, (lo, hi) in enumerate(bounds)]
    one = S == 1
    return GraphHandle(meta, shards[0].csr_ref if one else None, shards[0].ids_ref if one else None, refs[1], shards)


def walk_mode(method: str) -> str:
    return "node2vec" if method.startswith("node2vec") else "deepwalk"


def walk_spec(graph: GraphHandle, walk_cfg: WalkConfig, method: str, bounds: list | None) -> dict:
    """What determines the walks (partition files hold one start-node range each: `bounds`)."""
    spec = {"graph": graph.key, "mode": walk_mode(method),
            **{k: getattr(walk_cfg, k) for k in ("walks_per_node", "length", "seed", "p", "q")}}
    if bounds is not None:
        spec["bounds"] = [list(b) for b in bounds]
    return spec


def run_walks(run, graph: GraphHandle, walk_cfg: WalkConfig, method: str,
              bounds: list[tuple[int, int]]) -> StageResult:
    """The walks of a run (tasks/run.Run; stage `walk`), checkpointed per partition: a killed run's re-run walks only
    the partitions its first attempt had not finished. On a sharded graph, one walks ref per graph
    shard from the sharded engine (`walk_sharded`); `walk_bounds` says which rows each ref holds."""
    if graph.num_shards > 1:
        stage = run.stage("walk", walk_spec(graph, walk_cfg, method, graph.shard_bounds))
        try:
            return run.time("walk", walk_sharded, graph, walk_cfg, method, stage=stage, max_retries=run.retries)
        finally:        # training follows: the owners' processes (and their CSR rows) are not needed any more
            if graph.owners is not None:
                graph.owners.close()
    stage = run.stage("walk", walk_spec(graph, walk_cfg, method, bounds))
    return run.time("walk", walk, graph, walk_cfg, method, bounds, stage=stage, max_retries=run.retries)


def walk_bounds(graph: GraphHandle, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The start-node rows of each walks ref `run_walks` returns: the graph's shards when it has more
    than one, else the row partitions `bounds`."""
    return graph.shard_bounds if graph.num_shards > 1 else bounds


@task(name="walk", cache_policy=NO_CACHE)
def walk(graph: GraphHandle, walk_cfg: WalkConfig, method: str, bounds: list[tuple[int, int]], stage=None,
         max_retries: int = 3) -> StageResult:
    """One Ray task per partition of start nodes; the CSR is shared once through the object store.
    Returns StageResult(list of walk refs, resume info).

    stage (tasks/run.Stage of `walk`): each partition's walks are also checkpointed when done, and a
    re-run of a killed run loads the finished partitions and walks only the missing ones."""
    log = stage_logger()
    handle = stage.handle() if stage is not None else None
    done = stage.finished_parts(len(bounds)) if handle is not None else set()
    if handle is not None and stage.state is not None:
        log.info(f"resume: reusing {len(done)}/{len(bounds)} walk partitions of run {stage.run.run_id}"
                 f"{'' if len(done) == len(bounds) else f', walking {len(bounds) - len(done)}'}")
    elif handle is not None and stage.discarded:
        log.info("resume: the run's walk checkpoint is of other input or settings (or train.resume is off): "
                 "walking again")
    alias_ref = None
    if graph.meta.get("stats", {}).get("weighted") and len(done) < len(bounds):
        alias_ref = remote(graph_stages.alias_stage, "walk", num_cpus=1, max_retries=max_retries).remote(graph.csr_ref)
    fn = remote(graph_stages.walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    load = remote(graph_stages.load_walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    pairs = []
    for i, (lo, hi) in enumerate(bounds):
        if i in done:
            pairs.append(load.remote(handle, i, rows=(hi - lo) * walk_cfg.walks_per_node, length=walk_cfg.length))
        else:
            pairs.append(fn.remote(graph.csr_ref, lo, hi, walk_cfg, walk_mode(method), alias=alias_ref,
                                   checkpoint=handle, part=i))
    # only the step counts come to the driver; the walks stay in the object store
    gather([p[1] for p in pairs], "walks (partitions)", unit_of=float, unit="steps")
    fault_point("after:walk")
    return StageResult([p[0] for p in pairs], {"walk_partitions": len(bounds), "walk_partitions_reused": len(done)})


@task(name="publish", cache_policy=NO_CACHE)
def publish(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, emb_ref,
            bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Write the embedding partitions (data files only; the manifest is committed last)."""
    fn = remote(graph_stages.write_embedding_part, "publish", num_cpus=1, max_retries=max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, graph.node_ids_ref, emb_ref)
            for i, (lo, hi) in enumerate(bounds)]
    return gather(refs, "publish (partitions)")


@task(name="write_walks", cache_policy=NO_CACHE)
def write_walks(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, walk_refs: list,
                walks_per_node: int, bounds: list[tuple[int, int]], max_retries: int = 3) -> list[dict]:
    """Walks as Parquet (start, k, walk as a list of original ids), one file per partition (per graph
    shard on a sharded graph: `walk_bounds`). A walk visits nodes of every shard, so each task maps
    ids through the whole node-id map (8 bytes per node; gathered once on a sharded graph)."""
    fn = remote(graph_stages.write_walks_part, "publish", num_cpus=1, max_retries=max_retries)
    ids_ref = graph.gathered_node_ids_ref(max_retries)
    refs = [fn.remote(lake, dataset, method, run_id, i, lo, hi, walks_per_node, ids_ref, walk_refs[i])
            for i, (lo, hi) in enumerate(bounds)]
    return gather(refs, "write walks (partitions)")


# ---------------------------------------------------------------------------------------------
# sharded walks (issue 17): one actor per graph shard, bulk-synchronous rounds
# (imports are local to this block so the parts of issue 17 merge without touching each other)
# ---------------------------------------------------------------------------------------------
def shard_actor_cpus(shards: int) -> float:
    """CPUs each shard owner asks for: the largest share such that all S owners fit the alive nodes
    at once (they must all be alive together: an owner that finds no room would wait for ever). A
    whole number when every owner can have one or more CPUs, so its numba kernels get that many
    threads; a fraction 1/k otherwise (k owners per CPU)."""
    from embedlake.tasks.runtime import node_cpus
    return owner_share(node_cpus(), shards)


OWNER_START_S = 120.0       # longest wait for all S shard owners to be placed and started


def owner_share(cpus: list[float], shards: int) -> float:
    """The largest c (whole, or 1/k less Ray's 0.0001 resolution) with sum(floor(cpus_i / c)) >= shards."""
    shards = max(1, shards)
    for c in range(int(sum(cpus) // shards), 0, -1):
        if sum(int(x // c) for x in cpus) >= shards:
            return float(c)
    k = 2
    while sum(int(x * k) for x in cpus) < shards:
        k += 1
    return round(1.0 / k, 4) - 0.0001


@task(name="walk_sharded", cache_policy=NO_CACHE)
def walk_sharded(graph: GraphHandle, walk_cfg: WalkConfig, method: str, stage=None,
                 max_retries: int = 3, owners: list | None = None, walk_offset: int = 0) -> StageResult:
    """The walks of a sharded graph: one Ray actor per graph shard (pinned: its CSR rows are fetched
    once to its node), walkers advanced in bulk-synchronous rounds (workers/graph/sharded_walks.py). Walker batches and node2vec queries go from shard owner to
    shard owner over direct connections (tasks/peer_mail.py); the driver only waits for the end.
    Returns StageResult([one walks ref per shard: int32 [walks_per_node * (hi - lo), length], laid
    out like random_walks from arange(lo, hi)], info).

    A lost actor or object (node loss) re-runs the rounds from the start, up to max_retries times:
    walks depend only on (seed, node, k), so the result is identical. stage (the run's `walk`
    stage): each shard's walks are checkpointed when done; a re-run loads them when every shard
    finished, and otherwise walks all shards again (walkers cross shards, so no shard's walks can
    be finished without every shard's rounds).

    owners: shard owners from `start_shard_owners` (on this graph) to walk with instead of starting
    new ones; they stay alive for the caller. Without them, the owners the flow started during
    ingest (graph.owners: ShardOwners), if any, else new ones. A retry after a loss starts new ones.
    walk_offset: walk numbers walk_offset .. walk_offset + walks_per_node - 1 (streamed training
    walks a round of walk numbers at a time: tasks/stream.py)."""
    import ray.exceptions as rex
    log = stage_logger()
    bounds = graph.shard_bounds
    handle = stage.handle() if stage is not None else None
    done = stage.finished_parts(len(bounds)) if handle is not None else set()
    if handle is not None and len(done) == len(bounds):
        return _load_walk_shards(handle, bounds, walk_cfg, max_retries)
    if done:
        log.info(f"resume: {len(done)}/{len(bounds)} walk shards were finished, but walkers cross shards: "
                 f"walking every shard again")
    early = graph.owners if owners is None and graph.owners is not None and graph.owners.alive else None
    for attempt in range(max_retries + 1):
        try:
            refs, info = _sharded_rounds(graph, walk_cfg, method, handle, owners, walk_offset, early)
            break
        except (rex.RayActorError, rex.ObjectLostError, rex.GetTimeoutError) as err:
            if attempt >= max_retries:
                raise
            owners = None
            if early is not None:       # some may be gone with a lost node: the next attempt starts new ones
                early.close()
                early = None
            waited = wait_shards_rebuilt(graph)
            log.warning(f"walks (sharded): a shard owner or message was lost, or the owners found no room "
                        f"({type(err).__name__}); {waited:.1f}s waiting for lost shards to be rebuilt; "
                        f"walking again from the start ({attempt + 1}/{max_retries})")
    fault_point("after:walk")
    return StageResult(refs, {"walk_shards": len(bounds), "walk_shards_reused": 0, **info})


def _load_walk_shards(handle, bounds, walk_cfg: WalkConfig, max_retries: int) -> StageResult:
    """Every shard's walks from the checkpoint of a killed run (walk/part-<shard>.npy)."""
    stage_logger().info(f"resume: reusing all {len(bounds)} walk shards of the run's checkpoint")
    load = remote(graph_stages.load_walk_partition, "walk", num_cpus=1, num_returns=2, max_retries=max_retries)
    pairs = [load.remote(handle, i, rows=(hi - lo) * walk_cfg.walks_per_node, length=walk_cfg.length)
             for i, (lo, hi) in enumerate(bounds)]
    gather([p[1] for p in pairs], "walks (shards, reused)", unit_of=float, unit="steps")
    return StageResult([p[0] for p in pairs], {"walk_shards": len(bounds), "walk_shards_reused": len(bounds)})


def shard_walk_params(graph: GraphHandle, walk_cfg: WalkConfig, method: str, walk_offset: int = 0):
    """The WalkParams of a sharded walk (threads: the CPUs each shard owner gets)."""
    from embedlake.workers.graph.sharded_walks import WalkParams
    cpus = shard_actor_cpus(graph.num_shards)
    return WalkParams(walk_cfg.walks_per_node, walk_cfg.length, walk_cfg.seed, walk_cfg.p, walk_cfg.q,
                      walk_mode(method), threads=max(1, int(cpus)), walk_offset=walk_offset)


def owner_nodes(shards: int) -> list[str]:
    """The node of each of S shard owners: the alive nodes with CPUs, each taking as many owners as
    `owner_share` CPUs fit in it, nodes in turn (where SPREAD puts owners that hold those CPUs)."""
    import itertools

    import ray
    nodes = [(n["NodeID"], float(n["Resources"].get("CPU", 0))) for n in ray.nodes()
             if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        return []
    share = owner_share([cpus for _, cpus in nodes], shards)
    slots = [[node] * int(cpus // share) for node, cpus in nodes]
    return [node for turn in itertools.zip_longest(*slots) for node in turn if node is not None][:shards]


class ShardOwners:
    """S shard owners started before the graph exists: flows/embed_graph.py starts them when the
    run begins (`early_shard_owners`), so their processes start, import the walk engine and load its
    numba kernels while ingest runs, not in the walk stage (measured: 4-24 s of a 20M-edge walk
    stage, docs/scaling.md section 9). They hold NO CPUs: owners that held CPUs from the start would
    keep ingest's tasks off those CPUs. They compute only in the walk stage, which runs alone (the
    flow's stages are sequential; streamed training waits for each walk round and the rounds for
    the training); they are placed on the nodes where owners holding `shard_actor_cpus` CPUs would
    go (`owner_nodes`). The walk stage hands each its shard (`ShardWalker.load`: fetch CSR rows,
    build alias rows and walkers); later walks of the same graph (streamed rounds) only `start`.
    A plain class, not a dataclass: Prefect must pass this very object, not a copy, to the tasks."""

    def __init__(self, actors: list, mode: str = "deepwalk", nodes: list | None = None):
        self.actors, self.mode, self.nodes = actors, mode, nodes
        self.holds = None           # (graph key, shard bounds) the owners hold, None before `ready_for`

    @classmethod
    def start(cls, shards: int, mode: str) -> ShardOwners:
        """S owners without a shard, pinned to `owner_nodes`; each loads the kernels of `mode`."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from embedlake.workers.graph.sharded_walks import WalkParams
        params = WalkParams(1, 1, 0, mode=mode)
        nodes = owner_nodes(shards)
        return cls([owner_class(fixed={"num_cpus": 0}, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(params=params) for node in nodes], mode, nodes)

    @property
    def alive(self) -> bool:
        return bool(self.actors)

    def attach(self, graph: GraphHandle) -> GraphHandle:
        """The graph with these owners for its walks (graph.owners), when there is one per shard;
        else the owners are closed (graph.shards=auto gave another S) and the graph has none."""
        if self.alive and len(self.actors) == graph.num_shards > 1:
            graph.owners = self
        else:
            self.close()
        return graph

    def wait_started(self) -> float:
        """Wait until every owner has started (process, imports, kernels); the seconds waited (0 when
        they started before the walk stage: their start overlapped ingest)."""
        import time

        import ray
        t0 = time.perf_counter()
        ray.get([o.__ray_ready__.remote() for o in self.actors], timeout=OWNER_START_S)
        return time.perf_counter() - t0

    def ready_for(self, graph: GraphHandle, params, handle=None) -> list:
        """Each owner takes its shard of `graph` (first walk) or begins a new walk on the shard it
        holds (later walks of the same graph); the refs to wait for."""
        held = (graph.key, graph.shard_bounds)
        if self.holds == held:
            return [o.start.remote(params, handle) for o in self.actors]
        self.holds = held
        return [o.load.remote(shard.csr_ref, i, graph.shard_bounds, params, handle)
                for i, (o, shard) in enumerate(zip(self.actors, graph.shards))]

    def close(self) -> None:
        """Stop the owners (idempotent)."""
        import ray
        for o in self.actors:
            ray.kill(o)
        self.actors, self.holds = [], None


WALK_METHODS = ("deepwalk", "node2vec")


@contextmanager
def early_shard_owners(graph_cfg: GraphConfig, method: str):
    """`with`: the ShardOwners of a run that walks a graph of graph.shards = S > 1 (known before
    ingest; with `auto` S is known only after it, and the walk stage starts its owners itself),
    started now and stopped when the block ends; empty ShardOwners otherwise."""
    shards = graph_cfg.shards
    early = method in WALK_METHODS and isinstance(shards, int) and shards > 1
    owners = ShardOwners.start(shards, walk_mode(method)) if early else ShardOwners([])
    try:
        yield owners
    finally:
        owners.close()


def start_shard_owners(graph: GraphHandle, walk_cfg: WalkConfig, method: str, handle=None,
                       walk_offset: int = 0) -> list:
    """One ShardWalker actor per graph shard, each fed only its shard's CSR ref and spread over the
    cluster's nodes. `walk_sharded(owners=...)` can walk again with owners kept from an earlier
    call (their CSR rows and alias tables are in place: no process start). Owners hold their CPUs
    (shard_actor_cpus: the whole cluster's share) until the caller kills them: tasks that need CPUs
    wait until then."""
    bounds = graph.shard_bounds
    csr_refs = [s.csr_ref for s in graph.shards] or [graph.csr_ref]
    cpus = shard_actor_cpus(len(bounds))
    params = shard_walk_params(graph, walk_cfg, method, walk_offset)
    owner_cls = owner_class(num_cpus=cpus, scheduling_strategy="SPREAD")
    return [owner_cls.remote(csr_refs[i], i, bounds, params, handle) for i in range(len(bounds))]


def wait_shards_rebuilt(graph: GraphHandle, timeout_s: float = OWNER_START_S) -> float:
    """Wait (up to timeout_s) until every shard's CSR rows are on an alive node again; the seconds waited.

    After a node loss Ray rebuilds the shards that were on it by re-running their ingest tasks, which
    need a whole CPU. Owners started before that take a share of every node's CPU (SPREAD) and wait
    for those very rows: nothing moves until OWNER_START_S ends the attempt (seen on the 4-node test
    bed: 120 s lost after a node loss). So a retry lets the rebuild finish first. A shard of at most
    INLINE_BYTES lives in its owner's memory, on no node, and is never lost with one: not waited for."""
    import time

    import ray
    from ray.experimental import get_object_locations
    t0 = time.perf_counter()
    refs = [s.csr_ref for s in graph.shards]
    while refs and time.perf_counter() - t0 < timeout_s:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        where = get_object_locations(refs)
        refs = [r for r in refs if lost_shard(where.get(r) or {}, alive)]
        if refs:
            time.sleep(0.2)
    return time.perf_counter() - t0


INLINE_BYTES = 100 * 1024   # Ray's max_direct_call_object_size: smaller results stay in the owner's memory


def lost_shard(location: dict, alive: set) -> bool:
    """Whether a shard's rows (get_object_locations' entry) are on no alive node: not spilled, not
    small enough to live in its owner's memory, and none of its copies on an alive node."""
    if location.get("did_spill") or (location.get("object_size") or 0) <= INLINE_BYTES:
        return False
    return not alive.intersection(location.get("node_ids") or [])


def owner_class(fixed: dict | None = None, **options):
    """The Ray actor class of a shard owner (workers/graph/sharded_walks.py ShardWalker, stage
    `walk`): not restarted (a lost owner re-runs the rounds), with a thread of its own for
    `finished` (concurrency group WAIT_GROUP), which waits while the rounds run in the default group."""
    from embedlake.tasks.remote import remote_actor
    from embedlake.workers.graph.sharded_walks import WAIT_GROUP, ShardWalker
    return remote_actor(ShardWalker, "walk", fixed=fixed, max_restarts=0, concurrency_groups={WAIT_GROUP: 1},
                        **options)


def wait_finished(owners: list, timeout_s: float | None = None) -> list:
    """Every owner's `finished` (its round stats), raising the first error as soon as one owner
    fails or dies (the others would wait for its messages for ever)."""
    import ray

    from embedlake.workers.graph.sharded_walks import WAIT_GROUP
    pending = [o.finished.options(concurrency_group=WAIT_GROUP).remote() for o in owners]
    order = {r: i for i, r in enumerate(pending)}
    out = [None] * len(owners)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not ready:
            raise ray.exceptions.GetTimeoutError(f"sharded walks: no shard owner finished in {timeout_s} s")
        out[order[ready[0]]] = ray.get(ready[0])
    return out


def owner_cpu(splits: list[dict]) -> dict:
    """The owners' CPU seconds in the rounds (ShardWalker.cpu_split), summed over owners; `other` is
    what their processes spent beyond the rounds' own parts (Ray's threads, the mail threads'
    socket work, the interpreter)."""
    total = {k: round(sum(s[k] for s in splits), 3) for k in splits[0]}
    total["other"] = round(total["process"] - sum(v for k, v in total.items() if k != "process"), 3)
    return total


def _sharded_rounds(graph: GraphHandle, walk_cfg: WalkConfig, method: str, handle,
                    owners: list | None, walk_offset: int = 0, early: ShardOwners | None = None) -> tuple[list, dict]:
    """One attempt: start the shard owners (or hand their shards to owners started early, or restart
    kept ones), let them play the rounds among themselves (PeerMail), collect the walk refs, stop
    the owners this attempt started."""
    import time

    import ray

    from embedlake.workers.graph.sharded_walks import collect_walks, round_info
    log = stage_logger()
    bounds = graph.shard_bounds
    kept = owners is not None or early is not None
    t_start = time.perf_counter()
    params = shard_walk_params(graph, walk_cfg, method, walk_offset)
    waited = None           # seconds waited for owners started during ingest to finish starting
    if owners is not None:
        starting = [o.start.remote(params, handle) for o in owners]
    elif early is not None:
        owners, waited = early.actors, early.wait_started()
        starting = early.ready_for(graph, params, handle)
    else:
        owners = start_shard_owners(graph, walk_cfg, method, handle, walk_offset)
        starting = [o.__ray_ready__.remote() for o in owners]
    t0 = t_start

    def call(shard, name, *args, returns):
        refs = getattr(owners[shard], name).options(num_returns=returns).remote(*args)
        return refs if returns > 1 else [refs]

    try:
        # started: CSR rows fetched, alias tables and walkers built. All S must be placed together; right
        # after a node loss the share may count the lost node's CPUs, and an owner that finds no room
        # would wait for ever: after OWNER_START_S the attempt ends and the next one sizes the share again
        ray.get(starting, timeout=OWNER_START_S)
        t0 = time.perf_counter()
        mail = open_inboxes(owners)     # tasks/peer_mail.py: imports neither Prefect nor this module
        for o in owners:
            o.begin.remote(mail)
        info = round_info(wait_finished(owners))
        info["owner_cpu_s"] = owner_cpu(ray.get([o.cpu_split.remote() for o in owners]))
        ray.get([o.__ray_call__.remote(close_mail) for o in owners])
        refs, info = collect_walks(call, ray.get, len(bounds), info)
    finally:
        if not kept:
            for o in owners:
                ray.kill(o)
    tokens = info["walk_steps"]
    secs = time.perf_counter() - t0
    how = "kept" if kept and early is None else "started during ingest" if early is not None else "started here"
    log.info(f"walks (sharded): {len(bounds)} shards, {info['walk_rounds']} rounds, {tokens:,} steps in "
             f"{secs:.1f}s ({tokens / max(secs, 1e-9):,.0f} steps/s) after {t0 - t_start:.1f}s starting the owners "
             f"({how})")
    return refs, {**info, "walk_seconds": round(secs, 3), "owner_start_seconds": round(t0 - t_start, 3),
                  "owners": how, **({} if waited is None else {"owner_wait_seconds": round(waited, 3)})}


@task(name="publish", cache_policy=NO_CACHE)
def publish_shards(lake, dataset: str, method: str, run_id: str, graph: GraphHandle, table_refs: list,
                   max_retries: int = 3) -> list[dict]:
    """Write a sharded table (one ref per graph shard: its nodes' rows [hi - lo, dim], as the sharded
    engines return it): shard s's rows by a task that gets only that table and the shard's node ids.
    Files, schema and numbering are those of `publish` with the shard ranges as its partitions
    (empty shards, possible when S > n, write nothing), so readers see no difference."""
    if len(table_refs) != graph.num_shards:
        raise ValueError(f"publish_shards: {len(table_refs)} tables for {graph.num_shards} graph shards")
    fn = remote(graph_stages.write_embedding_part, "publish", num_cpus=1, max_retries=max_retries)
    live = [(shard, ref) for shard, ref in zip(graph.shards, table_refs) if shard.hi > shard.lo]
    refs = [fn.remote(lake, dataset, method, run_id, i, 0, shard.hi - shard.lo, shard.ids_ref, ref)
            for i, (shard, ref) in enumerate(live)]
    return gather(refs, "publish (shards)")
