"""Shared fixtures: the shared datasets, one local Ray for the session, Prefect's test harness,
and an S3 server on loopback (moto's server, as s3fs tests itself)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def numba_cache_dir(repo: Path) -> Path:
    """A numba cache folder for the suite inside the checkout, named by the hash of every workers/
    source that uses numba (`kernel_cache.sources_digest`, which also names the kernels' own
    folders): a clean clone's suite compiles every kernel itself (CI's timings are a fresh machine's)
    and nothing it compiles lands in the user's cache. Set before numba is imported (it reads
    NUMBA_CACHE_DIR once; importing the workers package does not import it); Ray workers and
    subprocesses inherit it with the environment."""
    from embedlake.workers.kernel_cache import sources_digest
    return repo / ".pytest_cache" / "numba" / sources_digest()


os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_cache_dir(REPO)))

from embedlake.tasks.runtime import configure_env  # noqa: E402

os.environ.setdefault("PREFECT_HOME", str(REPO / ".pytest_cache" / "prefect"))
configure_env()
# Prefect configures its console log handler on first import, binding the sys.stderr of that
# moment. Import it here, under the session-wide capture, so a test's capsys/capfd stream (closed
# after that test) is never the one Prefect keeps writing to.
import prefect.main  # noqa: E402,F401  (runs prefect.logging.configuration.setup_logging)


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: the shared datasets folder (../shared) is needed for this test")
    return p


@pytest.fixture(scope="session")
def shared():
    return shared_path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for every test that needs it."""
    from embedlake.tasks.runtime import ensure_ray
    ray = ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_session():
    """Prefect's own test harness: a temporary API and database for the session."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback; yields the endpoint URL. Credentials are dummies."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """Environment for an s3:// lake on the loopback server, plus a fresh bucket."""
    import uuid

    import boto3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value-123")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield {"endpoint": s3_server, "bucket": bucket}
