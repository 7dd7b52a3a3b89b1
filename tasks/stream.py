"""Walks streamed into training: one round (one walk per node) at a time, the next round's walks
generated while the current one trains, so all walks are never held at once.

Used by embed_graph when the walks would not fit comfortably (walk.stream=auto and more than
walk.stream_threshold_mb of walks) or when asked (walk.stream=always). Same maths as the one-shot path:
rounds are the k-major blocks, the learning-rate schedule is continued piecewise.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.graph import GraphHandle, StageResult
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.runtime import max_node_cpus
from embedlake.workers.graph import stages as graph_stages
from embedlake.workers.train import stages as train_stages
from embedlake.workers.graph.walks import walks_mb




@task(name="walk_train_streamed", cache_policy=NO_CACHE)
def walk_and_train(graph: GraphHandle, walk_cfg: dict, train_cfg: dict, method: str,
                   bounds: list[tuple[int, int]], max_retries: int = 3, checkpoint=None) -> StageResult:
    """checkpoint (tasks/resume.RunCheckpoints): the model is checkpointed after every round
    (train.checkpoint=round|episode) or every epoch's last round (epoch), the last round as the
    finished table; a killed run's re-run continues after the last checkpointed round (walks of
    earlier rounds are not generated again: each round walks afresh)."""
    import ray
    log = stage_logger()
    mode = "node2vec" if method == "node2vec" else "deepwalk"
    rounds_per_epoch = walk_cfg["walks_per_node"]
    rounds = rounds_per_epoch * train_cfg["epochs"]
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    cfg = dict(train_cfg)
    cfg["threads"] = cfg.get("threads") or cpus
    ck = checkpoint if checkpoint is not None and checkpoint.enabled else None
    base, r0, state = None, 0, None
    if ck is not None:
        from embedlake.tasks.resume import finished_table, train_spec
        from embedlake.workers.run import checkpoints as cp
        spec = train_spec(graph, walk_cfg, cfg, method, "streamed")
        done = finished_table(ck, "stream", spec, log)
        if done is not None:
            return done
        base, prev, discarded = cp.open_stage(ck.lake, ck.run_dir, "stream", spec, ck.resume)
        if prev is not None and prev.get("round"):
            r0 = int(prev["round"])
            state = {"lake": ck.lake, "state": prev}
            log.info(f"resume: streamed training continues at round {r0 + 1}/{rounds} "
                     f"({r0} round(s) of run {ck.run_id} reused)")
        elif discarded:
            log.info("resume: the run's streamed-training checkpoint is of other input or settings: starting over")
    every = rounds_per_epoch if cfg.get("checkpoint") == "epoch" else 1

    alias_ref = None
    if graph.meta.get("stats", {}).get("weighted"):
        alias_ref = remote(graph_stages.alias_stage, "walk", num_cpus=1, max_retries=max_retries).remote(graph.csr_ref)
    walk_fn = remote(graph_stages.walk_stage, "walk", num_cpus=1, max_retries=max_retries)

    def submit(r: int) -> list:
        k = r % rounds_per_epoch        # epoch e repeats the same walks (deterministic by (seed, v, k))
        return [walk_fn.remote(graph.csr_ref, lo, hi, 1, walk_cfg["length"], walk_cfg["seed"], walk_cfg["p"],
                               walk_cfg["q"], mode, 1, alias_ref, k) for lo, hi in bounds]

    progress = Progress("train (streamed walks)", "tokens")
    cfg["progress"] = progress.reporter("train")
    train_fn = remote(train_stages.train_round, "train", num_cpus=cpus, num_returns=2, max_retries=max_retries)
    log.info(f"walk+train streamed: {rounds} rounds of one walk per node "
             f"({walks_mb(graph.num_nodes, walk_cfg) / rounds_per_epoch:,.0f} MB of walks each)")
    stats_refs = []
    last_ck = r0 or None
    nxt = submit(r0)
    for r in range(r0, rounds):
        cur = nxt
        if r + 1 < rounds:
            nxt = submit(r + 1)          # next round's walks run while this round trains
        target = None
        if ck is not None and ((r + 1) % every == 0 or r + 1 == rounds):
            target = {"lake": ck.lake, "run_dir": ck.run_dir, "base": base, "prev": last_ck}
            last_ck = r + 1
        state, st = train_fn.remote(graph.num_nodes, cfg, r, rounds, state, *cur, checkpoint=target)
        stats_refs.append(st)
        progress.wait([st])
        del cur
    progress.close()
    all_stats = ray.get(stats_refs)
    emb_ref = remote(train_stages.first_table, "train", num_cpus=0).remote(state)
    tokens = sum(s.get("tokens", 0) for s in all_stats)
    secs = sum(s.get("seconds", 0.0) for s in all_stats)
    info = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs) if secs else 0,
            "loss_first": all_stats[0].get("loss_first"), "loss_last": all_stats[-1].get("loss_last"),
            "rounds": rounds, "streamed": True}
    if r0:
        info["resumed"] = {"stage": "stream", "start_round": r0}
    if ck is not None:       # the final state carries the figures too (a re-run after publish reuses them)
        from embedlake.workers.run import checkpoints as cp
        final = cp.read_state(ck.lake, ck.run_dir, "stream")
        if final is not None and final.get("final"):
            final["info"] = {k: v for k, v in info.items() if k != "resumed"}
            cp.write_state(ck.lake, ck.run_dir, "stream", final)
    log.info(f"train: {tokens:,} tokens at {info['tokens_per_s']:,} tokens/s (streamed, {rounds - r0} rounds)")
    return StageResult(emb_ref, info)
