"""The one place where a workers/ function becomes Ray work, with per-stage resources.

`ray.stages` in the config (e.g. `-p 'ray.stages={train: {num_gpus: 1, num_cpus: 8}}'`) overrides
the options a stage asks for, so users put GPU stages on GPU nodes without touching code.

With EMBEDLAKE_RECORD_OBJECTS=<dir> set in the driver, every task made here also records the bytes
of its arguments and results (tasks/object_sizes.py); unset, nothing but the variable is looked at.
"""
from __future__ import annotations

import functools
import inspect
import os

from embedlake.tasks.object_sizes import RECORD_ENV, recorded
from embedlake.workers.heap import release_heap

_STAGE_OPTIONS: dict[str, dict] = {}


def set_stage_options(stages: dict[str, dict] | None) -> None:
    """Called by a flow after resolving its config (driver process). The option names were checked
    when the config was loaded (RayConfig.stages in embedlake/config.py)."""
    _STAGE_OPTIONS.clear()
    for stage, opts in (stages or {}).items():
        _STAGE_OPTIONS[stage] = dict(opts)


def stage_options(stage: str | None) -> dict:
    return dict(_STAGE_OPTIONS.get(stage, {})) if stage else {}


def remote(fn, stage: str | None = None, **options):
    """ray.remote(fn) with the stage's defaults, then the user's per-stage overrides; each call
    first gives back the heap earlier tasks of its worker left free (trimmed). `max_calls`, which
    Ray takes only in ray.remote itself, goes there (max_calls=1: a worker process of its own that
    exits after the call, for a task whose imports would stay in a pooled worker's heap)."""
    import ray
    options.update(stage_options(stage))
    directory = os.environ.get(RECORD_ENV)
    if directory:
        fn = recorded(fn, stage, directory, options.get("num_returns", 1))
    per_process = {"max_calls": options.pop("max_calls")} if "max_calls" in options else {}
    return ray.remote(**per_process)(trimmed(fn)).options(**options) if per_process else \
        ray.remote(trimmed(fn)).options(**options)


def trimmed(fn):
    """`fn` (same name and signature; a generator function stays one) that first calls
    workers/heap.py release_heap: a worker process runs task after task, and without it a task
    starts with the free heap its predecessors left in glibc's arenas (docs/scaling.md section 9).
    An actor class is returned as it is (its methods are calls on one long-lived object)."""
    if inspect.isclass(fn):
        return fn
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def steps(*args, **kwargs):
            release_heap()
            yield from fn(*args, **kwargs)
        return steps

    @functools.wraps(fn)
    def call(*args, **kwargs):
        release_heap()
        return fn(*args, **kwargs)
    return call


# options a Ray task takes but an actor does not (an actor's calls are not retried one by one: the
# engines that use actors re-run their rounds instead)
TASK_ONLY_OPTIONS = ("max_retries", "retry_exceptions", "num_returns")


def remote_actor(cls, stage: str | None = None, fixed: dict | None = None, **options):
    """ray.remote(cls) as an actor class with the stage's defaults and the user's per-stage
    overrides (task-only options such as max_retries dropped). fixed: options no override replaces
    (shard owners started during ingest hold no CPUs whatever the walk stage asks: tasks/graph.py).
    `concurrency_groups`, which Ray takes only in ray.remote itself, goes there."""
    import ray
    options.update(stage_options(stage))
    options.update(fixed or {})
    directory = os.environ.get(RECORD_ENV)
    if directory:
        cls = recorded(cls, stage, directory)
    actor = ray.remote(concurrency_groups=options.pop("concurrency_groups"))(cls) if "concurrency_groups" in options \
        else ray.remote(cls)
    return actor.options(**{k: v for k, v in options.items() if k not in TASK_ONLY_OPTIONS})
