"""The embedding table of a graph run: FastRP, or skip-gram on walks with one of three engines.

`embed_table` is the one entry: FastRP (tasks/fastrp.py), else `train_on_walks`, which picks

- streamed walks (tasks/stream.py) when the walks would not fit comfortably (walk.stream);
- the one-table engine (`train_one_table`): one multi-threaded Ray task on the whole table,
  checkpointed after every epoch;
- the block-partitioned engine (`train_partitioned`) across `train.workers` Ray workers
  (train.workers > 1 or train.partitions >= 1, docs/training.md);
- on a graph of S > 1 shards, always the sharded engine (`train_sharded`, workers/train/sharded.py):
  one walks object per graph shard, prep per walk shard, each round of it cut into P x P bucket
  pieces, blocks as chains of per-shard links over their pieces, and one embedding object per
  graph shard out (no task ever holds all walks or the full table); with walk.stream (auto: more
  than walk.stream_threshold_mb of walks; always) the walks come in rounds of walk numbers,
  walked, prepared and trained one round at a time (`train_sharded_streamed`).

Block-partitioned training: the driver (this module, inside the Prefect `train` task) never holds
a table: it submits one Ray task per block (i, j) of each episode (workers/train/blocks.py),
passing the W_in[i] / W_out[j] shards as ObjectRefs returned by the previous episode's blocks, so
shards move worker to worker through the object store and Ray orders the blocks by their data
dependencies. Blocks of one episode share no shard, so they run in parallel without locks or
averaging. Its checkpoints (train.checkpoint = round | episode | epoch | never), in the run's
checkpoint folder (tasks/run.py):
    step=<k>/w_in-<p>.npy, step=<k>/w_out-<p>.npy    shards after k episodes (.npy, no pickle),
                                                    written by the blocks themselves
    state.json                                      {"step": k, fingerprint, schedule, config}
                                                    written once all shards of step k exist;
                                                    older steps are then removed
A re-run with the same run id whose stream fingerprint and training settings match the state
continues at episode k with those shards (the walks come from the run's walk checkpoint).
"""
from __future__ import annotations

import dataclasses
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import FastRPConfig, TrainConfig, WalkConfig
from embedlake.tasks import graph as gt
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.fastrp import fastrp_table
from embedlake.tasks.graph import GraphHandle, StageResult
from embedlake.tasks.incremental import write_context
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.run import Run, Stage
from embedlake.tasks.runtime import max_node_cpus, worker_cpus
from embedlake.tasks.stream import walk_and_train
from embedlake.workers.graph.walks import should_stream
from embedlake.workers.train import blocks as sb
from embedlake.workers.train import sharded as sh
from embedlake.workers.train import stages as train_stages

# settings that determine a trained table (threads do not: one thread is bit-reproducible, more
# threads are Hogwild-nondeterministic anyway, so resuming with other threads is as good as a re-run)
TRAIN_KEYS = ("dim", "window", "negatives", "ns_exponent", "epochs", "lr", "min_lr", "sample", "seed", "engine")
# what a block-partitioned checkpoint must match besides the token stream
BLOCK_KEYS = ("dim", "window", "negatives", "ns_exponent", "epochs", "lr", "min_lr", "sample", "seed", "rounds")


def train_spec(graph: GraphHandle, walk_cfg: WalkConfig, train_cfg: TrainConfig, method: str, engine: str) -> dict:
    """The one-table / streamed table depends on the walks (not on their partitioning) and training."""
    return {"walks": gt.walk_spec(graph, walk_cfg, method, None), "engine_path": engine,
            **{k: getattr(train_cfg, k) for k in TRAIN_KEYS}}


def embed_table(run: Run, graph: GraphHandle, method: str, walk_cfg: WalkConfig, train_cfg: TrainConfig,
                fastrp_cfg: FastRPConfig, bounds: list[tuple[int, int]]) -> StageResult:
    """The run's embedding table: FastRP for method fastrp, else skip-gram on walks."""
    if method == "fastrp":
        return fastrp_table(run, graph, fastrp_cfg, bounds)
    return train_on_walks(run, graph, method, walk_cfg, train_cfg, bounds)


