"""Progress from inside Ray tasks to the driver's Prefect log (and so the CLI and the Prefect UI).

Workers never import Ray: they get a plain callable, `Reporter`, which forwards
`(done, total, **figures)` to a small Ray actor; the Prefect task polls the actor while it waits
for the work and logs done/total, rate and ETA at most every few seconds.
"""
from __future__ import annotations

import time


class _Board:
    """Ray actor body: the latest report per worker key."""

    def __init__(self):
        self.reports: dict[str, dict] = {}

    def report(self, key: str, done: float, total: float, figures: dict) -> None:
        self.reports[key] = {"done": done, "total": total, **figures}

    def snapshot(self) -> dict:
        return dict(self.reports)


class Reporter:
    """Picklable callable handed to worker code: reporter(done, total, **figures). Never raises."""

    def __init__(self, board, key: str, min_interval_s: float = 1.0):
        self.board, self.key, self.min_interval_s = board, key, min_interval_s
        self._last = 0.0

    def __call__(self, done: float, total: float, **figures) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s and done < total:
            return
        self._last = now
        try:
            self.board.report.remote(self.key, float(done), float(total),
                                     {k: float(v) for k, v in figures.items() if isinstance(v, (int, float))})
        except Exception:  # noqa: BLE001 - progress must never break the work
            pass


class Progress:
    """Driver side: create reporters, then `wait(refs)` logging aggregate progress."""

    def __init__(self, what: str, unit: str, every_s: float = 5.0):
        import ray
        self.what, self.unit, self.every_s = what, unit, every_s
        self.board = ray.remote(num_cpus=0)(_Board).remote()

    def reporter(self, key: str) -> Reporter:
        return Reporter(self.board, key)

    def wait(self, refs: list, log=None) -> None:
        import ray

        from embedlake.tasks.fanout import stage_logger
        log = log or stage_logger()
        t0 = time.perf_counter()
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=self.every_s)
            try:
                snap = ray.get(self.board.snapshot.remote(), timeout=self.every_s)
            except Exception:  # noqa: BLE001 - a lost progress actor (node loss) must not fail the run
                snap = {}
            if not snap:
                continue
            done = sum(r["done"] for r in snap.values())
            total = sum(r["total"] for r in snap.values())
            el = time.perf_counter() - t0
            rate = done / el if el > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else float("nan")
            extra = ""
            losses = [r["loss"] for r in snap.values() if "loss" in r]
            if losses:
                extra = f", loss {sum(losses) / len(losses):.4f}"
            log.info(f"{self.what}: {done:,.0f}/{total:,.0f} {self.unit} ({done / max(total, 1):.0%}), "
                     f"{rate:,.0f} {self.unit}/s{extra}, ETA {eta:,.0f}s")

    def close(self) -> None:
        import ray
        try:
            ray.kill(self.board)
        except Exception:  # noqa: BLE001
            pass
