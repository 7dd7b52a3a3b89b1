"""Local services on loopback for tests and demos: a Prefect server, a Ray head, an S3 server.

    python -m embedlake.infra.local start [prefect] [ray] [s3] --dir /tmp/embedlake-local
    source /tmp/embedlake-local/env.sh        # PREFECT_API_URL, RAY_ADDRESS, AWS_ENDPOINT_URL, ...
    python -m embedlake.infra.local status --dir /tmp/embedlake-local
    python -m embedlake.infra.local stop --dir /tmp/embedlake-local

Why a module and not `ray stop` / `pkill`: on a shared machine (CI, a laptop running other Ray
sessions) those stop everyone's processes. Every service here is started in its own process group
and recorded in `<dir>/services.json`; `stop` signals exactly those groups and nothing else.
Every port is chosen free on 127.0.0.1, so several copies (parallel tests) never collide.

The Ray head uses token authentication (Ray 2.60's default) with a token generated into
`<dir>/ray_token` (mode 0600); `env.sh` points clients at it with RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH, so the token itself is never printed. `--ray-auth disabled` starts an open head.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ALL = ("prefect", "ray", "s3")


@dataclass
class Service:
    """One started service: its process group, URL and the client environment that reaches it."""
    name: str
    pid: int
    url: str
    env: dict = field(default_factory=dict)
    log: str = ""

    def alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv), else PATH."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def _spawn(name: str, argv: list[str], log: Path, env: dict) -> int:
    """Start argv in a new session (its own process group) with output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **env}, start_new_session=True)
    return p.pid


def _wait(pred, timeout: float, what: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise RuntimeError(f"{what} exited during start-up; log {log}:\n{_tail(log)}") from None
        time.sleep(0.5)
    kill_group(pid)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; log {log}:\n{_tail(log)}")


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except Exception:  # noqa: BLE001 - not up yet
        return False


def start_prefect(state_dir: str | os.PathLike, port: int | None = None, timeout: float = 180) -> Service:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (SQLite) under state_dir."""
    d = Path(state_dir)
    port = port or free_port()
    home = d / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_API_URL": "",
           "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true")}
    log = d / "prefect.log"
    pid = _spawn("prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 log, env)
    url = f"http://127.0.0.1:{port}/api"
    _wait(lambda: _http_ok(f"{url}/health"), timeout, "prefect server", pid, log)
    return Service("prefect", pid, url, {"PREFECT_API_URL": url}, str(log))


def start_ray_head(state_dir: str | os.PathLike, num_cpus: int = 2, auth: str = "token",
                   object_store_mb: int = 400, timeout: float = 120) -> Service:
    """`ray start --head --block` on loopback, every port free, its own temp dir.

    `--block` keeps `ray start` in the foreground as the parent of the head's processes (with
    Ray's reaper), so stopping its process group stops this head only.
    """
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    # Ray's unix sockets live under the temp dir: keep the path short (AF_UNIX paths < 108 bytes)
    temp_dir = tempfile.mkdtemp(prefix="elray-", dir="/tmp")
    ports = {k: free_port() for k in ("port", "dashboard-port", "ray-client-server-port",
                                      "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                      "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
                                      "object-manager-port")}
    # a job's entrypoint runs `python`: make it this environment's interpreter
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": auth,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    client_env = {"RAY_AUTH_MODE": auth}
    if auth == "token":
        tok = d / "ray_token"
        if not tok.exists():
            tok.write_text(secrets.token_hex(32))
            tok.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = client_env["RAY_AUTH_TOKEN_PATH"] = str(tok)
    argv = [_bin("ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}",
            f"--object-store-memory={object_store_mb * 1024 * 1024}", f"--temp-dir={temp_dir}",
            "--disable-usage-stats"] + [f"--{k}={v}" for k, v in ports.items()]
    log = d / "ray.log"
    pid = _spawn("ray", argv, log, env)
    dash = f"http://127.0.0.1:{ports['dashboard-port']}"
    gcs = f"127.0.0.1:{ports['port']}"

    def ready() -> bool:   # the Jobs API answers (401 without a token also means it is up)
        try:
            with urllib.request.urlopen(f"{dash}/api/version", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            return e.code in (401, 403)
        except Exception:  # noqa: BLE001
            return False
    _wait(ready, timeout, "ray head", pid, log)
    client_env.update({"RAY_ADDRESS": gcs, "RAY_API_SERVER_ADDRESS": dash})
    return Service("ray", pid, dash, {**client_env, "EMBEDLAKE_RAY_TEMP_DIR": temp_dir}, str(log))


def start_s3(state_dir: str | os.PathLike, port: int | None = None, timeout: float = 60,
             buckets: tuple[str, ...] = ("lake",)) -> Service:
    """moto's S3 server on loopback with dummy credentials and the given buckets created."""
    d = Path(state_dir)
    port = port or free_port()
    log = d / "s3.log"
    pid = _spawn("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, {})
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/moto-api/"), timeout, "moto_server", pid, log)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for b in buckets:   # plain PUT: path-style bucket creation, no SDK needed
        req = urllib.request.Request(f"{url}/{b}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
    return Service("s3", pid, url, env, str(log))


def kill_group(pgid: int, grace: float = 20.0) -> None:
    """SIGTERM a process group we started, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            try:   # reap it if it is our child (tests), so it does not linger as a zombie
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        else:
            continue
        return


def stop(service: Service) -> None:
    kill_group(service.pid)
    tmp = service.env.get("EMBEDLAKE_RAY_TEMP_DIR")
    if tmp and tmp.startswith("/tmp/elray-"):
        subprocess.run(["rm", "-rf", tmp], check=False)


# ---- state file + CLI ---------------------------------------------------------------------------
def _state(d: Path) -> dict[str, Service]:
    f = d / "services.json"
    if not f.exists():
        return {}
    return {k: Service(**v) for k, v in json.loads(f.read_text()).items()}


def _save(d: Path, services: dict[str, Service]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "services.json").write_text(json.dumps({k: asdict(v) for k, v in services.items()}, indent=1))
    lines = ["# source this file: clients for the services started by embedlake.infra.local"]
    for s in services.values():
        for k, v in s.env.items():
            if not k.startswith("EMBEDLAKE_RAY_TEMP"):
                lines.append(f"export {k}={shlex.quote(v)}")
    (d / "env.sh").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m embedlake.infra.local", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("services", nargs="*", choices=[*ALL, []], help="Default: all three.")
    ap.add_argument("--dir", default=os.environ.get("EMBEDLAKE_LOCAL_DIR", "/tmp/embedlake-local"),
                    help="State folder: logs, services.json, env.sh (default: %(default)s).")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--ray-auth", choices=["token", "disabled"], default="token")
    a = ap.parse_args(argv)
    d = Path(a.dir)
    names = a.services or list(ALL)
    running = _state(d)
    if a.action == "start":
        for n in names:
            if n in running and running[n].alive():
                print(f"{n}: already running (pid {running[n].pid})")
                continue
            s = {"prefect": lambda: start_prefect(d), "ray": lambda: start_ray_head(d, a.ray_cpus, a.ray_auth),
                 "s3": lambda: start_s3(d)}[n]()
            running[n] = s
            _save(d, running)
            print(f"{n}: {s.url} (pid {s.pid}, log {s.log})")
        print(f"source {d / 'env.sh'}")
    elif a.action == "stop":
        for n in names:
            if n in running:
                stop(running.pop(n))
                print(f"{n}: stopped")
        _save(d, running)
    else:
        for n, s in running.items():
            print(f"{n}: {'up' if s.alive() else 'DEAD'}  {s.url}  pid {s.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
