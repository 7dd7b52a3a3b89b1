"""Delta Lake tables of the lake (deltalake / delta-rs): commit files written elsewhere, history, vacuum.

Data files are written by the workers that hold the rows (plain pyarrow Parquet, the lake's
layout); the driver commits them in ONE Delta commit per table with `create_write_transaction`
(`create_table_with_add_actions` for version 0), so no row travels through the driver and nothing
is rewritten. Each run's commit *overwrites* the table's previous run (its files are tombstoned,
not deleted): the current version is the latest run, `version=v` any earlier run until `gc`
vacuums it. The run's record (run id, resolved config, code version, stage times, metrics, row
counts, checksums, graph version) travels in the commit's `custom_metadata` under "embedlake", so
`DeltaTable.history()` lists the runs.

Concurrency: delta-rs writes `_delta_log/<version>.json` with put-if-absent (a local hard link, on
S3 a conditional PUT `If-None-Match: *`). Two runs committing one table at once: one wins; the
other's overwrite read a snapshot the winner changed, delta-rs rejects it (CommitFailedError), and
`commit_files` re-opens the table and commits again (a different run does not conflict: it simply
becomes the newer version). The same run id committed twice, or a table that keeps moving for
`COMMIT_ATTEMPTS` attempts, fails with one line naming the table.

Partial commits (issue 18): a run whose files include files that are ACTIVE in the table's current
version (an incremental run that kept the previous run's unchanged partitions) commits with
`mode="append"`: one `remove` per active file it does not keep, one `add` per new file, and nothing
for the kept files, whose `add` actions (path, partition values, stats) stay as they were. The new
version is still exactly the run's files; only the changed partitions were written.
"""
from __future__ import annotations

import json
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedlake import storage
from embedlake.errors import CommitConflict, LakeError

if TYPE_CHECKING:       # pyarrow is loaded by the functions that read schemas: a Ray worker holding a
    import pyarrow as pa    # Lake (checkpoints, claims) does not import it (docs/scaling.md, 9)

META_KEY = "embedlake"          # commitInfo key holding the run record
LOG_FILE = re.compile(r"^(\d{20})\.json$")
_COMMIT_INFO: dict[tuple[str, int], dict | None] = {}   # (table path, version) -> commitInfo (log files never change)
COMMIT_ATTEMPTS = 12
INT_PARTITIONS = ("partition",)  # partition columns typed int32 (the rest are strings)
# Arrow types Delta has no type for: a file holding one is accepted by the commit but breaks
# readers (pl.scan_delta: "data type mismatch ... Array(Float32, d) != List(Float32)")
FORBIDDEN_TYPES = ("fixed_size_list", "fixed_size_binary", "float16")   # pyarrow.types.is_<name>


def storage_options(protocol: str, env: storage.StorageEnv | None) -> dict[str, str] | None:
    """delta-rs storage options from the driver's S3 settings (never logged, never in the log).

    No lock provider: delta-rs commits with S3 conditional writes (If-None-Match), which AWS S3,
    recent MinIO and R2 honour."""
    if protocol == "file":
        return None
    env = env if env is not None else storage.StorageEnv()
    opts = {"AWS_REGION": storage.s3_region(env)}
    ep = storage.s3_endpoint(env)
    if ep:
        opts["AWS_ENDPOINT_URL"] = ep
        if ep.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env.get(key):
            opts[key] = env.get(key)
    return opts


@dataclass
class TableFiles:
    """The data files of one run in one Delta table, as the workers wrote them."""
    uri: str                    # the table's full URI
    rel: str                    # the table's lake-relative folder
    fs: object                  # the lake's fsspec filesystem and the table's path in it (log reads)
    path: str
    entries: list[dict]         # FileEntry dicts (paths lake-relative)
    schema: pa.Schema           # the files' schema (without partition columns)


def partition_values(table_rel: str, path: str) -> dict[str, str]:
    """Hive segments (k=v) between the table folder and the file name: the Delta partition values."""
    inner = path[len(table_rel) + 1:].split("/")[:-1]
    return dict(seg.split("=", 1) for seg in inner if "=" in seg)


def delta_schema(files: TableFiles) -> pa.Schema:
    """The files' columns plus the partition columns (int32 `partition`, strings otherwise)."""
    import pyarrow as pa
    keys = list(partition_values(files.rel, files.entries[0]["path"]))
    extra = [pa.field(k, pa.int32() if k in INT_PARTITIONS else pa.string()) for k in keys
             if k not in files.schema.names]
    return pa.schema(list(files.schema) + extra, metadata=files.schema.metadata)


