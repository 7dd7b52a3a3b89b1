"""Filesystems for lake URIs: local paths and s3:// through the same fsspec code.

S3 settings come from the environment only (never from configs or manifests):
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL (or EMBEDLAKE_S3_ENDPOINT) for MinIO / a local server; http endpoints use
path-style addressing. Secrets are never put into strings that reach logs or errors.
"""
from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:       # imported by `_fs`, on first use: a Ray worker that never opens a file skips it
    import fsspec

ENV_KEYS = ("EMBEDLAKE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
            "EMBEDLAKE_S3_MAX_ATTEMPTS", "EMBEDLAKE_S3_CONNECT_TIMEOUT", "EMBEDLAKE_S3_READ_TIMEOUT")


class StorageEnv:
    """The driver's S3 settings, carried to Ray workers inside a Lake (never printed).

    Workers on another node do not share the driver's environment; the settings travel with the
    task through Ray's object store, and their repr shows only which keys are set.
    """

    def __init__(self, values: Mapping[str, str] | None = None):
        src = os.environ if values is None else values
        self.values = {k: src[k] for k in ENV_KEYS if src.get(k)}

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    def fingerprint(self) -> tuple:
        return tuple(sorted(self.values.items()))

    def __repr__(self) -> str:
        return f"StorageEnv(keys={sorted(k for k in self.values)})"

    __str__ = __repr__

    def __reduce__(self):
        return (StorageEnv, (self.values,))


def split_protocol(uri: str) -> tuple[str, str]:
    """('s3', 'bucket/prefix') or ('file', '/abs/path')."""
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        if proto in ("file", "local"):
            return "file", os.path.abspath(rest)
        return proto, rest.rstrip("/")
    return "file", os.path.abspath(uri)


def s3_endpoint(env: Mapping | StorageEnv | None = None) -> str | None:
    env = os.environ if env is None else env
    return env.get("EMBEDLAKE_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")


def s3_region(env: Mapping | StorageEnv | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_fs_kwargs(env: Mapping | StorageEnv | None = None) -> dict:
    """Keyword arguments for s3fs.S3FileSystem, built from the environment (or a StorageEnv).

    Transient failures are retried with exponential backoff by botocore (`adaptive` mode: 500, 502,
    503, 504, throttling, connection resets and timeouts, up to EMBEDLAKE_S3_MAX_ATTEMPTS attempts);
    s3fs retries a few transport errors on top (S3FileSystem.retries = 5). Timeouts are tunable
    (EMBEDLAKE_S3_CONNECT_TIMEOUT / EMBEDLAKE_S3_READ_TIMEOUT, seconds) for slow links or tests.
    """
    env = os.environ if env is None else env
    kw: dict = {"client_kwargs": {"region_name": s3_region(env)}, "config_kwargs": {
        "retries": {"max_attempts": int(env.get("EMBEDLAKE_S3_MAX_ATTEMPTS", "8")), "mode": "adaptive"},
        "connect_timeout": float(env.get("EMBEDLAKE_S3_CONNECT_TIMEOUT", "10")),
        "read_timeout": float(env.get("EMBEDLAKE_S3_READ_TIMEOUT", "60"))}}
    ep = s3_endpoint(env)
    if ep:
        kw["endpoint_url"] = ep
        kw["config_kwargs"]["s3"] = {"addressing_style": "path"}
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kw["key"], kw["secret"] = key, secret
        if env.get("AWS_SESSION_TOKEN"):
            kw["token"] = env.get("AWS_SESSION_TOKEN")
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


@lru_cache(maxsize=8)
def _fs(protocol: str, fingerprint: tuple) -> fsspec.AbstractFileSystem:
    if protocol == "s3":
        import s3fs
        return s3fs.S3FileSystem(**s3_fs_kwargs(dict(fingerprint)))
    import fsspec
    return fsspec.filesystem(protocol)


_ACTIVE_ENV: "contextvars.ContextVar[StorageEnv | None]" = contextvars.ContextVar("embedlake_storage_env",
                                                                                    default=None)


@contextmanager
def using(env: StorageEnv | None):
    """Inside a Ray worker: resolve s3:// inputs with the driver's settings carried in `env`."""
    token = _ACTIVE_ENV.set(env)
    try:
        yield
    finally:
        _ACTIVE_ENV.reset(token)


def filesystem(uri: str, env: StorageEnv | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI or local path; S3 settings from env or os.environ."""
    proto, path = split_protocol(uri)
    if proto != "s3":
        return _fs(proto, ()), path
    return _fs(proto, (env or _ACTIVE_ENV.get() or StorageEnv()).fingerprint()), path


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")
