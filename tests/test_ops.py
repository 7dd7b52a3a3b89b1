"""Operations end to end with real services on loopback: a Prefect server with a scheduled
deployment served by `embedlake serve` (runs by itself, commits, skips a backlog after an unclean
kill, reuses the unchanged graph), a Ray head with token auth and the Jobs API (`embedlake submit`),
a 2-node `ray.cluster_utils.Cluster`, the lake commands (ls/show/gc), the S3 Secret block, and the
infra files (Ray autoscaler schema, KubeRay, compose).

Everything started here is stopped here, by process group (never `ray stop`, which would stop every
Ray on the machine). Subprocesses keep this pytest process's own Ray (ray_session) untouched.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
import yaml

from embedlake.infra import local

REPO = Path(__file__).resolve().parents[1]
EMBEDLAKE = str(Path(sys.executable).parent / "embedlake")
SMALL = ["-p", "walk.length=10", "-p", "train.dim=8", "-p", "eval.repeats=1", "-p", "ray.num_cpus=1"]


def _karate(shared):
    ds = shared("datasets", "karate")
    return ["--edges", str(ds / "edges.tsv"), "--labels", str(ds / "labels.tsv")]


def _manifests(lake: Path) -> list[dict]:
    """The committed runs' records (Delta commit metadata of embeddings/karate/deepwalk), oldest first."""
    from embedlake.lake import Lake
    return [m.record() for m in Lake(str(lake)).manifests("karate", "deepwalk")]


def _wait_for(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _spawn(argv, log: Path, env: dict) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                            start_new_session=True)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefect")
    svc = local.start_prefect(d)
    yield svc
    local.stop(svc)