def check_schema(schema: pa.Schema, where: str) -> None:
    """Refuse a file whose column types Delta cannot declare (fixed-size lists / binaries)."""
    import pyarrow as pa
    for field in schema:
        for name in FORBIDDEN_TYPES:
            test, t = getattr(pa.types, f"is_{name}"), field.type
            if test(t) or (pa.types.is_list(t) or pa.types.is_large_list(t)) and test(t.value_type):
                raise LakeError(f"{where}: column {field.name!r} is {name} ({t}); Delta tables hold list<float32> "
                                f"vectors, binary codes, float32 scales (a {name} column breaks Delta readers)")


def open_table(uri: str, options: dict | None, version: int | None = None):
    """The DeltaTable at uri (optionally at a version), or None when no table exists there."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError
    try:
        return DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError:
        return None


def run_commits(fs, path: str) -> list[dict]:
    """The commitInfo of every log version carrying an embedlake run record, newest first, each
    with its "version" (what DeltaTable.history() lists). Read from `_delta_log/*.json` through
    fsspec: deltalake's history() holds the GIL while it waits on the store, which deadlocks an
    S3 server running in the same process (the tests' moto); log files are immutable, so each
    version is parsed once."""
    log = f"{path.rstrip('/')}/_delta_log"
    fs.invalidate_cache(log)
    try:
        names = fs.ls(log, detail=False)
    except FileNotFoundError:
        return []
    versions = sorted((int(m.group(1)), n) for n in names for m in [LOG_FILE.match(n.rsplit("/", 1)[-1])] if m)
    out = []
    for version, name in reversed(versions):
        key = (f"{getattr(fs, 'protocol', '')}:{log}", version)
        if key not in _COMMIT_INFO:
            _COMMIT_INFO[key] = _commit_info(fs.cat_file(name))
        info = _COMMIT_INFO[key]
        if info is not None and isinstance(info.get(META_KEY), dict):
            out.append({**info, "version": version})
    return out


def _commit_info(data: bytes) -> dict | None:
    for line in data.decode().splitlines():
        if line.startswith('{"commitInfo"'):
            return json.loads(line)["commitInfo"]
    for line in data.decode().splitlines():
        obj = json.loads(line) if line.strip() else {}
        if "commitInfo" in obj:
            return obj["commitInfo"]
    return None


def find_run(fs, path: str, run_id: str) -> dict | None:
    for h in run_commits(fs, path):
        if h[META_KEY].get("run_id") == run_id:
            return h
    return None


def _add_actions(files: TableFiles, now_ms: int, skip: frozenset = frozenset()) -> list:
    from deltalake.transaction import AddAction
    return [AddAction(path=e["path"][len(files.rel) + 1:], size=int(e["bytes"]),
                      partition_values=partition_values(files.rel, e["path"]), modification_time=now_ms,
                      data_change=True, stats=json.dumps({"numRecords": int(e["rows"])}))
            for e in files.entries if e["path"][len(files.rel) + 1:] not in skip]


def active_files(dt) -> dict[str, dict]:
    """The current version's data files: table-relative path -> {size, partition_values}."""
    import pyarrow as pa
    # from_stream, not pa.table: pa.table asks pandas whether the input is a DataFrame first,
    # importing it (0.3 CPU-s in the driver, which needs pandas nowhere else; issue 22)
    t = pa.RecordBatchReader.from_stream(dt.get_add_actions(flatten=True)).read_all().to_pydict()
    keys = [k for k in t if k.startswith("partition.")]
    return {p: {"size": int(t["size_bytes"][i]), "partition_values": {k[len("partition."):]: t[k][i] for k in keys}}
            for i, p in enumerate(t["path"])}


def kept_paths(dt, files: TableFiles) -> frozenset:
    """The run's files that the table's current version already holds (partitions kept unchanged)."""
    if dt is None:
        return frozenset()
    active = active_files(dt)
    return frozenset(p for e in files.entries for p in [e["path"][len(files.rel) + 1:]] if p in active)


def _remove_actions(dt, kept: frozenset, now_ms: int) -> list:
    """A remove for every active file the run does not keep (what an overwrite would tombstone)."""
    from deltalake.transaction import RemoveAction
    return [RemoveAction(path=p, data_change=True, deletion_timestamp=now_ms, size=a["size"],
                         partition_values={k: (None if v is None else str(v)) for k, v in a["partition_values"].items()})
            for p, a in active_files(dt).items() if p not in kept]


def _try_commit(dt, files: TableFiles, options: dict | None, record: dict, description: str) -> None:
    """One attempt: create the table (version 0; dt None) or overwrite the run of dt's snapshot.
    No delta-rs retries (max_commit_retries=0): the commit lands right after the snapshot the
    run-id check saw, or fails and `commit_files` checks again."""
    import deltalake
    from deltalake import CommitProperties
    from deltalake.transaction import create_table_with_add_actions
    schema = delta_schema(files)
    parts = list(partition_values(files.rel, files.entries[0]["path"]))
    props = CommitProperties(custom_metadata={META_KEY: record}, max_commit_retries=0)
    now_ms = int(time.time() * 1000)
    kept = kept_paths(dt, files)
    adds = _add_actions(files, now_ms, skip=kept)
    if dt is not None and kept:
        dt.create_write_transaction(adds + _remove_actions(dt, kept, now_ms), mode="append",
                                    schema=deltalake.Schema.from_arrow(schema), partition_by=parts,
                                    commit_properties=props)
    elif dt is None:
        create_table_with_add_actions(files.uri, deltalake.Schema.from_arrow(schema), adds, mode="error",
                                      partition_by=parts, description=description, storage_options=options,
                                      commit_properties=props)
    else:
        dt.create_write_transaction(adds, mode="overwrite", schema=deltalake.Schema.from_arrow(schema),
                                    partition_by=parts, commit_properties=props)


def commit_files(files: TableFiles, options: dict | None, record: dict, description: str = "") -> int:
    """Commit one run's files to its table; returns the version that holds them.

    record: the run record stored in the commit metadata (must hold run_id). A commit token tells
    this writer's commit from another writer's with the same run id: a retried attempt whose
    first try took effect (answer lost) finds its own commit and succeeds, exactly once."""
    run_id = record["run_id"]
    record = {**record, "commit_token": secrets.token_hex(8)}
    last: Exception | None = None
    for attempt in range(COMMIT_ATTEMPTS):
        dt = open_table(files.uri, options)          # the snapshot first, then the check: no gap
        done = find_run(files.fs, files.path, run_id)
        if done is not None:
            if done[META_KEY].get("commit_token") == record["commit_token"]:
                return int(done["version"])
            raise CommitConflict(f"{files.uri}: run {run_id} is already committed (version {done['version']}); "
                                 f"another writer committed it first")
        try:
            _try_commit(dt, files, options, record, description)
        except Exception as e:  # noqa: BLE001 - a lost race or a transient store error: re-read and retry
            if not _retryable(e):
                raise LakeError(f"{files.uri}: commit of run {run_id} failed: {_first_line(e)}") from None
            last = e
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
            continue
        done = find_run(files.fs, files.path, run_id)
        if done is not None and done[META_KEY].get("commit_token") == record["commit_token"]:
            return int(done["version"])
        last = RuntimeError("the commit is not in the table's history")
    raise CommitConflict(f"{files.uri}: run {run_id} not committed after {COMMIT_ATTEMPTS} attempts: other writers "
                         f"kept committing first ({_first_line(last)})")


def _retryable(e: Exception) -> bool:
    """Lost races (CommitFailedError, a concurrent create of version 0) and transient store errors."""
    from deltalake.exceptions import CommitFailedError, DeltaError
    if isinstance(e, CommitFailedError):
        return True
    text = str(e)
    lost_create = isinstance(e, DeltaError) and ("create" in text or "exists" in text or "version" in text.lower())
    transient = isinstance(e, (OSError, DeltaError)) and any(s in text for s in ("Generic S3", "500", "503", "timed out",
                                                                                  "connection", "Connection"))
    return lost_create or transient


def _first_line(e: Exception | None) -> str:
    text = str(e or "").strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def vacuum(uri: str, options: dict | None, retention_hours: float, delete: bool) -> list[str]:
    """Files of the table that no retained version needs (tombstoned longer than the retention, or
    never committed and older than it: a killed run's files); removed when `delete`."""
    dt = open_table(uri, options)
    if dt is None:
        return []
    return dt.vacuum(retention_hours=max(0, int(retention_hours)), dry_run=not delete,
                     enforce_retention_duration=False, full=True)
