"""Object-size recorder: the bytes every Ray task of the pipeline takes and returns, per call.

Why: issue 17's promise is that no task of a sharded engine holds the whole graph, i.e. no task
argument or result is much larger than one shard. That is a property of the running pipeline, not
of any one function, so it is checked by recording what each task really received after Ray
resolved its arguments, and what it returned, then comparing against the shard sizes.

How: with EMBEDLAKE_RECORD_OBJECTS=<dir> set in the driver when a stage builds its tasks,
`tasks/remote.py:remote` wraps the worker function (or each public method of an actor class) in
`recorded(...)`. The directory travels inside the wrapper (a closure Ray pickles with the function),
so the workers need no environment of their own, on any node. Each call appends one JSON line to
`<dir>/objects-<host>-<pid>.jsonl` (one file per worker process: no two processes write one file):

    {"stage": "walk", "fn": "walk_partition", "args": [bytes, ...], "kwargs": {name: bytes},
     "results": [bytes, ...], "node": <ray node id>, "pid": ..., "wall_s": ...,
     "mem": {"hwm": ..., "rss": ..., "anon": ..., "anon_peak": ..., "own_peak": ..., "shmem": ..., ...}}

With the variable unset, `remote` never calls into this module: zero overhead.

Memory per task (`mem`, bytes, Linux /proc/self/status): issue 17 bounds each worker's peak memory,
and a Ray worker process runs many tasks, so its lifetime peak says nothing about which task made
it. Before each call the recorder resets the kernel's RSS high-water mark (writes "5" to
/proc/self/clear_refs, which sets VmHWM to the current RSS) and reads the RSS parts; after the call
it reads them again. `hwm` is the call's peak RSS (the process's baseline included). RSS has three
kinds of pages, kept apart because they are not the same memory:
- anon (RssAnon): the worker's private heap: arrays it allocated, interpreter, numba code;
- shmem (RssShmem): object-store pages the worker mapped (arguments read zero-copy, results put):
  the store's memory, counted once per node however many workers map it, and kept in a worker's
  RSS after the task for as long as the mapping lives;
- file (RssFile): mapped shared libraries and files, shared by every worker on the node.
The kernel keeps a high-water mark of the total only, so the parts' peaks come two ways:
- `anon_peak` (and `shmem_peak`) are sampled: a thread reads /proc/self/status every 10 ms while
  the call runs, plus before and after. A lower bound: a kernel holding the GIL stops the sampler,
  so a temporary that lives only inside one such kernel can be missed.
- `own_peak` = hwm - file - shmem, both taken before the call: the call's own peak, i.e. its
  private heap plus the object-store pages it newly touched (its arguments, its results put),
  leaving out library pages and the store pages earlier tasks left mapped. An upper bound on the
  anonymous peak, exact for heap + new shared pages as long as the call unmaps no page it had
  before. This is the figure issue 17's per-worker bound is checked against (bench/bench_shards.py).
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RECORD_ENV = "EMBEDLAKE_RECORD_OBJECTS"
_CONTAINER_ITEMS = 1000        # beyond this many items a container is sized by pickling it whole
_WRITE_LOCK = threading.Lock()
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
SAMPLE_EVERY_S = 0.01


def record_dir() -> str | None:
    """Where the driver's tasks record object sizes (EMBEDLAKE_RECORD_OBJECTS), None when off."""
    return os.environ.get(RECORD_ENV) or None


