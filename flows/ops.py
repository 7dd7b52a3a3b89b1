"""Operations subcommands: serve / deploy / worker (schedules), submit (Ray Jobs), ls / show / gc
(reading the lake), s3-block (S3 credentials kept in Prefect).

Registered in flows/cli.py through SUBCOMMAND_MODULES; each parser sets `func(args) -> status`.
S3 credentials may come from the environment or from a Prefect Secret block (`--s3-block NAME`,
or EMBEDLAKE_S3_BLOCK); a block's values are put into this process's environment, so the flow,
its Ray workers (StorageEnv travels with the Lake) and any subprocess a runner starts see them.
They are never printed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Secret-block JSON keys -> environment variables read by embedlake.storage
S3_BLOCK_KEYS = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN", "region": "AWS_DEFAULT_REGION",
    "endpoint_url": "AWS_ENDPOINT_URL",
}
# Never uploaded with a Ray job: environments, data, caches, VCS
JOB_EXCLUDES = [".venv", "venv", ".git", "lake", "lake-*", ".pytest_cache", "__pycache__", "*.pyc", "*.npy",
                "*.parquet", "node_modules", "bench/out", "build", "dist", "*.egg-info", ".mypy_cache", ".ruff_cache"]
# Forwarded to a Ray job's driver when set here (not secrets; credentials travel only on request)
JOB_FORWARD_ENV = ("PREFECT_API_URL", "EMBEDLAKE_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                   "AWS_REGION", "AWS_DEFAULT_REGION", "EMBEDLAKE_S3_BLOCK")
JOB_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


# ---- S3 credentials from a Prefect block -------------------------------------------------------
def load_s3_block(name: str) -> dict[str, str]:
    """Environment values (AWS_*) from a Prefect Secret block holding a JSON object."""
    from prefect.blocks.system import Secret

    from embedlake.errors import ConfigError
    try:
        value = Secret.load(name).get()
    except ValueError as e:
        raise ConfigError(f"s3 block {name!r}: cannot load it from Prefect ({type(e).__name__})") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"s3 block {name!r}: expected a JSON object with keys {sorted(S3_BLOCK_KEYS)}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"s3 block {name!r}: expected a JSON object with keys {sorted(S3_BLOCK_KEYS)}")
    unknown = sorted(set(value) - set(S3_BLOCK_KEYS))
    if unknown:
        raise ConfigError(f"s3 block {name!r}: unknown keys {unknown}; allowed: {sorted(S3_BLOCK_KEYS)}")
    return {S3_BLOCK_KEYS[k]: str(v) for k, v in value.items() if v not in (None, "")}


def apply_s3_block(name: str | None) -> None:
    """Put a block's S3 settings into os.environ (the driver, its subprocesses and Ray workers)."""
    name = name or os.environ.get("EMBEDLAKE_S3_BLOCK")
    if name:
        os.environ.update(load_s3_block(name))


def save_s3_block(name: str, env: dict | None = None, overwrite: bool = True) -> list[str]:
    """Store the S3 settings of `env` (default: os.environ) as a Prefect Secret block; returns its keys."""
    from prefect.blocks.system import Secret
    env = os.environ if env is None else env
    inv = {v: k for k, v in S3_BLOCK_KEYS.items()}
    value = {inv[k]: env[k] for k in inv if env.get(k)}
    if not value.get("region") and env.get("AWS_REGION"):
        value["region"] = env["AWS_REGION"]
    if not value.get("endpoint_url") and env.get("EMBEDLAKE_S3_ENDPOINT"):
        value["endpoint_url"] = env["EMBEDLAKE_S3_ENDPOINT"]
    from embedlake.errors import ConfigError
    if not value.get("aws_access_key_id") or not value.get("aws_secret_access_key"):
        raise ConfigError("s3-block save: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set")
    Secret(value=value).save(name, overwrite=overwrite)
    return sorted(value)


