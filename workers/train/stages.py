"""Skip-gram stage bodies that run inside Ray workers: one-table training on all walks (with
per-epoch checkpoints) and streamed training one round of walks at a time.

Plain functions over arrays; they import neither Prefect nor Ray. tasks/train.py and
tasks/stream.py wrap them in `ray.remote`.
"""
from __future__ import annotations

import os

import numpy as np

from embedlake.lake import Lake
from embedlake.workers.run.faults import fault_point


def interleave_walks(parts: list[np.ndarray], walks_per_node: int) -> np.ndarray:
    """Partition walk blocks (k-major each) -> one k-major block over all nodes, whatever the partitioning."""
    length = parts[0].shape[1]
    cube = [p.reshape(walks_per_node, -1, length) for p in parts]
    return np.concatenate(cube, axis=1).reshape(-1, length)


def train_stage(num_nodes: int, walks_per_node: int, train: dict, *parts: np.ndarray) -> tuple[np.ndarray, dict]:
    """One-table skip-gram on all walks. train["_checkpoint"] = {"lake", "run_dir", "base", "resume"}
    (optional): the tables are checkpointed after every epoch (the last one as the final table)
    and, with a resume state of epoch k, training continues at epoch k (docs/reliability.md)."""
    from embedlake.workers.train.skipgram import train_sgns
    from embedlake.workers.graph.walks import walks_to_sentences
    ck = train.get("_checkpoint")
    walks = interleave_walks(list(parts), walks_per_node)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    threads = train.get("threads") or int(os.environ.get("EMBEDLAKE_TRAIN_THREADS", "0")) or 0
    engine = train.get("engine", "numba")
    kw = dict(dim=train["dim"], window=train["window"], negatives=train["negatives"],
              ns_exponent=train["ns_exponent"], epochs=train["epochs"], lr=train["lr"], min_lr=train["min_lr"],
              sample=train["sample"], seed=train["seed"])
    if engine == "torch":
        from embedlake.workers.train.torch_engine import train_sgns_torch
        W, _, stats = train_sgns_torch(tokens, offsets, num_nodes, device=train.get("device", "auto"), threads=threads,
                                       **kw)
        if ck is not None:       # the torch engine has no epoch hook: the finished table only
            _checkpoint_epoch(ck, train["epochs"], train["epochs"], W, None, stats)
    else:
        report = train.get("progress")
        cb = (lambda done, total, loss: report(done, total, loss=loss)) if report else None
        init, start = None, 0
        if ck is not None and ck.get("resume") is not None:
            from embedlake.workers.run.checkpoints import load
            lake = Lake(ck["lake"])
            start = int(ck["resume"]["epoch"])
            init = (load(lake, ck["resume"], "w_in"), load(lake, ck["resume"], "w_out"))
        on_epoch = None
        if ck is not None:
            on_epoch = lambda k, W_in, W_out: _checkpoint_epoch(ck, k, train["epochs"], W_in, W_out, None)
        W, _, stats = train_sgns(tokens, offsets, num_nodes, threads=threads, progress=cb, init=init,
                                 start_epoch=start, on_epoch=on_epoch, **kw)
        if ck is not None:       # the final state also carries the training figures
            _checkpoint_info(ck, stats)
    return W, stats


def _checkpoint_epoch(ck: dict, k: int, epochs: int, W_in: np.ndarray, W_out: np.ndarray | None, stats) -> None:
    """After epoch k: W_in/W_out (the last epoch: W_in alone, the finished table), then the state."""
    from embedlake.workers.run.checkpoints import advance
    final = k >= epochs
    files = {"w_in": W_in} if final or W_out is None else {"w_in": W_in, "w_out": W_out}
    prev = ck.get("_prev", (ck.get("resume") or {}).get("epoch"))
    advance(Lake(ck["lake"]), ck["run_dir"], "train", ck["base"], "epoch", k, files, final=final,
            info=_plain(stats), prev=prev)
    ck["_prev"] = k
    fault_point(f"after:train_epoch:{k}")


def _checkpoint_info(ck: dict, stats: dict) -> None:
    from embedlake.workers.run.checkpoints import read_state, write_state
    lake = Lake(ck["lake"])
    state = read_state(lake, ck["run_dir"], "train")
    if state is not None and state.get("final"):
        state["info"] = _plain(stats)
        write_state(lake, ck["run_dir"], "train", state)


def _plain(stats) -> dict:
    return {k: v for k, v in (stats or {}).items() if isinstance(v, (int, float, str, bool))}


def train_round(num_nodes: int, train: dict, round_index: int, rounds: int, state, *parts: np.ndarray,
                checkpoint: dict | None = None):
    """One round of streamed training: the walks of round r (one walk per node) continue the model.

    The learning rate decays linearly across all rounds exactly as in one call over every walk
    (each round trains the segment [r/R, (r+1)/R] of the schedule), so only one round of walks is
    ever held. Returns ((W_in, W_out, counts), stats). state: the previous round's result, or
    {"lake", "state"} of a checkpointed round to continue from (a resumed run).
    checkpoint {"lake", "run_dir", "base", "prev"}: after this round the state is written to the lake
    (`stream/round=<r+1>/`; the last round: the finished table only).
    """
    if isinstance(state, dict):             # resumed: the round checkpoint written by a killed run
        from embedlake.workers.run.checkpoints import load
        lk = Lake(state["lake"])
        state = (load(lk, state["state"], "w_in"), load(lk, state["state"], "w_out"), load(lk, state["state"], "counts"))
    from embedlake.workers.train.skipgram import train_sgns
    from embedlake.workers.graph.walks import walks_to_sentences
    tokens, offsets = walks_to_sentences(interleave_walks(list(parts), 1))
    lr, min_lr = float(train["lr"]), float(train["min_lr"])
    seg_hi = lr - (lr - min_lr) * round_index / rounds
    seg_lo = lr - (lr - min_lr) * (round_index + 1) / rounds
    counts = None if state is None else state[2]
    if counts is None:      # noise distribution from the first round's visits (stationary ~ degree)
        counts = np.bincount(tokens[tokens >= 0], minlength=num_nodes).astype(np.int64)
    report = train.get("progress")
    done0 = round_index * len(tokens)
    cb = (lambda done, total, loss: report(done0 + done, total * rounds, loss=loss)) if report else None
    W_in, W_out, stats = train_sgns(tokens, offsets, num_nodes, counts=counts, dim=train["dim"],
                                    window=train["window"], negatives=train["negatives"],
                                    ns_exponent=train["ns_exponent"], epochs=1, lr=seg_hi, min_lr=seg_lo,
                                    sample=train["sample"], seed=train["seed"] + 7919 * round_index,
                                    threads=train.get("threads") or 0,
                                    init=None if state is None else (state[0].copy(), state[1].copy()),
                                    progress=cb)
    if checkpoint is not None:
        from embedlake.workers.run.checkpoints import advance
        final = round_index + 1 == rounds
        files = {"w_in": W_in} if final else {"w_in": W_in, "w_out": W_out, "counts": counts}
        advance(Lake(checkpoint["lake"]), checkpoint["run_dir"], "stream", checkpoint["base"], "round",
                round_index + 1, files, final=final, info=checkpoint.get("info"), prev=checkpoint.get("prev"))
        fault_point(f"after:stream_round:{round_index + 1}")
    return (W_in, W_out, counts), stats


def first_table(state) -> np.ndarray:
    return state[0]

