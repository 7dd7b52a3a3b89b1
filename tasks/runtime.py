"""Process-level setup for the driver: Prefect without a server, Ray local or remote.

Environment defaults are applied before Prefect or Ray are imported (see `configure_env`), so the
main job needs no external service: Prefect runs an ephemeral API in-process, Ray starts locally.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

log = logging.getLogger("embedlake")

# Allocators of the Ray workers this driver starts (a local Ray, or a Cluster's nodes: they inherit
# the environment; a remote cluster needs them in its nodes' environment). A worker runs many tasks,
# and by default each allocator keeps what a task freed: glibc's dynamic mmap threshold moves big
# arrays onto a heap it cannot shrink past fragments, Arrow's mimalloc pool and polars' jemalloc
# hold freed pages. Measured with the per-task recorder on the 1M-edge bench (docs/scaling.md, 9):
# the largest task peak of a stage fell by 30 to 50 MB.
WORKER_ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "2",                    # not one heap per numba / polars thread
    "MALLOC_MMAP_THRESHOLD_": "1048576",        # arrays >= 1 MiB: own mapping, returned on free
    "MALLOC_TRIM_THRESHOLD_": "1048576",        # give back a heap top over 1 MiB
    "ARROW_DEFAULT_MEMORY_POOL": "system",      # Arrow buffers through malloc (the settings above)
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",   # polars' jemalloc: purge freed pages now
}


def configure_env(project_home: str | None = None) -> None:
    """Safe defaults for offline machines; existing settings win."""
    home = project_home or os.path.join(os.path.expanduser("~"), ".embedlake")
    os.environ.setdefault("PREFECT_HOME", os.path.join(home, "prefect"))
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)   # Prefect's ephemeral server needs it to exist
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for key, value in WORKER_ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, stages: dict | None = None):
    """Connect to Ray (address / RAY_ADDRESS) or start it locally; reuse an existing connection.
    `stages`: the config's per-stage Ray options (ray.stages), applied to every stage's tasks."""
    configure_env()
    from embedlake.tasks.remote import set_stage_options
    set_stage_options(stages)
    import ray
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING,
              "configure_logging": True}
    if address:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    else:
        # "local": always a new local Ray, never a cluster some other process happens to run here
        with quiet_token_auth_notice():
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return ray


class _TokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextmanager
def quiet_token_auth_notice():
    """Drop Ray's notice that a new local cluster has token authentication on.

    Ray 2.60 turns token auth on for every new local `ray.init()` and says so on stderr unless
    RAY_AUTH_MODE is set. Setting RAY_AUTH_MODE=token would silence it too, but Ray reads it once,
    when `ray` is imported (flows import it first), and the same variable would then demand a token
    from a remote cluster given later by --ray-address. So the local cluster keeps Ray's default
    (token auth, token in ~/.ray/auth_token) and only the notice is filtered, while it starts.
    """
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _TokenAuthNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def cluster_cpus() -> int:
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node_cpus() -> list[float]:
    """CPUs of every alive node."""
    import ray
    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def max_node_cpus() -> int:
    """CPUs of the largest alive node: a multi-threaded kernel task must fit on one node."""
    import ray
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus) if cpus else 1))


def worker_cpus(workers: int) -> int:
    """CPUs of one of `workers` parallel multi-threaded tasks: an equal share of the cluster, but never
    more than the largest node has (a task asking for more would wait for ever)."""
    return max(1, min(max_node_cpus(), cluster_cpus() // max(1, workers)))


def resolve_partitions(configured: int) -> int:
    """shard.partitions = 0 means one partition per CPU of the Ray cluster."""
    return configured if configured > 0 else cluster_cpus()