# ---- config helpers ----------------------------------------------------------------------------
def _absolute_paths(cfg):
    """Local paths become absolute: scheduled runs, workers and Ray jobs run in other folders."""
    def fix(v):
        return v if v is None or "://" in v else os.path.abspath(os.path.expanduser(v))
    cfg.lake.uri = fix(cfg.lake.uri)
    cfg.input.edges = fix(cfg.input.edges)
    cfg.input.labels = fix(cfg.input.labels)
    return cfg


def _flow_options(p) -> None:
    p.add_argument("--edges", default=None, metavar="PATH_OR_URL", help="Edge list for the flow's default config.")
    p.add_argument("--labels", default=None, metavar="PATH_OR_URL", help="Node labels for the default config.")
    p.add_argument("--method", default=None, choices=["deepwalk", "node2vec", "fastrp", "orbits"])
    p.add_argument("--dataset", default=None, help="Dataset name in the lake.")


def _schedule_options(p) -> None:
    p.add_argument("--deployment", dest="deployments", action="append", default=[], metavar="NAME",
                   help="Deployment(s) from the table in flows/deployments.py (default: all).")
    p.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                   help="Run every SECONDS instead of the table's schedule.")
    p.add_argument("--cron", default=None, help="Cron schedule instead of the table's (e.g. '0 3 * * *').")
    p.add_argument("--max-lateness", type=float, default=None, metavar="SECONDS",
                   help="Scheduled runs later than this are skipped, not backfilled (default: one interval).")
    p.add_argument("--s3-block", default=None, metavar="NAME", help="Prefect Secret block with S3 credentials "
                   "(see `embedlake s3-block save`); default: the environment / EMBEDLAKE_S3_BLOCK.")


def _specs(args):
    from embedlake.flows import deployments as dep
    from embedlake.flows.cli_config import pipeline_config
    cfg = _absolute_paths(pipeline_config(args))
    return [dep.with_overrides(s, interval_s=args.interval, cron=args.cron, config=cfg,
                               max_lateness_s=args.max_lateness) for s in dep.select(args.deployments)]


def _require_server(what: str) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        print(f"note: PREFECT_API_URL is not set: {what} uses a temporary in-process Prefect API that "
              "disappears with this process (no UI). Start a server: `prefect server start` or "
              "`python -m embedlake.infra.local start prefect`.", file=sys.stderr)


# ---- serve / deploy / worker -------------------------------------------------------------------
def cmd_serve(args) -> int:
    import asyncio

    from prefect.runner import Runner

    from embedlake.flows import deployments as dep
    apply_s3_block(args.s3_block)
    _require_server("serve")
    specs = _specs(args)

    async def run() -> None:
        runner = Runner(name=args.name, limit=args.limit, pause_on_shutdown=True)
        lateness = {}
        for s in specs:
            did = await runner.aadd_deployment(await dep.to_runner_deployment(s))
            lateness[did] = s.lateness_limit()
            sched = f"cron {s.cron!r} ({s.timezone})" if s.cron else f"every {s.interval_s:g}s"
            print(f"serving {s.name}: {sched}, concurrency {s.concurrency_limit} ({s.collision_strategy}), "
                  f"lake {s.config['lake']['uri']}", flush=True)
        skipped = await dep.skip_missed_runs(list(lateness), lateness)
        if skipped:
            print(f"skipped {len(skipped)} missed run(s) (no backfill)", flush=True)
        await runner.start()
    asyncio.run(run())
    return 0


def cmd_deploy(args) -> int:
    import asyncio

    from embedlake.flows import deployments as dep
    _require_server("deploy")
    specs = _specs(args)

    async def run() -> None:
        from prefect import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        async with get_client() as client:
            try:
                await client.create_work_pool(WorkPoolCreate(name=args.pool, type="process"))
                print(f"created work pool {args.pool} (process)")
            except ObjectAlreadyExists:
                pass
        for s in specs:
            did = await (await dep.to_runner_deployment(s, work_pool=args.pool)).aapply(work_pool_name=args.pool)
            sched = f"cron {s.cron!r}" if s.cron else f"every {s.interval_s:g}s"
            print(f"deployed {s.name} ({did}): {sched}, pool {args.pool}, concurrency {s.concurrency_limit} "
                  f"({s.collision_strategy})")
    asyncio.run(run())
    print(f"start a worker: embedlake worker --pool {args.pool}")
    return 0


