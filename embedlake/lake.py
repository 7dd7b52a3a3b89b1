"""The lake: the one module that owns every path, and the commit protocol (Delta Lake tables).

Layout (root = a local folder or s3://bucket/prefix):

    USER TABLES (Delta Lake: read with pl.scan_delta, deltalake.DeltaTable, DuckDB, Spark ...)
    <root>/embeddings/<dataset>/<method>/                 embeddings (and <method>.aligned)
    <root>/walks/<dataset>/<method>/                      walks written to the lake
    <root>/tables/<dataset>/<method>.<codec>/             compressed / learned tables: codes
    <root>/codebooks/<dataset>/<method>.<codec>/          their codebooks
    <root>/metrics/<dataset>/<method>/                    evaluation figures, one row per figure
        _delta_log/                                       the table's log (one commit per run)
        run_id=<run_id>/partition=<k>/part-<k>.parquet    data files (partition columns run_id, partition)

    INTERNAL (embedlake's own files; named in the run record, removed by `gc` when no run needs them)
    <root>/graphs/<dataset>/<version>/...                 ingested CSR + node-id map (content-addressed)
    <root>/checkpoints/<dataset>/<method>/run_id=<id>/    stage checkpoints of a run in progress
    <root>/tokens/<dataset>/<method>/run_id=<id>/         token-id shards + vocabulary of a corpus run
    <root>/state/<dataset>/<method>/run_id=<id>/          what the next incremental run starts from
                                                          (FastRP levels; kept while the run is in history)
    <root>/reports/<dataset>/<method>/run_id=<id>/        report.md, quality.svg, alignment rotation
    <root>/_claims/<dataset>/<method>/<run_id>.claim      a writer's reservation of a run id

Protocol: workers write a run's data files; the driver's `Lake.commit` then makes ONE Delta commit
per table the run writes (secondary tables first, the run's own table last), each overwriting the
table's previous run, with the run record in the commit metadata (embedlake/delta.py). A run killed
between its data files and its commit is invisible (its files are in no log) and vacuumed by `gc`
after the retention period. "latest" is the current version of the run's table; an earlier run is
the version whose commit metadata names its run id. Nothing read from the lake is unpickled.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from embedlake import delta, storage
from embedlake.errors import CommitConflict, LakeError

if TYPE_CHECKING:       # pyarrow is imported where a table is made or read: a Ray worker that only
    import pyarrow as pa    # holds a Lake (checkpoints, claims) does not load it (docs/scaling.md, 9)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KINDS = ("embeddings", "walks", "tables", "codebooks", "metrics", "reports", "checkpoints", "tokens", "state")
TABLE_KINDS = ("embeddings", "walks", "tables", "codebooks", "metrics")   # their Parquet files form Delta tables
HOME_KINDS = ("embeddings", "tables", "walks")                   # where a run's own table lives, in order
RECORD_VERSION = 2


def check_name(value: str, what: str) -> str:
    """Dataset, method, run and codec names become path segments: no traversal, no separators."""
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise LakeError(f"invalid {what} name {value!r}: use letters, digits, '.', '_' or '-' "
                        f"(at most 128, starting with a letter or digit, no '..')")
    return value


def dataset_from_input(path: str | None, generic: tuple[str, ...], default: str) -> str:
    """A dataset name from an input path: the file's stem, or its folder's name when the stem is
    generic (…/blogcatalog/edges.tsv -> blogcatalog) or a glob; sanitised to a valid lake name."""
    if not path:
        return default
    path = str(path).rstrip("/")
    base = os.path.basename(path)
    stem = base.split(".")[0]
    if any(ch in base for ch in "*?[") or not stem or stem in generic:
        stem = os.path.basename(os.path.dirname(path)) or default
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in stem).strip("._-") or default
    return check_name(name, "dataset")


def new_run_id() -> str:
    """Time-ordered and unique: 20261129T101500Z-3f9a1c."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def code_version() -> str:
    from embedlake import __version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 - no git is fine
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclass
class FileEntry:
    path: str          # relative to the lake root
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class Manifest:
    """A run's record (kept under its old name: every flow builds one): what the run's Delta commit
    carries in its metadata, and what `Lake.manifest` reads back with the table version."""
    dataset: str
    method: str
    run_id: str
    files: dict[str, list[dict]] = field(default_factory=dict)   # kind -> [FileEntry dicts]
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)                   # stage -> {wall_s, ...}
    extra: dict = field(default_factory=dict)                    # e.g. dim, rows, codec parameters
    code_version: str = ""
    committed_at: str = ""
    version: int = RECORD_VERSION
    table: str = ""              # the run's own Delta table (lake-relative), set by the commit
    table_version: int = -1      # the table version holding this run

    def record(self) -> dict:
        """The run record (JSON-safe dict)."""
        return json.loads(self.to_json())

    def commit_metadata(self) -> dict:
        """What the run's Delta commit carries under "embedlake": the keys to find it by, and the
        whole record as a JSON string (delta-rs re-serialises nested JSON numbers through serde_json,
        which can move a float by one ulp; a string keeps the figures exact)."""
        return {"run_id": self.run_id, "dataset": self.dataset, "method": self.method,
                "committed_at": self.committed_at,
                "record": json.dumps(self.__dict__, sort_keys=True, default=_json_default, separators=(",", ":"))}

    @classmethod
    def from_commit(cls, entry: dict, table: str) -> "Manifest":
        """The run of one history entry of `table` (DeltaTable.history())."""
        d = json.loads(entry["embedlake"]["record"])
        d.update(table=table, table_version=int(entry["version"]))
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def home_table(self) -> str | None:
        """The run's own table: embeddings, else codes, else walks of (dataset, method) it wrote."""
        written = {table_of(e["path"]) for entries in self.files.values() for e in entries}
        for kind in HOME_KINDS:
            rel = Lake.table_dir(kind, self.dataset, self.method)
            if rel in written:
                return rel
        return None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Lake:
    """A lake root. Cheap to construct; picklable (it only holds the URI)."""

    def __init__(self, uri: "str | Lake", env: storage.StorageEnv | None = None):
        if isinstance(uri, Lake):
            uri, env = uri.uri, env or uri.env
        uri = str(uri)
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)
        self.protocol, self.root = storage.split_protocol(uri)
        # S3 settings captured where the Lake is made (the driver) and carried to Ray workers
        self.env = env if env is not None else (storage.StorageEnv() if self.protocol != "file" else None)

    def __reduce__(self):
        return (Lake, (self.uri, self.env))

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    @property
    def fs(self):
        return storage.filesystem(self.uri, self.env)[0]

    # ---- paths (relative to the root) -------------------------------------------------------
    def url(self, rel: str) -> str:
        """Full URI of a lake-relative path (what users paste into polars / DuckDB)."""
        return f"{self.protocol}://{storage.join(self.root, rel)}" if self.protocol != "file" \
            else storage.join(self.root, rel)

    def _abs(self, rel: str) -> str:
        return storage.join(self.root, rel)

    @staticmethod
    def table_dir(kind: str, dataset: str, method: str) -> str:
        """The folder of (kind, dataset, method): a Delta table for TABLE_KINDS."""
        if kind not in KINDS:
            raise LakeError(f"unknown lake kind {kind!r}")
        return f"{kind}/{check_name(dataset, 'dataset')}/{check_name(method, 'method')}"

    @classmethod
    def run_dir(cls, kind: str, dataset: str, method: str, run_id: str) -> str:
        """A run's folder inside its table: the hive segment of the `run_id` partition column."""
        return f"{cls.table_dir(kind, dataset, method)}/run_id={check_name(run_id, 'run')}"

    @classmethod
    def part_path(cls, kind: str, dataset: str, method: str, run_id: str, partition: int,
                  sub: str | None = None) -> str:
        base = cls.run_dir(kind, dataset, method, run_id)
        if sub:
            base = f"{base}/{sub}"
        return f"{base}/partition={int(partition)}/part-{int(partition):05d}.parquet"

    @staticmethod
    def claim_dir(dataset: str, method: str) -> str:
        return f"_claims/{check_name(dataset, 'dataset')}/{check_name(method, 'method')}"

    @property
    def delta_options(self) -> dict | None:
        """storage_options for deltalake / polars.scan_delta (S3 settings; None for a local lake)."""
        return delta.storage_options(self.protocol, self.env)

    @staticmethod
    def graph_dir(dataset: str, version: str) -> str:
        return f"graphs/{check_name(dataset, 'dataset')}/{check_name(version, 'version')}"

    # ---- data files -------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, rows: int = 0) -> FileEntry:
        fs = self.fs
        path = self._abs(rel)
        parent = path.rsplit("/", 1)[0]
        if self.protocol == "file":
            fs.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)
        return FileEntry(rel, rows, len(data), hashlib.sha256(data).hexdigest())

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._abs(rel))
        except FileNotFoundError:
            raise LakeError(f"{self.url(rel)}: not found in the lake") from None

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._abs(rel))

    def write_parquet(self, rel: str, table: pa.Table, compression: str = "zstd") -> FileEntry:
        buf = io.BytesIO()
        import pyarrow.parquet as pq
        pq.write_table(table, buf, compression=compression)
        return self.write_bytes(rel, buf.getvalue(), rows=table.num_rows)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow.parquet as pq
        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def write_npy(self, rel: str, arr: np.ndarray) -> FileEntry:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self.write_bytes(rel, buf.getvalue(), rows=int(arr.shape[0]) if arr.ndim else 1)

    def read_npy(self, rel: str) -> np.ndarray:
        """A plain-dtype array; object arrays (which numpy stores as pickles) are refused, never loaded."""
        try:
            return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "pickle" in str(e).lower():
                raise LakeError(f"{self.url(rel)}: refused: the .npy holds an object array (a pickle); "
                                "the lake stores plain numeric arrays only") from None
            raise LakeError(f"{self.url(rel)}: not a valid .npy file ({e})") from None

    def write_json(self, rel: str, obj: Any) -> FileEntry:
        return self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def delete(self, rel: str, recursive: bool = False) -> None:
        path = self._abs(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    def list_files(self, rel: str) -> list[str]:
        """Every file under rel, lake-relative."""
        path = self._abs(rel)
        if not self.fs.exists(path):
            return []
        root = self.root.rstrip("/") + "/"
        out = []
        for p in self.fs.find(path):
            p = p if p.startswith("/") or self.protocol != "file" else "/" + p
            out.append(p[len(root):] if p.startswith(root) else p)
        return sorted(out)

    # ---- commit -----------------------------------------------------------------------------
    def put_if_absent(self, rel: str, data: bytes) -> None:
        """Create rel with data only if it does not exist; CommitConflict otherwise (atomic)."""
        path = self._abs(rel)
        fs = self.fs
        if self.protocol == "file":
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{path}.tmp-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)          # atomic, fails if path exists
            except FileExistsError:
                raise CommitConflict(f"{self.url(rel)} already exists: another writer committed first") from None
            finally:
                os.unlink(tmp)
            return
        try:
            fs.pipe_file(path, data, mode="create")   # S3 conditional write: If-None-Match: *
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "412" in str(e):
                # A retried request whose first attempt took effect (answer lost: 5xx, reset,
                # timeout) meets its own object: identical bytes (claims are unique
                # per writer) mean we won, so the claim is taken exactly once.
                try:
                    fs.invalidate_cache(path)
                    mine = fs.cat_file(path) == data
                except Exception:  # noqa: BLE001 - cannot tell: report the conflict
                    mine = False
                if mine:
                    return
                raise CommitConflict(f"{self.url(rel)} already exists: another writer committed first") from None
            raise

    @classmethod
    def claim_path(cls, dataset: str, method: str, run_id: str) -> str:
        return f"{cls.claim_dir(dataset, method)}/{check_name(run_id, 'run')}.claim"

    def claim_run(self, dataset: str, method: str, run_id: str, take_over_dead: bool = False) -> str:
        """Reserve a run id before writing any data file (put-if-absent of a small claim file).

        take_over_dead: first remove a claim left by a writer that died on this host
        (`take_over_dead_claim`), so a killed run can be re-run (resumed) with its run id.

        Two writers with the same run id would write the same data paths: the loser could overwrite
        the winner's files after the winner committed (checksums no longer match) or delete them
        in its failure clean-up. With a claim, the second writer gets CommitConflict before it has
        written anything. Returns the claim token for `release_claim`; `commit` drops the claim.
        Readers never look at claims (they read Delta logs).
        """
        if self.is_committed(dataset, method, run_id):
            raise CommitConflict(f"run {run_id} of {dataset}/{method} is already committed in {self.uri}")
        if take_over_dead:
            self.take_over_dead_claim(dataset, method, run_id)
        token = secrets.token_hex(8)
        body = {"token": token, "pid": os.getpid(), "host": os.uname().nodename,
                "claimed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        rel = self.claim_path(dataset, method, run_id)
        try:
            self.put_if_absent(rel, json.dumps(body).encode())
        except CommitConflict:
            try:
                other = json.loads(self.read_bytes(rel))
                who = f" (pid {other.get('pid')} on {other.get('host')} since {other.get('claimed_at')})"
            except Exception:  # noqa: BLE001 - the message is best effort
                who = ""
            raise CommitConflict(f"run id {run_id} of {dataset}/{method} is in use by another writer{who}; "
                                 f"pick another run id (a run killed on this host is resumed by re-running it there "
                                 f"with the same run id; one killed on another host leaves {self.url(rel)}: "
                                 f"delete it to resume)") from None
        # A writer that committed this run id drops its claim only after its commit exists, so a
        # claim won after that commit is seen here (checked before the claim, the commit could land
        # in between, and this writer would then overwrite the committed run's files)
        if self.is_committed(dataset, method, run_id):
            self.delete(rel)
            raise CommitConflict(f"run {run_id} of {dataset}/{method} is already committed in {self.uri}")
        return token

    def dead_claim(self, dataset: str, method: str, run_id: str) -> dict | None:
        """The run's claim if its writer is known to be dead: made on this host by a process that no
        longer exists (or is a zombie). A live writer, another host's claim (its pid cannot be
        checked from here), an unreadable claim or no claim: None."""
        rel = self.claim_path(dataset, method, run_id)
        try:
            if not self.exists(rel):
                return None
            other = json.loads(self.read_bytes(rel))
        except Exception:  # noqa: BLE001 - unreadable: cannot tell, leave it alone
            return None
        if other.get("host") != os.uname().nodename or not isinstance(other.get("pid"), int):
            return None
        pid = other["pid"]
        if pid == os.getpid() or _pid_alive(pid):
            return None
        return other

    def take_over_dead_claim(self, dataset: str, method: str, run_id: str) -> dict | None:
        """Remove the claim of a dead writer (see `dead_claim`) so a re-run can claim the run id and
        resume from the run's checkpoints. Returns the removed claim (pid, host, claimed_at) or None
        when there was nothing to take over (then `claim_run` refuses a live claim as before)."""
        other = self.dead_claim(dataset, method, run_id)
        if other is not None:
            self.delete(self.claim_path(dataset, method, run_id))
        return other

    def release_claim(self, dataset: str, method: str, run_id: str, token: str) -> None:
        """Drop our claim (failed run); another writer's claim is left alone."""
        rel = self.claim_path(dataset, method, run_id)
        try:
            if json.loads(self.read_bytes(rel)).get("token") == token:
                self.delete(rel)
                if self.protocol == "file":      # leave no empty _claims/<dataset>/<method> folders
                    d = os.path.dirname(self._abs(rel))
                    for _ in range(3):
                        os.rmdir(d)              # OSError when not empty: stop there
                        d = os.path.dirname(d)
        except Exception:  # noqa: BLE001 - clean-up must not hide the run's own error
            pass

    def commit(self, manifest: Manifest) -> str:
        """Commit a run: verify its files exist and have Delta types, then one Delta commit per table
        it wrote (secondary tables first, its own table last: the run is committed once its own
        table holds it). Returns the URI of the run's table."""
        if self.is_committed(manifest.dataset, manifest.method, manifest.run_id):
            raise CommitConflict(f"run {manifest.run_id} of {manifest.dataset}/{manifest.method} is already "
                                 f"committed in {self.uri}")
        for entries in manifest.files.values():
            for e in entries:
                if not self.exists(e["path"]):
                    raise LakeError(f"cannot commit run {manifest.run_id}: data file {e['path']} is missing")
        home = manifest.home_table()
        if home is None:
            raise LakeError(f"cannot commit run {manifest.run_id} of {manifest.dataset}/{manifest.method}: it wrote "
                            f"no embeddings, codes or walks table")
        manifest.code_version = manifest.code_version or code_version()
        manifest.committed_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        manifest.table = home
        groups = self.table_files(manifest)
        secondary = {"run_id": manifest.run_id, "dataset": manifest.dataset, "method": manifest.method,
                     "of_table": home, "committed_at": manifest.committed_at}
        for rel, files in groups.items():
            if rel != home:
                delta.commit_files(files, self.delta_options, secondary, description=self._description(files))
        manifest.table_version = delta.commit_files(groups[home], self.delta_options, manifest.commit_metadata(),
                                                    description=self._description(groups[home]))
        try:                                   # the commit now guards the run id
            self.delete(self.claim_path(manifest.dataset, manifest.method, manifest.run_id))
        except Exception:  # noqa: BLE001 - a leftover claim is harmless once committed
            pass
        return self.url(home)

    def table_files(self, manifest: Manifest) -> dict[str, "delta.TableFiles"]:
        """The run's Parquet files grouped by Delta table, each file's schema checked (footer only)."""
        groups: dict[str, delta.TableFiles] = {}
        for entries in manifest.files.values():
            for e in entries:
                rel = table_of(e["path"])
                if rel.split("/")[0] not in TABLE_KINDS or not e["path"].endswith(".parquet"):
                    continue
                schema = self.parquet_schema(e["path"], int(e["bytes"]))
                delta.check_schema(schema, self.url(e["path"]))
                if rel not in groups:
                    groups[rel] = delta.TableFiles(self.url(rel), rel, self.fs, self._abs(rel), [], schema)
                elif not schema.equals(groups[rel].schema):
                    raise LakeError(f"cannot commit run {manifest.run_id}: {self.url(e['path'])} has columns "
                                    f"{schema.names} unlike the other files of {self.url(rel)}")
                groups[rel].entries.append(e)
        return groups

    def parquet_schema(self, rel: str, size: int) -> pa.Schema:
        """A Parquet file's schema from its footer (one ranged read of the file's tail)."""
        path = self._abs(rel)
        tail = self.fs.cat_file(path, start=max(0, size - 65536), end=size) if size > 8 else b""
        if len(tail) < 8 or tail[-4:] != b"PAR1":
            raise LakeError(f"{self.url(rel)}: not a Parquet file")
        need = int.from_bytes(tail[-8:-4], "little") + 8
        if need > len(tail):
            tail = self.fs.cat_file(path)
        import pyarrow.parquet as pq
        return pq.read_schema(io.BytesIO(tail))

    @staticmethod
    def _description(files: "delta.TableFiles") -> str:
        """The table description: what the vector / code columns hold (dim lives in field metadata)."""
        dims = {f.name: (f.metadata or {}).get(b"embedlake.dim", b"").decode() for f in files.schema}
        dims = {k: v for k, v in dims.items() if v}
        return json.dumps({"written_by": "embedlake", "dims": dims})

    # ---- reading committed runs -------------------------------------------------------------
    def tables(self, kinds: tuple[str, ...] = TABLE_KINDS) -> list[str]:
        """Every Delta table of the lake (lake-relative folders with a _delta_log)."""
        out = []
        for kind in kinds:
            for ds in self._ls_dirs(kind):
                for m in self._ls_dirs(f"{kind}/{ds}"):
                    if self._has_log(f"{kind}/{ds}/{m}"):
                        out.append(f"{kind}/{ds}/{m}")
        return sorted(out)

    def _has_log(self, rel: str) -> bool:
        """Whether rel is a Delta table (fsspec's listing cache refreshed: delta-rs wrote it)."""
        path = self._abs(rel)
        self.fs.invalidate_cache(path)
        return self.fs.exists(f"{path}/_delta_log")

    def datasets(self) -> list[str]:
        return sorted({t.split("/")[1] for t in self.tables(HOME_KINDS)})

    def methods(self, dataset: str) -> list[str]:
        check_name(dataset, "dataset")
        return sorted({t.split("/")[2] for t in self.tables(HOME_KINDS) if t.split("/")[1] == dataset
                       if self.manifests(dataset, t.split("/")[2])})

    def _ls_dirs(self, rel: str) -> list[str]:
        path = self._abs(rel)
        self.fs.invalidate_cache(path)     # tables are created by delta-rs, behind fsspec's listing cache
        if not self.fs.exists(path):
            return []
        return sorted(d["name"].rstrip("/").rsplit("/", 1)[-1] for d in self.fs.ls(path, detail=True)
                      if d["type"] == "directory")

    def table_runs(self, rel: str) -> list[Manifest]:
        """The runs committed to one table as its own (newest first), from its Delta history."""
        return [Manifest.from_commit(h, rel) for h in delta.run_commits(self.fs, self._abs(rel))
                if "record" in h[delta.META_KEY]]

    def manifests(self, dataset: str, method: str) -> list[Manifest]:
        """Committed runs of (dataset, method), oldest first (every home table's history)."""
        out = []
        for kind in HOME_KINDS:
            rel = self.table_dir(kind, dataset, method)
            if self._has_log(rel):
                out.extend(m for m in self.table_runs(rel) if m.method == method)
        return sorted(out, key=lambda m: (m.committed_at, m.run_id))

    def manifest(self, dataset: str, method: str, run: str = "latest") -> Manifest:
        """One committed run: "latest" (the newest run's table version) or a run id."""
        runs = self.manifests(dataset, method)
        if run == "latest":
            if not runs:
                raise LakeError(f"no committed run of {dataset}/{method} in {self.uri}")
            return runs[-1]
        for m in runs:
            if m.run_id == run:
                return m
        raise LakeError(f"run {run} of {dataset}/{method} is not committed in {self.uri}")

    def is_committed(self, dataset: str, method: str, run_id: str) -> bool:
        return any(m.run_id == run_id for m in self.manifests(dataset, method))

    def committed_paths(self) -> set[str]:
        """Every file named by any committed run record still in a table's history (for gc of the
        internal files: metrics, tokens, checkpoints)."""
        keep: set[str] = set()
        for rel in self.tables(HOME_KINDS):
            for man in self.table_runs(rel):
                for entries in man.files.values():
                    keep.update(e["path"] for e in entries)
        return keep

    def orphans(self, kinds: tuple[str, ...] = ("reports", "tokens", "checkpoints", "state")) -> list[str]:
        """Internal files no committed run names: leftovers of failed or killed runs (the Delta
        tables' own leftovers are found by `vacuum`)."""
        keep = self.committed_paths()
        out = []
        for kind in kinds:
            out.extend(p for p in self.list_files(kind) if p not in keep)
        return out

    def vacuum(self, retention_hours: float, delete: bool) -> dict[str, list[str]]:
        """Vacuum every Delta table: files no version within the retention needs (tombstoned longer
        than `retention_hours` ago, or never committed and older than that)."""
        return {rel: delta.vacuum(self.url(rel), self.delta_options, retention_hours, delete)
                for rel in self.tables()}

def _pid_alive(pid: int) -> bool:
    """Whether a local process exists; a zombie (killed child not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


TARGET_FILE_BYTES = 128 * 2**20   # data files of a published table: about this size (fewer, larger files)


def file_bounds(bounds: list[tuple[int, int]], row_bytes: int,
                target: int = TARGET_FILE_BYTES) -> list[tuple[int, int]]:
    """Contiguous compute partitions merged into file ranges of about `target` bytes each (never
    split): a small graph gets one file, not one per CPU; 1M x 128 float32 rows (~0.5 GiB) about 4
    files of 128 MiB instead of thousands of tiny ones when shard.partitions is large."""
    out: list[tuple[int, int]] = []
    for lo, hi in bounds:
        if out and (out[-1][1] - out[-1][0] + hi - lo) * max(1, row_bytes) <= target:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def table_of(path: str) -> str:
    """The table folder <kind>/<dataset>/<method> of a lake-relative data file path."""
    return "/".join(path.split("/")[:3])


def vector_field(d: int) -> pa.Field:
    """`vector` as Delta declares it (array<float> = Arrow list<float32>), its dimension in the
    field metadata (embedlake.dim; it survives in DeltaTable.schema() and every Arrow reader)."""
    import pyarrow as pa
    return pa.field("vector", pa.list_(pa.float32()), metadata={"embedlake.dim": str(int(d))})


def embeddings_table(ids: np.ndarray | pa.Array, vectors: np.ndarray, extra: dict[str, Iterable] | None = None,
                     id_name: str = "node") -> pa.Table:
    """Rows `node` (original id, original type) and `vector` (list<float32>, d values each: Delta has
    no fixed-size list; embedlake's reader hands them back as fixed-size arrays)."""
    import pyarrow as pa
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n * d < 2**31 else
                       np.arange(0, (n + 1) * d, d, dtype=np.int64))
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    vec = (pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray).from_arrays(offsets, values)
    vec = vec.cast(pa.list_(pa.float32()))
    fields = [pa.field(id_name, ids.type if isinstance(ids, pa.Array) else pa.array(ids).type), vector_field(d)]
    cols = [ids if isinstance(ids, pa.Array) else pa.array(ids), vec]
    for k, v in (extra or {}).items():
        arr = pa.array(v)
        fields.append(pa.field(k, arr.type))
        cols.append(arr)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def fixed_vectors(table: pa.Table, column: str = "vector") -> pa.Table:
    """The table with `column` as fixed_size_list<float32>[d] (what embedlake's readers return)."""
    import pyarrow as pa
    if column not in table.column_names:
        return table
    col = table.column(column).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return table
    if len(col) == 0:
        field = table.schema.field(column)
        d = int((field.metadata or {}).get(b"embedlake.dim", b"0"))
        return table.set_column(table.column_names.index(column), column,
                                pa.array([], pa.list_(pa.float32(), max(d, 1))))
    d = len(col[0].values) if col[0].is_valid else 0
    flat = col.flatten()
    if len(flat) != d * len(col):
        raise LakeError(f"the {column} column holds vectors of different lengths")
    fixed = pa.FixedSizeListArray.from_arrays(flat.cast(pa.float32()), d)
    return table.set_column(table.column_names.index(column), column, fixed)


# ---- partial publish (issue 18) -----------------------------------------------------------------
# An incremental run changes few rows. Rows are laid out so that an unchanged row stays in the same
# file across versions: partition = hash(original node id) mod P, rows of a partition in dense-id
# order, P fixed by the table's first hashed run (`hash_partition_count`) and kept while the table
# keeps that layout. A partition whose rows (ids and vector bits) equal the previous run's is not
# written: the run's record names the previous file (same path, same bytes; its `run_id` partition
# value stays the run that wrote it), and the Delta commit keeps its add action (delta.py).
HASH_FILE_BYTES = 4 * 2**20       # hashed layout: about this many bytes per file (small files: fewer rows rewritten)
LAYOUT_KEY = "layout"             # file entry key: "hash/<P>" for the hashed layout
CONTENT_KEY = "content"           # file entry key: sha256 of the partition's ids and vector bytes


def id_hash64(node_ids: np.ndarray) -> np.ndarray:
    """uint64 hash of original node ids, the same in every version and process (SplitMix64 of an
    int id; BLAKE2b-64 of a string id's UTF-8 bytes)."""
    ids = np.asarray(node_ids)
    if ids.dtype.kind in "iu":
        z = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=8).digest(), "little")
                        for x in ids), dtype=np.uint64, count=ids.shape[0])


