"""Skip-gram stage bodies that run inside Ray workers: one-table training on all walks (with
per-epoch checkpoints) and streamed training one round of walks at a time.

Plain functions over arrays; they import neither Prefect nor Ray. tasks/train.py and
tasks/stream.py wrap them in `ray.remote`.
"""
from __future__ import annotations

import os

import numpy as np

from embedlake.config import TrainConfig
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point


def interleave_walks(parts: list[np.ndarray], walks_per_node: int) -> np.ndarray:
    """Partition walk blocks (k-major each) -> one k-major block over all nodes, whatever the partitioning."""
    length = parts[0].shape[1]
    cube = [p.reshape(walks_per_node, -1, length) for p in parts]
    return np.concatenate(cube, axis=1).reshape(-1, length)


def sgns_settings(train: TrainConfig) -> dict:
    """The skip-gram kernel's keyword arguments from the train section."""
    return dict(dim=train.dim, window=train.window, negatives=train.negatives, ns_exponent=train.ns_exponent,
                epochs=train.epochs, lr=train.lr, min_lr=train.min_lr, sample=train.sample, seed=train.seed)


def kernel_threads(threads: int) -> int:
    """The threads a kernel runs with: as given, else $EMBEDLAKE_TRAIN_THREADS, else 0 (all)."""
    return threads or int(os.environ.get("EMBEDLAKE_TRAIN_THREADS", "0")) or 0


def epoch_callbacks(progress, checkpoint: StageHandle | None, epochs: int):
    """(progress callback, per-epoch checkpoint hook) of a numba training call."""
    cb = (lambda done, total, loss: progress(done, total, loss=loss)) if progress else None
    on_epoch = None
    if checkpoint is not None:
        on_epoch = lambda k, W_in, W_out: checkpoint_epoch(checkpoint, k, epochs, W_in, W_out, None)  # noqa: E731
    return cb, on_epoch


def resumed_tables(checkpoint: StageHandle | None) -> tuple[tuple | None, int]:
    """(W_in, W_out) of the epoch a killed attempt checkpointed and that epoch, else (None, 0)."""
    start = checkpoint.resume_step("epoch") if checkpoint is not None else 0
    if not start:
        return None, 0
    return (checkpoint.load("w_in"), checkpoint.load("w_out")), start


def train_stage(num_nodes: int, walks_per_node: int, train: TrainConfig, *parts: np.ndarray, threads: int = 0,
                progress=None, checkpoint: StageHandle | None = None, context_out: bool = False) -> tuple:
    """One-table skip-gram on all walks. checkpoint (the run's `train` stage): the tables are
    checkpointed after every epoch (the last one as the final table) and, with a resume state of
    epoch k, training continues at epoch k (docs/reliability.md). Returns (W_in, stats), with
    context_out (W_in, stats, W_out): the context table an incremental run starts from."""
    from embedlake.workers.graph.walks import walks_to_sentences
    from embedlake.workers.train.skipgram import train_sgns
    walks = interleave_walks(list(parts), walks_per_node)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    threads = kernel_threads(threads)
    if train.engine == "torch":
        from embedlake.workers.train.torch_engine import train_sgns_torch
        W, W_out, stats = train_sgns_torch(tokens, offsets, num_nodes, device=train.device, threads=threads,
                                           **sgns_settings(train))
        if checkpoint is not None:       # the torch engine has no epoch hook: the finished table only
            checkpoint_epoch(checkpoint, train.epochs, train.epochs, W, None, stats)
        return (W, stats, W_out) if context_out else (W, stats)
    cb, on_epoch = epoch_callbacks(progress, checkpoint, train.epochs)
    init, start = resumed_tables(checkpoint)
    W, W_out, stats = train_sgns(tokens, offsets, num_nodes, threads=threads, progress=cb, init=init,
                                 start_epoch=start, on_epoch=on_epoch, shared_negatives=train.negatives_per == "window",
                                 split_negatives=train.split_negatives,
                                 **sgns_settings(train))
    if checkpoint is not None:       # the final state also carries the training figures
        checkpoint_info(checkpoint, stats)
    return (W, stats, W_out) if context_out else (W, stats)


