"""Block-partitioned skip-gram across Ray workers, with checkpoints in the lake (issue 4).

The driver (this module, inside the Prefect `train` task) never holds a table: it submits one Ray
task per block (i, j) of each episode (workers/train/blocks.py), passing the W_in[i] / W_out[j]
shards as ObjectRefs returned by the previous episode's blocks, so shards move worker to worker
through the object store and Ray orders the blocks by their data dependencies. Blocks of one
episode share no shard, so they run in parallel without locks or averaging.

Checkpoints (train.checkpoint = round | episode | epoch | never), under
`Lake.run_dir("checkpoints", dataset, method, run_id)`:
    step=<k>/w_in-<p>.npy, step=<k>/w_out-<p>.npy    shards after k episodes (.npy, no pickle),
                                                    written by the blocks themselves
    state.json                                      {"step": k, fingerprint, schedule, config}
                                                    written by the driver once all shards of
                                                    step k exist; older steps are then removed
A re-run with the same run id (train.resume; the dead writer's claim is taken over, tasks/claims.py)
whose stream fingerprint and training settings match the state continues at episode k with those
shards (the walks come from the run's walk checkpoint, workers/run/checkpoints.py). The flow removes the checkpoints after the run
commits (`drop_checkpoints`).
"""
from __future__ import annotations

import time

from embedlake.lake import Lake

_KEYS = ("dim", "window", "negatives", "ns_exponent", "epochs", "lr", "min_lr", "sample", "seed", "rounds")


def checkpoint_dir(dataset: str, method: str, run_id: str) -> str:
    return Lake.run_dir("checkpoints", dataset, method, run_id)


def read_state(lake: Lake, dataset: str, method: str, run_id: str) -> dict | None:
    rel = f"{checkpoint_dir(dataset, method, run_id)}/state.json"
    try:
        return lake.read_json(rel) if lake.exists(rel) else None
    except Exception:  # noqa: BLE001 - an unreadable state is no state (start over)
        return None


def drop_checkpoints(lake: Lake, dataset: str, method: str, run_id: str) -> None:
    """After the commit the checkpoints are no longer needed (and `gc` would list them as orphans)."""
    try:
        lake.delete(checkpoint_dir(dataset, method, run_id), recursive=True)
    except Exception:  # noqa: BLE001 - leftover checkpoints are harmless
        pass


def _drop_block_checkpoints(lake: Lake, run_dir: str) -> None:
    """Remove this engine's state and shards only (the run's walk checkpoints stay usable)."""
    lake.delete(f"{run_dir}/state.json")
    top = {f[len(run_dir) + 1:].split("/", 1)[0] for f in lake.list_files(run_dir) if f.startswith(run_dir + "/")}
    for name in top:
        if name.startswith("step="):
            lake.delete(f"{run_dir}/{name}", recursive=True)


def resolve_partitions(train_cfg: dict) -> int:
    P = int(train_cfg.get("partitions") or 0)
    return P if P >= 1 else 2 * int(train_cfg.get("workers", 1))


def _is_checkpoint_step(mode: str, done: int, P: int, steps_per_epoch: int) -> bool:
    if mode == "episode":
        return True
    if mode == "round":
        return done % P == 0
    if mode == "epoch":
        return done % steps_per_epoch == 0
    return False


