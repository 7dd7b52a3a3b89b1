"""Issue 16's figures: Delta Lake publish and read against the Parquet-plus-manifest lake it replaced.

    .venv/bin/python bench/bench_delta.py                      # 1M x 128, 8 partitions, 3 rounds, local + S3 writers
    .venv/bin/python bench/bench_delta.py --rows 200000 --runs 5 --skip-s3

1. Publish of a rows x dim table (the flow's publish: one Parquet file per row partition, then the
   commit) with today's lake (Delta: list<float32> vectors, one Delta commit) and with the lake as
   it was before (fixed_size_list vectors, a JSON manifest with sha256 checksums, put-if-absent).
   The old lake is embedlake/lake.py at BEFORE (git), loaded as its own module, so both run in this
   process on the same table; rounds alternate the order. Prints the median seconds and the ratio.
2. `pl.scan_delta(uri).collect()` of that table against `pl.scan_parquet(files).collect()` of the
   same files (ratio).
3. Two writer processes x `--runs` runs each on one (dataset, method), on a local lake and on an S3
   lake (moto's server on loopback, in its own process): runs committed, commit attempts that lost
   a race (conflicts), and whether every run is readable by its version with its own rows.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "016db06"          # main before the Delta lake: the Parquet-plus-manifest commit
DATASET, METHOD = "bench", "deepwalk"


def old_lake_module():
    """embedlake/lake.py as it was at BEFORE, imported under another name (it only needs
    embedlake.storage and embedlake.errors, which still exist)."""
    src = subprocess.run(["git", "show", f"{BEFORE}:embedlake/lake.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="lake_before_")) / "lake_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("lake_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lake_before"] = mod         # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def matrix(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(rows, dtype=np.int64), rng.standard_normal((rows, dim), dtype=np.float32)


def bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    return [(i * rows // parts, (i + 1) * rows // parts) for i in range(parts)]


def publish(mod, uri: str, run_id: str, ids: np.ndarray, X: np.ndarray, parts: int) -> float:
    """What the flow's publish + commit do, with lake module `mod`: one file per row partition
    (today's lake merges partitions into files of about lake.TARGET_FILE_BYTES, as
    flows/embed_graph.py does), then one commit. Returns seconds."""
    t0 = time.perf_counter()
    lake = mod.Lake(uri)
    entries = []
    ranges = bounds(len(ids), parts)
    if hasattr(mod, "file_bounds"):
        ranges = mod.file_bounds(ranges, 4 * int(X.shape[1]) + 16)
    for i, (lo, hi) in enumerate(ranges):
        rel = mod.Lake.part_path("embeddings", DATASET, METHOD, run_id, i)
        entries.append(lake.write_parquet(rel, mod.embeddings_table(ids[lo:hi], X[lo:hi])).to_dict())
    lake.commit(mod.Manifest(DATASET, METHOD, run_id, files={"embeddings": entries},
                             extra={"dim": int(X.shape[1]), "rows": int(len(ids))}))
    return time.perf_counter() - t0


def bench_publish(args, work: Path) -> dict:
    from embedlake import lake as new
    old = old_lake_module()
    ids, X = matrix(args.rows, args.dim)
    times = {"delta": [], "manifest": []}
    for r in range(args.rounds):
        order = [("delta", new), ("manifest", old)] if r % 2 == 0 else [("manifest", old), ("delta", new)]
        for name, mod in order:
            uri = str(work / f"publish-{name}")
            times[name].append(publish(mod, uri, f"r{r}-{name}", ids, X, args.partitions))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"rows": args.rows, "dim": args.dim, "partitions": args.partitions,
           "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "median_s": {k: round(v, 3) for k, v in med.items()},
           "delta_over_manifest": round(med["delta"] / med["manifest"], 3)}
    out["files"] = {"delta": len(new.file_bounds(bounds(args.rows, args.partitions), 4 * args.dim + 16)),
                    "manifest": args.partitions}
    print(f"publish {args.rows:,} x {args.dim}, {args.partitions} partitions ({out['files']['delta']} Delta files, "
          f"{args.partitions} before): Delta {med['delta']:.2f} s, "
          f"Parquet + manifest {med['manifest']:.2f} s, ratio (Delta / manifest) {out['delta_over_manifest']}")
    return out


def bench_read(args, work: Path) -> dict:
    import polars as pl
    from deltalake import DeltaTable
    uri = str(work / "publish-delta" / "embeddings" / DATASET / METHOD)
    files = DeltaTable(uri).file_uris()
    times = {"scan_delta": [], "scan_parquet": []}
    for r in range(args.rounds):
        for name in (("scan_delta", "scan_parquet") if r % 2 == 0 else ("scan_parquet", "scan_delta")):
            t0 = time.perf_counter()
            df = pl.scan_delta(uri).collect() if name == "scan_delta" else pl.scan_parquet(files).collect()
            times[name].append(time.perf_counter() - t0)
            assert df.height == args.rows, (name, df.height)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = round(med["scan_delta"] / med["scan_parquet"], 3)
    print(f"read {args.rows:,} rows: pl.scan_delta {med['scan_delta']:.3f} s, pl.scan_parquet (same {len(files)} "
          f"files) {med['scan_parquet']:.3f} s, ratio {ratio}")
    return {"files": len(files), "median_s": {k: round(v, 4) for k, v in med.items()}, "delta_over_parquet": ratio}


def writer(uri: str, env: dict, k: int, runs: int, rows: int, dim: int, out_q) -> None:
    """One writer process: `runs` runs, each a table whose every value is its run number; counts
    the commit attempts (an attempt beyond the first is a lost race)."""
    os.environ.update(env)
    from embedlake import delta, lake
    attempts = {"n": 0}
    try_commit = delta._try_commit

    def counted(*a, **kw):
        attempts["n"] += 1
        return try_commit(*a, **kw)
    delta._try_commit = counted
    done, failed = [], []
    ids = np.arange(rows, dtype=np.int64)
    for i in range(runs):
        run_id = f"w{k}-{i:03d}"
        X = np.full((rows, dim), 1000 * k + i, dtype=np.float32)
        before = attempts["n"]
        try:
            publish(lake, uri, run_id, ids, X, 2)
            done.append((run_id, attempts["n"] - before))
        except Exception as e:  # noqa: BLE001 - counted and reported
            failed.append((run_id, str(e).splitlines()[0][:200]))
    out_q.put({"writer": k, "done": done, "failed": failed})


def check_runs(uri: str, env: dict, rows: int) -> dict:
    """Every committed run, read back by its version: its own rows only."""
    os.environ.update(env)
    import polars as pl
    from embedlake import lake as new
    from embedlake.storage import polars_storage_options
    lk = new.Lake(uri)
    runs = lk.manifests(DATASET, METHOD)
    bad = []
    table = lk.url(new.Lake.table_dir("embeddings", DATASET, METHOD))
    opts = polars_storage_options() if uri.startswith("s3://") else None
    for m in runs:
        k, i = m.run_id[1:].split("-")
        df = pl.scan_delta(table, version=m.table_version, storage_options=opts).collect()
        vals = df.get_column("vector").explode().unique().to_list()
        if df.height != rows or vals != [1000 * int(k) + int(i)]:
            bad.append(m.run_id)
    return {"committed": len(runs), "wrong_rows": bad}


def bench_writers(args, uri: str, env: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, env, k, args.runs, 1000, 16, q)) for k in range(2)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    got = [q.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    done = [d for g in got for d in g["done"]]
    failed = [f for g in got for f in g["failed"]]
    conflicts = sum(n - 1 for _, n in done)
    check = check_runs(uri, env, 1000)
    out = {"uri": uri.split("://")[0], "runs": 2 * args.runs, "committed": len(done), "failed": failed,
           "conflicts_retried": conflicts, "in_history": check["committed"], "wrong_rows": check["wrong_rows"],
           "wall_s": round(wall, 1)}
    print(f"2 writers x {args.runs} runs on {out['uri']}: {len(done)} committed, {len(failed)} failed, "
          f"{conflicts} lost races retried, {check['committed']} runs in the history, "
          f"{len(check['wrong_rows'])} read back wrong ({wall:.0f} s)")
    return out


def moto_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (deltalake's history calls hold the GIL: an in-process
    server would stall), with a bucket."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ep = f"http://127.0.0.1:{port}"
    import boto3
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=ep, aws_access_key_id="bench", aws_secret_access_key="bench",
                         region_name="us-east-1").create_bucket(Bucket="lake")
            return proc, ep
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto's server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--partitions", type=int, default=8, help="compute partitions (the flow's shard.partitions)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20, help="runs per writer")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_delta_"))
    res = {"publish": bench_publish(args, work)}
    res["read"] = bench_read(args, work)
    res["writers_local"] = bench_writers(args, str(work / "writers"), {})
    if not args.skip_s3:
        proc, ep = moto_server()
        try:
            env = {"AWS_ENDPOINT_URL": ep, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
            res["writers_s3"] = bench_writers(args, "s3://lake/writers", env)
        finally:
            proc.kill()
    shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
