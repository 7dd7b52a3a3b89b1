"""A test hook that kills a run at a named point, so resume tests need no timing guesses.

EMBEDLAKE_FAULT=<point> (unset in normal use) makes the process that reaches `fault_point(<point>)`
die with SIGKILL: no `finally`, no clean-up, no claim released - what an OOM kill or a lost
machine leaves behind. Points (docs/reliability.md):

    after:walk                 the driver, once every walk partition exists (and is checkpointed)
    after:walk_partition:<i>   the Ray task of walk partition i, after its checkpoint is written
    after:train_epoch:<k>      the training task, after epoch k (1-based) and its checkpoint
    after:stream_round:<r>     streamed training, after round r (1-based) and its checkpoint
    after:train                the driver, once training returned (the final table is checkpointed)
    after:publish              the driver, once the embedding files are written (before evaluate/commit)
    after:encode               embed_corpus's driver, once the token shards are written

The whole run dies, wherever the point is reached (the driver or a Ray worker), as a killed job
would: when the driver leads its own session (started with `setsid`, or `start_new_session=True`
as the tests do) every process of that session - the driver, its local Ray (whose workers keep the
session) and Prefect's server - gets SIGKILL; otherwise the driver process and the process that
reached the point. The driver records which, in the environment its Ray workers inherit, when
this module is first imported with EMBEDLAKE_FAULT set.
"""
from __future__ import annotations

import os
import signal

_SESSION = "EMBEDLAKE_FAULT_SESSION"
_DRIVER = "EMBEDLAKE_FAULT_DRIVER"


def _arm() -> None:
    """In the driver (first import, before Ray starts): remember whom a fault kills."""
    if not os.environ.get("EMBEDLAKE_FAULT") or _SESSION in os.environ or _DRIVER in os.environ:
        return
    if os.getsid(0) == os.getpid():
        os.environ[_SESSION] = str(os.getpid())
    else:
        os.environ[_DRIVER] = str(os.getpid())


_arm()


def fault_point(name: str) -> None:
    """Die here with the whole run (SIGKILL) when EMBEDLAKE_FAULT names this point; no-op otherwise."""
    want = os.environ.get("EMBEDLAKE_FAULT")
    if not want or want != name:
        return
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