def train_partitioned(graph, walk_refs: list, walk_cfg: dict, train_cfg: dict, checkpoint: dict | None = None,
                      max_retries: int = 3, log=None):
    """Block-partitioned training on `train.workers` Ray workers; returns StageResult(emb_ref, info).

    checkpoint: {"lake": Lake, "dataset", "method", "run_id"} (None = no checkpoints, no resume).
    """
    import ray

    from embedlake.tasks.fanout import stage_logger
    from embedlake.tasks.graph import StageResult
    from embedlake.tasks.progress import Progress
    from embedlake.tasks.remote import remote, stage_options
    from embedlake.tasks.runtime import cluster_cpus
    from embedlake.workers.train import blocks as sb

    log = log or stage_logger()
    cfg = {k: v for k, v in train_cfg.items() if k != "progress"}
    if cfg.get("engine", "numba") != "numba":
        raise ValueError("partitioned training (train.workers > 1 or train.partitions >= 1) runs the numba "
                         "kernel; use train.engine=numba, or train.workers=1 with the torch engine")
    workers = int(cfg.get("workers", 1))
    P = resolve_partitions(cfg)
    R = int(cfg.get("rounds", 1))
    steps_per_epoch = P * R
    total_steps = steps_per_epoch * int(cfg["epochs"])
    cpus = int(stage_options("train").get("num_cpus") or max(1, cluster_cpus() // workers))
    cfg["threads"] = cfg.get("threads") or cpus
    t_all = time.perf_counter()

    prep_fn = remote(sb.prep_stage, "train", num_cpus=1, num_returns=2, max_retries=max_retries)
    prep_ref, info_ref = prep_fn.remote(graph.num_nodes, walk_cfg["walks_per_node"], P, R, cfg, 0, *walk_refs)
    info = ray.get(info_ref)

    lake, run_dir, mode = None, None, cfg.get("checkpoint", "round")
    if checkpoint is not None and mode != "never":
        lake = Lake(checkpoint["lake"])
        run_dir = checkpoint_dir(checkpoint["dataset"], checkpoint["method"], checkpoint["run_id"])
    want = {"fingerprint": info["fingerprint"], "partitions": P, "nodes": graph.num_nodes,
            **{k: cfg[k] for k in _KEYS}}
    W_in: list = [None] * P
    W_out: list = [None] * P
    step0 = 0
    resumed = None
    if lake is not None:
        state = read_state(lake, checkpoint["dataset"], checkpoint["method"], checkpoint["run_id"])
        if state is not None and cfg.get("resume", True) and state.get("match") == want:
            step0 = int(state["step"])
            W_in = [sb.checkpoint_file(run_dir, step0, "w_in", p) for p in range(P)]
            W_out = [sb.checkpoint_file(run_dir, step0, "w_out", p) for p in range(P)]
            resumed = step0
            log.info(f"train: resuming run {checkpoint['run_id']} at episode {step0}/{total_steps} "
                     f"from {lake.url(run_dir)}")
        elif state is not None:
            log.info("train: the run's checkpoint does not match this input/config (or resume is off): "
                     "starting over")
            _drop_block_checkpoints(lake, run_dir)

    block_fn = remote(sb.block_stage, "train", num_cpus=cpus, num_returns=3, max_retries=max_retries)
    progress = Progress("train", "tokens")
    keys = []
    for step in range(step0, total_steps):             # register every block: ETA over the whole run
        ep, e, blocks = sb.step_blocks(step, P, R)
        for i, j in blocks:
            key = f"s{step}.b{i}"
            progress.board.report.remote(key, 0.0, info["block_centres"][j][e // P] / P, {})
            keys.append(key)
    log.info(f"train: {workers} workers x {cpus} threads, P={P} partitions, {R} rounds -> {total_steps} episodes "
             f"of {P} blocks; {info['tokens']:,} tokens per epoch")

    # Everything is submitted at once: Ray runs each block as soon as its two shards exist, so a
    # worker never waits for an episode barrier; checkpoint commits are tasks chained in order.
    ckpt_fn = remote(sb.commit_checkpoint, "train", num_cpus=0, max_retries=max_retries)
    stats_refs: list = []
    commit_ref = None
    commits = 0
    round_refs: list = []
    t0 = time.perf_counter()
    try:
        for step in range(step0, total_steps):
            ep, e, blocks = sb.step_blocks(step, P, R)
            if cfg["sample"] > 0 and e == 0 and ep > 0:      # a new subsample per epoch
                prep_ref, _ = prep_fn.remote(graph.num_nodes, walk_cfg["walks_per_node"], P, R, cfg, ep, *walk_refs)
            write = lake is not None and _is_checkpoint_step(mode, step + 1, P, steps_per_epoch)
            ck = None if lake is None else {"lake": lake, "run_dir": run_dir, "step": step + 1, "write": write}
            for i, j in blocks:
                a, b, st = block_fn.remote(prep_ref, i, j, W_in[i], W_out[j], cfg, ep, e, ck,
                                           progress.reporter(f"s{step}.b{i}"))
                W_in[i], W_out[j] = a, b
                stats_refs.append(st)
                round_refs.append(st)
            if write:                                   # blocks since the last commit have written shards
                commit_ref = ckpt_fn.remote(lake, run_dir, step + 1, total_steps, want, commit_ref, *round_refs)
                commits += 1
                round_refs = []
        progress.wait(stats_refs + ([commit_ref] if commit_ref is not None else []), log)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    emb_ref = remote(sb.assemble_stage, "train", num_cpus=1, max_retries=max_retries).remote(prep_ref, lake, *W_in)
    ray.wait([emb_ref], fetch_local=False)
    stats = ray.get(stats_refs)
    first = stats[:P]
    last = stats[-P:]
    loss = lambda ss: sum(s["loss_sum"] for s in ss) / max(1, sum(s["pairs"] for s in ss))
    pairs = sum(s["pairs"] for s in stats)
    tokens = info["tokens"] * (total_steps - step0) / steps_per_epoch
    out = {"engine": "numba-blocks", "workers": workers, "threads": cpus, "partitions": P, "rounds": R,
           "episodes": total_steps - step0, "resumed_at": resumed if resumed is not None else -1,
           "tokens": int(tokens), "pairs": int(pairs), "seconds": round(seconds, 3),
           "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
           "pairs_per_s": pairs / seconds if seconds > 0 else float("nan"),
           "loss_first": loss(first) if first else float("nan"), "loss_last": loss(last) if last else float("nan"),
           "block_s_max": max((s["seconds"] for s in stats), default=0.0),
           # where the wall time went: kernel time of all blocks, and the span from the first block's
           # start to the last block's end (Ray worker start-up, prep and shard hand-offs are the rest)
           "block_kernel_s": round(sum(s["seconds"] for s in stats), 3),
           "block_span_s": round(max((s["t_end"] for s in stats), default=0.0)
                                 - min((s["t_start"] for s in stats), default=0.0), 3),
           "block_processes": len({s["pid"] for s in stats}),
           "checkpoints": commits, "checkpoint_write_s": round(sum(s.get("checkpoint_s", 0.0) for s in stats), 3),
           "wall_s": round(time.perf_counter() - t_all, 3)}
    log.info(f"train: {out['tokens']:,} tokens at {out['tokens_per_s']:,.0f} tokens/s on {workers} workers "
             f"(P={P}), loss {out['loss_first']:.4f} -> {out['loss_last']:.4f}")
    return StageResult(emb_ref, out)
