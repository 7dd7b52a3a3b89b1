"""What every flow does first: fix the run id, open the lake, start the stage clock and Ray."""
from __future__ import annotations

from embedlake.lake import Lake, check_name, new_run_id
from embedlake.tasks.graph import Stopwatch
from embedlake.tasks.runtime import ensure_ray


def start_run(cfg) -> tuple[str, Lake, Stopwatch]:
    """(run_id, lake, stopwatch) for a flow config with `lake` and `ray` sections; Ray is up after."""
    run_id = check_name(cfg.lake.run_id, "run") if cfg.lake.run_id else new_run_id()
    lake = Lake(cfg.lake.uri)
    sw = Stopwatch()
    sw.run("ray_start", ensure_ray, cfg.ray.address, cfg.ray.num_cpus, cfg.ray.stages)
    return run_id, lake, sw
