"""Run-id claims of every flow (embed_graph, walk, embed_corpus, compress) in one place.

A run reserves its run id with `Lake.claim_run` before it writes a data file, so two writers never
share one run's paths. A run that was killed (SIGKILL, OOM, a lost machine) cannot release its
claim; with `resume` (train.resume, default on) a re-run with the same run id on the same host
takes over a claim whose writer no longer exists and continues from the run's checkpoints
(docs/reliability.md, "Resuming a killed run"). A live writer's claim, or another host's (its
process cannot be checked from here), is still refused with CommitConflict.
"""
from __future__ import annotations

from embedlake.lake import Lake


def claim_run(lake: Lake, dataset: str, method: str, run_id: str, resume: bool = True, log=None) -> str:
    """Claim the run id (taking over a dead writer's claim when `resume`); returns the claim token
    for `Lake.release_claim`. CommitConflict when the id is committed or in use."""
    if resume and not lake.is_committed(dataset, method, run_id):
        other = lake.take_over_dead_claim(dataset, method, run_id)
        if other is not None and log is not None:
            log.info(f"resume: run {run_id} of {dataset}/{method} was left by pid {other.get('pid')} "
                     f"(claimed {other.get('claimed_at')}, no longer running): its claim is taken over")
    return lake.claim_run(dataset, method, run_id)
