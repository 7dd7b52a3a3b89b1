"""One run, from claim to commit: the one place that knows what a run is.

A `Run` is one (dataset, method, run id) in one lake. It owns

- its id (`lake.run_id`, else a new time-ordered one), its lake and its stage clock (`Stopwatch`);
- Ray (started by `Run.open`, timed as the `ray_start` stage);
- its claim: the run id is reserved with `Lake.claim_run` before any data file is written, so two
  writers never share one run's paths. A run that was killed (SIGKILL, OOM, a lost machine) cannot
  release its claim; with `train.resume` (default on) a re-run with the same run id on the same host
  takes over a claim whose writer no longer exists (docs/reliability.md, "Resuming a killed run").
  A live writer's claim, or another host's (its process cannot be checked from here), is refused
  with CommitConflict;
- its stage checkpoints (`Run.stage`): a stage is opened by the spec of everything that
  determines its output; the `Stage` says what a killed attempt left (resume state, finished
  parts, a finished table) and hands Ray tasks a picklable `StageHandle` to checkpoint with
  (workers/run/checkpoints.py is the store). train.checkpoint=never writes none;
- abandon-and-clean-up: used as a context manager (`with Run.open(...) as run:`), a failure
  removes the run's data files (unless it was committed), releases the claim and re-raises;
  checkpoints of real progress stay for a re-run;
- its run record ("manifest": config, code version, stages, metrics, row counts, checksums, graph):
  built (`manifest`) and committed (`commit`) through the run: the data files the workers wrote
  become one Delta commit per table, the record in the commit metadata (embedlake/lake.py); then
  the run's checkpoints are dropped.

A killed run re-run with the same run id reuses, in order: the ingested graph (content-addressed,
always), finished walk partitions, the training tables of the last finished epoch (one-table
engine) / round (streamed walks) / checkpoint step (partitioned engine), and the finished table (a
run killed in publish, evaluate or commit does not train again).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from embedlake.lake import Lake, Manifest, check_name, new_run_id
from embedlake.tasks.fanout import stage_logger
from embedlake.tasks.graph import StageResult
from embedlake.tasks.remote import remote
from embedlake.tasks.runtime import ensure_ray
from embedlake.workers.evaluate.stages import run_dirs as evaluate_dirs
from embedlake.workers.run import checkpoints as cp

# what a run may write under its own method (removed when it fails before its commit)
DATA_KINDS = ("embeddings", "walks", "tokens", "tables", "codebooks", "state")
# checkpoint stages whose state names run files (the corpus vocabulary and token-id shards): they go
# with those files when the run is abandoned
RUN_FILE_STAGES = ("tokens",)


class Stopwatch:
    """Wall time per stage for the run summary and the manifest."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.stages[name] = {"wall_s": round(time.perf_counter() - t0, 3)}
        return out


@task(name="commit", cache_policy=NO_CACHE)
def commit_manifest(lake, manifest_fields: dict) -> str:
    """Commit the run: one Delta commit per table it wrote, after every data file exists."""
    url = Lake(lake).commit(Manifest(**manifest_fields))
    stage_logger().info(f"commit: {url}")
    return url


def plain(info: dict | None) -> dict:
    """The scalar figures of a stage's info (what a checkpoint state can hold as JSON)."""
    return {k: v for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool))}


