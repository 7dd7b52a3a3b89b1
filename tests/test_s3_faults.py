"""S3 faults: a run written through a proxy that breaks requests (503, 500 after the write took
effect, connection reset, read timeout) loses nothing, duplicates nothing and commits once.

infra/s3_fault_proxy.py sits on loopback in front of moto; its `first_attempt` rule fails the
first request of every distinct operation, so each write, read, listing and the conditional
PUT of the Delta log version meets one fault and must get through by retrying (botocore + s3fs
retries, embedlake/storage.s3_fs_kwargs, for the data files; delta-rs' object_store retries and
embedlake/delta.commit_files' re-check of its own commit token for the log).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from embedlake.infra.s3_fault_proxy import FaultProxy


@pytest.fixture()
def flaky_s3(s3_env, monkeypatch, request):
    kw = getattr(request, "param", {})
    # a stall holds the answer past the client's read timeout; delta-rs (no timeout set) waits it out
    proxy = FaultProxy(s3_env["endpoint"], stall_s=1.2, **kw).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("EMBEDLAKE_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("EMBEDLAKE_S3_CONNECT_TIMEOUT", "2")
    yield {**s3_env, "proxy": proxy, "uri": f"s3://{s3_env['bucket']}/lake"}
    proxy.stop()


def _direct_lake(s3_env, uri):
    """The same lake read straight from moto (no proxy), to check what really landed."""
    from embedlake import storage
    from embedlake.lake import Lake
    env = storage.StorageEnv({**storage.StorageEnv().values, "AWS_ENDPOINT_URL": s3_env["endpoint"]})
    return Lake(uri, env)


def _verify(lake, dataset, method):
    ms = lake.manifests(dataset, method)
    assert len(ms) == 1, [m.run_id for m in ms]
    man = ms[0]
    named = set()
    for entries in man.files.values():
        for e in entries:
            data = lake.read_bytes(e["path"])
            assert len(data) == e["bytes"], e["path"]
            if e["sha256"]:
                assert hashlib.sha256(data).hexdigest() == e["sha256"], e["path"]
            named.add(e["path"])
    return man, named


def test_lake_writes_and_commit_through_faults(flaky_s3):
    from embedlake.lake import Lake, Manifest, embeddings_table
    proxy, uri = flaky_s3["proxy"], flaky_s3["uri"]
    lake = Lake(uri)
    token = lake.claim_run("g", "deepwalk", "r1")
    rng = np.random.default_rng(0)
    files = []
    for k in range(4):
        t = embeddings_table(np.arange(k * 100, k * 100 + 100), rng.standard_normal((100, 16)).astype(np.float32))
        files.append(lake.write_parquet(Lake.part_path("embeddings", "g", "deepwalk", "r1", k), t).to_dict())
    url = lake.commit(Manifest(dataset="g", method="deepwalk", run_id="r1", files={"embeddings": files}))
    assert url == lake.url("embeddings/g/deepwalk") and token
    # every kind of fault was met, including on the conditional PUT of the Delta log version
    assert all(proxy.counts[m] >= 1 for m in ("503", "500-after", "reset", "stall")), proxy.counts
    assert any(m == "PUT" and "_delta_log/00000000000000000000.json" in p and mode != "ok"
               for m, p, mode in proxy.log), proxy.log
    # what landed, read straight from the server: one commit, checksums match, no extra files
    direct = _direct_lake(flaky_s3, uri)
    man, named = _verify(direct, "g", "deepwalk")
    assert {p for p in direct.list_files("embeddings") if "/_delta_log/" not in p} == named
    log = [p for p in direct.list_files("embeddings/g/deepwalk/_delta_log") if p.endswith(".json")]
    assert log == ["embeddings/g/deepwalk/_delta_log/00000000000000000000.json"], log
    assert direct.list_files("_claims") == []                                    # claim dropped
    # and read back through the faults as well
    got, _ = _verify(Lake(uri), "g", "deepwalk")
    assert got.to_json() == man.to_json()


@pytest.mark.usefixtures("ray_session", "prefect_session")
@pytest.mark.parametrize("flaky_s3", [{"modes": ("503", "500-after", "reset"), "rule": "every", "every": 5}],
                         indirect=True)
def test_flow_run_through_faults_commits_once(flaky_s3, shared):
    """The whole flow (driver and Ray workers) against the flaky endpoint: every 5th request fails
    (timeouts are covered by the test above: each costs a read timeout plus backoff)."""
    import embedlake
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    ds = shared("datasets", "karate")
    uri = flaky_s3["uri"]
    s = embed_graph(load_config(None, [f"lake.uri={uri}", f"input.edges={ds / 'edges.tsv'}",
                                       f"input.labels={ds / 'labels.tsv'}", "train.dim=8", "walk.length=10",
                                       "walk.walks_per_node=5", "eval.repeats=1", "eval.artifacts=false",
                                       "shard.partitions=3"]))
    proxy = flaky_s3["proxy"]
    assert proxy.faults() >= 8 and min(proxy.counts[m] for m in ("503", "500-after", "reset")) >= 1, proxy.counts
    direct = _direct_lake(flaky_s3, uri)
    man, named = _verify(direct, "karate", "deepwalk")
    assert man.run_id == s["run_id"]
    assert sum(e["rows"] for e in man.files["embeddings"]) == 34
    run_files = set(direct.list_files(f"embeddings/karate/deepwalk/run_id={s['run_id']}"))
    assert run_files == {e["path"] for e in man.files["embeddings"]}      # nothing duplicated or stray
    ids, X = embedlake.load_matrix(uri, "karate", "deepwalk")
    assert X.shape == (34, 8) and np.isfinite(X).all()
