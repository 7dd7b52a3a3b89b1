"""Filesystems for lake URIs: local paths and s3:// through the same fsspec code.

S3 settings come from the environment only (never from configs or manifests):
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL (or EMBEDLAKE_S3_ENDPOINT) for MinIO / a local server; http endpoints use
path-style addressing. Secrets are never put into strings that reach logs or errors.
"""
from __future__ import annotations

import os
from functools import lru_cache

import fsspec


def split_protocol(uri: str) -> tuple[str, str]:
    """('s3', 'bucket/prefix') or ('file', '/abs/path')."""
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        if proto in ("file", "local"):
            return "file", os.path.abspath(rest)
        return proto, rest.rstrip("/")
    return "file", os.path.abspath(uri)


def s3_endpoint() -> str | None:
    return os.environ.get("EMBEDLAKE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
        os.environ.get("AWS_ENDPOINT_URL")


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_fs_kwargs() -> dict:
    """Keyword arguments for s3fs.S3FileSystem, built from the environment."""
    kw: dict = {"client_kwargs": {"region_name": s3_region()}, "config_kwargs": {
        "retries": {"max_attempts": int(os.environ.get("EMBEDLAKE_S3_MAX_ATTEMPTS", "8")), "mode": "adaptive"},
        "connect_timeout": 10, "read_timeout": 60}}
    ep = s3_endpoint()
    if ep:
        kw["endpoint_url"] = ep
        kw["config_kwargs"]["s3"] = {"addressing_style": "path"}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kw["key"], kw["secret"] = key, secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            kw["token"] = os.environ["AWS_SESSION_TOKEN"]
    return kw


def polars_storage_options() -> dict:
    """storage_options for polars scan_parquet / write_parquet on s3:// (same environment)."""
    opts = {"aws_region": s3_region()}
    ep = s3_endpoint()
    if ep:
        opts["aws_endpoint_url"] = ep
        if ep.startswith("http://"):
            opts["aws_allow_http"] = "true"
    for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts


def _env_fingerprint() -> tuple:
    return tuple(os.environ.get(k) for k in ("EMBEDLAKE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                             "AWS_DEFAULT_REGION"))


@lru_cache(maxsize=8)
def _fs(protocol: str, fingerprint: tuple) -> fsspec.AbstractFileSystem:
    if protocol == "s3":
        import s3fs
        return s3fs.S3FileSystem(**s3_fs_kwargs())
    return fsspec.filesystem(protocol)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI or local path."""
    proto, path = split_protocol(uri)
    return _fs(proto, _env_fingerprint() if proto == "s3" else ()), path


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")