def cmd_worker(args) -> int:
    """`prefect worker start` with S3 settings from a block in its environment (inherited by runs)."""
    import subprocess
    apply_s3_block(args.s3_block)
    prefect = str(Path(sys.executable).parent / "prefect")
    argv = [prefect if os.path.exists(prefect) else "prefect", "worker", "start", "--pool", args.pool,
            "--type", "process", *(["--limit", str(args.limit)] if args.limit else [])]
    return subprocess.call(argv)


# ---- submit (Ray Jobs API) ---------------------------------------------------------------------
def job_runtime_env(working_dir: str | os.PathLike = REPO, forward_credentials: bool = False,
                    pip: list[str] | None = None, extra_env: dict | None = None) -> dict:
    """runtime_env of a submitted run: the project as working dir (without big folders), forwarded
    settings, and a worker hook that makes the uploaded copy of embedlake the one every process imports."""
    names = JOB_FORWARD_ENV + (JOB_SECRET_ENV if forward_credentials else ())
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "EMBEDLAKE_JOB": "1"})
    env.update(extra_env or {})
    renv: dict = {"working_dir": str(working_dir), "excludes": list(JOB_EXCLUDES), "env_vars": env,
                  "worker_process_setup_hook": "infra.job_entry.use_working_dir"}
    if pip:
        renv["pip"] = list(pip)
    return renv


def job_entrypoint(cli_args: list[str]) -> str:
    import shlex
    return "python infra/job_entry.py " + " ".join(shlex.quote(a) for a in cli_args)