def train_on_walks(run: Run, graph: GraphHandle, method: str, walk_cfg: WalkConfig, train_cfg: TrainConfig,
                   bounds: list[tuple[int, int]]) -> StageResult:
    """Walks + skip-gram, streamed or not, on one table or block-partitioned. StageResult.files
    holds the walks when walk.write_walks. A killed one-table run whose training had finished
    needs neither walks nor training."""
    r = run.retries
    sharded = graph.num_shards > 1
    if not sharded and not walk_cfg.write_walks and train_cfg.workers == 1 and should_stream(graph.num_nodes,
                                                                                             walk_cfg):
        stage = run.stage("stream", train_spec(graph, walk_cfg, train_cfg, method, "streamed"))
        return run.time("walk_train", walk_and_train, graph, walk_cfg, train_cfg, method, bounds, stage=stage,
                        max_retries=r)
    if sharded and not walk_cfg.write_walks and should_stream(graph.num_nodes, walk_cfg):
        return run.time("train", train_sharded_streamed, graph, walk_cfg, train_cfg, method, run=run, max_retries=r)
    one_table = not sharded and train_cfg.workers == 1 and train_cfg.partitions == 0
    table_stage = run.stage("train", train_spec(graph, walk_cfg, train_cfg, method, "one-table")) if one_table else None
    if one_table and not walk_cfg.write_walks:
        done = table_stage.finished_table()
        if done is not None:
            return done
    walked = gt.run_walks(run, graph, walk_cfg, method, bounds)
    files = {}
    if walk_cfg.write_walks:
        files["walks"] = run.time("write_walks", gt.write_walks, run.lake, run.dataset, run.method, run.run_id, graph,
                                  walked.ref, walk_cfg.walks_per_node, gt.walk_bounds(graph, bounds), max_retries=r)
    if sharded:
        trained = run.time("train", train_sharded, graph, walked.ref, walk_cfg, train_cfg, run=run, max_retries=r)
    elif one_table:
        trained = run.time("train", train_one_table, graph, walked.ref, walk_cfg, train_cfg, stage=table_stage,
                           max_retries=r)
    else:
        trained = run.time("train", train_partitioned, graph, walked.ref, walk_cfg, train_cfg, run=run, max_retries=r)
    trained.info.setdefault("resumed", {}).update(walked.info)
    trained.files.update(files)
    return trained


@task(name="train", cache_policy=NO_CACHE)
def train_one_table(graph: GraphHandle, walk_refs: list, walk_cfg: WalkConfig, train_cfg: TrainConfig,
                    stage: Stage, max_retries: int = 3) -> StageResult:
    """Skip-gram on all walks in one multi-threaded Ray task. stage (the run's `train` stage): the
    table is checkpointed after every epoch and a killed run's re-run continues at the next epoch
    (docs/reliability.md); a finished table is reused."""
    import ray
    log = stage_logger()
    done = stage.finished_table()
    if done is not None:
        return done
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    start = stage.resume_point("epoch", train_cfg.epochs, "training") if stage.enabled else 0
    keep_context = train_cfg.incremental == "auto"     # the next run may update this one (tasks/incremental.py)
    fn = remote(train_stages.train_stage, "train", num_cpus=cpus, num_returns=3 if keep_context else 2,
                max_retries=max_retries)
    progress = Progress("train", "tokens")
    refs = fn.remote(graph.num_nodes, walk_cfg.walks_per_node, train_cfg, *walk_refs, threads=train_cfg.threads or cpus,
                     progress=progress.reporter("train"), checkpoint=stage.handle(), context_out=keep_context)
    emb_ref, stats_ref = refs[0], refs[1]
    progress.wait([stats_ref])
    progress.close()
    stats = ray.get(stats_ref)
    log.info(f"train: {stats.get('tokens', 0):,} tokens at {stats.get('tokens_per_s', 0):,.0f} tokens/s, "
             f"loss {stats.get('loss_first', float('nan')):.4f} -> {stats.get('loss_last', float('nan')):.4f}")
    info = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    info["resumed"] = {"stage": "train", "start_epoch": start, "table_reused": False}
    run = stage.run
    files = {"state": write_context(run.lake, run.dataset, run.method, run.run_id, refs[2], max_retries)
             } if keep_context else {}
    return StageResult(emb_ref, info, files)


# ---------------------------------------------------------------- block-partitioned engine

def block_partitions(train_cfg: TrainConfig) -> int:
    """P of block-partitioned training: train.partitions, else 2 x train.workers."""
    return train_cfg.partitions if train_cfg.partitions >= 1 else 2 * train_cfg.workers


def is_checkpoint_step(mode: str, done: int, P: int, steps_per_epoch: int) -> bool:
    if mode == "episode":
        return True
    if mode == "round":
        return done % P == 0
    if mode == "epoch":
        return done % steps_per_epoch == 0
    return False


@dataclasses.dataclass
class BlockPlan:
    """The schedule of one block-partitioned training: P partitions x R rounds per epoch."""
    P: int
    R: int
    total_steps: int
    train: TrainConfig
    threads: int                # kernel threads per block
    want: dict                  # what a checkpoint must match to be resumed

    @property
    def steps_per_epoch(self) -> int:
        return self.P * self.R


def resume_shards(run: Run, plan: BlockPlan, log) -> tuple[list, list, int | None]:
    """(W_in, W_out, resumed step): a matching checkpoint's shard paths, else Nones (a mismatching
    checkpoint is removed)."""
    W_in: list = [None] * plan.P
    W_out: list = [None] * plan.P
    state = run.block_state()
    if state is not None and run.resume and state.get("match") == plan.want:
        step0 = int(state["step"])
        W_in = [sb.checkpoint_file(run.checkpoint_dir, step0, "w_in", p) for p in range(plan.P)]
        W_out = [sb.checkpoint_file(run.checkpoint_dir, step0, "w_out", p) for p in range(plan.P)]
        log.info(f"train: resuming run {run.run_id} at episode {step0}/{plan.total_steps} "
                 f"from {run.lake.url(run.checkpoint_dir)}")
        return W_in, W_out, step0
    if state is not None:
        log.info("train: the run's checkpoint does not match this input/config (or resume is off): starting over")
        run.drop_block_checkpoints()
    return W_in, W_out, None