def hash_partition_count(rows: int, row_bytes: int, target: int = HASH_FILE_BYTES) -> int:
    """P for a table's first hashed run: files of about `target` bytes (at least one)."""
    return max(1, -(-int(rows) * max(1, int(row_bytes)) // int(target)))


def hash_partitions(node_ids: np.ndarray, partitions: int) -> np.ndarray:
    """int32 [n]: the hashed-layout partition of each row."""
    return (id_hash64(node_ids) % np.uint64(partitions)).astype(np.int32)


def previous_layout(entries: list[dict]) -> dict[int, dict]:
    """partition -> file entry of a run's hashed-layout files ({} when it used another layout)."""
    out = {}
    for e in entries:
        if str(e.get(LAYOUT_KEY, "")).startswith("hash/"):
            out[int(delta.partition_values(table_of(e["path"]), e["path"])["partition"])] = e
    return out


def layout_partitions(entries: list[dict]) -> int | None:
    """P of a run's hashed layout, None when its files are not hash-partitioned."""
    layouts = {str(e.get(LAYOUT_KEY, "")) for e in entries}
    if len(layouts) != 1 or not next(iter(layouts)).startswith("hash/"):
        return None
    return int(next(iter(layouts)).split("/", 1)[1])


def rows_digest(ids: np.ndarray, vectors: np.ndarray) -> str:
    """sha256 of a partition's ids (as text for strings) and its float32 vector bytes, row order included."""
    h = hashlib.sha256()
    ids = np.asarray(ids)
    h.update(ids.astype(np.int64).tobytes() if ids.dtype.kind in "iu" else "\0".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return h.hexdigest()


def publish_hashed_partition(lake: "Lake | str", dataset: str, method: str, run_id: str, partition: int,
                             partitions: int, assignment: np.ndarray, node_ids: np.ndarray, X: np.ndarray,
                             previous: dict | None) -> dict:
    """Partition `partition` of the hashed layout: rows with assignment == partition, in row order.
    Returns `previous` (not written) when its content digest matches, else the new file's entry.
    Either way the entry carries `layout` and `content` (and `kept`: whether it is the old file)."""
    lake = Lake(lake)
    rows = np.flatnonzero(np.asarray(assignment) == partition)
    ids, vecs = np.asarray(node_ids)[rows], np.asarray(X)[rows]
    digest = rows_digest(ids, vecs)
    layout = f"hash/{int(partitions)}"
    if previous is not None and previous.get(CONTENT_KEY) == digest and previous.get(LAYOUT_KEY) == layout:
        return {**previous, "kept": True}
    import pyarrow as pa
    id_arr = pa.array(ids.astype(np.int64)) if ids.dtype.kind in "iu" else pa.array([str(x) for x in ids], pa.string())
    entry = lake.write_parquet(Lake.part_path("embeddings", dataset, method, run_id, partition),
                               embeddings_table(id_arr, vecs)).to_dict()
    return {**entry, LAYOUT_KEY: layout, CONTENT_KEY: digest, "kept": False}


def publish_summary(results: list[dict]) -> tuple[list[dict], dict]:
    """(the run's file entries, files / bytes / rows written vs kept) of a hashed publish's results."""
    written = [e for e in results if not e.get("kept")]
    kept = [e for e in results if e.get("kept")]
    entries = [{k: v for k, v in e.items() if k != "kept"} for e in results]
    return entries, {"files_written": len(written), "files_kept": len(kept),
            "bytes_written": sum(int(e["bytes"]) for e in written), "bytes_kept": sum(int(e["bytes"]) for e in kept),
            "rows_written": sum(int(e["rows"]) for e in written), "rows_kept": sum(int(e["rows"]) for e in kept)}