def cmd_submit(args) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from embedlake.errors import ConfigError
    rest = list(args.cli_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise ConfigError("submit: give the run to submit, e.g. `embedlake submit -- embed-graph --edges ...`")
    try:   # validate here, before anything is uploaded
        inner = args.command_parser().parse_args(rest)
    except SystemExit:
        raise ConfigError(f"submit: invalid command {' '.join(rest)!r}") from None
    lake = getattr(inner, "lake", None)
    if inner.cmd in ("embed-graph",) and (not lake or "://" not in lake and not os.path.isabs(lake)):
        raise ConfigError("submit: give --lake as an absolute path on the cluster or an s3:// URL "
                          "(a job's working dir is temporary)")
    if args.s3_block:
        os.environ["EMBEDLAKE_S3_BLOCK"] = args.s3_block
    client = JobSubmissionClient(args.address)   # None: RAY_API_SERVER_ADDRESS / RAY_ADDRESS
    kw = {}
    for k in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    job_id = client.submit_job(entrypoint=job_entrypoint(rest), submission_id=args.submission_id,
                               runtime_env=job_runtime_env(args.working_dir, args.forward_credentials, args.pip),
                               metadata={"embedlake": "1"}, **kw)
    print(f"submitted job {job_id}", flush=True)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if deadline and time.monotonic() > deadline:
            client.stop_job(job_id)
            print(f"job {job_id}: timed out after {args.timeout:.0f}s, stopped", file=sys.stderr)
            return 1
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    sys.stdout.write(logs if args.logs else "\n".join(logs.splitlines()[-40:]) + "\n")
    print(f"job {job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


# ---- ls / show / gc ----------------------------------------------------------------------------
DEFAULT_RETENTION_HOURS = 168.0   # 7 days, delta-rs' default deletedFileRetentionDuration
MIN_RETENTION_HOURS = 1.0          # below: an in-flight run's files (in no log yet) could be vacuumed
def _lake(args):
    from embedlake.lake import Lake
    apply_s3_block(getattr(args, "s3_block", None))
    return Lake(args.lake or "./lake")


def run_row(man) -> dict:
    """The figures of one committed run, as `ls` shows them."""
    g = man.extra.get("graph", {}) or {}
    nc = (man.metrics or {}).get("node_classification") or {}
    mid = None
    if nc.get("micro_f1"):
        keys = sorted(nc["micro_f1"], key=float)
        mid = {"ratio": keys[len(keys) // 2], "micro_f1": nc["micro_f1"][keys[len(keys) // 2]]}
    return {"dataset": man.dataset, "method": man.method, "run_id": man.run_id, "committed_at": man.committed_at,
            "rows": man.extra.get("rows"), "dim": man.extra.get("dim"),
            "files": sum(len(v) for v in man.files.values()),
            "bytes": sum(e.get("bytes", 0) for v in man.files.values() for e in v),
            "graph_version": g.get("version"), "graph_reused": g.get("reused"),
            "wall_s": round(sum(s.get("wall_s", 0) for s in (man.stages or {}).values()), 3),
            "micro_f1": mid, "kind": run_kind(man.extra.get("run_kind"))}


def run_kind(kind: dict | None) -> dict | None:
    """incremental / full with its counts (affected rows of total, walks, tokens) or reason; None for
    runs before incremental runs existed and for flows without them."""
    if not kind:
        return None
    keys = ("kind", "affected_nodes", "nodes", "walks", "tokens", "reason", "previous_run", "change_fraction")
    return {k: kind[k] for k in keys if k in kind}


def kind_text(kind: dict | None) -> str:
    """The `ls` column: "incr 412/10312" (affected rows of total) or "full"."""
    if not kind:
        return "-"
    if kind["kind"] == "incremental":
        return f"incr {kind.get('affected_nodes', 0):,}/{kind.get('nodes', 0):,}"
    return "full"


def cmd_ls(args) -> int:
    lk = _lake(args)
    rows = []
    for ds in lk.datasets():
        if args.dataset and ds != args.dataset:
            continue
        for m in lk.methods(ds):
            rows.extend(run_row(man) for man in lk.manifests(ds, m))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no committed runs in {lk.uri}")
        return 0
    print(f"{'dataset':<14}{'method':<10}{'run':<26}{'committed (UTC)':<21}{'rows':>9}{'dim':>6}{'files':>6}"
          f"{'MiB':>8}{'wall s':>8}  {'graph':<18}{'F1':>7}  {'kind'}")
    for r in rows:
        f1 = f"{r['micro_f1']['micro_f1']:.3f}" if r["micro_f1"] else "-"
        graph = f"{(r['graph_version'] or '-')[:12]}{' reused' if r['graph_reused'] else ''}"
        print(f"{r['dataset']:<14}{r['method']:<10}{r['run_id']:<26}{r['committed_at'][:19]:<21}"
              f"{r['rows'] or 0:>9,}{r['dim'] or 0:>6}{r['files']:>6}{r['bytes'] / 2**20:>8.2f}{r['wall_s']:>8.1f}  "
              f"{graph:<18}{f1:>7}  {kind_text(r['kind'])}")
    print(f"{len(rows)} committed run(s) in {lk.uri}; F1 = Micro-F1 at the middle labelled ratio; kind: full or "
          f"incremental (affected rows / rows; `show` has walks, tokens and why a run was full)")
    return 0


def find_run(lk, run_id: str):
    """The manifest of a run id in whichever dataset/method it belongs to."""
    from embedlake.errors import LakeError
    hits = [(ds, m) for ds in lk.datasets() for m in lk.methods(ds) if lk.is_committed(ds, m, run_id)]
    if not hits:
        raise LakeError(f"run {run_id} is not committed in {lk.uri} (see `embedlake ls`)")
    if len(hits) > 1:
        raise LakeError(f"run {run_id} exists in several places {hits}: give DATASET METHOD RUN")
    return lk.manifest(hits[0][0], hits[0][1], run_id)


def cmd_show(args) -> int:
    from embedlake.errors import LakeError
    lk = _lake(args)
    ref = args.ref
    if len(ref) == 1:
        man = find_run(lk, ref[0])
    elif len(ref) in (2, 3):
        man = lk.manifest(ref[0], ref[1], ref[2] if len(ref) == 3 else "latest")
    else:
        raise LakeError("show: give RUN, or DATASET METHOD [RUN]")
    if args.json:
        print(man.to_json())
        return 0
    r = run_row(man)
    w = sys.stdout.write
    w(f"run {man.run_id}  dataset={man.dataset}  method={man.method}\n")
    w(f"committed   {man.committed_at}  code {man.code_version}\n")
    w(f"table       {lk.url(man.table)}  version {man.table_version}\n")
    g = man.extra.get("graph", {}) or {}
    if g:
        w(f"graph       {g.get('version')}  {g.get('nodes', 0):,} nodes, {g.get('arcs', 0):,} arcs"
          f"{'  (reused: input unchanged, ingest skipped)' if g.get('reused') else '  (ingested by this run)'}\n")
    w(f"output      {r['rows'] or 0:,} rows x {r['dim']}, {r['files']} files, {r['bytes'] / 2**20:.2f} MiB\n")
    for kind, entries in man.files.items():
        for e in entries:
            w(f"  {kind:<10} {e['path']}  rows={e['rows']}  sha256={e['sha256'][:12]}\n")
    w("stages      " + ", ".join(f"{k} {v.get('wall_s', 0):.2f}s" for k, v in (man.stages or {}).items()) + "\n")
    w("metrics\n" + json.dumps(man.metrics or {}, indent=1, sort_keys=True) + "\n")
    if args.config:
        w("config\n" + json.dumps(man.config, indent=1, sort_keys=True) + "\n")
    return 0


def _age_s(lk, rel: str, now: float) -> float:
    info = lk.fs.info(lk._abs(rel))
    t = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(t, _dt.datetime):
        t = t.timestamp()
    return now - float(t) if t is not None else float("inf")


def cmd_gc(args) -> int:
    """Vacuum every Delta table (files no version within --retention-hours needs: runs overwritten
    longer ago, and a killed run's files, never in a log, once older than the retention), then the
    internal files (metrics, tokens, checkpoints) no committed run names."""
    from embedlake.errors import LakeError
    lk = _lake(args)
    if args.retention_hours < MIN_RETENTION_HOURS and not args.force:
        raise LakeError(f"gc: --retention-hours {args.retention_hours:g} is below {MIN_RETENTION_HOURS} h: a run still "
                        f"writing its files (uncommitted, hence in no log) would lose them; add --force if none is")
    for rel, paths in lk.vacuum(args.retention_hours, args.delete).items():
        for p in paths:
            print(f"{'deleting' if args.delete else 'vacuum'}  {lk.url(rel)}/{p}")
        if paths:
            print(f"{len(paths)} file(s) of {lk.url(rel)} no retained version needs "
                  f"{'deleted' if args.delete else 'found'} (retention {args.retention_hours:g} h)")
    return gc_internal(lk, args)


def gc_internal(lk, args) -> int:
    """Internal orphans (files no committed run names) older than --min-age are garbage, except the
    files of a run whose writer still holds its claim (live, or on another host), and the checkpoints
    of an uncommitted run: those are what a re-run with the same run id resumes from, so a run's
    checkpoint folder goes as a whole, once its newest file is older than --checkpoint-age."""
    now = time.time()
    orphans = lk.orphans()
    rows = []
    for rel in orphans:
        try:
            age = _age_s(lk, rel, now)
        except FileNotFoundError:
            continue
        rows.append((rel, age))
    in_use: dict[tuple, bool] = {}
    ck_age: dict[tuple, float] = {}
    for rel, age in rows:
        run = _run_of(rel)
        if run is not None and run not in in_use:
            try:
                in_use[run] = lk.exists(lk.claim_path(*run)) and lk.dead_claim(*run) is None
            except Exception:  # noqa: BLE001 - not a run path we can name: age rules only
                in_use[run] = False
        if run is not None and rel.startswith("checkpoints/"):
            ck_age[run] = min(age, ck_age.get(run, float("inf")))
    old, young, live, resumable = [], 0, set(), set()
    for p, a in rows:
        run = _run_of(p)
        if run is not None and in_use.get(run):
            live.add(run)
        elif run is not None and p.startswith("checkpoints/") and not lk.is_committed(*run):
            if ck_age[run] >= args.checkpoint_age:
                old.append((p, a))
            else:
                resumable.add(run)
        elif a >= args.min_age:
            old.append((p, a))
        else:
            young += 1
    for p, a in old:
        print(f"{'deleting' if args.delete else 'orphan'}  {lk.url(p)}  (age {a:,.0f}s)")
        if args.delete:
            lk.delete(p)
    if young:
        print(f"{young} orphan(s) younger than {args.min_age:g}s kept (a run may still be writing them)")
    if live:
        print(f"{len(live)} uncommitted run(s) kept: their writer still holds the run id "
              f"({', '.join(sorted('/'.join(r) for r in live))})")
    if resumable:
        print(f"checkpoints of {len(resumable)} uncommitted run(s) kept: a re-run with the same run id resumes "
              f"from them ({', '.join(sorted('/'.join(r) for r in resumable))}); older than "
              f"--checkpoint-age {args.checkpoint_age:g}s they are removed")
    verb = "deleted" if args.delete else "found (use --delete to remove them)"
    print(f"{len(old)} orphaned data file(s) {verb} in {lk.uri}")
    return 0


def _run_of(rel: str) -> tuple[str, str, str] | None:
    """(dataset, method, run id) of a run's file <kind>/<dataset>/<method>/run_id=<id>/..., else None."""
    parts = rel.split("/")
    if len(parts) >= 4 and parts[3].startswith("run_id="):
        return parts[1], parts[2], parts[3][len("run_id="):]
    return None


def cmd_s3_block(args) -> int:
    keys = save_s3_block(args.name)
    print(f"saved Prefect Secret block {args.name!r} with keys {keys} (values not shown); use --s3-block {args.name}")
    return 0


# ---- parsers -----------------------------------------------------------------------------------
def add_parsers(sub, common) -> None:
    """The operations subcommands, in the order `embedlake --help` lists them: scheduling (serve,
    deploy, worker), cluster jobs (submit), the lake (ls, show, gc) and credentials (s3-block)."""
    _add_schedule_parsers(sub, common)
    _add_submit_parser(sub)
    _add_lake_parsers(sub)
    b = sub.add_parser("s3-block", help="Save the S3 settings of this environment as a Prefect Secret block.")
    b.add_argument("action", choices=["save"])
    b.add_argument("name")
    b.set_defaults(func=cmd_s3_block)


def _add_schedule_parsers(sub, common) -> None:
    """serve / deploy / worker: running the scheduled deployments here or through a work pool."""
    s = sub.add_parser("serve", help="Serve the scheduled deployments (flows/deployments.py) in this process.",
                       description="Register the deployments with the Prefect API (PREFECT_API_URL) and run their "
                       "scheduled runs here until stopped. The config options set the flows' default parameters.")
    _flow_options(s)
    _schedule_options(s)
    s.add_argument("--name", default="embedlake", help="Runner name.")
    s.add_argument("--limit", type=int, default=1, help="Flow runs this process runs at once (default 1).")
    common(s)
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("deploy", help="Register the scheduled deployments with a Prefect work pool.",
                       description="Create the process work pool if needed and register every deployment "
                       "(schedule, concurrency limit, default config). Run them with `embedlake worker`.")
    _flow_options(d)
    _schedule_options(d)
    d.add_argument("--pool", default="embedlake", help="Work pool (default: %(default)s).")
    common(d)
    d.set_defaults(func=cmd_deploy)

    w = sub.add_parser("worker", help="Start a Prefect process worker for the pool (S3 block in its environment).")
    w.add_argument("--pool", default="embedlake")
    w.add_argument("--limit", type=int, default=1, help="Flow runs at once (default 1).")
    w.add_argument("--s3-block", default=None, metavar="NAME")
    w.set_defaults(func=cmd_worker)


def _add_submit_parser(sub) -> None:
    """submit: run an embedlake command as a Ray job on a cluster."""
    j = sub.add_parser("submit", help="Submit a run to a Ray cluster through the Ray Jobs API.",
                       description="Upload the project (without .venv, lake, .git, data) as the job's working dir "
                       "and run `embedlake ARGS` as the job's driver on the cluster. Example: embedlake submit "
                       "--address http://head:8265 -- embed-graph --edges s3://b/g.tsv --lake s3://b/lake")
    j.add_argument("--address", default=None, help="Ray dashboard / Jobs API address, e.g. http://head:8265 "
                   "(default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS). Token auth: RAY_AUTH_MODE=token with "
                   "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.")
    j.add_argument("--working-dir", default=str(REPO), help="Folder uploaded as the job's working dir.")
    j.add_argument("--submission-id", default=None)
    j.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the job's driver.")
    j.add_argument("--entrypoint-num-gpus", type=float, default=None, help="GPUs reserved for the job's driver.")
    j.add_argument("--pip", action="append", default=None, help="Extra pip requirement installed for the job.")
    j.add_argument("--forward-credentials", action="store_true", help="Also forward AWS_ACCESS_KEY_ID/"
                   "SECRET/SESSION_TOKEN to the job (they become visible in the job's runtime env on the "
                   "dashboard; prefer --s3-block or credentials configured on the cluster).")
    j.add_argument("--s3-block", default=None, metavar="NAME", help="The job's driver loads S3 credentials "
                   "from this Prefect Secret block (needs PREFECT_API_URL reachable from the cluster).")
    j.add_argument("--no-wait", action="store_true", help="Return after submitting.")
    j.add_argument("--timeout", type=float, default=None, help="Stop the job after SECONDS.")
    j.add_argument("--logs", action="store_true", help="Print the job's whole log (default: its last 40 lines).")
    j.add_argument("cli_args", nargs="...", metavar="-- COMMAND ARGS", help="The embedlake command to run.")
    j.set_defaults(func=cmd_submit)


def _add_lake_parsers(sub) -> None:
    """ls / show / gc: read and tidy the lake; they share --lake and --s3-block."""
    for name, fn, hlp in (("ls", cmd_ls, "List datasets, methods and committed runs with their figures."),
                          ("show", cmd_show, "Print a run's record (Delta commit metadata) and metrics."),
                          ("gc", cmd_gc, "Vacuum the Delta tables (files no retained version needs) and list "
                                         "orphaned internal files; --delete removes them.")):
        p = sub.add_parser(name, help=hlp, description=hlp)
        p.add_argument("--lake", default=None, help="Lake root (default: ./lake).")
        p.add_argument("--s3-block", default=None, metavar="NAME", help="Prefect Secret block with S3 credentials.")
        if name == "ls":
            p.add_argument("--dataset", default=None)
            p.add_argument("--json", action="store_true")
        if name == "show":
            p.add_argument("ref", nargs="+", metavar="RUN | DATASET METHOD [RUN]")
            p.add_argument("--config", action="store_true", help="Also print the resolved config.")
            p.add_argument("--json", action="store_true", help="The manifest as JSON.")
        if name == "gc":
            p.add_argument("--delete", action="store_true", help="Remove the orphans (default: list only).")
            p.add_argument("--retention-hours", type=float, default=DEFAULT_RETENTION_HOURS, metavar="HOURS",
                           help="Vacuum keeps every table version younger than this and any uncommitted file "
                           "younger than this (default %(default)s = 7 days).")
            p.add_argument("--force", action="store_true", help=f"Allow --retention-hours below "
                           f"{MIN_RETENTION_HOURS} h (no run may be writing).")
            p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                           help="Only orphans older than this (a running run's files are orphans until it "
                           "commits; default %(default)s).")
            p.add_argument("--checkpoint-age", type=float, default=7 * 86400.0, metavar="SECONDS",
                           help="Checkpoints of an uncommitted run (what its re-run resumes from) are removed "
                           "once their newest file is older than this (default %(default)s = 7 days).")
        p.set_defaults(func=fn)
