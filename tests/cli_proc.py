"""Run the `embedlake` CLI as a killable subprocess (resume tests): its own Ray under a short temp
dir, the test session's Prefect API when there is one, and optionally an EMBEDLAKE_FAULT point."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def start_cli(tmp: Path, args: list[str], log: Path, fault: str | None) -> subprocess.Popen:
    """`python -m embedlake.flows.cli *args` in tmp, stdout+stderr to log, in its own session."""
    from prefect.settings import PREFECT_API_URL
    ray_tmp = tempfile.mkdtemp(prefix="elr", dir="/tmp")      # short unix socket paths; never a stranger's Ray
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "PREFECT_HOME": str(tmp / "prefect")}
    env.pop("RAY_ADDRESS", None)
    env.pop("EMBEDLAKE_FAULT", None)
    if PREFECT_API_URL.value():       # the session's Prefect server: no temporary server per run
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    if fault:
        env["EMBEDLAKE_FAULT"] = fault
    p = subprocess.Popen([sys.executable, "-m", "embedlake.flows.cli", *args], cwd=str(tmp), env=env,
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    p.ray_tmp = ray_tmp
    return p


def wait_cli(p: subprocess.Popen, timeout: float = 240) -> int:
    """Exit code (-9 when SIGKILLed); a run still alive at the timeout is killed with its group."""
    try:
        return p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
        shutil.rmtree(p.ray_tmp, ignore_errors=True)