def checkpoint_epoch(checkpoint: StageHandle, k: int, epochs: int, W_in: np.ndarray, W_out: np.ndarray | None,
                     stats) -> None:
    """After epoch k: W_in/W_out (the last epoch: W_in alone, the finished table), then the state."""
    final = k >= epochs
    files = {"w_in": W_in} if final or W_out is None else {"w_in": W_in, "w_out": W_out}
    if checkpoint.prev is None:          # the first step of this attempt replaces the resumed one
        checkpoint.prev = checkpoint.resume_step("epoch") or None
    checkpoint.advance("epoch", k, files, final=final, info=plain(stats))
    fault_point(f"after:train_epoch:{k}")


def checkpoint_info(checkpoint: StageHandle, stats: dict) -> None:
    """The finished table's state also carries the training figures (a re-run that reuses it reports them)."""
    checkpoint.set_final_info(plain(stats))


def plain(stats) -> dict:
    return {k: v for k, v in (stats or {}).items() if isinstance(v, (int, float, str, bool))}


def round_schedule(train: TrainConfig, round_index: int, rounds: int) -> tuple[float, float]:
    """(lr at the start, lr at the end) of round r: the segment [r/R, (r+1)/R] of the linear decay."""
    lr, min_lr = float(train.lr), float(train.min_lr)
    return lr - (lr - min_lr) * round_index / rounds, lr - (lr - min_lr) * (round_index + 1) / rounds


def train_round(num_nodes: int, train: TrainConfig, round_index: int, rounds: int, state, *parts: np.ndarray,
                threads: int = 0, progress=None, checkpoint: StageHandle | None = None):
    """One round of streamed training: the walks of round r (one walk per node) continue the model.

    The learning rate decays linearly across all rounds exactly as in one call over every walk
    (each round trains the segment [r/R, (r+1)/R] of the schedule), so only one round of walks is
    ever held. Returns ((W_in, W_out, counts), stats). state: the previous round's result, or the
    StageHandle of a checkpointed round to continue from (a resumed run).
    checkpoint (the run's `stream` stage): after this round the state is written to the lake
    (`stream/round=<r+1>/`; the last round: the finished table only).
    """
    if isinstance(state, StageHandle):      # resumed: the round checkpoint written by a killed run
        state = (state.load("w_in"), state.load("w_out"), state.load("counts"))
    from embedlake.workers.graph.walks import walks_to_sentences
    from embedlake.workers.train.skipgram import train_sgns
    tokens, offsets = walks_to_sentences(interleave_walks(list(parts), 1))
    seg_hi, seg_lo = round_schedule(train, round_index, rounds)
    counts = None if state is None else state[2]
    if counts is None:      # noise distribution from the first round's visits (stationary ~ degree)
        counts = np.bincount(tokens[tokens >= 0], minlength=num_nodes).astype(np.int64)
    done0 = round_index * len(tokens)
    cb = (lambda done, total, loss: progress(done0 + done, total * rounds, loss=loss)) if progress else None
    W_in, W_out, stats = train_sgns(tokens, offsets, num_nodes, counts=counts, dim=train.dim,
                                    window=train.window, negatives=train.negatives,
                                    ns_exponent=train.ns_exponent, epochs=1, lr=seg_hi, min_lr=seg_lo,
                                    sample=train.sample, seed=train.seed + 7919 * round_index,
                                    threads=threads or 0,
                                    init=None if state is None else (state[0].copy(), state[1].copy()),
                                    progress=cb)
    if checkpoint is not None:
        final = round_index + 1 == rounds
        files = {"w_in": W_in} if final else {"w_in": W_in, "w_out": W_out, "counts": counts}
        checkpoint.advance("round", round_index + 1, files, final=final)
        fault_point(f"after:stream_round:{round_index + 1}")
    return (W_in, W_out, counts), stats


def first_table(state) -> np.ndarray:
    return state[0]