def register_blocks(progress: Progress, plan: BlockPlan, step0: int, block_centres: list) -> None:
    """Every block of the run on the progress board: the ETA covers the whole run."""
    for step in range(step0, plan.total_steps):
        ep, e, blocks = sb.step_blocks(step, plan.P, plan.R)
        for i, j in blocks:
            progress.board.report.remote(f"s{step}.b{i}", 0.0, block_centres[j][e // plan.P] / plan.P, {})


def submit_blocks(graph: GraphHandle, walk_refs: list, plan: BlockPlan, *, walks_per_node: int, run: Run | None,
                  shards: tuple[list, list], step0: int, prep_ref, progress: Progress, mode: str, cpus: int,
                  max_retries: int) -> tuple[list, object, int, object]:
    """Submit every block at once: Ray runs each as soon as its two shards exist, so a worker never
    waits for an episode barrier; checkpoint commits are tasks chained in order. Returns
    (block stats refs, last commit ref, commits, the prep ref of the last epoch)."""
    W_in, W_out = shards
    prep_fn = remote(sb.prep_stage, "train", num_cpus=1, num_returns=2, max_retries=max_retries)
    block_fn = remote(sb.block_stage, "train", num_cpus=cpus, num_returns=3, max_retries=max_retries)
    ckpt_fn = remote(sb.commit_checkpoint, "train", num_cpus=0, max_retries=max_retries)
    stats_refs, round_refs, commit_ref, commits = [], [], None, 0
    for step in range(step0, plan.total_steps):
        ep, e, blocks = sb.step_blocks(step, plan.P, plan.R)
        if plan.train.sample > 0 and e == 0 and ep > 0:      # a new subsample per epoch
            prep_ref, _ = prep_fn.remote(graph.num_nodes, walks_per_node, plan.P, plan.R, plan.train, ep, *walk_refs)
        write = run is not None and is_checkpoint_step(mode, step + 1, plan.P, plan.steps_per_epoch)
        ck = None if run is None else sb.BlockCheckpoint(run.lake, run.checkpoint_dir, step + 1, write)
        for i, j in blocks:
            a, b, st = block_fn.remote(prep_ref, i, j, W_in[i], W_out[j], plan.train, ep, e, threads=plan.threads,
                                       checkpoint=ck, reporter=progress.reporter(f"s{step}.b{i}"))
            W_in[i], W_out[j] = a, b
            stats_refs.append(st)
            round_refs.append(st)
        if write:                                   # blocks since the last commit have written shards
            commit_ref = ckpt_fn.remote(run.lake, run.checkpoint_dir, step + 1, plan.total_steps, plan.want,
                                        commit_ref, *round_refs)
            commits += 1
            round_refs = []
    return stats_refs, commit_ref, commits, prep_ref


def block_info(stats: list[dict], plan: BlockPlan, *, tokens_per_epoch: int, step0: int, resumed: int | None,
               workers: int, cpus: int, commits: int, seconds: float) -> dict:
    """The training figures of a block-partitioned run (the manifest's extra.train)."""
    P = plan.P
    loss = lambda ss: sum(s["loss_sum"] for s in ss) / max(1, sum(s["pairs"] for s in ss))  # noqa: E731
    pairs = sum(s["pairs"] for s in stats)
    tokens = tokens_per_epoch * (plan.total_steps - step0) / plan.steps_per_epoch
    return {"engine": "numba-blocks", "workers": workers, "threads": cpus, "partitions": P, "rounds": plan.R,
            "episodes": plan.total_steps - step0, "resumed_at": resumed if resumed is not None else -1,
            "tokens": int(tokens), "pairs": int(pairs), "seconds": round(seconds, 3),
            "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
            "pairs_per_s": pairs / seconds if seconds > 0 else float("nan"),
            "loss_first": loss(stats[:P]) if stats[:P] else float("nan"),
            "loss_last": loss(stats[-P:]) if stats[-P:] else float("nan"),
            "block_s_max": max((s["seconds"] for s in stats), default=0.0),
            # where the wall time went: kernel time of all blocks, and the span from the first block's
            # start to the last block's end (Ray worker start-up, prep and shard hand-offs are the rest)
            "block_kernel_s": round(sum(s["seconds"] for s in stats), 3),
            "block_span_s": round(max((s["t_end"] for s in stats), default=0.0)
                                  - min((s["t_start"] for s in stats), default=0.0), 3),
            "block_processes": len({s["pid"] for s in stats}),
            "checkpoints": commits, "checkpoint_write_s": round(sum(s.get("checkpoint_s", 0.0) for s in stats), 3)}


@task(name="train", cache_policy=NO_CACHE)
def train_partitioned(graph: GraphHandle, walk_refs: list, walk_cfg: WalkConfig, train_cfg: TrainConfig,
                      run: Run | None = None, max_retries: int = 3) -> StageResult:
    """Block-partitioned training on `train.workers` Ray workers; returns StageResult(emb_ref, info).
    run: whose checkpoint folder holds the block checkpoints (None or train.checkpoint=never: none)."""
    import ray
    log = stage_logger()
    if train_cfg.engine != "numba":
        raise ValueError("partitioned training (train.workers > 1 or train.partitions >= 1) runs the numba "
                         "kernel; use train.engine=numba, or train.workers=1 with the torch engine")
    workers, t_all = train_cfg.workers, time.perf_counter()
    cpus = int(stage_options("train").get("num_cpus") or worker_cpus(workers))
    P = block_partitions(train_cfg)
    prep_ref, info_ref = remote(sb.prep_stage, "train", num_cpus=1, num_returns=2, max_retries=max_retries).remote(
        graph.num_nodes, walk_cfg.walks_per_node, P, train_cfg.rounds, train_cfg, 0, *walk_refs)
    info = ray.get(info_ref)
    plan = BlockPlan(P=P, R=train_cfg.rounds, total_steps=P * train_cfg.rounds * train_cfg.epochs, train=train_cfg,
                     threads=train_cfg.threads or cpus,
                     want={"fingerprint": info["fingerprint"], "partitions": P, "nodes": graph.num_nodes,
                           **{k: getattr(train_cfg, k) for k in BLOCK_KEYS}})
    run = run if run is not None and run.checkpoints else None
    W_in, W_out, resumed = resume_shards(run, plan, log) if run is not None else ([None] * P, [None] * P, None)
    step0 = resumed or 0
    progress = Progress("train", "tokens")
    register_blocks(progress, plan, step0, info["block_centres"])
    log.info(f"train: {workers} workers x {cpus} threads, P={P} partitions, {plan.R} rounds -> {plan.total_steps} "
             f"episodes of {P} blocks; {info['tokens']:,} tokens per epoch")
    t0 = time.perf_counter()
    try:
        stats_refs, commit_ref, commits, prep_ref = submit_blocks(
            graph, walk_refs, plan, walks_per_node=walk_cfg.walks_per_node, run=run, shards=(W_in, W_out),
            step0=step0, prep_ref=prep_ref, progress=progress, mode=train_cfg.checkpoint, cpus=cpus,
            max_retries=max_retries)
        progress.wait(stats_refs + ([commit_ref] if commit_ref is not None else []), log)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    emb_ref = remote(sb.assemble_stage, "train", num_cpus=1, max_retries=max_retries).remote(
        prep_ref, run.lake if run is not None else None, *W_in)
    ray.wait([emb_ref], fetch_local=False)
    out = block_info(ray.get(stats_refs), plan, tokens_per_epoch=info["tokens"], step0=step0, resumed=resumed,
                     workers=workers, cpus=cpus, commits=commits, seconds=seconds)
    out["wall_s"] = round(time.perf_counter() - t_all, 3)
    log.info(f"train: {out['tokens']:,} tokens at {out['tokens_per_s']:,.0f} tokens/s on {workers} workers "
             f"(P={P}), loss {out['loss_first']:.4f} -> {out['loss_last']:.4f}")
    return StageResult(emb_ref, out)


# ---------------------------------------------------------------- sharded engine (graph shards, token shards)

def sharded_partitions(train_cfg: TrainConfig, shards: int) -> int:
    """P of the sharded engine: S x m partitions (node id mod P, sh.graph_split), m =
    ceil(block_partitions / S) >= 1, so an episode has at least S and block_partitions blocks."""
    return int(shards) * max(1, -(-block_partitions(train_cfg) // int(shards)))


def as_list(refs, n: int) -> list:
    """A remote call's returns as a list (Ray gives one ref, not a list, for num_returns=1)."""
    return list(refs) if n > 1 else [refs]


@dataclasses.dataclass
class StreamSet:
    """The prepared stream shards of one epoch: refs to the bucketed streams (they stay in the
    object store), and each one's place in the whole stream (small, on the driver)."""
    refs: list
    infos: list[dict]
    places: list


@dataclasses.dataclass
class ShardedInput:
    """What the sharded engine trains on: stream shards (each a tuple of refs: walks, or tokens and
    offsets), `groups` sentence groups per shard (walks per node; 1 for corpus shards), the
    partitioning, and optionally the vocabulary's counts (corpora)."""
    sources: list[tuple]
    groups: int
    split: sh.VocabSplit
    counts_ref: object = None


def noise_refs(per_shard: list[list], train_cfg: TrainConfig, max_retries: int) -> tuple[list, list]:
    """(counts, noise) refs per partition from each shard's per-partition counts (summed per partition)."""
    noise_fn = remote(sh.noise_stage, "train", num_cpus=1, num_returns=2, max_retries=max_retries)
    pairs = [noise_fn.remote(train_cfg.ns_exponent, *[c[p] for c in per_shard]) for p in range(len(per_shard[0]))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def streams_and_noise(inp: ShardedInput, train_cfg: TrainConfig, max_retries: int) -> tuple[StreamSet, list, list]:
    """The epoch-0 stream shards and each partition's (counts, noise). Walk shards without
    subsampling are read once (prep and counts in one task); otherwise the counts come first:
    per-shard bincounts (walks) or the vocabulary's counts cut per partition (corpora)."""
    import ray
    P = inp.split.parts
    if inp.counts_ref is None and train_cfg.sample == 0:
        fn = remote(sh.prep_count_stage, "train", num_cpus=1, num_returns=2 + P, max_retries=max_retries)
        outs = [fn.remote(inp.split, inp.groups, len(src), train_cfg, 0, s, *src) for s, src in enumerate(inp.sources)]
        counts, noise = noise_refs([list(o[2:]) for o in outs], train_cfg, max_retries)
        infos = ray.get([o[1] for o in outs])
        return StreamSet([o[0] for o in outs], infos, sh.place_streams(infos)), counts, noise
    if inp.counts_ref is not None:
        per_shard = [as_list(remote(sh.split_counts_stage, "train", num_cpus=1, num_returns=P,
                                    max_retries=max_retries).remote(inp.split, inp.counts_ref), P)]
    else:
        count_fn = remote(sh.count_stage, "train", num_cpus=1, num_returns=P, max_retries=max_retries)
        per_shard = [as_list(count_fn.remote(inp.split, *src), P) for src in inp.sources]
    counts, noise = noise_refs(per_shard, train_cfg, max_retries)
    return prepare_streams(inp.sources, inp.groups, inp.split, train_cfg, 0, counts, max_retries), counts, noise


def prepare_streams(sources: list[tuple], groups: int, split: sh.VocabSplit, train_cfg: TrainConfig, epoch: int,
                    counts: list, max_retries: int) -> StreamSet:
    """One prep task per stream shard (its walks or tokens only); the driver gets the small infos."""
    import ray
    fn = remote(sh.prep_stream_stage, "train", num_cpus=1, num_returns=2, max_retries=max_retries)
    extra = counts if train_cfg.sample > 0 else []
    pairs = [fn.remote(split, groups, len(src), train_cfg, epoch, s, *src, *extra) for s, src in enumerate(sources)]
    infos = ray.get([p[1] for p in pairs])
    return StreamSet([p[0] for p in pairs], infos, sh.place_streams(infos))


def register_links(progress: Progress, plan: BlockPlan, step0: int, streams: StreamSet, cap: int = 20_000) -> None:
    """Every remaining link on the progress board, so the ETA covers the whole run (skipped beyond
    `cap` links: then the board knows the links that have started only)."""
    S = len(streams.infos)
    if (plan.total_steps - step0) * plan.P * S > cap:
        return
    for step in range(step0, plan.total_steps):
        for i, j in sb.step_blocks(step, plan.P, plan.R)[2]:
            for s, info in enumerate(streams.infos):
                total = info["bucket_centres"][j] / plan.R / plan.P
                progress.board.report.remote(f"s{step}.b{i}.{s}", 0.0, total, {})


def round_pieces(streams: StreamSet, plan: BlockPlan, r: int, max_retries: int, after: list = (),
                 rounds: int | None = None) -> list[list]:
    """Round r (of `rounds`, default train.rounds) of every stream shard cut into its P x P bucket
    pieces (one ref each, piece i * P + j for block (i, j)) by one task per shard and bucket j
    (sh.bucket_stage, a generator of the P pieces (i, j)): a link then receives its bucket, not the
    whole stream, and no task holds more than a piece or two of it. after: refs the cutting waits for."""
    P, R = plan.P, plan.R if rounds is None else rounds
    fn = remote(sh.bucket_stage, "train", num_cpus=1, num_returns=P, max_retries=max_retries)
    pieces = []
    for ref, place in zip(streams.refs, streams.places):
        by_bucket = [as_list(fn.remote(ref, place, plan.train.window, R, r, j, *after), P) for j in range(P)]
        pieces.append([by_bucket[j][i] for i in range(P) for j in range(P)])
    return pieces


def submit_episode(link_fn, got: list, step: int, plan: BlockPlan, noise: list, tables: tuple[list, list], *,
                   split: sh.VocabSplit, run: Run | None, progress: Progress) -> tuple[list, bool]:
    """The P blocks of one episode, each a chain of links over the stream shards' pieces `got`
    (per shard, piece i * P + j); W_in / W_out refs in `tables` move on. Returns (the links'
    stats refs, whether this step writes a checkpoint)."""
    ep, e, blocks = sb.step_blocks(step, plan.P, plan.R)
    W_in, W_out = tables
    S, P = len(got), plan.P
    write = run is not None and is_checkpoint_step(plan.train.checkpoint, step + 1, P, plan.steps_per_epoch)
    refs = []
    for i, j in blocks:
        for s in range(S):
            ck = None if run is None else sb.BlockCheckpoint(run.lake, run.checkpoint_dir, step + 1, write and s == S - 1)
            W_in[i], W_out[j], st = link_fn.remote(
                got[s][i * P + j], noise[j], i, j, W_in[i], W_out[j], plan.train, ep, e, split=split,
                threads=plan.threads, checkpoint=ck, reporter=progress.reporter(f"s{step}.b{i}.{s}"))
            refs.append(st)
    return refs, write


def submit_links(inp: ShardedInput, plan: BlockPlan, streams: StreamSet, noise: list, counts: list, *,
                 run: Run | None, shards: tuple[list, list], step0: int, progress: Progress, cpus: int,
                 max_retries: int) -> tuple[list, object, int]:
    """Every block of every episode as a chain of link tasks over the stream shards, all submitted
    at once (Ray runs a link when its tables exist); checkpoint commits chained in order."""
    link_fn = remote(sh.link_stage, "train", num_cpus=cpus, num_returns=3, max_retries=max_retries)
    ckpt_fn = remote(sb.commit_checkpoint, "train", num_cpus=0, max_retries=max_retries)
    stats_refs, round_refs, commit_ref, commits, pieces = [], [], None, 0, {}
    S, P = len(inp.sources), plan.P
    for step in range(step0, plan.total_steps):
        ep, e, _ = sb.step_blocks(step, plan.P, plan.R)
        if plan.train.sample > 0 and e == 0 and ep > 0:      # a new subsample per epoch
            streams, pieces = prepare_streams(inp.sources, inp.groups, inp.split, plan.train, ep, counts,
                                              max_retries), {}
        if (ep, e // P) not in pieces:
            # the first link of the last episode before: pieces of two rounds at most exist at once
            after = [stats_refs[-P * S]] if len(stats_refs) >= P * S else []
            pieces = {(ep, e // P): round_pieces(streams, plan, e // P, max_retries, after)}
        refs, write = submit_episode(link_fn, pieces[(ep, e // P)], step, plan, noise, shards, split=inp.split,
                                     run=run, progress=progress)
        stats_refs += refs
        round_refs += refs
        if write:
            commit_ref = ckpt_fn.remote(run.lake, run.checkpoint_dir, step + 1, plan.total_steps, plan.want,
                                        commit_ref, *round_refs)
            commits, round_refs = commits + 1, []
    return stats_refs, commit_ref, commits


def train_streams(inp: ShardedInput, train_cfg: TrainConfig, *, run: Run | None, max_retries: int
                  ) -> tuple[list, dict]:
    """The sharded engine on `train.workers` workers: (W_in refs per partition, training figures)."""
    import ray
    log = stage_logger()
    if train_cfg.engine != "numba":
        raise ValueError("sharded training (graph.shards > 1, or a corpus with train.workers > 1) runs the numba "
                         "kernel; use train.engine=numba")
    workers, t_all = train_cfg.workers, time.perf_counter()
    cpus = int(stage_options("train").get("num_cpus") or worker_cpus(workers))
    P, S = inp.split.parts, len(inp.sources)
    streams, counts, noise = streams_and_noise(inp, train_cfg, max_retries)
    plan = BlockPlan(P=P, R=train_cfg.rounds, total_steps=P * train_cfg.rounds * train_cfg.epochs, train=train_cfg,
                     threads=train_cfg.threads or cpus,
                     want={"fingerprint": sh.streams_fingerprint(streams.infos), "partitions": P, "streams": S,
                           "split": inp.split.kind, "nodes": inp.split.vocab,
                           **{k: getattr(train_cfg, k) for k in BLOCK_KEYS}})
    run = run if run is not None and run.checkpoints else None
    W_in, W_out, resumed = resume_shards(run, plan, log) if run is not None else ([None] * P, [None] * P, None)
    step0 = resumed or 0
    if train_cfg.sample > 0 and 0 < step0 < plan.total_steps and step0 // plan.steps_per_epoch > 0:
        streams = prepare_streams(inp.sources, inp.groups, inp.split, train_cfg, step0 // plan.steps_per_epoch,
                                  counts, max_retries)     # resumed in a later epoch: that epoch's subsample
    log.info(f"train: sharded, {S} stream shards, {workers} workers x {cpus} threads, P={P} {inp.split.kind} "
             f"partitions, {plan.R} rounds -> {plan.total_steps} episodes of {P} blocks x {S} links; "
             f"{streams.places[0].per_epoch:,} tokens per epoch")
    progress, t0 = Progress("train", "tokens"), time.perf_counter()
    register_links(progress, plan, step0, streams)
    try:
        stats_refs, commit_ref, commits = submit_links(inp, plan, streams, noise, counts, run=run,
                                                       shards=(W_in, W_out), step0=step0, progress=progress,
                                                       cpus=cpus, max_retries=max_retries)
        progress.wait(stats_refs + ([commit_ref] if commit_ref is not None else []), log)
    finally:
        progress.close()
    out = sharded_info(ray.get(stats_refs), plan, S, tokens_per_epoch=streams.places[0].per_epoch, step0=step0,
                       resumed=resumed, workers=workers, cpus=cpus, commits=commits,
                       seconds=time.perf_counter() - t0)
    out["wall_s"] = round(time.perf_counter() - t_all, 3)
    log.info(f"train: {out['tokens']:,} tokens at {out['tokens_per_s']:,.0f} tokens/s on {workers} workers "
             f"(P={P}, {S} shards), loss {out['loss_first']:.4f} -> {out['loss_last']:.4f}")
    return W_in, out


def sharded_info(stats: list[dict], plan: BlockPlan, shards: int, **kw) -> dict:
    """block_info of the sharded engine: its first / last episode are P x S links."""
    out = block_info(stats, plan, **kw)
    n = plan.P * shards
    loss = lambda ss: sum(s["loss_sum"] for s in ss) / max(1, sum(s["pairs"] for s in ss)) if ss else float("nan")  # noqa: E731
    out.update(engine="numba-sharded", shards=shards, links=len(stats), loss_first=loss(stats[:n]),
               loss_last=loss(stats[-n:]))
    return out


@task(name="train", cache_policy=NO_CACHE)
def train_sharded(graph: GraphHandle, walk_refs: list, walk_cfg: WalkConfig, train_cfg: TrainConfig,
                  run: Run | None = None, max_retries: int = 3) -> StageResult:
    """Sharded skip-gram on a graph of S shards: walk_refs holds one walks ref per graph shard
    (k-major, walk_cfg.walks_per_node walks from each of its nodes). Returns StageResult(ref = one
    ref per graph shard holding its nodes' embedding rows [hi - lo, dim], info); the full table is
    never assembled. run: whose checkpoint folder holds the block checkpoints."""
    S = graph.num_shards
    if len(walk_refs) != S:
        raise ValueError(f"sharded training needs one walks object per graph shard: {len(walk_refs)} for {S} shards")
    P = sharded_partitions(train_cfg, S)
    split = sh.graph_split(graph.num_nodes, P)
    inp = ShardedInput([(w,) for w in walk_refs], walk_cfg.walks_per_node, split)
    W_in, info = train_streams(inp, train_cfg, run=run, max_retries=max_retries)
    return StageResult(shard_tables(W_in, split, graph.shard_bounds, run, max_retries), info)


def shard_tables(W_in: list, split: sh.VocabSplit, bounds: list[tuple[int, int]], run: Run | None,
                 max_retries: int) -> list:
    """One embedding ref per graph shard [lo, hi) from the trained W_in partitions (each a ref,
    or a lake path when a resumed run's training had finished). Range partitions: a shard's m = P / S
    consecutive partitions, concatenated. Otherwise every partition is cut into one piece per
    shard, and each shard gathers its P pieces: no task holds more than a partition or a shard."""
    S, lake = len(bounds), run.lake if run is not None and run.checkpoints else None
    if split.kind == "range":
        m = len(W_in) // S
        concat = remote(sh.concat_stage, "train", num_cpus=1, max_retries=max_retries)
        return [W_in[s * m] if m == 1 and not isinstance(W_in[s * m], str)
                else concat.remote(lake, *W_in[s * m:(s + 1) * m]) for s in range(S)]
    cut = remote(sh.shard_cut_stage, "train", num_cpus=1, num_returns=S, max_retries=max_retries)
    pieces = [as_list(cut.remote(split, list(bounds), lake, w, p), S) for p, w in enumerate(W_in)]
    gather = remote(sh.shard_rows_stage, "train", num_cpus=1, max_retries=max_retries)
    return [gather.remote(split, lo, hi, *[pieces[p][s] for p in range(split.parts)])
            for s, (lo, hi) in enumerate(bounds)]


# ---------------------------------------------------------------- sharded engine, walks streamed in rounds

@dataclasses.dataclass
class WalkRounds:
    """What the streamed sharded engine walks: the graph, its walk settings, the walk numbers
    [k0, k1) of each round of an epoch (sh.walk_rounds) and the partitions."""
    graph: GraphHandle
    walk_cfg: WalkConfig
    method: str
    rounds: list[tuple[int, int]]
    split: sh.VocabSplit

    def walks(self, w: int, max_retries: int) -> list:
        """Round w's walks by the sharded walk engine: one ref per graph shard, laid out like
        random_walks of walk numbers k0..k1-1 from arange(lo, hi)."""
        k0, k1 = self.rounds[w]
        cfg = self.walk_cfg.model_copy(update={"walks_per_node": k1 - k0})
        return gt.walk_sharded.fn(self.graph, cfg, self.method, max_retries=max_retries, walk_offset=k0).ref

    def placed(self, streams: StreamSet, w: int) -> StreamSet:
        """The round's stream shards placed in the epoch (sh.round_places)."""
        places = sh.round_places(streams.infos, self.rounds[w][0], self.rounds[-1][1], self.split.vocab,
                                 self.walk_cfg.length)
        return StreamSet(streams.refs, streams.infos, places)


def first_round(wr: WalkRounds, train_cfg: TrainConfig, t0: int, max_retries: int) -> tuple[StreamSet | None, list, list]:
    """Round 0's walks give the noise (each partition's counts, as tasks/stream.py does with one
    table): (round 0's streams when training starts there, else None; counts; noise)."""
    k0, k1 = wr.rounds[0]
    inp = ShardedInput([(r,) for r in wr.walks(0, max_retries)], k1 - k0, wr.split)
    streams, counts, noise = streams_and_noise(inp, train_cfg, max_retries)
    return (wr.placed(streams, 0) if t0 == 0 else None), counts, noise


def walk_and_train_rounds(wr: WalkRounds, plan: BlockPlan, tables: tuple[list, list], *, step0: int, run: Run | None,
                          progress: Progress, cpus: int, max_retries: int) -> tuple[list, int, int]:
    """Round after round: walk it, prepare and cut it into bucket pieces, train its P episodes,
    wait. Only one round's walks, streams and pieces exist at a time: the shard owners that walk
    take the cluster's CPUs (tasks/graph.py shard_actor_cpus), so a round's training ends before
    the next round's walk starts. Returns (links' stats refs, checkpoint commits, tokens trained)."""
    log = stage_logger()
    link_fn = remote(sh.link_stage, "train", num_cpus=cpus, num_returns=3, max_retries=max_retries)
    ckpt_fn = remote(sb.commit_checkpoint, "train", num_cpus=0, max_retries=max_retries)
    P, W, t0 = plan.P, len(wr.rounds), step0 // plan.P
    streams, counts, noise = first_round(wr, plan.train, t0, max_retries)
    stats_refs, commit_ref, commits, tokens = [], None, 0, 0
    for t in range(t0, plan.total_steps // P):
        w = t % W
        if streams is None:
            k0, k1 = wr.rounds[w]
            streams = wr.placed(prepare_streams([(r,) for r in wr.walks(w, max_retries)], k1 - k0, wr.split,
                                                plan.train, t, counts, max_retries), w)
        got = round_pieces(streams, plan, 0, max_retries, rounds=1)
        tokens += sum(sum(i["group_tokens"]) for i in streams.infos)
        round_refs = []
        for step in range(max(step0, t * P), (t + 1) * P):
            refs, write = submit_episode(link_fn, got, step, plan, noise, tables, split=wr.split, run=run,
                                         progress=progress)
            stats_refs, round_refs = stats_refs + refs, round_refs + refs
            if write:
                commit_ref = ckpt_fn.remote(run.lake, run.checkpoint_dir, step + 1, plan.total_steps, plan.want,
                                            commit_ref, *round_refs)
                commits, round_refs = commits + 1, []
        del streams, got
        streams = None
        progress.wait(stats_refs[-P * P * len(wr.graph.shards):] + ([commit_ref] if commit_ref is not None else []),
                      log)
    return stats_refs, commits, tokens


@task(name="train", cache_policy=NO_CACHE)
def train_sharded_streamed(graph: GraphHandle, walk_cfg: WalkConfig, train_cfg: TrainConfig, method: str,
                           run: Run | None = None, max_retries: int = 3) -> StageResult:
    """Sharded walks and sharded training in rounds of walk numbers (walk.stream, docs/training.md):
    no task, and not the object store, ever holds more than about one round's walks. Returns what
    train_sharded returns (one embedding ref per graph shard, info). run: whose checkpoint folder
    holds the block checkpoints; a re-run continues at the last checkpointed episode and walks
    round 0 again (its counts are the noise) and the round it continues in."""
    import ray
    log = stage_logger()
    if train_cfg.engine != "numba":
        raise ValueError("sharded training (graph.shards > 1) runs the numba kernel; use train.engine=numba")
    S, n, K, t_all = graph.num_shards, graph.num_nodes, walk_cfg.walks_per_node, time.perf_counter()
    P = sharded_partitions(train_cfg, S)
    wr = WalkRounds(graph, walk_cfg, method, sh.walk_rounds(K, sh.walks_per_round(n, walk_cfg)),
                    sh.graph_split(n, P))
    cpus = int(stage_options("train").get("num_cpus") or worker_cpus(train_cfg.workers))
    plan = BlockPlan(P=P, R=len(wr.rounds), total_steps=P * len(wr.rounds) * train_cfg.epochs, train=train_cfg,
                     threads=train_cfg.threads or cpus,
                     want={"walks": gt.walk_spec(graph, walk_cfg, method, None), "partitions": P, "nodes": n,
                           "split": wr.split.kind,
                           "walk_rounds": [list(r) for r in wr.rounds], **{k: getattr(train_cfg, k) for k in BLOCK_KEYS}})
    run = run if run is not None and run.checkpoints else None
    W_in, W_out, resumed = resume_shards(run, plan, log) if run is not None else ([None] * P, [None] * P, None)
    step0 = resumed or 0
    log.info(f"train: sharded, walks streamed in {len(wr.rounds)} rounds of {wr.rounds[0][1] - wr.rounds[0][0]} "
             f"walks per node, {S} shards, P={P} -> {plan.total_steps} episodes of {P} blocks x {S} links")
    progress, t0 = Progress("train (streamed walks)", "tokens"), time.perf_counter()
    try:
        stats_refs, commits, tokens = walk_and_train_rounds(wr, plan, (W_in, W_out), step0=step0, run=run,
                                                            progress=progress, cpus=cpus, max_retries=max_retries)
    finally:
        progress.close()
    done = max(1, plan.total_steps - step0)
    out = sharded_info(ray.get(stats_refs), plan, S, tokens_per_epoch=tokens * plan.steps_per_epoch / done,
                       step0=step0, resumed=resumed, workers=train_cfg.workers, cpus=cpus, commits=commits,
                       seconds=time.perf_counter() - t0)
    out.update(streamed=True, walk_rounds=len(wr.rounds), wall_s=round(time.perf_counter() - t_all, 3))
    log.info(f"train: {out['tokens']:,} tokens at {out['tokens_per_s']:,.0f} tokens/s (walks streamed, "
             f"{len(wr.rounds)} rounds), loss {out['loss_first']:.4f} -> {out['loss_last']:.4f}")
    return StageResult(shard_tables(W_in, wr.split, graph.shard_bounds, run, max_retries), out)
