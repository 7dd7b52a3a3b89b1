"""The lake: the one module that owns every path, and the commit protocol.

Layout (root = a local folder or s3://bucket/prefix):

    <root>/graphs/<dataset>/<version>/...                        CSR + node-id map
    <root>/<kind>/<dataset>/<method>/run=<run_id>/partition=<k>/part-<k>.parquet
        kind: embeddings | walks | tables | metrics | checkpoints
    <root>/_manifests/<dataset>/<method>/<run_id>.json           the commit of a run

Protocol (delta-rs / pyiceberg style): a run writes its data files first, then commits one small
JSON manifest (files, row counts, sha256 checksums, resolved config, code version, metrics) with
put-if-absent. Readers only look at files named by a committed manifest, so a run killed between
its data files and its manifest is invisible. "latest" is the committed run with the newest
`committed_at`. Nothing read from the lake is unpickled (JSON + Parquet + .npy without pickle).
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

from embedlake import storage
from embedlake.errors import CommitConflict, LakeError

if TYPE_CHECKING:       # pyarrow is imported where a table is made or read: a Ray worker that only
    import pyarrow as pa    # holds a Lake (checkpoints, claims) does not load it (docs/scaling.md, 9)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KINDS = ("embeddings", "walks", "tables", "metrics", "checkpoints", "tokens")
MANIFEST_VERSION = 1


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
    version: int = MANIFEST_VERSION

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
    def run_dir(kind: str, dataset: str, method: str, run_id: str) -> str:
        if kind not in KINDS:
            raise LakeError(f"unknown lake kind {kind!r}")
        return f"{kind}/{check_name(dataset, 'dataset')}/{check_name(method, 'method')}/run={check_name(run_id, 'run')}"

    @classmethod
    def part_path(cls, kind: str, dataset: str, method: str, run_id: str, partition: int,
                  sub: str | None = None) -> str:
        base = cls.run_dir(kind, dataset, method, run_id)
        if sub:
            base = f"{base}/{sub}"
        return f"{base}/partition={int(partition)}/part-{int(partition):05d}.parquet"

    @staticmethod
    def manifest_dir(dataset: str, method: str) -> str:
        return f"_manifests/{check_name(dataset, 'dataset')}/{check_name(method, 'method')}"

    @classmethod
    def manifest_path(cls, dataset: str, method: str, run_id: str) -> str:
        return f"{cls.manifest_dir(dataset, method)}/{check_name(run_id, 'run')}.json"

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
                # timeout) meets its own object: identical bytes (manifests and claims are unique
                # per writer) mean we won, so the commit happens exactly once.
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
        return f"{cls.manifest_dir(dataset, method)}/{check_name(run_id, 'run')}.claim"

    def claim_run(self, dataset: str, method: str, run_id: str, take_over_dead: bool = False) -> str:
        """Reserve a run id before writing any data file (put-if-absent of a small claim file).

        take_over_dead: first remove a claim left by a writer that died on this host
        (`take_over_dead_claim`), so a killed run can be re-run (resumed) with its run id.

        Two writers with the same run id would write the same data paths: the loser could overwrite
        the winner's files after the winner committed (checksums no longer match) or delete them
        in its failure clean-up. With a claim, the second writer gets CommitConflict before it has
        written anything. Returns the claim token for `release_claim`; `commit` drops the claim.
        Readers never look at claims (manifests are the `.json` files only).
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
        # A writer that committed this run id drops its claim only after its manifest exists, so a
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
                if self.protocol == "file":      # leave no empty _manifests/<dataset>/<method> folders
                    d = os.path.dirname(self._abs(rel))
                    for _ in range(3):
                        os.rmdir(d)              # OSError when not empty: stop there
                        d = os.path.dirname(d)
        except Exception:  # noqa: BLE001 - clean-up must not hide the run's own error
            pass

    def commit(self, manifest: Manifest) -> str:
        """Commit a run: verify its files exist, then write its manifest with put-if-absent."""
        for kind, entries in manifest.files.items():
            for e in entries:
                if not self.exists(e["path"]):
                    raise LakeError(f"cannot commit run {manifest.run_id}: data file {e['path']} is missing")
        manifest.code_version = manifest.code_version or code_version()
        manifest.committed_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        rel = self.manifest_path(manifest.dataset, manifest.method, manifest.run_id)
        self.put_if_absent(rel, manifest.to_json().encode())
        try:                                   # the manifest now guards the run id
            self.delete(self.claim_path(manifest.dataset, manifest.method, manifest.run_id))
        except Exception:  # noqa: BLE001 - a leftover claim is harmless once committed
            pass
        return self.url(rel)

    # ---- reading committed runs -------------------------------------------------------------
    def datasets(self) -> list[str]:
        return sorted(p.rsplit("/", 1)[-1] for p in self._ls_dirs("_manifests"))

    def methods(self, dataset: str) -> list[str]:
        return sorted(p.rsplit("/", 1)[-1] for p in self._ls_dirs(f"_manifests/{check_name(dataset, 'dataset')}"))

    def _ls_dirs(self, rel: str) -> list[str]:
        path = self._abs(rel)
        if not self.fs.exists(path):
            return []
        return [d["name"] for d in self.fs.ls(path, detail=True) if d["type"] == "directory"]

    def manifests(self, dataset: str, method: str) -> list[Manifest]:
        """Committed runs, oldest first."""
        d = self.manifest_dir(dataset, method)
        out = []
        for rel in self.list_files(d):
            if rel.endswith(".json") and ".tmp-" not in rel:
                out.append(Manifest.from_json(self.read_bytes(rel).decode()))
        return sorted(out, key=lambda m: (m.committed_at, m.run_id))

    def manifest(self, dataset: str, method: str, run: str = "latest") -> Manifest:
        if run == "latest":
            ms = self.manifests(dataset, method)
            if not ms:
                raise LakeError(f"no committed run of {dataset}/{method} in {self.uri}")
            return ms[-1]
        rel = self.manifest_path(dataset, method, run)
        if not self.exists(rel):
            raise LakeError(f"run {run} of {dataset}/{method} is not committed in {self.uri}")
        return Manifest.from_json(self.read_bytes(rel).decode())

    def is_committed(self, dataset: str, method: str, run_id: str) -> bool:
        return self.exists(self.manifest_path(dataset, method, run_id))

    def committed_paths(self) -> set[str]:
        """Every data file named by any committed manifest (for gc)."""
        keep: set[str] = set()
        for ds in self.datasets():
            for m in self.methods(ds):
                for man in self.manifests(ds, m):
                    for entries in man.files.values():
                        keep.update(e["path"] for e in entries)
        return keep

    def orphans(self) -> list[str]:
        """Data files that no committed manifest names: leftovers of failed or killed runs."""
        keep = self.committed_paths()
        out = []
        for kind in KINDS:
            out.extend(p for p in self.list_files(kind) if p not in keep)
        return out


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


def embeddings_table(ids: np.ndarray | pa.Array, vectors: np.ndarray, extra: dict[str, Iterable] | None = None,
                     id_name: str = "node") -> pa.Table:
    """Rows `node` (original id, original type) and `vector` (fixed_size_list<float32>[d])."""
    import pyarrow as pa
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), d)
    cols = {id_name: ids if isinstance(ids, pa.Array) else pa.array(ids), "vector": vec}
    for k, v in (extra or {}).items():
        cols[k] = pa.array(v)
    return pa.table(cols)
