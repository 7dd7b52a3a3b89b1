"""Every scheduled deployment of embedlake, in one table.

`embedlake serve` runs them in-process (Prefect's `serve`: no work pool, the serving process
executes each run in a subprocess); `embedlake deploy` registers the same table with a work pool
for `prefect worker start`. To schedule another flow (embed_corpus, compress, ...), add a
`DeploymentSpec` to `DEPLOYMENTS` below; nothing else needs to change.

Backlog safety. Prefect pre-creates scheduled runs; when nothing serves them (an unclean kill of
`serve` or of the worker), they pile up as Late and a restarted runner would start all of them at
once. Three guards, each sufficient on its own for a stampede:
  1. deployment concurrency limit 1 with collision strategy CANCEL_NEW: a run that fires while
     another run of the same deployment is active is cancelled, not queued;
  2. the serving runner itself runs at most `limit` flow runs at a time;
  3. at start-up, `skip_missed_runs` cancels scheduled runs that are later than `max_lateness_s`
     (default: one interval) - "no backfill": a missed refresh is superseded by the next one.
"""
from __future__ import annotations

import datetime as _dt
import importlib
from dataclasses import dataclass, field
from typing import Any

from embedlake.config import PipelineConfig

MODULE_ENTRYPOINT = True   # deployments import the flow by module path (works wherever embedlake is installed)


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment: which flow, when, with which default parameters."""
    name: str                               # deployment name (the flow's name is added by Prefect)
    flow: str                               # "module:function" of a Prefect flow taking `config`
    interval_s: float | None = 86_400.0     # every N seconds, or
    cron: str | None = None                 # a cron string (wins over interval_s when set)
    timezone: str = "UTC"
    concurrency_limit: int = 1              # active runs of this deployment at once
    collision_strategy: str = "CANCEL_NEW"  # or ENQUEUE
    max_lateness_s: float | None = None     # skip scheduled runs later than this (None: one interval)
    config: dict = field(default_factory=dict)   # default `config` parameter (PipelineConfig fields)
    description: str = ""
    tags: tuple[str, ...] = ("embedlake",)

    def lateness_limit(self) -> float:
        if self.max_lateness_s is not None:
            return self.max_lateness_s
        return self.interval_s if (self.interval_s and not self.cron) else 3600.0


DEPLOYMENTS: dict[str, DeploymentSpec] = {
    "embed-graph-daily": DeploymentSpec(
        name="embed-graph-daily",
        flow="embedlake.flows.embed_graph:embed_graph",
        cron="0 3 * * *",
        description="Re-embed the configured graph every night at 03:00 UTC. Unchanged input reuses "
                    "its ingested graph version (content-addressed), so only the walks and training run.",
    ),
    # "embed-corpus-daily": DeploymentSpec(name=..., flow="embedlake.flows.embed_corpus:embed_corpus", ...),
    # "compress-daily": DeploymentSpec(name=..., flow="embedlake.flows.compress:compress", ...),
}


def load_flow(ref: str):
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def select(names: list[str] | None) -> list[DeploymentSpec]:
    if not names:
        return list(DEPLOYMENTS.values())
    unknown = [n for n in names if n not in DEPLOYMENTS]
    if unknown:
        from embedlake.errors import ConfigError
        raise ConfigError(f"unknown deployment(s) {unknown}; defined: {sorted(DEPLOYMENTS)}")
    return [DEPLOYMENTS[n] for n in names]


def with_overrides(spec: DeploymentSpec, *, interval_s: float | None = None, cron: str | None = None,
                   config: PipelineConfig | None = None, max_lateness_s: float | None = None,
                   concurrency_limit: int | None = None) -> DeploymentSpec:
    """A copy of spec with CLI overrides (a schedule, the default config)."""
    from dataclasses import replace
    kw: dict[str, Any] = {}
    if cron:
        kw.update(cron=cron, interval_s=None)
    elif interval_s:
        kw.update(interval_s=float(interval_s), cron=None)
    if config is not None:
        kw["config"] = config.model_dump(mode="json")
    if max_lateness_s is not None:
        kw["max_lateness_s"] = max_lateness_s
    if concurrency_limit is not None:
        kw["concurrency_limit"] = concurrency_limit
    return replace(spec, **kw)


async def to_runner_deployment(spec: DeploymentSpec, work_pool: str | None = None):
    """The Prefect RunnerDeployment of a spec: schedule, concurrency, typed default parameters."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    fl = load_flow(spec.flow)
    sched: dict[str, Any] = {}
    if spec.cron:
        from prefect.schedules import Cron
        sched["schedules"] = [Cron(spec.cron, timezone=spec.timezone)]
    elif spec.interval_s:
        sched["interval"] = _dt.timedelta(seconds=spec.interval_s)
    params = {"config": PipelineConfig.model_validate(spec.config).model_dump(mode="json")}
    kw: dict[str, Any] = dict(
        name=spec.name, description=spec.description or None, tags=list(spec.tags), parameters=params,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=spec.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy[spec.collision_strategy]),
        entrypoint_type=EntrypointType.MODULE_PATH if MODULE_ENTRYPOINT else EntrypointType.FILE_PATH,
        **sched)
    if work_pool:
        kw["work_pool_name"] = work_pool
    return await fl.ato_deployment(**kw)


async def skip_missed_runs(deployment_ids: list, lateness: dict, now: _dt.datetime | None = None) -> list[str]:
    """Cancel scheduled runs of these deployments that are later than their lateness limit.

    lateness: deployment id -> seconds. Returns the ids of the cancelled runs. This is the
    "no backfill" rule: after downtime only the next on-time run happens.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled
    now = now or _dt.datetime.now(_dt.timezone.utc)
    skipped: list[str] = []
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids))),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))), limit=200)
        for r in runs:
            when = r.expected_start_time or (r.state.state_details.scheduled_time if r.state else None)
            if when is None:
                continue
            late = (now - when).total_seconds()
            if late > lateness.get(r.deployment_id, 3600.0):
                await client.set_flow_run_state(r.id, Cancelled(
                    message=f"skipped: missed by {late:.0f}s while no runner was up (no backfill)"), force=True)
                skipped.append(str(r.id))
    return skipped
