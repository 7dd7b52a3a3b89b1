"""Checks a run command makes before Prefect or Ray start: errors a user can fix, in a second.

A missing or unreadable input, a header or Parquet schema without the configured columns, a bad
name: each would otherwise surface from a Ray task after Prefect's server and a local Ray cluster
started (~20 s). The checks reuse the reader's own functions (workers/graph/ingest.py,
workers/corpus/text.py), so they decide exactly as the ingest will; what only a full read finds (a
bad line deep in a file) is still the ingest's to report. Nothing here imports Prefect or Ray.

Local inputs are checked file by file (the first MAX_LOCAL_FILES of a folder or glob); on s3:// the
listing and the first file only, so a check costs a few requests and needs no server for local paths.
"""
from __future__ import annotations

from contextlib import contextmanager

from embedlake import storage
from embedlake.config import CorpusPipelineConfig, PipelineConfig
from embedlake.errors import ConfigError, InputError
from embedlake.lake import Lake, check_name
from embedlake.workers.graph import ingest

MAX_LOCAL_FILES = 64
MAX_REMOTE_FILES = 1
# (EdgeSpec column field, config key) in the reader's positional order: src, dst, weight
_COLUMN_KEYS = (("src_col", "input.src_col"), ("dst_col", "input.dst_col"), ("weight_col", "input.weight_col"))


def check_graph_run(cfg: PipelineConfig) -> None:
    """embed-graph / walk: names, the edge list (exists, readable, header / schema) and the labels."""
    _check_names(cfg.lake.dataset, cfg.lake.run_id)
    spec = edge_spec(cfg)
    if cfg.input.edges is not None:
        configured = {f for f, _ in _COLUMN_KEYS if f in cfg.input.model_fields_set}
        for path in _files_to_check(cfg.input.edges):
            with _readable(path):
                if ingest.is_parquet(path):
                    ingest.check_parquet_columns(ingest.parquet_column_names(path), spec, path)
                else:
                    check_text_header(path, spec, configured)
    if cfg.input.labels is not None:
        for path in _files_to_check(cfg.input.labels):
            with _readable(path):
                ingest.text_header(path, ingest.EdgeSpec(src_col="node", dst_col="label"))


def check_corpus_run(cfg: CorpusPipelineConfig) -> None:
    """embed-corpus: names and the corpus (exists; Parquet files have the text column; readable)."""
    from embedlake.workers.corpus.text import plan_shards
    _check_names(cfg.lake.dataset, cfg.lake.run_id)
    if not cfg.input.path:
        raise InputError("no corpus given (--input / input.path)")
    with _readable(cfg.input.path):
        shards = plan_shards(cfg.input.path, int(cfg.input.shard_mb * (1 << 20)), cfg.input.text_column)
    limit = MAX_REMOTE_FILES if storage.split_protocol(cfg.input.path)[0] != "file" else MAX_LOCAL_FILES
    for path in list(dict.fromkeys(s["path"] for s in shards if s["kind"] == "text"))[:limit]:
        fs, p = storage.filesystem(path)
        with _readable(path), fs.open(p, "rb") as f:
            f.read(1)


def check_compress_run(cfg: PipelineConfig, source: str) -> None:
    """compress: `--from DATASET/METHOD[/RUN]` names a run committed in the lake."""
    from embedlake.workers.compress.store import parse_source
    _check_names(None, cfg.lake.run_id)
    try:
        dataset, method, run = parse_source(source)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    Lake(cfg.lake.uri).manifest(dataset, method, run)        # LakeError: not committed


def edge_spec(cfg: PipelineConfig) -> ingest.EdgeSpec:
    """The reader's EdgeSpec of the config's input section (the fields EdgeSpec has)."""
    fields = cfg.input.model_dump()
    return ingest.EdgeSpec(**{k: fields[k] for k in ingest.EdgeSpec.__dataclass_fields__ if k in fields})


def check_text_header(path: str, spec: ingest.EdgeSpec, configured: set[str]) -> None:
    """A text edge list is read by position (src, dst[, weight]); its header must not say otherwise.

    A column named in `configured` (input.src_col / dst_col / weight_col set in the config) must
    be the header's field at its position; a default name is only checked when the header has it
    elsewhere (e.g. `dst<TAB>src`, which would silently reverse a directed graph).
    """
    header = ingest.text_header(path, spec)
    if header is None:
        return
    line, fields = header
    for pos, (name, (field, key)) in enumerate(zip(ingest.edge_columns(spec), _COLUMN_KEYS)):
        at = fields[pos] if pos < len(fields) else None
        if at == name or (field not in configured and name not in fields):
            continue
        found = (f"has {name!r} ({key}) as column {fields.index(name) + 1}, not {pos + 1}" if name in fields
                 else f"has no column {name!r} ({key})")
        raise InputError(f"header {fields} {found}; text edge lists are read by position: "
                         f"{', '.join(ingest.edge_columns(spec))}", path=path, line=line)


def _check_names(dataset: str | None, run_id: str | None) -> None:
    if dataset:
        check_name(dataset, "dataset")
    if run_id:
        check_name(run_id, "run")


def _files_to_check(uri: str) -> list[str]:
    """The input's files (InputError when none exist), the first few of them."""
    with _readable(uri):
        files = ingest.expand_inputs(uri)
    local = storage.split_protocol(uri)[0] == "file"
    return files[:MAX_LOCAL_FILES if local else MAX_REMOTE_FILES]


@contextmanager
def _readable(path: str):
    """OS errors (permissions, a folder where a file was expected, S3 access denied) as InputError."""
    try:
        yield
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except PermissionError as e:
        raise InputError(f"cannot read it ({e.strerror or 'permission denied'})", path=path) from None
    except IsADirectoryError:
        raise InputError("is a folder with no readable files", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read it ({type(e).__name__}: {e})", path=path) from None
