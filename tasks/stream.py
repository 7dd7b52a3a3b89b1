"""Walks streamed into training: one round (one walk per node) at a time, the next round's walks
generated while the current one trains, so all walks are never held at once.

Chosen by tasks/train.py `train_on_walks` when the walks would not fit comfortably
(walk.stream=auto and more than walk.stream_threshold_mb of walks) or when asked
(walk.stream=always). Same maths as the one-shot path: rounds are the k-major blocks, the
learning-rate schedule is continued piecewise.

This is the one-CSR graph's streamed engine. On a sharded graph (graph.shards > 1) the same
settings pick tasks/train.py `train_sharded_streamed`: rounds of walk numbers walked by the
sharded walk engine and trained by the sharded (bucketed) engine, never all walks at once.
"""
from __future__ import annotations

import dataclasses

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.config import TrainConfig, WalkConfig
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.graph import GraphHandle, StageResult, walk_mode
from embedlake.tasks.progress import Progress
from embedlake.tasks.remote import remote, stage_options
from embedlake.tasks.run import Stage
from embedlake.tasks.runtime import max_node_cpus
from embedlake.workers.graph import stages as graph_stages
from embedlake.workers.graph.walks import walks_mb
from embedlake.workers.train import stages as train_stages


def round_walks(graph: GraphHandle, walk_cfg: WalkConfig, method: str, bounds: list[tuple[int, int]],
                max_retries: int):
    """submit(r) -> the walk refs of round r (walk k = r mod walks_per_node of every node)."""
    alias_ref = None
    if graph.meta.get("stats", {}).get("weighted"):
        alias_ref = remote(graph_stages.alias_stage, "walk", num_cpus=1, max_retries=max_retries).remote(graph.csr_ref)
    walk_fn = remote(graph_stages.walk_stage, "walk", num_cpus=1, max_retries=max_retries)
    mode = walk_mode(method)

    def submit(r: int) -> list:
        k = r % walk_cfg.walks_per_node        # epoch e repeats the same walks (deterministic by (seed, v, k))
        return [walk_fn.remote(graph.csr_ref, lo, hi, walk_cfg, mode, walks_per_node=1, walk_offset=k,
                               alias=alias_ref) for lo, hi in bounds]
    return submit


def round_info(all_stats: list[dict], rounds: int, r0: int) -> dict:
    tokens = sum(s.get("tokens", 0) for s in all_stats)
    secs = sum(s.get("seconds", 0.0) for s in all_stats)
    info = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs) if secs else 0,
            "loss_first": all_stats[0].get("loss_first"), "loss_last": all_stats[-1].get("loss_last"),
            "rounds": rounds, "streamed": True}
    if r0:
        info["resumed"] = {"stage": "stream", "start_round": r0}
    return info


@task(name="walk_train_streamed", cache_policy=NO_CACHE)
def walk_and_train(graph: GraphHandle, walk_cfg: WalkConfig, train_cfg: TrainConfig, method: str,
                   bounds: list[tuple[int, int]], stage: Stage, max_retries: int = 3) -> StageResult:
    """stage (the run's `stream` stage): the model is checkpointed after every round
    (train.checkpoint=round|episode) or every epoch's last round (epoch), the last round as the
    finished table; a killed run's re-run continues after the last checkpointed round (walks of
    earlier rounds are not generated again: each round walks afresh)."""
    import ray
    log = stage_logger()
    done = stage.finished_table()
    if done is not None:
        return done
    rounds = walk_cfg.walks_per_node * train_cfg.epochs
    cpus = int(stage_options("train").get("num_cpus") or max_node_cpus())
    handle = stage.handle()
    r0 = stage.resume_point("round", rounds, "streamed training") if handle is not None else 0
    every = walk_cfg.walks_per_node if train_cfg.checkpoint == "epoch" else 1
    submit = round_walks(graph, walk_cfg, method, bounds, max_retries)
    progress = Progress("train (streamed walks)", "tokens")
    report = progress.reporter("train")
    train_fn = remote(train_stages.train_round, "train", num_cpus=cpus, num_returns=2, max_retries=max_retries)
    log.info(f"walk+train streamed: {rounds} rounds of one walk per node "
             f"({walks_mb(graph.num_nodes, walk_cfg) / walk_cfg.walks_per_node:,.0f} MB of walks each)")
    state = handle if r0 else None
    stats_refs, last_ck, nxt = [], r0 or None, submit(r0)
    for r in range(r0, rounds):
        cur = nxt
        if r + 1 < rounds:
            nxt = submit(r + 1)          # next round's walks run while this round trains
        target = None
        if handle is not None and ((r + 1) % every == 0 or r + 1 == rounds):
            target, last_ck = dataclasses.replace(handle, resume_state=None, prev=last_ck), r + 1
        state, st = train_fn.remote(graph.num_nodes, train_cfg, r, rounds, state, *cur,
                                    threads=train_cfg.threads or cpus, progress=report,
                                    checkpoint=target)
        stats_refs.append(st)
        progress.wait([st])
        del cur
    progress.close()
    emb_ref = remote(train_stages.first_table, "train", num_cpus=0).remote(state)
    info = round_info(ray.get(stats_refs), rounds, r0)
    if handle is not None:       # the final state carries the figures too (a re-run after publish reuses them)
        handle.set_final_info({k: v for k, v in info.items() if k != "resumed"})
    log.info(f"train: {info['tokens']:,} tokens at {info['tokens_per_s']:,} tokens/s (streamed, {rounds - r0} rounds)")
    return StageResult(emb_ref, info)