# ---- schedules ---------------------------------------------------------------------------------
def test_serve_runs_on_schedule_skips_backlog_and_reuses_graph(prefect_server, tmp_path, shared):
    lake = tmp_path / "lake"
    env = _env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"))
    argv = [EMBEDLAKE, "serve", "--interval", "8", *_karate(shared), "--lake", str(lake), *SMALL]
    log1 = tmp_path / "serve1.log"
    p = _spawn(argv, log1, env)
    try:
        # nobody starts a run: the schedule does
        _wait_for(lambda: _manifests(lake), 150, "the first scheduled run to commit", log1)
    finally:
        local.kill_group(p.pid, grace=0.1)      # an unclean kill (SIGTERM, then SIGKILL)
    first = _manifests(lake)[0]
    assert first["extra"]["graph"]["reused"] is False

    # the deployment as registered: interval schedule, concurrency 1 / CANCEL_NEW, typed config parameter
    # temporary_settings, not os.environ: a session-wide prefect_test_harness may be active and
    # its settings context would win over the environment
    api = temporary_settings({PREFECT_API_URL: prefect_server.url})
    api.__enter__()
    try:
        from prefect import get_client
        from prefect.states import Scheduled

        async def inspect_and_make_backlog():
            async with get_client() as c:
                dep = await c.read_deployment_by_name("embed_graph/embed-graph-daily")
                backlog = []
                for k in range(3):   # runs missed while nothing served them
                    r = await c.create_flow_run_from_deployment(dep.id, state=Scheduled(
                        scheduled_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=600 + k)))
                    backlog.append(r.id)
                return dep, backlog
        dep, backlog = asyncio.run(inspect_and_make_backlog())
        assert dep.global_concurrency_limit is not None and dep.global_concurrency_limit.limit == 1
        assert str(dep.concurrency_options.collision_strategy.value) == "CANCEL_NEW"
        assert dep.schedules and dep.schedules[0].schedule.interval == dt.timedelta(seconds=8)
        assert "config" in dep.parameter_openapi_schema["properties"]        # the UI's form
        assert dep.parameters["config"]["lake"]["uri"] == str(lake)

        log2 = tmp_path / "serve2.log"
        p = _spawn(argv, log2, env)
        try:
            _wait_for(lambda: len(_manifests(lake)) >= 2, 150, "a scheduled run after the restart", log2)
        finally:
            local.kill_group(p.pid, grace=10)
        assert "skipped" in log2.read_text() and "no backfill" in log2.read_text()

        async def states():
            async with get_client() as c:
                return [await c.read_flow_run(i) for i in backlog]
        for r in asyncio.run(states()):
            assert r.state.type.value == "CANCELLED" and "no backfill" in r.state.message, r.state
    finally:
        api.__exit__(None, None, None)

    # incremental: the unchanged input was not ingested again, and it says so
    mans = _manifests(lake)
    later = [m for m in mans if m["run_id"] != first["run_id"]]
    assert later and all(m["extra"]["graph"]["reused"] is True for m in later)
    assert {m["extra"]["graph"]["version"] for m in mans} == {first["extra"]["graph"]["version"]}
    out = subprocess.run([EMBEDLAKE, "ls", "--lake", str(lake)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "reused" in out.stdout and out.stdout.count("karate") >= 2, out.stdout


def test_deploy_registers_table_with_work_pool(prefect_server, tmp_path):
    env = _env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"))
    out = subprocess.run([EMBEDLAKE, "deploy", "--pool", "ops-test", "--cron", "30 2 * * *",
                          "--lake", str(tmp_path / "lake")], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deployed embed-graph-daily" in out.stdout and "embedlake worker --pool ops-test" in out.stdout
    with temporary_settings({PREFECT_API_URL: prefect_server.url}):
        from prefect import get_client

        async def read():
            async with get_client() as c:
                return await c.read_deployment_by_name("embed_graph/embed-graph-daily")
        dep = asyncio.run(read())
    assert dep.work_pool_name == "ops-test" and dep.entrypoint == "embedlake.flows.embed_graph.embed_graph"
    assert dep.schedules[0].schedule.cron == "30 2 * * *"


def test_s3_block_roundtrip_never_prints_secret(prefect_server, tmp_path, s3_env, shared):
    secret = "testing-secret-value-123"
    env = _env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"))
    out = subprocess.run([EMBEDLAKE, "s3-block", "save", "ops-lake"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and secret not in out.stdout + out.stderr, out.stderr[-2000:]
    # a lake listed with credentials from the block only
    from embedlake.lake import Lake
    uri = f"s3://{s3_env['bucket']}/lake"
    lk = Lake(uri)
    _fake_run(lk, "g", "m", "r1", rows=1)
    bare = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    out = subprocess.run([EMBEDLAKE, "ls", "--lake", uri, "--s3-block", "ops-lake"], capture_output=True,
                         text=True, env=bare, timeout=120)
    assert out.returncode == 0 and "r1" in out.stdout, out.stderr[-2000:]
    assert secret not in out.stdout + out.stderr


# ---- Ray -----------------------------------------------------------------------------------------
def test_submit_through_ray_jobs_api_with_token_auth(prefect_server, tmp_path, shared):
    head = local.start_ray_head(tmp_path / "ray", num_cpus=2, auth="token")
    try:
        lake = tmp_path / "lake"
        env = _env(**head.env, PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"))
        env.pop("RAY_ADDRESS", None)
        # no labels and no reconstruction: the job's workers run the uploaded code, whose numba kernels
        # no cache has seen, so every kernel the job runs is compiled there; evaluation's (42 s of the
        # job's 142 s under load) bear on nothing asserted here
        cmd = [EMBEDLAKE, "submit", "--address", head.url, "--timeout", "240", "--logs", "--", "embed-graph",
               *_karate(shared)[:2], "--lake", str(lake), *SMALL[:-2], "-p", "eval.reconstruction=false"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
        assert "SUCCEEDED" in out.stdout
        assert "(uploaded working dir)" in out.stdout and str(REPO) not in out.stdout.split("code from ")[1][:200]
        import embedlake
        ids, X = embedlake.load_matrix(str(lake), "karate", "deepwalk")
        assert X.shape == (34, 8)
        # without the token the cluster refuses the job
        bad = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        bad.update(RAY_AUTH_MODE="disabled", HOME=str(tmp_path))
        out = subprocess.run(cmd, capture_output=True, text=True, env=bad, timeout=120)
        assert out.returncode != 0 and ("401" in out.stderr or "uthentication" in out.stderr), out.stderr[-2000:]
    finally:
        local.stop(head)


CLUSTER_SCRIPT = r"""
import json, sys
from ray.cluster_utils import Cluster
from embedlake.config import load_config
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                        "object_store_memory": 200 * 2**20})
try:
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    from embedlake.flows.embed_graph import embed_graph
    import ray
    cfg = load_config(None, [f"ray.address={cluster.address}", f"lake.uri={sys.argv[1]}",
                             f"input.edges={sys.argv[2]}", f"input.labels={sys.argv[3]}", "walk.length=10",
                             "train.dim=8", "eval.repeats=1", "shard.partitions=4"])
    s = embed_graph(cfg)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({"run_id": s["run_id"], "nodes": len(nodes),
                                  "cpus": sorted(n["Resources"].get("CPU", 0) for n in nodes)}))
finally:
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_flow_on_two_node_cluster(prefect_server, tmp_path, shared):
    """The head has no CPUs, so every stage runs on the two 1-CPU worker nodes. The flow reports to
    the module's Prefect server (not a temporary one of its own: ~12 s)."""
    ds = shared("datasets", "karate")
    lake = tmp_path / "lake"
    env = _env(PREFECT_API_URL=prefect_server.url, PREFECT_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", CLUSTER_SCRIPT, str(lake), str(ds / "edges.tsv"),
                          str(ds / "labels.tsv")], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert res["nodes"] == 3 and res["cpus"] == [0, 1, 1]
    from embedlake.lake import Lake
    man = Lake(str(lake)).manifest("karate", "deepwalk")
    assert man.run_id == res["run_id"] and sum(f["rows"] for f in man.files["embeddings"]) == 34


# ---- lake commands -------------------------------------------------------------------------------
def _fake_run(lk, ds, method, run, rows=3, reused=False):
    import numpy as np

    from embedlake.lake import Lake, Manifest, embeddings_table
    e = lk.write_parquet(Lake.part_path("embeddings", ds, method, run, 0),
                         embeddings_table(np.arange(rows), np.ones((rows, 4), np.float32)))
    return lk.commit(Manifest(dataset=ds, method=method, run_id=run, files={"embeddings": [e.to_dict()]},
                              metrics={"node_classification": {"micro_f1": {"0.1": 0.5, "0.5": 0.75, "0.9": 0.8},
                                                               "macro_f1": {"0.5": 0.7}}},
                              stages={"walk": {"wall_s": 1.5}}, extra={"rows": rows, "dim": 4,
                              "graph": {"version": "v-abc", "reused": reused, "nodes": 3, "arcs": 4}}))


def test_ls_show_gc(tmp_path, capsys):
    import embedlake
    from embedlake.flows.cli import main as cli
    from embedlake.lake import Lake
    lk = Lake(str(tmp_path / "lake"))
    _fake_run(lk, "g1", "deepwalk", "r1")
    _fake_run(lk, "g1", "deepwalk", "r2", reused=True)
    _fake_run(lk, "g2", "fastrp", "r3")
    orphan = "embeddings/g1/deepwalk/run_id=dead/partition=0/part-00000.parquet"
    lk.write_bytes(orphan, b"left by a killed run")              # in no Delta log
    overwritten = lk.manifest("g1", "deepwalk", "r1").files["embeddings"][0]["path"]   # r2 replaced it
    latest = lk.manifest("g1", "deepwalk", "r2").files["embeddings"][0]["path"]
    assert cli(["ls", "--lake", lk.uri]) == 0
    out = capsys.readouterr().out
    assert all(r in out for r in ("r1", "r2", "r3", "0.750", "reused")) and "3 committed run(s)" in out
    assert cli(["ls", "--lake", lk.uri, "--json", "--dataset", "g1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == ["r1", "r2"] and rows[1]["graph_reused"] is True
    assert cli(["show", "r3", "--lake", lk.uri]) == 0
    out = capsys.readouterr().out
    assert "dataset=g2" in out and "method=fastrp" in out and '"0.5": 0.75' in out
    assert cli(["show", "g1", "deepwalk", "--lake", lk.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "r2"                    # latest
    assert cli(["show", "nope", "--lake", lk.uri]) == 2
    assert "not committed" in capsys.readouterr().err
    # gc = vacuum: within the retention (default 7 days) nothing goes: the killed run's file may
    # belong to a run still writing, r1's file keeps time travel to r1 working
    assert cli(["gc", "--lake", lk.uri, "--delete"]) == 0
    capsys.readouterr()
    assert lk.exists(orphan) and lk.exists(overwritten)
    assert embedlake.load_matrix(lk.uri, "g1", "deepwalk", run="r1")[1].shape == (3, 4)
    # a retention under the floor is refused in one line unless forced
    assert cli(["gc", "--lake", lk.uri, "--retention-hours", "0"]) == 2
    assert "--retention-hours" in capsys.readouterr().err
    assert cli(["gc", "--lake", lk.uri, "--retention-hours", "0", "--force"]) == 0      # list only
    out = capsys.readouterr().out
    assert "run_id=dead" in out and "run_id=r1" in out and lk.exists(orphan)
    assert cli(["gc", "--lake", lk.uri, "--retention-hours", "0", "--force", "--delete"]) == 0
    assert not lk.exists(orphan) and not lk.exists(overwritten) and lk.exists(latest)
    assert embedlake.load_matrix(lk.uri, "g1", "deepwalk")[1].shape == (3, 4)            # latest intact
    assert len(lk.manifests("g1", "deepwalk")) == 2                                     # history kept


def test_submit_refuses_relative_lake():
    from embedlake.flows.cli import main as cli
    assert cli(["submit", "--address", "http://127.0.0.1:1", "--", "embed-graph", "--lake", "rel/lake"]) == 2


def test_job_runtime_env_excludes_big_folders_and_secrets(monkeypatch):
    from embedlake.flows.ops import job_entrypoint, job_runtime_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    renv = job_runtime_env()
    assert {".venv", ".git", "lake"} <= set(renv["excludes"])
    assert renv["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio:9000" and "s3cr3t" not in json.dumps(renv)
    assert "s3cr3t" in json.dumps(job_runtime_env(forward_credentials=True))
    assert job_entrypoint(["embed-graph", "--lake", "s3://b/l"]) == "python infra/job_entry.py embed-graph --lake s3://b/l"


def test_local_services_cli_start_status_stop(tmp_path, capsys):
    d = str(tmp_path / "svc")
    assert local.main(["start", "s3", "--dir", d]) == 0
    env = (tmp_path / "svc" / "env.sh").read_text()
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in env
    pid = json.loads((tmp_path / "svc" / "services.json").read_text())["s3"]["pid"]
    assert local.main(["status", "--dir", d]) == 0 and "s3: up" in capsys.readouterr().out
    assert local.main(["stop", "--dir", d]) == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


# ---- infra files -----------------------------------------------------------------------------------
def test_infra_files_parse_and_validate():
    infra = REPO / "infra"
    from ray.autoscaler._private.util import prepare_config, validate_config
    cfg = yaml.safe_load((infra / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(cfg))          # Ray's own schema for `ray up`
    docs = list(yaml.safe_load_all((infra / "kuberay.yaml").read_text()))
    rc = [d for d in docs if d and d.get("kind") == "RayCluster"][0]
    assert rc["apiVersion"] == "ray.io/v1"
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(e["name"] == "RAY_AUTH_MODE" for e in head["env"])
    assert rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == head["image"]
    compose = yaml.safe_load((infra / "docker-compose.yml").read_text())
    assert {"minio", "prefect", "ray-head"} <= set(compose["services"])
    for svc in compose["services"].values():
        for dep in svc.get("depends_on", {}):
            assert dep in compose["services"]
