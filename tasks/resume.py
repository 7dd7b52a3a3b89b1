"""Driver side of stage checkpoints (workers/run/checkpoints.py): which checkpoint folder a run uses,
what determines each stage's output (its fingerprint spec), and reusing a finished table.

A killed run re-run with the same run id (train.resume, the default) reuses, in order:
the ingested graph (content-addressed, always), finished walk partitions, the training tables of
the last finished epoch (one-table engine) / round (streamed walks) / checkpoint step (partitioned
engine), and the finished table (a run killed in publish, evaluate or commit does not train again).
train.checkpoint=never writes no checkpoints at all.
"""
from __future__ import annotations

from dataclasses import dataclass

from embedlake.lake import Lake

# settings that determine a trained table (threads do not: one thread is bit-reproducible, more
# threads are Hogwild-nondeterministic anyway, so resuming with other threads is as good as a re-run)
TRAIN_KEYS = ("dim", "window", "negatives", "ns_exponent", "epochs", "lr", "min_lr", "sample", "seed", "engine")


@dataclass
class RunCheckpoints:
    """Where a run keeps its checkpoints and whether it writes / reuses them."""
    lake: Lake
    dataset: str
    method: str
    run_id: str
    resume: bool = True          # reuse matching checkpoints of an earlier (killed) attempt
    enabled: bool = True         # write checkpoints at all (train.checkpoint != never)

    @property
    def run_dir(self) -> str:
        return Lake.run_dir("checkpoints", self.dataset, self.method, self.run_id)

    @classmethod
    def of(cls, lake: Lake, dataset: str, method: str, run_id: str, train_cfg: dict) -> "RunCheckpoints":
        return cls(lake, dataset, method, run_id, bool(train_cfg.get("resume", True)),
                   train_cfg.get("checkpoint", "round") != "never")

    def legacy(self) -> dict:
        """The {lake, dataset, method, run_id} dict of the partitioned engine (tasks/train.py)."""
        return {"lake": self.lake, "dataset": self.dataset, "method": self.method, "run_id": self.run_id}


def graph_key(graph) -> dict:
    """The walked graph: its content-addressed version plus the link-prediction hold-out, if any."""
    return {"version": graph.meta["version"], "holdout": graph.meta.get("holdout")}


def walk_spec(graph, walk_cfg: dict, method: str, bounds: list | None) -> dict:
    mode = "node2vec" if method.startswith("node2vec") else "deepwalk"
    spec = {"graph": graph_key(graph), "mode": mode,
            **{k: walk_cfg[k] for k in ("walks_per_node", "length", "seed", "p", "q")}}
    if bounds is not None:           # partition files hold one start-node range each
        spec["bounds"] = [list(b) for b in bounds]
    return spec


def train_spec(graph, walk_cfg: dict, train_cfg: dict, method: str, engine: str) -> dict:
    """The one-table / streamed table depends on the walks (not on their partitioning) and training."""
    return {"walks": walk_spec(graph, walk_cfg, method, None), "engine_path": engine,
            **{k: train_cfg.get(k) for k in TRAIN_KEYS}}


def finished_table(ck: RunCheckpoints | None, stage: str, spec: dict, log=None):
    """StageResult(table ref, info) of a stage whose final table a killed attempt already wrote
    (same fingerprint), else None."""
    if ck is None or not ck.enabled or not ck.resume:
        return None
    from embedlake.workers.run import checkpoints as cp
    state = cp.read_state(ck.lake, ck.run_dir, stage)
    if state is None or not state.get("final") or state.get("fingerprint") != cp.fingerprint(spec):
        return None
    from embedlake.tasks.graph import StageResult
    from embedlake.tasks.remote import remote
    ref = remote(cp.load_checkpoint_array, "train", num_cpus=1).remote(ck.lake, state, "w_in")
    if log is not None:
        log.info(f"resume: the trained table of run {ck.run_id} is reused from {ck.lake.url(state['folder'])} "
                 f"(training had finished before the run was killed): not trained again")
    info = dict(state.get("info") or {})
    info["resumed"] = {"stage": stage, "table_reused": True}
    return StageResult(ref, info)


def save_table(ck: RunCheckpoints | None, stage: str, spec: dict, table_ref, info: dict) -> None:
    """Checkpoint a finished table (a Ray task reads it from the object store and writes it)."""
    if ck is None or not ck.enabled:
        return
    import ray

    from embedlake.tasks.remote import remote
    from embedlake.workers.run import checkpoints as cp
    base, _, _ = cp.open_stage(ck.lake, ck.run_dir, stage, spec, resume=False)
    info = {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool))}
    ray.get(remote(cp.save_table, "publish", num_cpus=1).remote(ck.lake, ck.run_dir, stage, base, table_ref, info))


def epoch_checkpoint(ck: RunCheckpoints | None, stage: str, spec: dict, epochs: int, log=None) -> tuple[dict | None, int]:
    """(the `_checkpoint` dict a one-table training task writes its epoch checkpoints with, epoch to
    start at) for a stage whose finished table was not reused (`finished_table` first).

    A matching, unfinished state of a killed attempt gives its last epoch k: training continues at
    k + 1 from that epoch's W_in / W_out (workers/graph/stages.py `_checkpoint_epoch` writes them); a state
    of other input or settings is discarded (open_stage) and training starts over. (None, 0) when
    checkpoints are off."""
    if ck is None or not ck.enabled:
        return None, 0
    from embedlake.workers.run import checkpoints as cp
    base, state, discarded = cp.open_stage(ck.lake, ck.run_dir, stage, spec, ck.resume)
    start = int(state.get("epoch", 0)) if state is not None and not state.get("final") else 0
    if start and log is not None:
        log.info(f"resume: training continues at epoch {start + 1}/{epochs} "
                 f"({start} epoch(s) of run {ck.run_id} reused)")
    elif discarded and log is not None:
        log.info(f"resume: the run's {stage} checkpoint is of other input or settings: training from the start")
    return {"lake": ck.lake, "run_dir": ck.run_dir, "base": base, "resume": state if start else None}, start


def corpus_tokens_spec(input_cfg: dict, shards: list[dict], stamps: list, text_spec: dict, vocab_cfg: dict) -> dict:
    """What determines a corpus run's vocabulary and token-id shards: the input (its shards and each
    file's size and modification stamp), the text settings and the vocabulary settings."""
    keys = ("path", "text_column", "shard_mb")
    return {"input": {k: input_cfg.get(k) for k in keys}, "shards": shards, "stamps": stamps,
            "text": text_spec, "vocab": vocab_cfg}
