"""The one test hook that kills processes at named points, so fault tests need no timing guesses.

EMBEDLAKE_FAULT (unset in normal use; never set it outside tests) is a comma-separated list of
faults; `fault_point(<point>)`, called by stage code at each point below, acts on every fault that
names that point, in the order listed:

    <point>                                  kill the whole run (below)
    kill-worker-once:<point>=<marker file>   kill only the process that got here, once per run

`kill-worker-once`: the first process to reach the point creates the marker (O_EXCL, so exactly
one process in the whole run, however many tasks race) with `killed <pid>` and SIGKILLs itself
(a Ray worker dies mid-task, and Ray must run the task again); every later pass appends
`ran <pid>` and goes on, so a test can see that the retry happened and where. A marker path may
not contain ','; the point ends at the first '=', so the path may contain '='.

Points (docs/reliability.md, "Fault hooks used by tests"):

    after:walk                 the driver, once every walk partition exists (and is checkpointed)
    after:walk_stage           any walk task (partitions and streamed rounds), walks computed, not returned
    after:walk_partition:<i>   the Ray task of walk partition i, after its checkpoint is written
    walk_sharded_round:<r>     every shard owner of the sharded walks (workers/graph/sharded_walks.py),
                               as it starts round r (1-based)
    after:train_epoch:<k>      the training task (graph one-table and corpus runs), after epoch k
                               (1-based) and its checkpoint
    after:stream_round:<r>     streamed training, after round r (1-based) and its checkpoint
    after:train                the driver, once training returned (the final table is checkpointed)
    after:publish              the driver, once the embedding files are written (before evaluate/commit)
    after:vocab                embed_corpus's driver, vocabulary counted and merged, nothing written yet
    after:encode               embed_corpus's driver, once the token shards and vocabulary are written
                               and checkpointed (a re-run reuses them)

A whole-run kill is SIGKILL: no `finally`, no clean-up, no claim released - what an OOM kill or a
lost machine leaves behind. The whole run dies, wherever the point is reached (the driver or a Ray
worker), as a killed job would: when the driver leads its own session (started with `setsid`, or
`start_new_session=True` as the tests do) every process of that session - the driver, its local
Ray (whose workers keep the session) and Prefect's server - gets SIGKILL; otherwise the driver
process and the process that reached the point. The driver records which, in the environment its
Ray workers inherit, when this module is first imported with EMBEDLAKE_FAULT set. Ray workers read
EMBEDLAKE_FAULT from the environment they inherit from the process that started Ray, so it must
be set before Ray starts.
"""
from __future__ import annotations

import os
import signal

FAULT = "EMBEDLAKE_FAULT"
KILL_WORKER_ONCE = "kill-worker-once:"
_SESSION = "EMBEDLAKE_FAULT_SESSION"
_DRIVER = "EMBEDLAKE_FAULT_DRIVER"


def kill_worker_once(point: str, marker: str | os.PathLike) -> str:
    """The EMBEDLAKE_FAULT entry for a once-only kill of the process reaching `point` (tests build
    the variable with this rather than spelling the syntax themselves)."""
    marker = os.fspath(marker)
    if "," in marker:
        raise ValueError(f"{FAULT}: a marker path may not contain ',': {marker!r}")
    return f"{KILL_WORKER_ONCE}{point}={marker}"


def parse_faults(value: str | None) -> list[tuple[str, str, str | None]]:
    """EMBEDLAKE_FAULT's value as [(action, point, marker-or-None)], action "run" or "worker-once"."""
    out = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith(KILL_WORKER_ONCE):
            point, sep, marker = item[len(KILL_WORKER_ONCE):].partition("=")
            if not sep or not point or not marker:
                raise ValueError(f"{FAULT}: {item!r} is not {KILL_WORKER_ONCE}<point>=<marker file>")
            out.append(("worker-once", point, marker))
        else:
            out.append(("run", item, None))
    return out


def _arm() -> None:
    """In the driver (first import, before Ray starts): remember whom a fault kills."""
    if not os.environ.get(FAULT) or _SESSION in os.environ or _DRIVER in os.environ:
        return
    if os.getsid(0) == os.getpid():
        os.environ[_SESSION] = str(os.getpid())
    else:
        os.environ[_DRIVER] = str(os.getpid())


_arm()


def fault_point(name: str) -> None:
    """Act on every EMBEDLAKE_FAULT entry that names this point (see the module doc); no-op otherwise."""
    want = os.environ.get(FAULT)
    if not want:
        return
    for action, point, marker in parse_faults(want):
        if point != name:
            continue
        if action == "worker-once":
            _kill_self_once(marker)
        else:
            _kill_run()


def _kill_self_once(marker: str) -> None:
    """First process here: write `killed <pid>` to a fresh marker and SIGKILL itself; later ones
    append `ran <pid>` and return."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with open(marker, "a") as f:
            f.write(f"ran {os.getpid()}\n")
        return
    os.write(fd, f"killed {os.getpid()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_run() -> None:
    me = os.getpid()
    session = int(os.environ.get(_SESSION, "0") or 0)
    if session and os.getsid(0) == session:
        for _ in range(2):                     # twice: a process may have started meanwhile
            for pid in _session_pids(session):
                if pid != me:
                    _kill(pid)
    elif os.environ.get(_DRIVER):
        _kill(int(os.environ[_DRIVER]))
    os.kill(me, signal.SIGKILL)


def _session_pids(session: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == session:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
