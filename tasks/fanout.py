"""Waiting on Ray work from a Prefect task, with progress in the Prefect log (and so the CLI)."""
from __future__ import annotations

import time
from typing import Callable


def stage_logger():
    """The Prefect run logger when inside a flow/task run, else the module logger."""
    try:
        from prefect import get_run_logger
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context
        import logging
        return logging.getLogger("embedlake")


def gather(refs: list, what: str, unit_of: Callable[[object], float] | None = None, unit: str = "",
           every_s: float = 5.0) -> list:
    """ray.get(refs) in completion order, logging `what: done/total` at most every `every_s`.

    unit_of(result) gives the work a finished result represents (e.g. walk steps) for a rate.
    Results come back in the order of `refs`.
    """
    import ray
    log = stage_logger()
    pending = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    results: list = [None] * len(refs)
    t0 = last = time.perf_counter()
    work = 0.0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=every_s)
        for r in ready:
            val = ray.get(r)
            results[index[r]] = val
            if unit_of is not None:
                work += unit_of(val)
        now = time.perf_counter()
        if now - last >= every_s or not pending:
            done = len(refs) - len(pending)
            rate = f", {work / max(now - t0, 1e-9):,.0f} {unit}/s" if unit_of is not None else ""
            log.info(f"{what}: {done}/{len(refs)} done{rate}, {now - t0:.1f}s")
            last = now
    return results