class Run:
    """One run of a flow: id, lake, claim, stage clock, stage checkpoints, clean-up and manifest."""

    def __init__(self, lake: Lake, dataset: str, method: str, run_id: str, *, config=None, resume: bool = True,
                 checkpoints: bool = True, max_retries: int = 3, stopwatch: Stopwatch | None = None,
                 writes: tuple[str, ...] = ()):
        self.lake, self.dataset, self.method, self.run_id = lake, dataset, method, run_id
        self.config = config                  # the flow's pydantic config, stored in the manifest
        self.resume = resume                  # reuse matching checkpoints / take over a dead claim
        self.checkpoints = checkpoints        # write checkpoints at all (train.checkpoint != never)
        self.retries = max_retries            # Ray task retries of every stage
        self.stopwatch = stopwatch or Stopwatch()
        self.writes = tuple(writes)           # folders besides the DATA_KINDS ones (a table run's codec dir)
        self.claim_token: str | None = None
        self.t0 = time.perf_counter()
        self.kind: dict | None = None         # incremental or full, with counts (tasks/incremental.Update.record)

    @classmethod
    def open(cls, cfg, dataset: str, method: str, run_id: str | None = None, checkpoints: bool = True) -> "Run":
        """The run of a flow config (sections lake, ray, train): fixes the run id (`run_id`, else
        lake.run_id, else a new one), opens the lake and starts Ray. Not claimed yet: `with run:`.
        checkpoints=False: the run writes none whatever train.checkpoint says."""
        t0 = time.perf_counter()
        rid = run_id or cfg.lake.run_id
        run = cls(Lake(cfg.lake.uri), dataset, method, check_name(rid, "run") if rid else new_run_id(), config=cfg,
                  resume=cfg.train.resume, checkpoints=checkpoints and cfg.train.checkpoint != "never",
                  max_retries=cfg.ray.max_retries)
        run.t0 = t0
        run.time("ray_start", ensure_ray, cfg.ray.address, cfg.ray.num_cpus, cfg.ray.stages)
        return run

    def sibling(self, method: str, writes: tuple[str, ...] = ()) -> "Run":
        """Another run with this run's lake, id, config and clock under `method` (a compressed or
        learned table `<method>.<codec>`); `writes`: the folders it writes besides its own kinds."""
        return Run(self.lake, self.dataset, method, self.run_id, config=self.config, resume=self.resume,
                   checkpoints=self.checkpoints, max_retries=self.retries, stopwatch=self.stopwatch, writes=writes)

    def owns(self, *dirs: str) -> None:
        """Folders this run writes besides its own kinds' (removed with them when it fails)."""
        self.writes += tuple(dirs)

    # ---- the clock ---------------------------------------------------------------------------
    def time(self, name: str, fn, *args, **kwargs):
        """Run one stage (a Prefect task or a plain function) and record its wall time as `name`."""
        return self.stopwatch.run(name, fn, *args, **kwargs)

    @property
    def stages(self) -> dict[str, dict]:
        return self.stopwatch.stages

    def wall_s(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    # ---- claim and clean-up ------------------------------------------------------------------
    def is_committed(self) -> bool:
        return self.lake.is_committed(self.dataset, self.method, self.run_id)

    def claim(self) -> str:
        """Claim the run id (taking over a dead writer's claim when resuming); CommitConflict when the
        id is committed or in use."""
        if self.resume and not self.is_committed():
            other = self.lake.take_over_dead_claim(self.dataset, self.method, self.run_id)
            if other is not None:
                stage_logger().info(f"resume: run {self.run_id} of {self.dataset}/{self.method} was left by pid "
                                    f"{other.get('pid')} (claimed {other.get('claimed_at')}, no longer running): "
                                    f"its claim is taken over")
        self.claim_token = self.lake.claim_run(self.dataset, self.method, self.run_id)
        return self.claim_token

    def __enter__(self) -> "Run":
        self.claim()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abandon()
        return False

    def data_dirs(self) -> list[str]:
        """Every folder this run may have written data files to."""
        own = [Lake.run_dir(kind, self.dataset, self.method, self.run_id) for kind in DATA_KINDS]
        return own + evaluate_dirs(self.dataset, self.method, self.run_id) + list(self.writes)

    def abandon(self) -> None:
        """A failed run leaves no data file behind (unless it was committed) and drops its claim.
        Checkpoints of real progress (.npy files) stay for a re-run with this run id; stages that name
        run files just removed, and states that record no progress yet, go. Never raises: clean-up
        must not hide the original error."""
        try:
            if not self.is_committed():
                for rel in self.data_dirs():
                    self.lake.delete(rel, recursive=True)
                self._drop_idle_checkpoints()
        except Exception:  # noqa: BLE001
            pass
        if self.claim_token is not None:
            try:
                self.lake.release_claim(self.dataset, self.method, self.run_id, self.claim_token)
            except Exception:  # noqa: BLE001
                pass

    def _drop_idle_checkpoints(self) -> None:
        for name in RUN_FILE_STAGES:
            self.lake.delete(cp.stage_dir(self.checkpoint_dir, name), recursive=True)
        if not any(f.endswith(".npy") for f in self.lake.list_files(self.checkpoint_dir)):
            self.lake.delete(self.checkpoint_dir, recursive=True)

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> str:
        return Lake.run_dir("checkpoints", self.dataset, self.method, self.run_id)

    def stage(self, name: str, spec: dict) -> "Stage":
        """Open stage `name` by the spec of everything that determines its output: a matching state
        of a killed attempt is kept (resume), any other is removed."""
        if not self.checkpoints:
            return Stage(self, name, None)
        base, state, discarded = cp.open_stage(self.lake, self.checkpoint_dir, name, spec, self.resume)
        return Stage(self, name, base, state, discarded)

    def block_state(self) -> dict | None:
        """State of the block-partitioned engine (state.json at the checkpoint folder's top), if any."""
        if not self.checkpoints:
            return None
        rel = f"{self.checkpoint_dir}/state.json"
        try:
            return self.lake.read_json(rel) if self.lake.exists(rel) else None
        except Exception:  # noqa: BLE001 - an unreadable state is no state (start over)
            return None

    def drop_block_checkpoints(self) -> None:
        """Remove the block engine's state and shards only (the run's walk checkpoints stay usable)."""
        top = self.checkpoint_dir
        self.lake.delete(f"{top}/state.json")
        names = {f[len(top) + 1:].split("/", 1)[0] for f in self.lake.list_files(top) if f.startswith(top + "/")}
        for name in names:
            if name.startswith("step="):
                self.lake.delete(f"{top}/{name}", recursive=True)

    def drop_checkpoints(self) -> None:
        """After the commit the checkpoints are no longer needed (and `gc` would list them as orphans)."""
        try:
            self.lake.delete(self.checkpoint_dir, recursive=True)
        except Exception:  # noqa: BLE001 - leftover checkpoints are harmless
            pass

    # ---- manifest ----------------------------------------------------------------------------
    def manifest(self, files: dict, metrics: dict | None = None, extra: dict | None = None,
                 stages: dict | None = None) -> dict:
        """The manifest fields of this run (config: the flow's resolved config; stages: the clock's;
        extra["run_kind"]: incremental or full with counts, when the flow set `kind`)."""
        extra = {**(extra or {}), **({"run_kind": self.kind} if self.kind is not None else {})}
        return dict(dataset=self.dataset, method=self.method, run_id=self.run_id, files=files,
                    config=self.config.model_dump(mode="json") if self.config is not None else {},
                    metrics=metrics or {}, stages=self.stages if stages is None else stages, extra=extra)

    def commit(self, manifest: dict, stage: str = "commit") -> str:
        """Commit the run (last: every file it names exists), then drop the run's checkpoints."""
        url = self.time(stage, commit_manifest, self.lake, manifest)
        self.drop_checkpoints()
        return url


@dataclass
class Stage:
    """One opened stage checkpoint of a run (driver side). base None: checkpoints are off."""
    run: Run
    name: str
    base: dict | None
    state: dict | None = None       # the matching state a killed attempt left, else None
    discarded: bool = False         # a state of other input or settings was removed

    @property
    def enabled(self) -> bool:
        return self.base is not None

    @property
    def final(self) -> bool:
        return self.state is not None and bool(self.state.get("final"))

    def progress(self, key: str) -> int:
        """The step (`epoch`, `round`) an unfinished killed attempt reached; 0 to start over."""
        return int(self.state.get(key, 0)) if self.state is not None and not self.final else 0

    def resume_point(self, key: str, total: int, what: str) -> int:
        """progress(key), logged: where training continues (`what`: "training" / "streamed
        training"), or that a checkpoint of other input or settings was discarded."""
        start = self.progress(key)
        if start:
            stage_logger().info(f"resume: {what} continues at {key} {start + 1}/{total} "
                                f"({start} {key}(s) of run {self.run.run_id} reused)")
        elif self.discarded:
            stage_logger().info(f"resume: the run's {what} checkpoint is of other input or settings: "
                                f"starting over")
        return start

    def handle(self) -> cp.StageHandle | None:
        """What a Ray task checkpoints this stage with (None when checkpoints are off)."""
        if not self.enabled:
            return None
        return cp.StageHandle(self.run.lake, self.run.checkpoint_dir, self.name, self.base, self.state)

    def finished_parts(self, partitions: int) -> set[int]:
        """Partitions < `partitions` a killed attempt finished (none when the state did not match)."""
        if self.state is None:
            return set()
        return cp.finished_parts(self.run.lake, self.run.checkpoint_dir, self.name) & set(range(partitions))

    def finished_table(self) -> StageResult | None:
        """StageResult(table ref, info) when a killed attempt already wrote this stage's final table."""
        if not self.final:
            return None
        ref = remote(cp.load_table, "train", num_cpus=1).remote(self.handle())
        stage_logger().info(f"resume: the trained table of run {self.run.run_id} is reused from "
                            f"{self.run.lake.url(self.state['folder'])} (training had finished before the run was "
                            f"killed): not trained again")
        info = dict(self.state.get("info") or {})
        info["resumed"] = {"stage": self.name, "table_reused": True}
        return StageResult(ref, info)

    def save_table(self, table_ref, info: dict) -> None:
        """Checkpoint a finished table (a Ray task reads it from the object store and writes it)."""
        if not self.enabled:
            return
        import ray
        self.restart()
        ray.get(remote(cp.save_table, "publish", num_cpus=1).remote(self.handle(), table_ref, plain(info)))

    def restart(self) -> None:
        """Forget what a killed attempt left (its files too) and start the stage over."""
        if self.enabled:
            self.base, _, _ = cp.open_stage(self.run.lake, self.run.checkpoint_dir, self.name, self.base["spec"],
                                            resume=False)
            self.state = None

    def finish(self, **fields) -> None:
        """Mark the stage finished with `fields` in its state (after every file they name exists)."""
        if self.enabled:
            self.state = {**self.base, "final": True, **fields}
            cp.write_state(self.run.lake, self.run.checkpoint_dir, self.name, self.state)