@contextmanager
def recording(directory: str | os.PathLike) -> Iterator[Path]:
    """Record the sizes of every task made by `remote` in this process while the block runs.
    (Tasks built before it, e.g. a remote function cached earlier, are not recorded.)"""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    before = os.environ.get(RECORD_ENV)
    os.environ[RECORD_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(RECORD_ENV, None)
        else:
            os.environ[RECORD_ENV] = before


class _ByteCounter:
    """A file object that only counts what a pickler writes to it."""

    def __init__(self):
        self.n = 0

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self.n += n
        return n


def _pickled_bytes(obj) -> int:
    """Pickled size with buffers out of band (counted, not copied) and Ray handles counted as 0."""
    import ray
    from ray import cloudpickle

    class _Sizer(cloudpickle.CloudPickler):
        def persistent_id(self, o):
            if isinstance(o, (ray.ObjectRef, ray.actor.ActorHandle)):
                return 0
            return None

    out, buffers = _ByteCounter(), []
    _Sizer(out, protocol=5, buffer_callback=buffers.append).dump(obj)
    return out.n + sum(b.raw().nbytes for b in buffers)


def object_bytes(obj) -> int:
    """Bytes of one task argument or result (see the module doc for the rules)."""
    import numpy as np
    import ray
    if obj is None:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return int(memoryview(obj).nbytes)
    if isinstance(obj, (ray.ObjectRef, ray.actor.ActorHandle)):
        return 0
    if isinstance(obj, (tuple, list)) and len(obj) <= _CONTAINER_ITEMS:
        return sum(object_bytes(x) for x in obj)
    if isinstance(obj, dict) and len(obj) <= _CONTAINER_ITEMS:
        return sum(object_bytes(k) + object_bytes(v) for k, v in obj.items())
    try:
        return _pickled_bytes(obj)
    except Exception:           # not picklable here (a lock, an open file): its shallow size
        return int(sys.getsizeof(obj))


def _node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def _write(directory: str, record: dict) -> None:
    path = os.path.join(directory, f"objects-{socket.gethostname()}-{os.getpid()}.jsonl")
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with _WRITE_LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(line)


def proc_status(fields: tuple[str, ...] = STATUS_FIELDS) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (kB lines); a field the kernel lacks is left out."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Set this process's VmHWM to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class AnonSampler(threading.Thread):
    """Largest RssAnon and RssShmem seen every SAMPLE_EVERY_S seconds until `stop`: the kernel
    tracks the peak of total RSS only, not of its parts."""

    def __init__(self, first: dict[str, int]):
        super().__init__(daemon=True, name="embedlake-anon-sampler")
        self.anon, self.shmem = first.get("RssAnon", 0), first.get("RssShmem", 0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            now = proc_status(("RssAnon", "RssShmem"))
            self.anon = max(self.anon, now.get("RssAnon", 0))
            self.shmem = max(self.shmem, now.get("RssShmem", 0))

    def stop(self, last: dict[str, int]) -> tuple[int, int]:
        self.done.set()
        self.join()
        return max(self.anon, last.get("RssAnon", 0)), max(self.shmem, last.get("RssShmem", 0))


@contextmanager
def task_memory() -> Iterator[dict]:
    """Measure the block's memory (see the module doc); the yielded dict is filled on exit."""
    mem: dict = {}
    reset = reset_peak_rss()
    before = proc_status()
    sampler = AnonSampler(before)
    sampler.start()
    try:
        yield mem
    finally:
        after = proc_status()
        anon_peak, shmem_peak = sampler.stop(after)
        hwm = after.get("VmHWM", 0) if reset else 0
        mem.update(hwm=hwm, rss_before=before.get("VmRSS", 0), rss=after.get("VmRSS", 0),
                   anon_before=before.get("RssAnon", 0), anon=after.get("RssAnon", 0), anon_peak=anon_peak,
                   own_peak=max(anon_peak, hwm - before.get("RssFile", 0) - before.get("RssShmem", 0)),
                   file=after.get("RssFile", 0), shmem_before=before.get("RssShmem", 0),
                   shmem=after.get("RssShmem", 0), shmem_peak=shmem_peak, hwm_reset=reset)


def _result_sizes(result, num_returns) -> list[int]:
    """One size per object the call returns: with num_returns > 1 (or "split", an actor method,
    whose num_returns is set per call) each item of a returned list or tuple is its own object."""
    split = num_returns == "split" or (isinstance(num_returns, int) and num_returns > 1)
    if split and isinstance(result, (tuple, list)):
        return [object_bytes(r) for r in result]
    return [object_bytes(result)]


def recorded_function(fn, stage: str | None, directory: str, num_returns=1, name: str | None = None,
                      method: bool = False):
    """`fn` that appends one size record per call to `directory` (same name and signature, so
    Ray titles its worker `ray::<name>` and checks calls against fn's own parameters).
    method: fn is an actor method; its `self` (the actor, which stays put) is not an argument.
    A generator function stays one (recorded_generator): Ray stores what it yields one by one."""
    if inspect.isgeneratorfunction(fn):
        return recorded_generator(fn, stage, directory, name, method)
    label = name or fn.__name__
    skip = 1 if method else 0

    @functools.wraps(fn)
    def call(*args, **kwargs):
        record = _call_record(stage, label, args[skip:], kwargs)
        with task_memory() as mem:
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            wall = time.perf_counter() - t0
        _write(directory, {**record, "results": _result_sizes(result, num_returns), "wall_s": round(wall, 6),
                           "mem": mem})
        return result
    return call


def _call_record(stage: str | None, label: str, args, kwargs) -> dict:
    """The part of a call's size record known before it runs: where, what, and its arguments' bytes."""
    return {"stage": stage, "fn": label, "args": [object_bytes(a) for a in args],
            "kwargs": {k: object_bytes(v) for k, v in kwargs.items()}, "node": _node_id(), "pid": os.getpid()}


def recorded_generator(fn, stage: str | None, directory: str, name: str | None = None, method: bool = False):
    """A generator function (a Ray generator task: num_returns = k, or "streaming") recorded like
    `recorded_function`, one record per call: each yielded object is a result of its own, and the
    memory is measured from the first step to the last, so it includes the object-store pages of
    what Ray stored at each yield (a plain task's results are stored after its measured call)."""
    label = name or fn.__name__
    skip = 1 if method else 0

    @functools.wraps(fn)
    def call(*args, **kwargs):
        record = _call_record(stage, label, args[skip:], kwargs)
        sizes = []
        with task_memory() as mem:
            t0 = time.perf_counter()
            steps = fn(*args, **kwargs)
            for item in steps:
                sizes.append(object_bytes(item))
                yield item
                del item            # Ray has stored it: hold no more than Ray does
            wall = time.perf_counter() - t0
        _write(directory, {**record, "results": sizes, "wall_s": round(wall, 6), "mem": mem})
    return call


def recorded_actor(cls: type, stage: str | None, directory: str) -> type:
    """A subclass of actor class `cls` whose constructor and public methods record like
    `recorded_function` (`Class.__init__`, `Class.method`). A method's num_returns is often given per
    call (`.options(num_returns=k)`), which the actor cannot see, so a list or tuple a method returns
    is recorded item by item (as k objects); a method's own @ray.method(num_returns=...) is kept."""
    methods = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if (name.startswith("_") and name != "__init__") or \
                isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
            continue
        methods[name] = recorded_function(member, stage, directory, "split", name=f"{cls.__name__}.{name}",
                                          method=True)
    return type(cls.__name__, (cls,), {**methods, "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def recorded(fn_or_class, stage: str | None, directory: str, num_returns=1):
    """What `remote` hands to ray.remote while recording: a recording function or actor class."""
    if inspect.isclass(fn_or_class):
        return recorded_actor(fn_or_class, stage, directory)
    return recorded_function(fn_or_class, stage, directory, num_returns)


# ---- reading the records back ------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One recorded task call."""
    stage: str | None
    fn: str
    args: tuple[int, ...]
    kwargs: dict
    results: tuple[int, ...]
    node: str | None
    pid: int
    wall_s: float
    mem: dict = field(default_factory=dict)      # task_memory's fields; empty in records made before them

    @property
    def peak_rss(self) -> int:
        """The call's peak RSS (VmHWM after a reset at its start), shared object-store pages included."""
        return int(self.mem.get("hwm", 0))

    @property
    def peak_anon(self) -> int:
        """The call's peak private (anonymous) memory as sampled (a lower bound: see the module doc)."""
        return int(self.mem.get("anon_peak", 0))

    @property
    def peak_own(self) -> int:
        """The call's own peak: heap + object-store pages it newly touched (an upper bound on its heap)."""
        return int(self.mem.get("own_peak", 0))

    @property
    def largest_arg(self) -> int:
        return max([*self.args, *self.kwargs.values(), 0])

    @property
    def largest_result(self) -> int:
        return max([*self.results, 0])

    @property
    def largest(self) -> int:
        return max(self.largest_arg, self.largest_result)


def read_calls(directory: str | os.PathLike) -> list[Call]:
    """Every call recorded under `directory` (all worker processes, all nodes sharing the folder)."""
    calls = []
    for path in sorted(Path(directory).glob("objects-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                calls.append(Call(r["stage"], r["fn"], tuple(r["args"]), dict(r["kwargs"]), tuple(r["results"]),
                                  r.get("node"), int(r["pid"]), float(r["wall_s"]), dict(r.get("mem") or {})))
    return calls


def memory_by_stage(calls: list[Call]) -> dict[str, dict]:
    """Per stage, the call with the largest peak RSS, the one with the largest own peak and the one
    with the largest sampled anonymous peak (they need not be the same call), each with its memory
    fields: which task makes a stage's peak, and whether it is the worker's heap or mapped
    object-store pages."""
    out: dict[str, dict] = {}
    for c in calls:
        if not c.mem:
            continue
        s = out.setdefault(c.stage or "-", {"calls": 0})
        s["calls"] += 1
        for kind, value in (("rss", c.peak_rss), ("own", c.peak_own), ("anon", c.peak_anon)):
            if value > s.get(kind, -1):
                s[kind], s[f"{kind}_fn"], s[f"{kind}_mem"] = value, c.fn, c.mem
    return out


def largest_by_stage(calls: list[Call]) -> dict[str, dict]:
    """Per stage: calls, the largest argument and result in bytes, and which function took or gave it."""
    out: dict[str, dict] = {}
    for c in calls:
        s = out.setdefault(c.stage or "-", {"calls": 0, "arg": 0, "arg_fn": None, "result": 0, "result_fn": None})
        s["calls"] += 1
        if c.largest_arg > s["arg"]:
            s["arg"], s["arg_fn"] = c.largest_arg, c.fn
        if c.largest_result > s["result"]:
            s["result"], s["result_fn"] = c.largest_result, c.fn
    return out


def oversized(calls: list[Call], limit_bytes: float, stages: set[str] | None = None) -> list[str]:
    """One line per call (of `stages`, or all) whose largest argument or result exceeds limit_bytes."""
    lines = []
    for c in calls:
        if stages is not None and c.stage not in stages:
            continue
        if c.largest > limit_bytes:
            which = "argument" if c.largest_arg >= c.largest_result else "result"
            lines.append(f"{c.stage}/{c.fn}: {which} of {c.largest:,} bytes > {int(limit_bytes):,}")
    return lines


def shard_rows_read(calls: list[Call], stage: str, built_by: str = "shard_stage") -> dict:
    """Where the tasks of `stage` read the graph shards' CSR rows: bytes read on the node where the
    ingest task `built_by` made the shard (local) and bytes pulled from another node (moved).

    The recorder keeps sizes, not object ids, so a shard is known by the size of its CSR tuple
    (`built_by`'s first result, a task's first argument); shards of equal size cannot be told apart,
    and those calls are counted as `ambiguous`. Returns {"local", "moved", "ambiguous" (bytes),
    "calls", "moved_calls", "shards"}."""
    homes: dict[int, set] = {}
    for c in calls:
        if c.fn == built_by and c.results:
            homes.setdefault(c.results[0], set()).add(c.node)
    out = {"local": 0, "moved": 0, "ambiguous": 0, "calls": 0, "moved_calls": 0, "shards": len(homes)}
    for c in calls:
        if c.stage != stage or not c.args or c.args[0] not in homes:
            continue
        out["calls"] += 1
        home = homes[c.args[0]]
        if len(home) > 1:
            out["ambiguous"] += c.args[0]
        elif c.node in home:
            out["local"] += c.args[0]
        else:
            out["moved"] += c.args[0]
            out["moved_calls"] += 1
    return out
